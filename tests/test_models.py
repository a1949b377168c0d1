"""The embedded tiny base model: deterministic build, cache, loading, tokenizer."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaling.models import ensure_base_model, load_base_model
from scaling.tiny import (
    BUILTIN_TINY,
    CHARS,
    TinyBuildConfig,
    build_tiny_model,
    tiny_tokenizer,
)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


# 1. tokenizer -------------------------------------------------------------------


def test_tokenizer_is_character_level_and_round_trips():
    tok = tiny_tokenizer()
    text = "37+45=82 copy: 123, r(9)-x?"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1  # <bos> + one id per char
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("37+4", add_special_tokens=False)["input_ids"]) == list("37+4")
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id} == {0, 1, 2, 3}
    assert len(tok) == 4 + len(CHARS)


def test_tokenizer_maps_unknown_characters_to_unk():
    tok = tiny_tokenizer()
    ids = tok("1A2\n", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("1"), tok.unk_token_id,
                   tok.convert_tokens_to_ids("2"), tok.unk_token_id]  # fmt: skip


# 2. build -------------------------------------------------------------------------


@pytest.mark.slow
def test_build_is_deterministic_for_a_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=0, steps=3)
    b = build_tiny_model(tmp_path / "b", seed=0, steps=3)
    c = build_tiny_model(tmp_path / "c", seed=1, steps=3)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.layers.0.mlp.up_proj.weight"], wc["model.layers.0.mlp.up_proj.weight"])
    info = json.loads((Path(a) / "build.json").read_text())
    assert info["config"]["steps"] == 3 and info["config"]["seed"] == 0
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        build_tiny_model(tmp_path / "d", steps=0)


def test_full_model_is_small_and_loads(tiny_model_dir, tiny_model):
    model, tok = tiny_model
    info = json.loads((Path(tiny_model_dir) / "build.json").read_text())
    n = sum(p.numel() for p in model.parameters())
    assert n == info["parameters"] and 500_000 <= n <= 1_000_000
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert info["config"] == json.loads(json.dumps(TinyBuildConfig().__dict__))
    assert Path(tiny_model_dir).name == f"{BUILTIN_TINY}-{TinyBuildConfig().digest()}"
    assert tok.decode(tok("12-5=")["input_ids"], skip_special_tokens=True) == "12-5="
    assert info["loss_curve"][-1] < 0.5 * info["loss_curve"][0]  # pretraining did learn


def _exact_match(model, tok, pairs: list[tuple[str, str]]) -> float:
    """Share of prompts whose greedy continuation is the answer then <eos>: with teacher
    forcing, every answer position's argmax must be the right token."""
    seqs = [(tok(p)["input_ids"], tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            for p, a in pairs]  # fmt: skip
    T = max(len(p) + len(a) for p, a in seqs)
    x = torch.full((len(seqs), T), tok.pad_token_id)
    for i, (p, a) in enumerate(seqs):
        x[i, : len(p) + len(a)] = torch.tensor(p + a)
    with torch.no_grad():
        pred = model(input_ids=x).logits.argmax(-1)  # (B, T)
    return sum(pred[i, len(p) - 1 : len(p) + len(a) - 1].tolist() == a
               for i, (p, a) in enumerate(seqs)) / len(seqs)  # fmt: skip


def test_full_model_learned_its_pretraining_text_but_not_addition(tiny_model):
    model, tok = tiny_model
    rng = random.Random(123)
    nums = [str(rng.randrange(10 ** rng.randrange(1, 5))) for _ in range(200)]
    pairs = [(rng.randrange(100), rng.randrange(100)) for _ in range(200)]
    copy = _exact_match(model, tok, [(f"c{n}=", n) for n in nums])
    reverse = _exact_match(model, tok, [(f"r{n}=", n[::-1]) for n in nums])
    sub = _exact_match(model, tok, [(f"{max(a, b)}-{min(a, b)}=", str(abs(a - b))) for a, b in pairs])
    add = _exact_match(model, tok, [(f"{a}+{b}=", str(a + b)) for a, b in pairs])
    # measured on the default build: copy 1.0, reverse 1.0, subtraction 0.27, addition 0.015
    assert copy > 0.6 and reverse > 0.6, (copy, reverse)
    assert sub > 0.1, sub  # some arithmetic for the adapter to build on ...
    assert add < 0.1, add  # ... but addition is left to learn (only a+0, 0+b come for free)


# 3. cache and name resolution ---------------------------------------------------------


def test_ensure_base_model_reuses_the_cache(tiny_model_dir):
    again = ensure_base_model(BUILTIN_TINY)
    assert again == tiny_model_dir  # no rebuild: returns at once


def test_concurrent_builds_build_once(tmp_path):
    """Two processes asking for the same (small) build: one builds, the other waits and reuses."""
    script = textwrap.dedent(f"""
        import dataclasses, sys
        from pathlib import Path
        from scaling.tiny import TinyBuildConfig, _ensure_tiny
        cfg = dataclasses.replace(TinyBuildConfig(), steps=3)
        built = []
        path = _ensure_tiny(cfg, Path({str(tmp_path)!r}), progress=built.append)
        print(path, "built" if built else "reused")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]
    assert sorted(o[1] for o in outs) == ["built", "reused"]
    folders = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert folders == [Path(outs[0][0]).name]  # no temp folder left behind


def test_ensure_base_model_resolves_paths_and_hub_ids(tmp_path, tiny_model_dir, monkeypatch):
    assert ensure_base_model(tiny_model_dir) == tiny_model_dir
    assert ensure_base_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # lazy
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ensure_base_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope/model"):
        ensure_base_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(FileNotFoundError, match="'bad name!'"):
        ensure_base_model("bad name!")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="'runs/model'"):  # a missing local path, not a hub id
        ensure_base_model("runs/model")


def test_load_base_model_from_a_local_directory(tmp_path):
    path = build_tiny_model(tmp_path / "m", steps=1)
    model, tok = load_base_model(path)
    assert not model.training
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2
    x = torch.tensor([tok("1-1=")["input_ids"]])  # (1, 5)
    assert model(input_ids=x).logits.shape == (1, 5, len(tok))
