"""One LoRA trial on the tiny base: counts, learning, determinism, cache reuse, divergence."""

import dataclasses
import json
import math

import pytest
import torch

import scaling.trial.base as base_mod
from analysis.table import METRIC_KEYS
from scaling.models import load_base_model
from scaling.tasks import Example, TaskError, make_task
from scaling.tiny import BUILTIN_TINY
from scaling.tokens import _tokenize
from scaling.trial import Pack, TrialConfig, TrialDiverged, run_trial
from scaling.trial.evaluate import evaluate

pytestmark = pytest.mark.slow

D, EPOCHS, BATCH = 384, 3, 32
EVAL = 100  # small eval sets keep the tests quick


def _cfg(**overrides) -> TrialConfig:
    base = dict(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None,
                task_seed=0, dataset_size=D, epochs=EPOCHS, learning_rate=3e-3,
                batch_size=BATCH, validation_size=EVAL, test_size=EVAL)  # fmt: skip
    return TrialConfig(**{**base, **overrides})


def _strip_wall(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "wall_seconds"} for m in history]


def _base_weights(model) -> dict[str, torch.Tensor]:
    """Base weights under their original names, whether or not LoRA layers are injected."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}  # fmt: skip


@pytest.fixture(scope="module")
def first_trial(tiny_model_dir):
    """One trial, run with a worker cache as run_trial runs it (a solo pack); report()
    inspects the model and the adapter mid-trial."""
    cache: dict = {}
    reported, inside = [], []

    def report(metrics):
        model = pack.model  # the base's target linears are wrapped while the trial runs
        lora = {f"{n}.lora_{ab}": w.detach().clone() for n, pair in handle.lora.items()
                for ab, w in zip("AB", pair, strict=True)}  # fmt: skip
        inside.append((_base_weights(model), lora))
        reported.append(metrics)

    with Pack(cache=cache, threads=1, solo=True) as pack:
        handle = pack.add(_cfg(), report=report)
        pack.run()
    assert handle.status == "ok"
    return {"history": handle.history, "reported": reported, "inside": inside, "cache": cache}


# 1. what is reported -----------------------------------------------------------------


def test_reports_every_epoch_with_exact_keys_and_counts(first_trial, tiny_model):
    history = first_trial["history"]
    assert history == first_trial["reported"]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert all(tuple(m) == METRIC_KEYS for m in history)
    steps_per_epoch = math.ceil(D / BATCH)
    assert [m["step"] for m in history] == [steps_per_epoch * e for e in (1, 2, 3)]
    # tokens: <bos> + prompt + completion + <eos> per example, no padding, every epoch
    pool = make_task(validation_size=EVAL, test_size=EVAL).train_pool(D)
    per_epoch = sum(len(e.prompt) + len(e.completion) + 2 for e in pool)
    assert [m["train_tokens"] for m in history] == [per_epoch * e for e in (1, 2, 3)]
    # LoRA r=8 on 7 projections x 4 layers: r * (in + out) each
    model, _ = tiny_model
    h, f = model.config.hidden_size, model.config.intermediate_size
    per_layer = 4 * 8 * (h + h) + 2 * 8 * (h + f) + 8 * (f + h)
    assert all(m["trainable_params"] == 4 * per_layer == 81_920 for m in history)
    n_base = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert history[-1]["train_flops"] == 6.0 * (n_base + 81_920) * history[-1]["train_tokens"]
    walls = [m["wall_seconds"] for m in history]
    assert walls == sorted(walls) and walls[0] > 0
    for m in history:
        for split in ("val", "test"):
            assert 0 <= m[f"{split}_token_accuracy"] <= 1 and 0 <= m[f"{split}_exact_match"] <= 1
            assert m[f"{split}_answer_logprob"] < 0 < m[f"{split}_eval_loss"]


def test_eval_loss_falls_over_epochs(first_trial):
    val = [m["val_eval_loss"] for m in first_trial["history"]]
    test = [m["test_eval_loss"] for m in first_trial["history"]]
    assert val[0] > val[1] > val[2] and test[0] > test[2]
    train = [m["train_loss"] for m in first_trial["history"]]
    assert train[0] > train[2]


def test_only_adapter_weights_change(first_trial, tiny_model_dir):
    pristine, _ = load_base_model(tiny_model_dir)
    before = _base_weights(pristine)
    for base_w, lora in first_trial["inside"]:
        assert base_w.keys() == before.keys()
        assert all(torch.equal(base_w[k], before[k]) for k in before)  # frozen during training
        lora_b = [v for k, v in lora.items() if "lora_B" in k]
        assert len(lora_b) == 28 and all(v.abs().sum() > 0 for v in lora_b)  # B starts at 0
    # after the trial the cached base is the pristine model again, with no LoRA layers left
    after = first_trial["cache"]["base"].model.state_dict()
    assert after.keys() == pristine.state_dict().keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


# 2. determinism and the worker cache ------------------------------------------------------


def test_same_config_twice_gives_identical_metrics(first_trial):
    fresh = run_trial(_cfg(), cache={})
    assert _strip_wall(fresh) == _strip_wall(first_trial["history"])
    other_seed = run_trial(_cfg(seed=1, epochs=1), cache={})
    assert other_seed[0]["val_eval_loss"] != first_trial["history"][0]["val_eval_loss"]


def test_cached_worker_gives_the_same_result_as_a_fresh_one(first_trial, monkeypatch):
    cache = first_trial["cache"]
    loads = []
    monkeypatch.setattr(base_mod, "load_base_model",
                        lambda *a, **k: loads.append(a) or load_base_model(*a, **k))  # fmt: skip
    run_trial(_cfg(learning_rate=1e-2, seed=5, epochs=1, dataset_size=200), cache=cache)
    again = run_trial(_cfg(), cache=cache)
    assert loads == []  # the base model was loaded once, by the first trial
    assert _strip_wall(again) == _strip_wall(first_trial["history"])


# 3. failures the sweep turns into rows -----------------------------------------------------------


def test_divergence_raises_and_leaves_the_cache_clean(first_trial):
    cache = first_trial["cache"]
    with pytest.raises(TrialDiverged, match=r"epoch 1, step \d+ \(learning_rate=1000"):
        run_trial(_cfg(learning_rate=1e3), cache=cache)
    base = cache["base"]
    assert base_mod.weights_fingerprint(base.model) == base.fingerprint
    assert not any("lora_" in k for k in base.model.state_dict())
    again = run_trial(_cfg(), cache=cache)  # the next trial in this worker is unaffected
    assert _strip_wall(again) == _strip_wall(first_trial["history"])


def test_lora_dropout_trains_in_a_pack_of_one_and_stays_deterministic(tiny_model_dir):
    """Dropout is the one thing only a solo trial may have: its mask draws from the global
    RNG, seeded with the adapter's init, so the same config still gives the same metrics."""
    cfg = _cfg(lora_dropout=0.2, epochs=1, dataset_size=64)
    first, again = run_trial(cfg, cache={}), run_trial(cfg, cache={})
    assert _strip_wall(first) == _strip_wall(again)
    plain = run_trial(_cfg(epochs=1, dataset_size=64), cache={})
    assert first[0]["train_loss"] != plain[0]["train_loss"]  # the masks changed training


