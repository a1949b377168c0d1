"""Study specs: the shipped ones load; every malformed one gets its own clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaling.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "t",
    "axes": {"dataset_size": [100, 200], "epochs": [1, 2]},
    "learning_rate": {"low": 1e-4, "high": 1e-2},
}


def with_(path: str, value):
    """GOOD with one nested key replaced (value=KeyError deletes it)."""
    import copy

    d = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is KeyError:
        node.pop(last, None)
    else:
        node[last] = value
    return d


@pytest.mark.parametrize("name", ["demo.yaml", "cluster_gpu.yaml", "optimize.yaml"])
def test_shipped_specs_load(name):
    spec = load_spec(ROOT / "search_spaces" / name)
    assert spec.planned_trials() == len(spec.cells()) * (spec.trials_per_cell + spec.seeds.repeat_best)


def test_demo_design_meets_the_issue():
    spec = load_spec(ROOT / "search_spaces" / "demo.yaml")
    assert len(spec.axes.dataset_sizes()) >= 4 and len(spec.axes.epoch_values()) >= 2
    assert spec.trials_per_cell >= 3


def test_log_range_ladder_and_defaults():
    spec = parse_spec(with_("axes.dataset_size", {"low": 1000, "high": 16000, "num": 5}))
    assert spec.axes.dataset_sizes() == (1000, 2000, 4000, 8000, 16000)
    assert spec.storage.optuna is None and spec.optuna_url(Path("/tmp/x")) == "sqlite:////tmp/x/optuna.db"
    assert spec.lora.alpha_for(8) == 16 and parse_spec(with_("lora.alpha", "2r")).lora.alpha_for(8) == 16.0
    assert [c.key for c in spec.cells()][:2] == ["D=1000,E=1,r=8", "D=1000,E=2,r=8"]


def test_spec_is_frozen():
    spec = parse_spec(GOOD)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


# (case id, spec data, substrings the single message must contain: field, rule, value)
BAD = [
    ("negative lr", with_("learning_rate.low", -1e-3), ["learning_rate.low", "> 0", "-0.001"]),
    ("inverted lr", with_("learning_rate.low", 0.1), ["learning_rate.low must be < learning_rate.high", "0.1"]),
    ("lr as text", with_("learning_rate.high", "big"), ["learning_rate.high", "'big'"]),
    ("unknown key", with_("learning_rat", 1), ["learning_rat", "unknown key"]),
    ("unknown nested key", with_("lora.rank", 8), ["lora.rank", "unknown key"]),
    ("unknown task", with_("task.kind", "multiplication"), ["task.kind", "'multiplication'"]),
    ("zero dataset size", with_("axes.dataset_size", [0, 100]), ["axes.dataset_size", "greater than 0", "0"]),
    ("duplicate sizes", with_("axes.dataset_size", [100, 100]), ["axes.dataset_size", "unique", "100"]),
    ("empty epochs", with_("axes.epochs", []), ["axes.epochs", "at least one"]),
    ("epochs as text", with_("axes.epochs", ["two"]), ["axes.epochs", "'two'"]),
    ("missing axes", with_("axes", KeyError), ["axes", "required"]),
    ("trials zero", with_("trials_per_cell", 0), ["trials_per_cell", "greater than 0", "0"]),
    ("negative gpus", with_("resources.gpus", -0.5), ["resources.gpus", "-0.5"]),
    ("dropout one", with_("lora.dropout", 1.0), ["lora.dropout", "less than 1", "1.0"]),
    ("bad sampler", with_("sampler.kind", "grid"), ["sampler.kind", "'grid'"]),
    ("bad storage url", with_("storage.optuna", "mongodb://x"), ["storage.optuna", "mongodb://x"]),
    ("bad name", with_("name", "my study!"), ["name", "'my study!'"]),
    ("inverted log range", with_("axes.dataset_size", {"low": 800, "high": 100, "num": 3}), ["dataset_size.low must be < high", "800"]),
    ("jsonl without path", with_("task.kind", "jsonl"), ["task.path is required"]),
    ("missing jsonl file", with_("task", {"kind": "jsonl", "path": "nope/none.jsonl"}), ["task.path", "must exist", "nope/none.jsonl"]),
    ("bad early stopping", with_("early_stopping.method", "hyperband"), ["early_stopping.method", "'hyperband'"]),
    ("digits too many", with_("task.digits", 9), ["task.digits", "9"]),
    ("unknown tracker", with_("tracking.neptune", {"project": "p"}), ["tracking.neptune", "unknown key"]),
    ("bad wandb mode", with_("tracking.wandb", {"project": "p", "mode": "cloud"}), ["tracking.wandb.mode", "'cloud'"]),
    ("wandb without project", with_("tracking.wandb", {"mode": "offline"}), ["tracking.wandb.project", "required"]),
    ("mlflow without uri", with_("tracking.mlflow", {"experiment": "e"}), ["tracking.mlflow.tracking_uri", "required"]),
    ("empty mlflow uri", with_("tracking.mlflow", {"tracking_uri": ""}), ["tracking.mlflow.tracking_uri", "at least 1"]),
    ("tensorboard as text", with_("tracking.tensorboard", "yes please"), ["tracking.tensorboard", "'yes please'"]),
]  # fmt: skip


@pytest.mark.parametrize("case,data,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_specs_name_file_field_rule_value(tmp_path, case, data, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, f"{case}: {n!r} not in {msg!r}"


def test_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_with_packing_overrides_and_validates_again():
    from scaling.spec import with_packing

    spec = load_spec(ROOT / "search_spaces" / "demo.yaml")
    packed = with_packing(spec, 4)
    assert packed.packing.adapters_per_worker == 4 and spec.packing.adapters_per_worker == 1
    assert packed.model_dump(exclude={"packing", "source"}) == spec.model_dump(exclude={"packing", "source"})
    with pytest.raises(SpecError, match=r"with --adapters-per-worker: packing.adapters_per_worker: .*got 0"):
        with_packing(spec, 0)
    dropout = parse_spec({**spec.model_dump(mode="json", exclude={"source"}), "lora": {"dropout": 0.1}})
    with pytest.raises(SpecError, match="requires lora.dropout 0"):
        with_packing(dropout, 2)


def test_tracking_is_off_by_default_and_kept_out_of_spec_yaml(tmp_path):
    from scaling.run_record import write_run

    spec = parse_spec(GOOD)
    assert not spec.tracking.any() and spec.mlflow_uri() is None
    (tmp_path / "off").mkdir()
    write_run(spec, tmp_path / "off", {})  # what a sweep writes first
    assert "tracking" not in yaml.safe_load((tmp_path / "off" / "spec.yaml").read_text())  # as before
    on = parse_spec({**GOOD, "tracking": {"tensorboard": True, "wandb": {"project": "p"}}})
    assert on.tracking.any() and on.tracking.wandb.mode == "offline"  # offline unless asked
    (tmp_path / "on").mkdir()
    write_run(on, tmp_path / "on", {})
    saved = yaml.safe_load((tmp_path / "on" / "spec.yaml").read_text())
    assert saved["tracking"] == {"mlflow": None, "tensorboard": True, "wandb": {"project": "p", "mode": "offline"}}
