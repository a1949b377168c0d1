"""`scaling status` (issue 19, section 3): read-only, no lock, from the Optuna storage and the
table; tested on a run with a RUNNING trial planted in its real storage, then on the same run
finished by a resume (which re-runs the planted trial)."""

from __future__ import annotations

import json
import statistics

import optuna
import pytest
from test_sweep import ray_local, small_spec  # noqa: F401  (fixture)
from typer.testing import CliRunner

from analysis.table import trial_summary
from scaling.cli import app
from scaling.records import RunLock, read_results
from scaling.status import StatusError, run_status

pytestmark = pytest.mark.slow


def _snapshot(run):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def _status(run):
    """Status through the CLI (--json), while the run's lock is held as a live sweep holds it;
    it must neither block on the lock nor change a file."""
    with RunLock(run):  # (taking it writes the lock file's pid: snapshot after)
        before = _snapshot(run)
        r = CliRunner().invoke(app, ["status", str(run), "--json"])
        text = CliRunner().invoke(app, ["status", str(run)])
        assert _snapshot(run) == before  # wrote nothing
    assert r.exit_code == 0, r.output
    assert text.exit_code == 0, text.output
    return json.loads(r.output), text.output


def _best_per_cell(df):
    s = trial_summary(df, value="val_eval_loss")
    ok = s[s.status == "ok"]
    return {c: float(g["value"].min()) for c, g in ok.groupby("cell")}


