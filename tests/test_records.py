"""The results table: atomic appends, no duplicates on replay, clear errors, one writer."""

from __future__ import annotations

import contextlib
import multiprocessing as mp

import pandas as pd
import pytest

from analysis.table import COLUMNS
from scaling.records import RunLock, RunLocked, append_rows, read_results, read_run
from scaling.records_io import RecordsError
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


@contextlib.contextmanager
def _held_by_another_process(path):
    """The run directory's RunLock, held by a real second process for the block's duration."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(path, q))
    p.start()
    try:
        assert q.get(timeout=30) == "held"
        yield
    finally:
        q.put("release")
        p.join(30)


def test_run_lock_refuses_a_second_sweep(tmp_path):
    with _held_by_another_process(tmp_path):
        with pytest.raises(RunLocked, match="another sweep"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # free again once the holder is gone
        pass


# ---- part files: O(new rows) appends, row key, collisions, crashes, old runs, other readers -----


def _trial(i: int, epochs: int = 4, **kw) -> list[dict]:
    """Trial i's rows (epochs 1..epochs), with a config of its own."""
    cfg = {"learning_rate": 1e-4 * (i + 1), "dataset_size": 100 * (1 + i % 3), "epochs": epochs, "lora_r": 8,
           "seed": 0, "phase": "search", **kw}  # fmt: skip
    return [_row(f"t#{i}", e, val_eval_loss=i + 1 / e, **cfg) for e in range(1, epochs + 1)]


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_row_key_is_trial_epoch_phase(tmp_path):
    from scaling.records_io import ROW_CONFIG, ROW_KEY

    assert ROW_KEY == ("trial_id", "epoch", "phase")
    assert ROW_CONFIG == ("learning_rate", "dataset_size", "epochs", "lora_r", "seed")
    search, repeat = _row("a", 1, phase="search"), _row("a", 1, phase="repeat")
    assert append_rows(tmp_path, [search, repeat]) == 2  # same (trial_id, epoch), another phase: a row of its own
    assert append_rows(tmp_path, [repeat]) == 2
    assert sorted(read_results(tmp_path)["phase"]) == ["repeat", "search"]


def test_a_key_recorded_with_another_config_raises_and_writes_nothing(tmp_path):
    append_rows(tmp_path, _trial(0))
    append_rows(tmp_path, _trial(1))  # a part file beside results.parquet
    before = _files(tmp_path)
    other = _trial(1, learning_rate=5e-3)  # the Optuna numbers started again: same trial_id, new trial
    with pytest.raises(RecordsError, match=r"'trial_id': 't#1', 'epoch': 1, 'phase': 'search'.*learning_rate=0\.0002 "
                                           r"vs 0\.005.*two trials share one trial_id; nothing was written"):
        append_rows(tmp_path, [*_trial(2), *other])  # the good rows of the batch are not written either
    with pytest.raises(RecordsError, match=r"seed=0 vs 1"):
        append_rows(tmp_path, [_trial(3)[0], {**_trial(3)[0], "seed": 1}])  # a collision inside one batch
    assert _files(tmp_path) == before
    assert len(read_results(tmp_path)) == 8


def test_identical_replay_is_dropped(tmp_path):
    for i in range(20):
        append_rows(tmp_path, _trial(i))
    before = _files(tmp_path)
    for i in (0, 7, 19):  # a trial replayed after a crash, its metrics as it reported them again or not
        assert append_rows(tmp_path, [{**r, "val_eval_loss": 9.0} for r in _trial(i)]) == 80
    assert _files(tmp_path) == before