def test_should_stop_ends_the_trial_early(tiny_model_dir):
    seen = []
    history = run_trial(_cfg(epochs=3, dataset_size=64), report=seen.append,
                        should_stop=lambda m: m["epoch"] == 2)  # fmt: skip
    assert [m["epoch"] for m in history] == [1, 2] and seen == history


def test_jsonl_task_trains_and_unknown_characters_are_reported(tmp_path, tiny_model_dir):
    path = tmp_path / "words.jsonl"
    rows = [{"prompt": f"r{i}=", "completion": str(i)[::-1]} for i in range(10, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(task_kind="jsonl", task_path=str(path), validation_size=2, test_size=2,
               dataset_size=16, epochs=1)  # fmt: skip
    (metrics,) = run_trial(cfg, cache={})
    pool = make_task(kind="jsonl", path=str(path), validation_size=2, test_size=2).train_pool(16)
    assert metrics["train_tokens"] == sum(len(e.prompt) + len(e.completion) + 2 for e in pool)
    assert 0 <= metrics["val_exact_match"] <= 1
    rows[7] = {"prompt": "Hello=", "completion": "ok"}  # uppercase is not in the vocabulary
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskError, match=r"Hello=.*does not know: 'H'"):
        run_trial(cfg, cache={})


def test_config_errors_quote_the_value():
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0, got -0.001"):
        _cfg(learning_rate=-1e-3)
    with pytest.raises(ValueError, match="learning_rate .* got nan"):
        _cfg(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="dataset_size must be an int >= 1, got 0"):
        _cfg(dataset_size=0)
    assert dataclasses.replace(_cfg(), epochs=2).epochs == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        _cfg().epochs = 5


# 4. the evaluator against an independent, unbatched implementation ------------------------------


def test_batched_eval_matches_one_by_one_generate(tiny_model):
    """Left-padded, KV-cached batched greedy decoding == HF generate on each example alone."""
    model, tok = tiny_model
    examples = [Example(f"{a}-{b}=", str(a - b)) for a, b in
                [(57, 23), (90, 9), (45, 45), (81, 7), (30, 12), (99, 1), (8, 3), (64, 28),
                 (73, 56), (20, 5), (9, 9), (88, 41)]]  # fmt: skip
    examples += [Example(f"c{n}=", str(n)) for n in (4711, 12, 905, 3)]
    items = _tokenize(examples, tok, split="test", max_len=64)
    (got,) = evaluate(model, items, pad_id=tok.pad_token_id, batch_size=5, device="cpu",
                      cache_kw=base_mod.cache_kwarg(model), stop_ids=(tok.eos_token_id,))  # fmt: skip
    exact, nll, n_tok, correct, logprob = 0, 0.0, 0, 0, 0.0
    with torch.no_grad():
        for p, a in items:
            ids = torch.tensor([p])
            out = model.generate(ids, max_new_tokens=len(a), do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=None)  # fmt: skip
            exact += out[0, len(p):].tolist() == a
            seq = torch.tensor([p + a])
            logp = torch.log_softmax(model(input_ids=seq).logits[0, len(p) - 1 : -1], -1)
            lp = logp[torch.arange(len(a)), torch.tensor(a)]
            nll -= lp.sum().item()
            logprob += lp.sum().item()
            n_tok += len(a)
            correct += (logp.argmax(-1) == torch.tensor(a)).sum().item()
    assert 0 < exact < len(items)  # a mix of right and wrong answers, so the check means something
    assert got["exact_match"] == exact / len(items)
    assert got["token_accuracy"] == correct / n_tok
    assert got["eval_loss"] == pytest.approx(nll / n_tok, rel=1e-5)
    assert got["answer_logprob"] == pytest.approx(logprob / len(items), rel=1e-5)
