"""Experiment tracking (issue 19, section 1): real sweeps logging into a real MLflow store
(SQLite backend), TensorBoard event files read back with TensorBoard's own EventAccumulator,
and W&B offline runs; every logged number must equal the results table's."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_sweep import ray_local, small_spec  # noqa: F401  (fixture)

from scaling.records import read_results
from scaling.tracking import TB_DIR, TrackingWarning, run_name

pytestmark = pytest.mark.slow

METRICS = ("val_eval_loss", "test_eval_loss", "val_token_accuracy", "test_token_accuracy", "val_exact_match",
           "test_exact_match", "train_loss")  # fmt: skip


def _spec(name, **over):
    return small_spec(name, axes={"dataset_size": [64], "epochs": [1, 2]}, trials_per_cell=2, **over)


def _by_trial(df):
    """trial_id -> {metric: {epoch: value}} from the results table."""
    out = {}
    for tid, g in df.groupby("trial_id"):
        out[str(tid)] = {m: {int(e): float(v) for e, v in zip(g["epoch"], g[m], strict=True)} for m in METRICS}
    return out


def _mlflow_runs(uri, experiment):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, {r.data.tags["trial_id"]: r for r in runs}


def _check_mlflow(uri, experiment, df, spec):
    client, runs = _mlflow_runs(uri, experiment)
    table = _by_trial(df)
    assert len(runs) == len(table) == df["trial_id"].nunique()  # one run per trial
    for tid, want in table.items():
        run = runs[tid]
        first = df[df.trial_id == tid].iloc[0]
        assert run.data.tags["cell"] == first["cell"] and run.data.tags["study"] == spec.name
        assert run.data.params["learning_rate"] == str(first["learning_rate"])
        assert run.data.params["dataset_size"] == str(first["dataset_size"])
        assert float(run.data.params["learning_rate"]) == first["learning_rate"]
        for m, per_epoch in want.items():
            got = {h.step: h.value for h in client.get_metric_history(run.info.run_id, m)}
            assert got == per_epoch, (tid, m, got, per_epoch)  # exact: float64 both sides
    return runs


def _tb_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path))
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def _check_tensorboard(run_dir, df):
    table = _by_trial(df)
    dirs = sorted(p for p in (run_dir / TB_DIR).iterdir() if p.is_dir())
    assert len(dirs) == len(table)  # one event-file folder per trial
    for tid, want in table.items():
        got = _tb_scalars(run_dir / TB_DIR / run_name(tid))
        for m, per_epoch in want.items():
            # TensorBoard scalars are float32: equal to the table's value rounded to float32
            assert got[m] == {e: float(np.float32(v)) for e, v in per_epoch.items()}, (tid, m)


def test_mlflow_tensorboard_wandb_equal_the_table(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec("tracked", tracking={"mlflow": {"tracking_uri": uri, "experiment": "exp1"}, "tensorboard": True,
                                      "wandb": {"project": "scaling-test", "mode": "offline"}})  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 4, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    assert df["trial_id"].nunique() == 4 and len(df) == 2 * (1 + 2)
    _check_mlflow(uri, "exp1", df, spec)
    _check_tensorboard(res.run_dir, df)

    # W&B offline: one run folder per trial, named after it, holding every metric's value as W&B's
    # JSON (the exact repr of the float) in its .wandb file
    files = sorted(res.run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 4
    blobs = {f: f.read_bytes() for f in files}
    for tid, want in _by_trial(df).items():
        (blob,) = [b for b in blobs.values() if run_name(tid).encode() in b]
        for m, per_epoch in want.items():
            assert m.encode() in blob
            for v in per_epoch.values():
                assert json.dumps(v).encode() in blob, (tid, m, v)

    # a resume that runs nothing logs nothing twice
    run_sweep(spec, out=tmp_path / "run")
    _, runs = _mlflow_runs(uri, "exp1")
    assert len(runs) == 4


def test_packed_members_get_their_own_runs(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec("packedtrack", packing={"adapters_per_worker": 2},
                 tracking={"mlflow": {"tracking_uri": uri}, "tensorboard": True})  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 4, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    assert set(df["pack_size"]) == {2}  # the members did train as packs
    runs = _check_mlflow(uri, "packedtrack", df, spec)  # experiment defaults to the study name
    assert {r.data.params["pack_size"] for r in runs.values()} == {"2"}
    _check_tensorboard(res.run_dir, df)


def test_a_failing_tracker_loses_no_row_and_no_password(ray_local, tmp_path, monkeypatch, capfd):  # noqa: F811
    from scaling.sweep import run_sweep

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("TRACK_PW", "s3cretPW")
    # nothing listens on port 9: every MLflow call fails; the password comes from the environment
    spec = _spec("brokentrack", tracking={"mlflow": {"tracking_uri": "http://alice:${TRACK_PW}@127.0.0.1:9"},
                                          "tensorboard": True})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 4, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    assert df["trial_id"].nunique() == 4 and len(df) == 6  # every row recorded
    _check_tensorboard(res.run_dir, df)  # the other tracker still logged every trial
    ours = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]  # warned once
    msg = str(ours[0].message)
    assert "tracking.mlflow" in msg and "alice:***@127.0.0.1:9" in msg
    out, err = capfd.readouterr()
    for text in (msg, out, err, (res.run_dir / "spec.yaml").read_text()):
        assert "s3cretPW" not in text
