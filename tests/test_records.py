"""The results table: atomic appends, no duplicates on replay, clear errors, one writer."""

from __future__ import annotations

import multiprocessing as mp

import pandas as pd
import pytest

from analysis.table import COLUMNS
from scaling.records import RecordsError, RunLock, RunLocked, append_rows, read_results, read_run
from scaling.spec import parse_spec


def _row(trial: str, epoch: int, **kw):
    return {"study": "s", "trial_id": trial, "epoch": epoch, "status": "ok", "val_eval_loss": 1.0 / epoch, **kw}


def test_append_read_schema_and_no_duplicates(tmp_path):
    assert append_rows(tmp_path, [_row("a", 1), _row("a", 2)]) == 2
    assert append_rows(tmp_path, [_row("b", 1, status="failed", error="boom")]) == 3
    # replaying trial a (e.g. after a crash) adds nothing
    assert append_rows(tmp_path, [_row("a", 1), _row("a", 2)]) == 3
    df = read_results(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert df.loc[df.trial_id == "b", "error"].item() == "boom"
    assert df["val_eval_loss"].tolist() == [1.0, 0.5, 1.0]
    assert not list(tmp_path.glob("*.tmp"))


def test_read_run_hands_analysis_the_table_and_plain_spec_facts(tmp_path):
    import yaml

    raw = {"name": "s", "axes": {"dataset_size": {"low": 100, "high": 400, "num": 3}, "epochs": [1, 2]},
           "learning_rate": {"low": 1e-3, "high": 1e-2}, "trials_per_cell": 3}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    append_rows(tmp_path, [_row("a", 1), _row("a", 2)])
    run = read_run(tmp_path)
    assert run.spec == raw and run.run_dir == tmp_path and len(run.table) == 2
    assert run.facts == {"dataset_sizes": [100, 200, 400], "epochs": [1, 2], "planned_trials": 18}
    assert run.facts == parse_spec(raw).facts()
    assert run.spec_file == str(tmp_path / "spec.yaml")
    assert run.optuna_url == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}" and run.optuna_exists is False
    # a results file: its folder is the run directory; no spec there leaves the facts empty
    bare = tmp_path / "bare"
    append_rows(bare, [_row("b", 1)])
    run = read_run(bare / "results.parquet")
    assert run.run_dir == bare and run.spec == {} and run.facts == {} and run.spec_file is None


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(RecordsError, match="no results table"):
        read_results(tmp_path)
    (tmp_path / "results.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RecordsError, match="cannot read the results table"):
        read_results(tmp_path)
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(RecordsError, match=r"\['trial_id', 'status'\] are required"):
        read_results(tmp_path)


def _hold(path, q):
    with RunLock(path):
        q.put("held")
        q.get()  # wait until told to release


def test_run_lock_refuses_a_second_sweep(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(tmp_path, q))
    p.start()
    try:
        assert q.get(timeout=30) == "held"
        with pytest.raises(RunLocked, match="another sweep"):
            with RunLock(tmp_path):
                pass
    finally:
        q.put("release")
        p.join(30)
    with RunLock(tmp_path):  # free again once the holder is gone
        pass
