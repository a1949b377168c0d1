"""Saved adapters: a trial's adapter, written in peft's format, reloads with PeftModel and gives
the test metrics the trial recorded; a packed trial saves what a solo trial saves."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from scaling.models import BUILTIN_TINY, end_of_answer_ids, load_base_model
from scaling.trial import TrialConfig, run_packed, run_trial
from scaling.trial.base import cache_kwarg, get_base, get_data
from scaling.trial.evaluate import evaluate

EVAL = 64


def _cfg(**over) -> TrialConfig:
    base = dict(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None, task_seed=0,
                dataset_size=160, epochs=2, learning_rate=5e-3, validation_size=EVAL, test_size=EVAL)  # fmt: skip
    return TrialConfig(**{**base, **over})


def reloaded_test_metrics(cfg: TrialConfig, adapter_dir) -> dict[str, float]:
    """The test metrics of `adapter_dir` loaded by peft onto a freshly loaded base."""
    model, tokenizer = load_base_model(cfg.model, device="cpu")
    test = get_data(cfg, {}, get_base(cfg, {}, "cpu"))[2]
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return evaluate(peft_model, test, pad_id=tokenizer.pad_token_id, cache_kw=cache_kwarg(model),
                    batch_size=4 * cfg.batch_size, device="cpu", stop_ids=end_of_answer_ids(tokenizer))[0]  # fmt: skip


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    return {}


def test_a_saved_adapter_reloads_with_peft_and_reproduces_the_recorded_test_metrics(worker, tmp_path):
    cfg = _cfg()
    history = run_trial(cfg, cache=worker, save_to=str(tmp_path / "a"))
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert conf["r"] == cfg.lora_r and conf["lora_alpha"] == cfg.lora_alpha and conf["peft_type"] == "LORA"
    got = reloaded_test_metrics(cfg, tmp_path / "a")
    last = history[-1]
    for k in ("eval_loss", "token_accuracy", "exact_match"):
        assert got[k] == pytest.approx(last[f"test_{k}"], abs=1e-4), k
    # trained: B is not zero any more (peft starts it at 0), and the loss is not the base's
    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in weights.items())


def test_a_packed_trial_saves_what_the_solo_trial_saves(worker, tmp_path):
    cfgs = [_cfg(), _cfg(dataset_size=96, epochs=1, learning_rate=1e-2, seed=1, lora_r=4, lora_alpha=8)]
    run_trial(cfgs[1], cache=worker, save_to=str(tmp_path / "solo"))
    out = run_packed(cfgs, cache=worker, save_to=[str(tmp_path / "p0"), str(tmp_path / "p1")])
    assert all(isinstance(h, list) for h in out)
    solo = load_file(str(tmp_path / "solo" / "adapter_model.safetensors"))
    packed = load_file(str(tmp_path / "p1" / "adapter_model.safetensors"))
    assert solo.keys() == packed.keys() and len(solo) > 0
    for k in solo:
        assert torch.allclose(solo[k], packed[k], atol=1e-5), k
    assert (tmp_path / "p0" / "adapter_model.safetensors").exists()


def test_a_failed_trial_saves_nothing(worker, tmp_path):
    out = run_packed([_cfg(learning_rate=50.0)], cache=worker, save_to=[str(tmp_path / "x")])
    assert isinstance(out[0], BaseException) and not (tmp_path / "x").exists()