def test_many_appends_read_as_one_table_and_compact_into_results_parquet(tmp_path):
    from scaling.records import compact
    from scaling.records_io import result_files

    n = 300  # 16 parts merge into one, 16 of those into one: results.parquet + 256 + 2x16 + 11 single parts
    for i in range(n):
        assert append_rows(tmp_path, _trial(i)) == 4 * (i + 1)
    names = [p.relative_to(tmp_path).as_posix() for p in result_files(tmp_path)]
    assert names[0] == "results.parquet" and len(names) == 1 + 1 + 2 + 11, names
    assert names[1] == "results/000000002-000000257.parquet" and names[-1] == "results/000000300-000000300.parquet"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(n.split("/")[1] for n in names[1:])
    df = read_results(tmp_path)
    assert list(df.columns) == list(COLUMNS) and len(df) == 4 * n
    assert df["trial_id"].tolist() == [f"t#{i}" for i in range(n) for _ in range(4)]
    assert df["epoch"].tolist() == [1, 2, 3, 4] * n
    assert df["val_eval_loss"].tolist() == [i + 1 / e for i in range(n) for e in range(1, 5)]
    assert str(df["epoch"].dtype) == "Int64" and str(df["trial_id"].dtype) == "string"
    pd.testing.assert_frame_equal(read_results(tmp_path / "results.parquet"), df)  # the file names the run
    assert compact(tmp_path) == 4 * n
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]  # results/ is gone
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results.parquet"), df)  # a plain file again
    assert append_rows(tmp_path, _trial(n)) == 4 * (n + 1)  # resumes after a compaction
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["000000301-000000301.parquet"]


def test_files_left_by_a_killed_merge_or_compaction_are_read_once_and_removed(tmp_path):
    import shutil

    from scaling.records import compact

    for i in range(16):  # results.parquet + 15 parts (2..16)
        append_rows(tmp_path, _trial(i))
    snap = tmp_path.parent / "snap"
    shutil.copytree(tmp_path / "results", snap)
    append_rows(tmp_path, _trial(16))  # part 17: the 16 parts merge into 2-17
    shutil.copytree(snap, tmp_path / "results", dirs_exist_ok=True)  # as if killed before the inputs went
    assert len(list((tmp_path / "results").iterdir())) == 16
    df = read_results(tmp_path)
    assert df["trial_id"].tolist() == [f"t#{i}" for i in range(17) for _ in range(4)]
    compact(tmp_path)
    shutil.copytree(snap, tmp_path / "results")  # killed after results.parquet was replaced
    assert read_results(tmp_path)["trial_id"].tolist() == df["trial_id"].tolist()
    (tmp_path / "results" / "000000099-000000099.parquet.tmp").write_bytes(b"half a file")  # killed mid-write
    assert len(read_results(tmp_path)) == 68
    append_rows(tmp_path, _trial(17))  # the next writer clears what was left
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["000000018-000000018.parquet"]
    assert len(read_results(tmp_path)) == 72


_WRITER = """
import sys
from scaling.records import append_rows
start = int(sys.argv[2])
for i in range(start, start + 10_000):
    rows = [{"study": "s", "trial_id": f"t#{i}", "epoch": e, "phase": "search", "status": "ok",
             "learning_rate": 1e-4 * (i + 1), "dataset_size": 100, "epochs": 4, "val_eval_loss": i + 1 / e}
            for e in range(1, 5)]
    append_rows(sys.argv[1], rows)
    print(i, flush=True)
"""


def test_a_writer_killed_mid_append_loses_and_duplicates_nothing(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    acked = -1
    for kill_after in (23, 41, 70):  # merges happen every 16 appends: kills land in writes and merges
        start = max(acked, 0)  # resume from the last acknowledged trial: a replay, then new ones
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(start)], stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
        try:
            for line in child.stdout:
                acked = int(line)
                if acked - start >= kill_after:
                    time.sleep(0.001 * (kill_after % 7))  # somewhere inside the next append
                    os.kill(child.pid, signal.SIGKILL)
                    break
            for line in child.stdout:  # appends it acknowledged before it died
                acked = int(line)
        finally:
            child.kill()
            child.wait(30)
        assert child.returncode == -signal.SIGKILL
        df = read_results(run)
        present = sorted(set(df["trial_id"]), key=lambda t: int(t[2:]))
        top = int(present[-1][2:])
        assert acked <= top <= acked + 1  # every acknowledged append is there; the one in flight may be
        assert present == [f"t#{i}" for i in range(top + 1)]  # no trial lost
        assert df.groupby("trial_id").size().eq(4).all()  # no torn append, no duplicated row
        assert not df.duplicated(["trial_id", "epoch", "phase"]).any()
    assert append_rows(run, []) == 4 * (top + 1)  # a writer opens what the killed one left
    assert not list(run.rglob("*.tmp"))