def test_status_with_a_running_trial_then_finished(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import cell_study_name, run_sweep

    spec = small_spec("status", axes={"dataset_size": [64], "epochs": [1, 2]}, trials_per_cell=2)
    run = tmp_path / "run"
    res = run_sweep(spec, out=run, max_trials=3)
    assert res.counts == {"ok": 3, "failed": 0, "pruned": 0}
    df = read_results(run)
    per_cell = df.groupby("cell")["trial_id"].nunique().to_dict()
    (partial,) = [c for c in spec.cells() if per_cell.get(c.key, 0) == 1]
    (full,) = [c for c in spec.cells() if per_cell.get(c.key, 0) == 2]

    # plant what a live sweep has in the storage: a RUNNING trial that reported epoch 1
    study = optuna.load_study(study_name=cell_study_name(spec, partial), storage=spec.optuna_url(run))
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
    trial.report(0.75, step=1)

    st, text = _status(run)
    assert st["cells"] == {"done": 1, "running": 1, "waiting": 0}
    assert st["trials"] == {"ok": 3, "failed": 0, "pruned": 0}
    assert st["trials_left"] == 1
    assert {c["cell"]: c["state"] for c in st["per_cell"]} == {full.key: "done", partial.key: "running"}
    assert {c["cell"]: c["best"]["val_eval_loss"] for c in st["per_cell"]} == _best_per_cell(df)
    (live,) = st["running"]
    assert live["trial_id"] == f"{cell_study_name(spec, partial)}#{trial.number}"
    assert (live["epoch"], live["epochs"], live["val_eval_loss"]) == (1, partial.epochs, 0.75)
    assert live["learning_rate"] == pytest.approx(trial.params["learning_rate"], rel=0, abs=0)
    walls = trial_summary(df)["pack_wall_seconds"]
    assert st["eta_seconds"] == pytest.approx(statistics.median(walls) * 1 / 1)
    assert "rough" in st["eta_note"]
    assert "1 done, 1 running, 0 waiting" in text and f"{live['trial_id']}" in text and "ETA ~" in text

    # the resume re-runs the planted trial (a dead driver's leftover); then the run is finished
    res = run_sweep(spec, out=run)
    assert res.counts == {"ok": 1, "failed": 0, "pruned": 0}
    df = read_results(run)
    st, text = _status(run)
    assert st["cells"] == {"done": 2, "running": 0, "waiting": 0}
    assert st["trials"] == {"ok": 4, "failed": 0, "pruned": 0}
    assert st["running"] == [] and st["trials_left"] == 0 and st["eta_seconds"] is None
    assert {c["cell"]: c["best"]["val_eval_loss"] for c in st["per_cell"]} == _best_per_cell(df)
    assert {c["cell"]: c["finished"] for c in st["per_cell"]} == {full.key: 2, partial.key: 2}


def test_status_of_a_new_or_missing_run(tmp_path):
    from scaling.run_record import new_uid, write_run

    with pytest.raises(StatusError, match="spec.yaml: file does not exist"):
        run_status(tmp_path)
    r = CliRunner().invoke(app, ["status", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "must be a run directory" in r.output
    spec = small_spec("fresh")
    (tmp_path / "fresh").mkdir()
    write_run(spec, tmp_path / "fresh", {"study_uid": new_uid()})  # what a sweep writes first: spec.yaml
    before = _snapshot(tmp_path / "fresh")
    st = run_status(tmp_path / "fresh")
    assert _snapshot(tmp_path / "fresh") == before  # no optuna.db created
    assert st["cells"] == {"done": 0, "running": 0, "waiting": 4} and st["optuna"] is None
    assert st["trials_left"] == 8 and st["eta_seconds"] is None


def test_the_sweep_progress_moves_per_epoch_and_shows_running_trials():
    import io

    from rich.console import Console

    from scaling.cli_progress import SweepProgress

    bar = SweepProgress(Console(file=io.StringIO()), "p")
    bar.on_start(2, 2)
    task = bar.bar.tasks[0]
    for epoch in (1, 2):  # a 4-epoch trial: each epoch is a quarter of it
        bar.on_epoch({"cell": "D=64,E=4,r=8", "optuna_trial": 0, "learning_rate": 1e-3, "epoch": epoch, "epochs": 4})
    bar.on_epoch({"cell": "D=64,E=1,r=8", "optuna_trial": 0, "learning_rate": 2e-3, "epoch": 1, "epochs": 1})
    assert task.completed == 1.5
    assert task.fields["live"] == "| running: D=64,E=4,r=8 lr=1.00e-03 ep 2/4; D=64,E=1,r=8 lr=2.00e-03 ep 1/1"
    bar.on_done("pruned", {"cell": "D=64,E=4,r=8", "optuna_trial": 0, "learning_rate": 1e-3})  # stopped early
    assert task.completed == 2.0 and task.fields["live"] == "| running: D=64,E=1,r=8 lr=2.00e-03 ep 1/1"
    bar.on_done("ok", {"cell": "D=64,E=1,r=8", "optuna_trial": 0, "learning_rate": 2e-3})
    assert task.completed == 2.0 and task.total == 2 and task.fields["live"] == ""
    bar.stop()


def test_status_names_the_rows_a_stopped_sweep_spooled(tmp_path):
    """Rows a stopped sweep could not append (records.spool_rows) are not in the table yet: status
    counts them and names the spool, and says the next sweep appends them; it writes nothing."""
    from scaling.records import PENDING_FILE, append_rows, spool_rows
    from scaling.run_record import new_uid, write_run

    run = tmp_path / "run"
    run.mkdir()
    write_run(small_spec("spooled"), run, {"study_uid": new_uid()})
    row = {"study": "spooled", "trial_id": "t", "status": "ok", "phase": "search", "learning_rate": 0.01,
           "dataset_size": 64, "epochs": 1, "lora_r": 8, "seed": 0}  # fmt: skip
    append_rows(run, [{**row, "epoch": 1}])
    assert run_status(run)["spooled_rows"] == 0 and "spool" not in run_status(run)
    spool_rows(run, [{**row, "trial_id": "u", "epoch": 1}, {**row, "trial_id": "u", "epoch": 2}])
    st = run_status(run)
    assert st["spooled_rows"] == 2 and st["spool"] == str(run / PENDING_FILE) and st["trials"]["ok"] == 1
    text = CliRunner().invoke(app, ["status", str(run)])
    assert text.exit_code == 0, text.output
    said = " ".join(text.output.split())  # as rich wraps it
    assert "2 rows of finished trials wait in" in said and "appends them first" in said
    (run / PENDING_FILE).write_bytes(b"not parquet")
    bad = CliRunner().invoke(app, ["status", str(run)])
    assert bad.exit_code == 2 and f"{PENDING_FILE}: cannot read" in " ".join(bad.output.split())


def test_a_cell_that_takes_extra_lr_trials_is_waiting_until_bracketed_then_done(tmp_path):
    """sampler.extra_trials: a cell whose planned LR trials did not bracket its best is not done
    (the searcher will ask for one more); once the extra trial brackets it, it is done."""
    from scaling.run_record import new_uid, write_run
    from scaling.sweep import cell_study_name

    spec = small_spec("extra", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=2,
                      sampler={"extra_trials": 2})  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    write_run(spec, run, {"study_uid": new_uid()})
    (cell,) = spec.cells()
    study = optuna.create_study(study_name=cell_study_name(spec, cell), storage=spec.optuna_url(run))
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)}

    def tell(lr: float, loss: float) -> None:
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr}, distributions=dist, value=loss))

    tell(1e-3, 2.0)
    tell(3e-3, 1.0)  # the best is the highest LR tried, inside the range: not bracketed
    st = run_status(run)
    (c,) = st["per_cell"]
    assert (c["state"], c["finished"], c["planned"]) == ("waiting", 2, 3)
    assert st["cells"] == {"done": 0, "running": 0, "waiting": 1} and st["trials_left"] == 1
    tell(1e-2, 1.5)  # the extra trial brackets it
    st = run_status(run)
    (c,) = st["per_cell"]
    assert (c["state"], c["finished"], c["planned"]) == ("done", 3, 3)
    assert st["cells"] == {"done": 1, "running": 0, "waiting": 0} and st["trials_left"] == 0
