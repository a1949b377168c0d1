"""The base model as an axis (axes.model): spec rules, cells and study names, the embedded family,
N on every row, a real packed sweep over two widths, and the joint L(N, D) laws of the report."""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest

from scaling.spec import SpecError, parse_spec

BASE = {
    "name": "m",
    "axes": {"dataset_size": [64, 128]},
    "learning_rate": {"low": 1e-3, "high": 1e-2},
}


def spec_with(**axes):
    return parse_spec({**BASE, "axes": {**BASE["axes"], **axes}}, source="s.yaml")


# -- 1. the spec -------------------------------------------------------------------------------


def test_without_the_axis_cells_keys_and_dump_are_as_before():
    s = parse_spec(BASE)
    assert [c.key for c in s.cells()] == ["D=64,E=1,r=8", "D=128,E=1,r=8"]
    assert all(c.model is None for c in s.cells())
    assert s.models() == ("tiny-llama",)
    # spec.yaml (and the resume comparison) of a spec without the axis has no axes.model key
    assert "model" not in s.model_dump(mode="json")["axes"]
    assert "models" not in s.facts()


def test_model_axis_cells_keys_and_study_names():
    from scaling.sweep.identity import cell_study_name

    s = spec_with(model=["tiny-llama-w32", "tiny-llama", "org/Some-Model"])
    keys = [c.key for c in s.cells()]
    assert keys == [
        "M=tiny-llama-w32,D=64,E=1,r=8", "M=tiny-llama-w32,D=128,E=1,r=8",
        "M=tiny-llama,D=64,E=1,r=8", "M=tiny-llama,D=128,E=1,r=8",
        "M=org--Some-Model,D=64,E=1,r=8", "M=org--Some-Model,D=128,E=1,r=8",
    ]  # fmt: skip
    assert cell_study_name(s, s.cells()[0]) == "m/M=tiny-llama-w32,D=64,E=1,r=8"
    assert s.planned_trials() == 6 * 3
    assert s.facts()["models"] == ["tiny-llama-w32", "tiny-llama", "org/Some-Model"]
    # one target setting for every model: a hub model among them -> peft's all-linear
    assert s.lora.target_modules == "all-linear"
    tiny_only = spec_with(model=["tiny-llama-w32", "tiny-llama"])
    assert tiny_only.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(
    "models, expect",
    [
        ([], "s.yaml: axes.model: must list at least one model (got [])"),
        (["tiny-llama-w50"], "s.yaml: axes.model: entry 0 'tiny-llama-w50' is not a model of the embedded family; "
                             "its names are tiny-llama-w32"),
        (["tiny-llama", "tiny-llama"], "s.yaml: axes.model: models must be unique (got ['tiny-llama', 'tiny-llama'])"),
        (["tiny-llama", 7], "s.yaml: axes.model: entry 1 must be a non-empty model name or path (got 7)"),
        (["tiny-llama", "  "], "s.yaml: axes.model: entry 1 must be a non-empty model name or path (got '  ')"),
        (["./no/such/dir"], "s.yaml: axes.model: entry 0 './no/such/dir' must be an existing model directory"),
        (["has space"], "s.yaml: axes.model: entry 0 'has space' must be an embedded model"),
        (["org/a", "org--a"], "s.yaml: axes.model: 'org/a' and 'org--a' would share the cell label 'org--a'"),
        ("tiny-llama", "s.yaml: axes.model: Input should be a valid list (got 'tiny-llama')"),
    ],
)  # fmt: skip
def test_bad_model_entries_name_file_field_rule_and_value(models, expect):
    with pytest.raises(SpecError) as err:
        spec_with(model=models)
    assert str(err.value).startswith(expect), str(err.value)


def test_top_level_model_must_be_on_the_axis():
    with pytest.raises(SpecError, match=r"s.yaml: \(top level\): model 'gpt2' is not one of axes.model"):
        parse_spec({**BASE, "model": "gpt2", "axes": {**BASE["axes"], "model": ["tiny-llama"]}}, source="s.yaml")
    ok = parse_spec({**BASE, "model": "tiny-llama", "axes": {**BASE["axes"], "model": ["tiny-llama-w32", "tiny-llama"]}})
    assert ok.models() == ("tiny-llama-w32", "tiny-llama")