def test_an_old_run_opens_and_its_first_append_migrates_it(tmp_path):
    import pyarrow.parquet as pq

    old = pd.DataFrame({  # results.parquet as written before parts, phase, pack_size or worker_pid existed
        "study": ["s"] * 6, "trial_id": [f"t#{i // 2}" for i in range(6)], "epoch": [1, 2] * 3,
        "learning_rate": [1e-3, 1e-3, 2e-3, 2e-3, 3e-3, 3e-3], "val_eval_loss": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        "status": ["ok"] * 6, "retired_metric": [1.0] * 6,
    })  # fmt: skip
    old.to_parquet(tmp_path / "results.parquet", index=False)
    before = _files(tmp_path)
    df = read_results(tmp_path)  # opens as it is; reading changes nothing
    assert df["val_eval_loss"].tolist() == old["val_eval_loss"].tolist() and _files(tmp_path) == before
    replay = {"study": "s", "trial_id": "t#2", "epoch": 2, "learning_rate": 3e-3, "status": "ok"}
    assert append_rows(tmp_path, [replay, _row("t#3", 1, learning_rate=4e-3)]) == 7  # the replay is dropped
    meta = pq.ParquetFile(tmp_path / "results.parquet").schema_arrow
    assert set(COLUMNS) <= set(meta.names) and b"scaling.results" in meta.metadata  # migrated in place
    df = read_results(tmp_path)
    assert list(df.columns) == [*COLUMNS, "retired_metric"]
    assert df["trial_id"].tolist() == ["t#0", "t#0", "t#1", "t#1", "t#2", "t#2", "t#3"]
    assert df["val_eval_loss"].tolist() == [*old["val_eval_loss"], 1.0]
    assert df["retired_metric"].tolist()[:6] == [1.0] * 6 and df["phase"].isna().all()


