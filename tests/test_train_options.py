"""GPU-only options, off on CPU (issue 18, section 5): train.precision, train.gradient_checkpointing
and lora.quantize.

Spec errors are checked word for word; the CPU behaviours run real trials of the embedded tiny
model (D=64, one epoch: two optimizer steps, 32+32 eval problems). The CUDA paths (fp16 with its
loss scale, bf16 on a GPU, 4-bit QLoRA through bitsandbytes) cannot run here: only their refusals
on CPU are tested."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from analysis.table import METRIC_KEYS
from scaling.cli import app
from scaling.spec import SpecError, load_spec, parse_spec
from scaling.tiny import BUILTIN_TINY
from scaling.trial import Pack, TrialConfig, run_packed, run_trial
from scaling.trial.base import get_base

GOOD = {"name": "opts", "axes": {"dataset_size": [64]}, "learning_rate": {"low": 1e-3, "high": 1e-2}}
TOL = 1e-4  # what packing promises against a solo trial (tests/test_packed.py)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")


def _cfg(**overrides) -> TrialConfig:
    base = dict(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None, task_seed=0,
                dataset_size=64, epochs=1, learning_rate=3e-3, validation_size=32, test_size=32)  # fmt: skip
    return TrialConfig(**{**base, **overrides})


def _same(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in METRIC_KEYS:
            if k != "wall_seconds":
                assert abs(x[k] - y[k]) <= tol, (k, x[k], y[k])


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    return {}


@pytest.fixture(scope="module")
def fp32(worker):
    return run_trial(_cfg(), cache=worker)


# 1. the spec ------------------------------------------------------------------------


def test_defaults_are_todays_behaviour():
    spec = parse_spec(GOOD)
    assert (spec.train.precision, spec.train.gradient_checkpointing, spec.lora.quantize) == ("auto", False, None)
    ok = parse_spec({**GOOD, "train": {"precision": "fp16", "gradient_checkpointing": True},
                     "lora": {"quantize": "4bit"}, "resources": {"gpus": 0.25}})  # fmt: skip
    assert (ok.train.precision, ok.train.gradient_checkpointing, ok.lora.quantize) == ("fp16", True, "4bit")
    assert parse_spec({**GOOD, "train": {"precision": "bf16"}}).train.precision == "bf16"  # bf16 runs on a CPU


@pytest.mark.parametrize("over, message", [
    ({"train": {"precision": "fp16"}},
     "train.precision: fp16 training requires a CUDA GPU: set resources.gpus > 0 or use fp32, bf16 or auto "
     "(got 'fp16' with resources.gpus 0)"),
    ({"lora": {"quantize": "4bit"}},
     "lora.quantize: 4-bit QLoRA (bitsandbytes) requires a CUDA GPU: set resources.gpus > 0 "
     "(got '4bit' with resources.gpus 0)"),
    ({"train": {"precision": "fp8"}}, "train.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
    ({"lora": {"quantize": "8bit"}}, "lora.quantize: Input should be '4bit' (got '8bit')"),
    ({"train": {"gradient_checkpointing": "sometimes"}},
     "train.gradient_checkpointing: Input should be a valid boolean, unable to interpret input (got 'sometimes')"),
])  # fmt: skip
def test_bad_options_name_file_field_rule_and_value(tmp_path, over, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **over}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}: {message}"
    r = CliRunner().invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and message.split(" (got")[0] in " ".join(r.output.split())


def test_trial_config_refuses_unknown_values():
    for kw, msg in (({"precision": "half"}, "precision must be one of auto, fp32, bf16, fp16, got 'half'"),
                    ({"quantize": "8bit"}, "quantize must be None or '4bit', got '8bit'"),
                    ({"gradient_checkpointing": 1}, "gradient_checkpointing must be true or false, got 1")):  # fmt: skip
        with pytest.raises(ValueError) as err:
            _cfg(**kw)
        assert str(err.value) == msg


def test_the_sweep_hands_the_options_to_every_trial():
    from scaling.sweep.worker import _trial_config

    spec = parse_spec({**GOOD, "train": {"precision": "bf16", "gradient_checkpointing": True}})
    cfg = _trial_config(spec, {"dataset_size": 64, "epochs": 1, "lora_r": 8}, learning_rate=1e-3, seed=0)
    assert (cfg.precision, cfg.gradient_checkpointing, cfg.quantize) == ("bf16", True, None)


def test_an_older_run_without_the_fields_resumes_and_only_checkpointing_may_change(tmp_path):
    from scaling.run_record import _check_same_study

    saved = parse_spec(GOOD).to_record(exclude={"packing", "tracking"})
    del saved["train"]["precision"], saved["train"]["gradient_checkpointing"], saved["lora"]["quantize"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(saved))  # a run from before the fields
    assert _check_same_study(parse_spec(GOOD), tmp_path) == {}
    assert _check_same_study(parse_spec({**GOOD, "train": {"gradient_checkpointing": True}}), tmp_path) == {}
    with pytest.raises(SpecError, match=r"train.precision: must match the study already in .*the run has 'auto', "
                                        r"got 'bf16'"):  # fmt: skip
        _check_same_study(parse_spec({**GOOD, "train": {"precision": "bf16"}}), tmp_path)
    with pytest.raises(SpecError, match=r"lora.r: must match .*lora.r: the run has 8, got 4"):
        _check_same_study(parse_spec({**GOOD, "lora": {"r": 4}}), tmp_path)


# 2. CPU refusals at run time ----------------------------------------------------------


@NO_CUDA
def test_fp16_and_4bit_are_refused_on_cpu_without_importing_bitsandbytes(worker):
    with pytest.raises(ValueError) as err:
        run_trial(_cfg(precision="fp16"), cache=worker)
    assert str(err.value) == ("train.precision: fp16 training requires a CUDA device; this trial runs on cpu "
                              "(torch.cuda.is_available() is False); use fp32, bf16 or auto (got 'fp16')")  # fmt: skip
    with pytest.raises(ValueError) as err:
        run_trial(_cfg(quantize="4bit"), cache=worker)
    assert str(err.value) == ("lora.quantize: 4-bit QLoRA (bitsandbytes) requires a CUDA device; this trial runs "
                              "on cpu (torch.cuda.is_available() is False) (got '4bit')")  # fmt: skip
    out = run_packed([_cfg(quantize="4bit"), _cfg(quantize="4bit", seed=1)], cache=worker)
    assert [type(e).__name__ for e in out] == ["ValueError", "ValueError"]  # each config fails, nothing runs
    assert "bitsandbytes" not in sys.modules


# 3. gradient checkpointing: the same numbers, activations recomputed -------------------


def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_trial(worker, fp32):
    cfg = _cfg(gradient_checkpointing=True)
    model = get_base(cfg, worker, "cpu").model
    calls = []
    # transformers checkpoints the layer's forward (its own hooks stay outside): count its attention's
    # calls, with a pre-hook, as the recompute stops as soon as it has what backward needs
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        plain = len(calls)
        run_trial(_cfg(), cache=worker)
        plain = len(calls) - plain
        start = len(calls)
        on = run_trial(cfg, cache=worker)
        with_ckpt = len(calls) - start
    finally:
        hook.remove()
    steps = on[-1]["step"]
    assert steps == 2 and with_ckpt == plain + steps  # one recompute per training step, none in eval
    _same(on, fp32, 1e-6)  # numerically the same computation (bit for bit on this CPU)
    back = worker["base"].model  # returned to the worker as loaded: checkpointing off, no hooks left
    assert not back.is_activation_checkpointing and not getattr(back, "_require_grads_hooks", [])


def test_a_checkpointed_pack_equals_its_members_alone(worker, fp32):
    other = _cfg(learning_rate=1e-2, seed=1)
    packed = run_packed([_cfg(gradient_checkpointing=True), _cfg(**{**other.as_dict(), "gradient_checkpointing": True})],
                        cache=worker)  # fmt: skip
    _same(packed[0], fp32, TOL)
    _same(packed[1], run_trial(other, cache=worker), TOL)


# 4. bf16 on CPU: the base stored in bf16, the forward under autocast, adapters in fp32 ---------


def test_bf16_runs_the_base_in_bf16_and_packs_like_solo(worker, fp32):
    cfg = _cfg(precision="bf16")
    alone = run_trial(cfg, cache=worker)
    base = worker["base"]
    assert base.key == (BUILTIN_TINY, "cpu", "bf16", None) and base.model.dtype == torch.bfloat16
    assert alone[-1]["val_eval_loss"] != fp32[-1]["val_eval_loss"]  # bf16 did run
    _same(alone, fp32, 0.05)  # ... and trains the same adapter, to bf16 rounding
    other = _cfg(precision="bf16", learning_rate=1e-2, seed=1)
    packed = run_packed([cfg, other], cache=worker)
    _same(packed[0], alone, TOL)
    _same(packed[1], run_trial(other, cache=worker), TOL)
    assert get_base(_cfg(precision="auto"), worker, "cpu").model.dtype == torch.float32  # auto on CPU: fp32


def test_a_pack_refuses_a_member_that_runs_the_base_another_way(worker):
    out = run_packed([_cfg(), _cfg(precision="bf16", seed=1), _cfg(gradient_checkpointing=True, seed=2)],
                     cache=worker)  # fmt: skip
    assert isinstance(out[0], list) and len(out[0]) == 1
    assert str(out[1]) == ("train.precision 'bf16' (the pack has 'auto'): a pack runs one base model one way, "
                           "so its members must agree; train this config in another pack")  # fmt: skip
    assert str(out[2]).startswith("train.gradient_checkpointing True (the pack has False): ")


# 5. fp16's loss scale, on this CPU's autocast: the CUDA-only rule lifted, everything else real ---


def test_fp16_with_its_loss_scale_trains_like_fp32_and_packs_like_solo(worker, fp32, monkeypatch):
    from scaling.trial import base as trial_base

    rule = trial_base.resolve_precision  # the real rule, but fp16 allowed on a CPU for this test
    monkeypatch.setattr(trial_base, "resolve_precision",
                        lambda cfg, device: "fp16" if cfg.precision == "fp16" else rule(cfg, device))  # fmt: skip
    cfg = _cfg(precision="fp16")
    with Pack(cache=worker) as pack:
        handle = pack.add(cfg)
        pack.run()
    alone = handle.history
    assert worker["base"].key[2:] == ("fp16", None) and worker["base"].model.dtype == torch.float16
    # torch's GradScaler starts at 2**16: the first step's gradient overflows fp16 and is skipped
    # (the scale halves), so this 2-step trial takes one optimizer step and learns less than fp32
    assert handle.skipped_steps == 1 and alone[-1]["step"] == 2
    assert fp32[-1]["val_eval_loss"] < alone[-1]["val_eval_loss"] < fp32[-1]["val_eval_loss"] + 0.5
    other = _cfg(precision="fp16", learning_rate=1e-2, seed=1)
    packed = run_packed([cfg, other], cache=worker)  # one GradScaler for both, an optimizer each
    # fp16 rounds at ~1e-3 and a pack's base matmuls have other shapes than one trial's (seen:
    # 3.3e-4 on a summed log-prob of -6.57), so to 2e-3 here
    _same(packed[0], alone, 2e-3)
    _same(packed[1], run_trial(other, cache=worker), 2e-3)
