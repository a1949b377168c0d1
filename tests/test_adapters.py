"""Saved adapters: a trial's adapter, written in peft's format, reloads with PeftModel and gives
the test metrics the trial recorded; a packed trial saves what a solo trial saves."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from scaling.models import end_of_answer_ids, load_base_model
from scaling.tiny import BUILTIN_TINY
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


# the sweep keeps each cell's selected adapter --------------------------------------------
from test_sweep import ray_local, small_spec  # noqa: E402, F401  (fixture)
from typer.testing import CliRunner  # noqa: E402

from analysis.selection import select  # noqa: E402
from scaling.cli import app  # noqa: E402
from scaling.records import read_results  # noqa: E402


def _trial_cfg(spec, row) -> TrialConfig:
    return _cfg(dataset_size=int(row["dataset_size"]), epochs=int(row["epochs"]), validation_size=64,
                test_size=64, learning_rate=float(row["learning_rate"]))  # fmt: skip


def test_a_sweep_keeps_each_cells_selected_adapter_and_export_writes_it(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = small_spec("keep", axes={"dataset_size": [64], "epochs": [1, 2]}, trials_per_cell=2,
                      packing={"adapters_per_worker": 2})  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    df = read_results(res.run_dir)
    chosen = select(df).best.set_index(["dataset_size", "epochs"])["trial_id_best"]
    root = res.run_dir / "adapters"
    assert sorted(p.name for p in root.iterdir()) == ["D=64,E=1,r=8", "D=64,E=2,r=8"]  # best only
    assert [p.name for p in res.adapters] == ["D=64,E=1,r=8", "D=64,E=2,r=8"]
    for (d, e), tid in chosen.items():
        folder = root / f"D={d},E={e},r=8"
        meta = json.loads((folder / "scaling.json").read_text())
        assert meta["trial_id"] == tid
        last = df[df.trial_id == tid].sort_values("epoch").iloc[-1]
        got = reloaded_test_metrics(_trial_cfg(spec, last), folder)
        assert got["eval_loss"] == pytest.approx(last["test_eval_loss"], abs=1e-4)
        assert meta["metrics"]["test_eval_loss"] == pytest.approx(last["test_eval_loss"])

    runner = CliRunner()
    r = runner.invoke(app, ["export", str(res.run_dir), "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    best_cell = min(chosen.items(), key=lambda kv: df[df.trial_id == kv[1]]["val_eval_loss"].iloc[-1])
    assert f"cell D=64,E={best_cell[0][1]},r=8" in r.output
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "x").iterdir()}
    r = runner.invoke(app, ["export", str(res.run_dir), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "not empty" in r.output  # never overwrites
    r = runner.invoke(app, ["export", str(res.run_dir), "--cell", "D=1,E=1,r=8", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "D=64,E=1,r=8" in r.output  # names the cells there are

    # --merge: a plain transformers checkpoint that scores what the adapter scores
    from transformers import AutoModelForCausalLM

    r = runner.invoke(app, ["export", str(res.run_dir), "--cell", "D=64,E=2,r=8", "--merge", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tid = chosen[(64, 2)]
    last = df[df.trial_id == tid].sort_values("epoch").iloc[-1]
    cfg = _trial_cfg(spec, last)
    _, tokenizer = load_base_model(cfg.model, device="cpu")
    test = get_data(cfg, {}, get_base(cfg, {}, "cpu"))[2]
    m = evaluate(merged, test, pad_id=tokenizer.pad_token_id, cache_kw=cache_kwarg(merged), batch_size=128,
                 device="cpu", stop_ids=end_of_answer_ids(tokenizer))[0]  # fmt: skip
    assert m["eval_loss"] == pytest.approx(last["test_eval_loss"], abs=1e-4)


def test_keep_adapters_all_and_none(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = small_spec("keepall", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=2,
                      storage={"keep_adapters": "all"})  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "all")
    trials = sorted(p.name for p in (res.run_dir / "adapters" / "trials").iterdir())
    assert trials == sorted(t.split("/", 1)[1] for t in read_results(res.run_dir)["trial_id"].unique())
    assert (res.run_dir / "adapters" / "D=64,E=1,r=8" / "adapter_model.safetensors").exists()
    assert not (res.run_dir / "adapters" / ".incoming").exists()
    none = small_spec("keepnone", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=1,
                      storage={"keep_adapters": "none"})  # fmt: skip
    res = run_sweep(none, out=tmp_path / "none")
    assert res.adapters == [] and not (res.run_dir / "adapters").exists()