def test_duckdb_reads_the_same_rows_as_pandas(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from scaling.records import compact
    from scaling.records_io import result_files

    for i in range(40):
        append_rows(tmp_path, _trial(i))
    want = read_results(tmp_path)[["trial_id", "epoch", "val_eval_loss"]].values.tolist()
    files = [str(p) for p in result_files(tmp_path)]
    glob = [str(tmp_path / "results.parquet"), str(tmp_path / "results" / "*.parquet")]
    for src in (files, glob):
        got = duckdb.sql(f"SELECT trial_id, epoch, val_eval_loss FROM read_parquet({src}, union_by_name = true)")
        assert sorted(got.fetchall()) == sorted(map(tuple, want))
    compact(tmp_path)
    got = duckdb.sql(f"SELECT trial_id, epoch, val_eval_loss FROM '{tmp_path / 'results.parquet'}'").fetchall()
    assert sorted(got) == sorted(map(tuple, want))


def test_bad_part_file_and_spec_copy_give_one_line_naming_the_file(tmp_path):
    import yaml

    for i in range(3):
        append_rows(tmp_path, _trial(i))
    part = tmp_path / "results" / "000000002-000000002.parquet"
    good = part.read_bytes()
    part.write_bytes(b"PAR1" + b"\x00garbage" * 50)
    for read in (read_results, read_run):
        with pytest.raises(RecordsError, match=rf"^{part}: cannot read the results table: .*magic bytes") as err:
            read(tmp_path)
        assert "\n" not in str(err.value)
    part.write_bytes(good)
    spec = tmp_path / "spec.yaml"
    for content, problem in ((b"name: [unclosed\n", "not valid YAML"), (b"\xff\xfe\x00garbage", "cannot read"),
                             (yaml.safe_dump([1, 2]).encode(), "must be a YAML mapping")):  # fmt: skip
        spec.write_bytes(content)
        for read in (read_results, read_run):
            with pytest.raises(RecordsError, match=rf"^{spec}: .*{problem}") as err:
                read(tmp_path)
            assert "\n" not in str(err.value)
    not_a_dir = tmp_path / "out"
    not_a_dir.write_text("a file given as --out\n")
    from scaling.records import check_run_dir

    with pytest.raises(RecordsError, match=rf"^{not_a_dir}: the run directory is a file"):
        check_run_dir(not_a_dir)
    with pytest.raises(RecordsError, match=rf"^{not_a_dir}: cannot read the results table"):
        read_run(not_a_dir)


def test_a_failed_write_leaves_no_tmp_and_the_table_as_it_was(tmp_path):
    import subprocess

    for i in range(3):
        append_rows(tmp_path, _trial(i))
    before = _files(tmp_path)
    parts = tmp_path / "results"
    subprocess.run(["chattr", "+i", str(parts)], check=True)  # immutable: even root cannot create a file in it
    try:
        with pytest.raises(RecordsError, match=rf"^{parts}/000000004-000000004.parquet: cannot write the results "
                                               "table: PermissionError"):  # fmt: skip
            append_rows(tmp_path, _trial(3))
    finally:
        subprocess.run(["chattr", "-i", str(parts)], check=True)
    assert _files(tmp_path) == before and not list(tmp_path.rglob("*.tmp"))
    assert append_rows(tmp_path, _trial(3)) == 16  # and the next append succeeds


def test_check_run_dir_leaves_a_held_run_to_its_sweep(tmp_path):
    from scaling.records import check_run_dir

    append_rows(tmp_path, _trial(0))
    (tmp_path / "spec.yaml").write_bytes(b"name: [half written")
    with pytest.raises(RecordsError, match="not valid YAML"):
        check_run_dir(tmp_path)
    with _held_by_another_process(tmp_path):
        check_run_dir(tmp_path)  # the holder is mid-write: the sweep asking will be refused by RunLock instead


def test_values_are_coerced_to_the_column_types_or_refused(tmp_path):
    append_rows(tmp_path, [_row("a", 1, dataset_size=300.0, seed="2", learning_rate="1e-3", node=7)])
    df = read_results(tmp_path)
    assert df[["dataset_size", "seed", "learning_rate", "node"]].iloc[0].tolist() == [300, 2, 1e-3, "7"]
    with pytest.raises(RecordsError, match=r"row 0: epochs: must be Int64 \(got 2\.5\)"):
        append_rows(tmp_path, [_row("b", 1, epochs=2.5)])
    assert len(read_results(tmp_path)) == 1


_TOO_BIG = """
import resource, signal, sys
from scaling.records import append_rows
from scaling.records_io import RecordsError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
rows = [{"study": "s", "trial_id": f"big#{i}", "epoch": 1, "status": "ok", "error": "x" * 100 + str(i)}
        for i in range(2000)]
try:
    append_rows(sys.argv[1], rows)
except RecordsError as err:
    print(err)
"""


def test_a_write_that_fails_half_way_removes_its_tmp(tmp_path):
    import os
    import subprocess
    import sys

    for i in range(3):
        append_rows(tmp_path, _trial(i))
    before = _files(tmp_path)
    out = subprocess.run([sys.executable, "-c", _TOO_BIG, str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path}/results/000000004-000000004.parquet: cannot write the results table" in out.stdout
    assert "File too large" in out.stdout, out.stdout
    assert _files(tmp_path) == before and not list(tmp_path.rglob("*.tmp"))


def test_a_key_recorded_by_another_study_raises_even_with_the_same_config(tmp_path):
    """Another Optuna storage numbers its trials from 0 again: its trial #0 has the run's trial #0's
    id and, at the anchor LR and the same seed, its config; the study_uid tells them apart."""
    mine = [{**r, "study_uid": "a" * 32} for r in _trial(0)]
    append_rows(tmp_path, mine)
    before = _files(tmp_path)
    theirs = [{**r, "study_uid": "b" * 32} for r in _trial(0)]
    with pytest.raises(RecordsError, match=r"'trial_id': 't#0'.*already recorded by study study_uid='a{32}'; the new "
                                           r"row comes from study_uid='b{32}'.*nothing was written"):
        append_rows(tmp_path, theirs)
    assert _files(tmp_path) == before
    assert append_rows(tmp_path, mine) == 4  # the same study's replay is still dropped
    assert append_rows(tmp_path, _trial(0)) == 4  # a row without a uid (an old writer's) matches any
    assert read_results(tmp_path)["study_uid"].tolist() == ["a" * 32] * 4


def test_each_sweep_records_its_trial_budget_and_analysis_and_status_plan_by_the_last(tmp_path):
    """A resume may raise trials_per_cell, sampler.extra_trials and the budget: spec.yaml's sweep
    entries record what each sweep ran with, and the report's planned trials (read_run's facts)
    and `scaling status` take the last sweep's, not the first spec copy's."""
    import yaml

    from scaling.run_record import _check_same_study, start_sweep
    from scaling.status import run_status

    base = {"name": "s", "axes": {"dataset_size": [64, 128], "epochs": [1]},
            "learning_rate": {"low": 1e-3, "high": 1e-2}, "trials_per_cell": 2, "sampler": {"extra_trials": 0}}  # fmt: skip
    run_dir = tmp_path / "cells"
    run_dir.mkdir()
    run = start_sweep(parse_spec(base), run_dir, {}, uid="u", optuna="sqlite://", max_trials=None, trials_recorded=0)
    raised = parse_spec({**base, "trials_per_cell": 5, "sampler": {"extra_trials": 2}})
    assert _check_same_study(raised, run_dir) is not None  # a resume may raise them
    start_sweep(raised, run_dir, run, uid="u", optuna="sqlite://", max_trials=None, trials_recorded=2)
    saved = yaml.safe_load((run_dir / "spec.yaml").read_text())
    sweeps = saved["run"]["sweeps"]
    assert [(s["trials_per_cell"], s["extra_trials"]) for s in sweeps] == [(2, 0), (5, 2)]
    assert all("budget" not in s for s in sweeps)  # cells mode has none
    assert saved["trials_per_cell"] == 2  # the spec copy stays the first sweep's
    append_rows(run_dir, [_row("a", 1)])
    r = read_run(run_dir)
    assert r.facts["planned_trials"] == 2 * 5
    assert r.spec["trials_per_cell"] == 5 and r.spec["sampler"]["extra_trials"] == 2 and "run" in r.spec
    assert [c["planned"] for c in run_status(run_dir)["per_cell"]] == [5, 5]
    # sampler.mode optimize: the budget a resume raised is the one the run now has
    opt = {"name": "o", "axes": {"dataset_size": [64, 128], "epochs": [1]}, "learning_rate": {"low": 1e-3, "high": 1e-2},
           "sampler": {"mode": "optimize"}, "budget": {"flops": 1e12}}  # fmt: skip
    run_dir = tmp_path / "optimize"
    run_dir.mkdir()
    run = start_sweep(parse_spec(opt), run_dir, {}, uid="v", optuna="sqlite://", max_trials=None, trials_recorded=0)
    start_sweep(parse_spec({**opt, "budget": {"flops": 4e12}}), run_dir, run, uid="v", optuna="sqlite://",
                max_trials=None, trials_recorded=1)  # fmt: skip
    sweeps = yaml.safe_load((run_dir / "spec.yaml").read_text())["run"]["sweeps"]
    assert [s["budget"] for s in sweeps] == [{"flops": 1e12, "max_trial_share": 0.1}, {"flops": 4e12, "max_trial_share": 0.1}]
    append_rows(run_dir, [_row("b", 1)])
    assert read_run(run_dir).spec["budget"]["flops"] == 4e12
    assert run_status(run_dir)["budget"]["total"] == 4e12