def test_resume_treats_axes_model_as_part_of_the_study(tmp_path):
    from scaling.run_record import _check_same_study, write_run

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    single = parse_spec(BASE, source="s.yaml")
    write_run(single, old, {"study_uid": "u"})
    assert _check_same_study(single, old) == {"study_uid": "u"}  # a run without the axis resumes
    with pytest.raises(SpecError, match=r"s.yaml: axes: must match the study already in"):
        _check_same_study(spec_with(model=["tiny-llama", "tiny-llama-w32"]), old)
    two = spec_with(model=["tiny-llama", "tiny-llama-w32"])
    write_run(two, new, {"study_uid": "v"})
    assert _check_same_study(two, new) == {"study_uid": "v"}
    with pytest.raises(SpecError, match="axes: must match"):
        _check_same_study(spec_with(model=["tiny-llama", "tiny-llama-w64"]), new)


# -- 2. the embedded family and N ----------------------------------------------------------------


def test_family_names_and_today_s_model_unchanged():
    from scaling.family import model_label, tiny_name, tiny_width
    from scaling.models import model_params_n
    from scaling.tiny import TinyBuildConfig, tiny_build_config

    assert tiny_width("tiny-llama") == 128 and tiny_width("tiny-llama-w32") == 32
    assert tiny_width("tiny-llama-w33") is None and tiny_width("gpt2") is None
    assert tiny_name(128) == "tiny-llama" and tiny_name(64) == "tiny-llama-w64"
    # the existing name is today's exact build: the same config, hash and so cache folder
    assert tiny_build_config("tiny-llama") == TinyBuildConfig()
    assert tiny_build_config("tiny-llama-w128").digest() == TinyBuildConfig().digest() == "1168297e503a"
    w64 = tiny_build_config("tiny-llama-w64")
    assert (w64.hidden_size, w64.intermediate_size, w64.num_layers, w64.steps) == (64, 192, 4, 900)
    # N = 4 layers x (attention 4 h^2 + MLP 3 h x 3h + 2 norms h) + final norm h, from the config alone
    for h in (32, 64, 128):
        assert model_params_n(tiny_name(h)) == 4 * (4 * h * h + 9 * h * h + 2 * h) + h
    assert model_params_n("tiny-llama") == 853120  # build.json's non_embedding_parameters
    assert model_params_n("no-such-org/no-such-model") is None  # config not on this machine
    assert model_label("org/name") == "org--name" and model_label("/data/my model/") == "--data--my_model"


# -- 3. a real packed sweep over two widths --------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from scaling.models import ensure_base_model

    for m in ("tiny-llama-w32", "tiny-llama-w64"):
        ensure_base_model(m)  # ~20 s and ~35 s on one core the first time, cached after
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_packed_sweep_over_two_widths_never_mixes_models(ray_local, tmp_path):
    from scaling.models import model_params_n
    from scaling.records import read_results
    from scaling.sweep import run_sweep

    spec = parse_spec({
        "name": "mx", "task": {"kind": "addition", "digits": 2},
        "axes": {"dataset_size": [64], "epochs": [1], "model": ["tiny-llama-w32", "tiny-llama-w64"]},
        "learning_rate": {"low": 1e-3, "high": 3e-2}, "trials_per_cell": 3,
        "eval": {"validation_size": 32, "test_size": 32}, "resources": {"cpus": 1, "max_failures": 0},
        "sampler": {"extra_trials": 0}, "packing": {"adapters_per_worker": 3},
        "storage": {"keep_adapters": "none"},
    })  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 6, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    n32, n64 = model_params_n("tiny-llama-w32"), model_params_n("tiny-llama-w64")
    by_cell = df.groupby("cell").agg(model=("model", "unique"), n=("model_params_n", "unique"),
                                     pack=("pack_size", "max"), trials=("trial_id", "nunique"))  # fmt: skip
    assert set(by_cell.index) == {"M=tiny-llama-w32,D=64,E=1,r=8", "M=tiny-llama-w64,D=64,E=1,r=8"}
    # each cell ran as one pack of 3, on its own base model: its rows carry that model and its N
    for cell, model, n in (("M=tiny-llama-w32,D=64,E=1,r=8", "tiny-llama-w32", n32),
                           ("M=tiny-llama-w64,D=64,E=1,r=8", "tiny-llama-w64", n64)):  # fmt: skip
        row = by_cell.loc[cell]
        assert list(row["model"]) == [model] and list(row["n"]) == [n] and row["pack"] == 3 and row["trials"] == 3
    # the two bases really differ: the trainable LoRA params of rank 8 scale with the width
    tp = df.groupby("model")["trainable_params"].first()
    assert tp["tiny-llama-w64"] == 2 * tp["tiny-llama-w32"]
    storage = optuna.storages.RDBStorage(res.optuna_url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["mx/M=tiny-llama-w32,D=64,E=1,r=8", "mx/M=tiny-llama-w64,D=64,E=1,r=8"]
    assert optuna.load_study(study_name=names[0], storage=storage).user_attrs["model"] == "tiny-llama-w32"
