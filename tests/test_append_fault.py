"""An append to the results table that fails (issue 17, "nothing lost"): a real fault on disk.

The fault: the run directory's ``results`` (the folder of the table's part files) replaced by a
plain file, as a damaged or half-restored run directory would have it. Every append then fails
(records_io._scan refuses the table), as root too (where a read-only chmod stops nothing).

Before, the recorder's exception reached Ray Tune, which had already told Optuna COMPLETE and
took it for the trial's failure: a 'failed' row without metrics, counted as recorded and never
run again. Now an append is retried with backoff (a fault that clears costs nothing), and one
that keeps failing stops the sweep (exit 2) with the trial's rows kept in the run directory's
spool, which the next sweep folds into the table before it resumes.
"""

from __future__ import annotations

import logging
import threading

import pandas as pd
import pytest
import yaml
from conftest import live_trials
from test_reliability import check_complete, check_optuna, optuna_trials, spec_dict, wait_for
from test_sweep import ray_local  # noqa: F401  (fixture)

from scaling.records import (
    PENDING_FILE,
    TableState,
    append_rows,
    fold_pending,
    open_table,
    read_pending,
    read_results,
    spool_rows,
)
from scaling.records_io import RecordsError
from scaling.spec import parse_spec


def _row(trial: str, epoch: int, **kw):
    return {"study": "s", "trial_id": trial, "epoch": epoch, "status": "ok", "val_eval_loss": 1.0 / epoch,
            "learning_rate": 0.01, "dataset_size": 64, "epochs": 2, "lora_r": 8, "seed": 0, "phase": "search",
            **kw}  # fmt: skip


def test_spooled_rows_stay_while_the_table_refuses_them_then_fold_in_once(tmp_path):
    append_rows(tmp_path, [_row("a", 1), _row("a", 2)])
    kept = [_row("b", 1, recorded_at="t1"), _row("b", 2, val_eval_loss=float("nan"), recorded_at="t1")]
    assert spool_rows(tmp_path, kept) == tmp_path / PENDING_FILE
    (tmp_path / "results").write_text("not the parts folder\n")  # the table still cannot take them
    with pytest.raises(RecordsError, match=rf"{PENDING_FILE}: holds 2 rows of finished trials .*\(is a file\)"):
        fold_pending(tmp_path)
    assert len(read_pending(tmp_path)) == 2  # kept until the table takes them
    (tmp_path / "results").unlink()
    assert fold_pending(tmp_path) == 2 and not (tmp_path / PENDING_FILE).exists()
    assert fold_pending(tmp_path) == 0
    df = read_results(tmp_path)
    assert df["trial_id"].tolist() == ["a", "a", "b", "b"] and df["recorded_at"].tolist()[2:] == ["t1", "t1"]
    assert df["val_eval_loss"].isna().tolist() == [False, False, False, True]
    # a spool whose rows reached the table already (killed between the append and the unlink)
    spool_rows(tmp_path, kept)
    assert fold_pending(tmp_path) == 2 and len(read_results(tmp_path)) == 4
    (tmp_path / PENDING_FILE).write_bytes(b"not parquet")
    with pytest.raises(RecordsError, match=rf"{PENDING_FILE}: cannot read"):
        fold_pending(tmp_path)


def test_open_table_counts_spooled_rows_once_and_says_how_each_trial_ended(tmp_path):
    assert open_table(tmp_path).rows == 0 and not any(tmp_path.iterdir())  # a new run directory: nothing written
    append_rows(tmp_path, [_row("a", 1), _row("a", 2, status="pruned")])
    # "a"'s last row again (a replay: killed between the append and the unlink), then "b"'s two rows
    spool_rows(tmp_path, [_row("a", 2, status="pruned"), _row("b", 2, val_eval_loss=0.3), _row("b", 1)])
    state = open_table(tmp_path)
    assert (state.rows, state.folded, state.recorded) == (4, 3, {"a", "b"})
    assert state.outcomes["a"]["status"] == "pruned" and state.outcomes["b"]["epoch"] == 2
    assert state.outcomes["b"]["val_eval_loss"] == 0.3  # the last epoch's row, whatever the spool's order
    assert not (tmp_path / PENDING_FILE).exists() and len(read_results(tmp_path)) == 4  # what it counted
    assert open_table(tmp_path) == TableState(4, state.outcomes, 0)  # nothing more to fold


def _spec(name: str, trials: int):
    return spec_dict(name, axes={"dataset_size": [64], "epochs": [2]}, trials_per_cell=trials,
                     resources={"max_failures": 0, "max_concurrent": 1},
                     eval={"validation_size": 32, "test_size": 32})  # fmt: skip


class _Failures(logging.Handler):
    """Counts the recorder's failed-append warnings; ``then`` runs at the first (the disk recovers)."""

    def __init__(self, then=None):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []
        self.then = then

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "appending" in msg and "failed" in msg:
            self.seen.append(msg)
            if self.then is not None and len(self.seen) == 1:
                self.then()


def _recorder_log(handler: logging.Handler):
    log = logging.getLogger("scaling.sweep.recorder")
    log.addHandler(handler)
    return log


class _Sweep(threading.Thread):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.box = fn, {}

    def run(self) -> None:
        try:
            self.box["res"] = self.fn()
        except BaseException as err:  # surfaced by the assertions
            self.box["err"] = err


@pytest.mark.slow
def test_an_append_that_fails_once_is_retried_and_every_row_is_recorded(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = parse_spec(_spec("blip", trials=3))
    run = tmp_path / "run"
    fault = run / "results"
    handler = _Failures(then=fault.unlink)  # the fault clears before the second try
    log = _recorder_log(handler)
    sweep = _Sweep(lambda: run_sweep(spec, out=run))
    sweep.start()
    try:
        # mid-sweep, before the first trial's rows are appended: every append fails from now on
        wait_for(lambda: live_trials(run / "optuna.db"), timeout=240, what="the first trial", every=0.05)
        assert not (run / "results.parquet").exists(), "a trial was recorded before the fault: the test proves nothing"
        fault.write_text("not the parts folder\n")
    finally:
        sweep.join(timeout=600)
        log.removeHandler(handler)
    assert "err" not in sweep.box, sweep.box.get("err")
    assert len(handler.seen) == 1 and "try 1 of 4" in handler.seen[0] and "is a file" in handler.seen[0], handler.seen
    res = sweep.box["res"]
    assert res.counts == {"ok": 3, "failed": 0, "pruned": 0}
    df = check_complete(run, spec)
    check_optuna(res.optuna_url, spec, df)
    assert len(df) == 3 * 2 and set(df["status"]) == {"ok"} and df["val_eval_loss"].notna().all()
    assert not (run / PENDING_FILE).exists()
    print(f"\nan append failed once and was retried: {len(df)} rows, 0 failed, 0 lost")


@pytest.mark.slow
def test_an_append_that_keeps_failing_stops_the_sweep_and_the_resume_records_every_row(ray_local, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from scaling.cli import app
    from scaling.sweep import run_sweep

    data = _spec("broken", trials=4)
    spec = parse_spec(data)
    spec_file = tmp_path / "broken.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    fault = run / "results"
    placed: list[str] = []

    def break_the_disk():
        # once the first trial is in the table (results.parquet), and before the second's append
        wait_for(lambda: (run / "results.parquet").exists(), timeout=240, what="the first trial's rows", every=0.02)
        try:
            with open(fault, "x") as fh:  # fails if the second append made the folder already
                fh.write("not the parts folder\n")
            placed.append("yes")
        except OSError as err:
            placed.append(f"too late: {err}")

    handler = _Failures()
    log = _recorder_log(handler)
    breaker = threading.Thread(target=break_the_disk)
    breaker.start()
    try:
        r = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(run)])
    finally:
        breaker.join(timeout=300)
        log.removeHandler(handler)
    assert placed == ["yes"], placed
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out
    assert "the results table would not take the rows of a finished trial after 4 tries" in out, out
    assert f"are kept in {run / PENDING_FILE}" in out and str(run / "results.parquet") in out, out
    assert "is a file" in out and "Traceback" not in out, out
    assert len(handler.seen) == 3  # tries 1-3 warned, the 4th gave up
    # before the fix: the first trial in the table, the second's rows in the spool, no failed row anywhere
    before = pd.read_parquet(run / "results.parquet")  # the table's one file (read_results refuses the fault)
    kept = read_pending(run)
    assert before["trial_id"].nunique() == 1 and len(before) == 2 and set(before["status"]) == {"ok"}
    assert len(kept) == 2 and {r["status"] for r in kept} == {"ok"} and len({r["trial_id"] for r in kept}) == 1
    assert all(r["val_eval_loss"] is not None for r in kept)
    states = [t.state.name for ts in optuna_trials(f"sqlite:///{run / 'optuna.db'}", spec).values() for t in ts]
    assert states.count("COMPLETE") == 2 and "FAIL" not in states, states
    # the disk is fixed; the same sweep again: the spooled rows first, then the rest of the plan
    fault.unlink()
    res = run_sweep(spec, out=run)
    assert res.trials_run == 2 and res.orphans_resumed == 0  # the spooled trial is not run again
    df = check_complete(run, spec)
    check_optuna(res.optuna_url, spec, df)
    assert len(df) == 4 * 2 and set(df["status"]) == {"ok"} and df["val_eval_loss"].notna().all()
    spooled = df[df.trial_id == kept[0]["trial_id"]].sort_values("epoch")
    assert spooled["recorded_at"].tolist() == [r["recorded_at"] for r in kept]
    assert spooled["val_eval_loss"].tolist() == [r["val_eval_loss"] for r in kept]
    assert not (run / PENDING_FILE).exists()
    sweeps = yaml.safe_load((run / "spec.yaml").read_text())["run"]["sweeps"]
    assert len(sweeps) == 2 and "finished_at" not in sweeps[0] and sweeps[1]["trials_run"] == 2
    print(f"\nappends failing for good: the sweep stopped (exit 2) with {len(before)} rows in the table and "
          f"{len(kept)} in {PENDING_FILE}; after the fix the resume recorded {len(df)} rows, 0 lost, 0 duplicated")
