"""The Optuna storage briefly unreachable (issue 17): the searchers' calls ride it out, and an
outage past the bound stops the sweep with every finished trial's rows kept; a resume tells
Optuna what those rows say and re-runs only the trials without rows.

Fast: a SQLite file held by another connection's BEGIN EXCLUSIVE. Slow: a real PostgreSQL
server restarted (and stopped for good) while a sweep's trials run."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from test_postgres import check_optuna_values, ray_local  # noqa: F401  (ray_local: a fixture, a local Ray of 2 CPUs)

from scaling.records import read_results
from scaling.spec import parse_spec
from scaling.sweep._retry import RetryingStorage, StorageDown, is_transient

sys.path.insert(0, str(Path(__file__).parent))


def _locked_sqlite(path: Path) -> tuple[optuna.storages.RDBStorage, sqlite3.Connection]:
    url = f"sqlite:///{path}"
    inner = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}})
    return inner, sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def test_a_locked_sqlite_file_is_waited_out_and_an_outage_past_the_bound_raises(tmp_path):
    inner, other = _locked_sqlite(tmp_path / "o.db")
    storage = RetryingStorage(inner, f"sqlite:///{tmp_path / 'o.db'}", bound=20)
    sid = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    other.execute("BEGIN EXCLUSIVE")
    threading.Timer(1.5, lambda: other.execute("COMMIT")).start()
    t0 = time.monotonic()
    storage.set_study_user_attr(sid, "k", 1)  # waits until the lock is released
    assert 1.4 < time.monotonic() - t0 < 10 and storage.outages == 1
    assert inner.get_study_user_attrs(sid) == {"k": 1}
    # not transient: a duplicate study raises at once
    t0 = time.monotonic()
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    assert time.monotonic() - t0 < 1
    # held past the bound: StorageDown, naming the storage
    short = RetryingStorage(inner, f"sqlite:///{tmp_path / 'o.db'}", bound=0.5)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StorageDown, match="unreachable") as err:
        short.set_study_user_attr(sid, "k", 2)
    assert "o.db" in str(err.value) and "database is locked" in str(err.value)
    other.execute("COMMIT")
    import sqlalchemy.exc as sa

    assert not is_transient(sa.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(sa.ProgrammingError("SELECT", {}, Exception("no such column")))
    assert not is_transient(optuna.exceptions.StorageInternalError("commit"))  # no driver cause: not an outage


def test_the_searcher_never_raises_on_an_outage_and_a_resume_tells_what_the_rows_say(tmp_path):
    from scaling.sweep.optimize import make_searcher

    spec = parse_spec({"name": "o", "axes": {"dataset_size": [64]}, "learning_rate": {"low": 1e-3, "high": 3e-2},
                       "trials_per_cell": 2, "sampler": {"extra_trials": 0}})  # fmt: skip
    inner, other = _locked_sqlite(tmp_path / "o.db")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = make_searcher(spec, RetryingStorage(inner, url, bound=0.5), cells=spec.cells())
    a, b = s.suggest("a"), s.suggest("b")
    other.execute("BEGIN EXCLUSIVE")  # the storage goes away for good
    s.on_trial_complete("a", result={"val_eval_loss": 1.25, "epoch": 1, "status": "ok"})  # no exception
    s.on_trial_complete("b", result={"val_eval_loss": 2.5, "epoch": 1, "status": "ok"})
    why = s.storage_halt_reason()
    assert why is not None and s.halted() and s.suggest("c") == "FINISHED" and s.untold == 2
    assert "re-runs only the trials without rows" in str(why)
    other.execute("COMMIT")
    study = optuna.load_study(study_name=a["optuna_study"], storage=inner)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]
    # the resume: trial a's rows reached the table, b's did not (say the recorder was killed)
    recorded = {f"{a['optuna_study']}#{a['optuna_trial']}": {"status": "ok", "val_eval_loss": 1.25, "epoch": 1}}
    again = make_searcher(spec, inner, cells=spec.cells(), recorded=recorded)
    t = {t.number: t for t in study.get_trials()}
    assert t[a["optuna_trial"]].state.name == "COMPLETE" and t[a["optuna_trial"]].value == 1.25
    assert t[b["optuna_trial"]].state.name == "RUNNING" and again.orphans_found == 1  # re-run, b only
    assert again.suggest("b2")["optuna_trial"] == b["optuna_trial"]


# -- a real PostgreSQL server, restarted under a running sweep -------------------------------
@pytest.fixture(scope="module")
def pg():
    from test_postgres import postgres_server

    server = postgres_server()
    yield next(server)
    server.close()


def _spec(name: str, url: str):
    return parse_spec({
        "name": name,
        "axes": {"dataset_size": [64], "epochs": [1, 2]},
        "learning_rate": {"low": 1e-3, "high": 3e-2},
        "trials_per_cell": 3,
        "eval": {"validation_size": 64, "test_size": 64},
        "resources": {"cpus": 1, "max_failures": 1},
        "storage": {"optuna": url},
        "sampler": {"extra_trials": 0},
    })  # fmt: skip


def _when_trials_done(url: str, study: str, n: int, then) -> threading.Thread:
    """A thread that waits until ``n`` of the study's trials are finished in PostgreSQL, then ``then()``."""
    import psycopg

    def go():
        for _ in range(1200):
            try:
                with psycopg.connect(url, connect_timeout=2) as con:
                    done = con.execute("SELECT COUNT(*) FROM trials t JOIN studies s USING (study_id) WHERE "
                                       "s.study_name LIKE %s AND t.state != 'RUNNING'", (study + "/%",)).fetchone()[0]  # fmt: skip
                if done >= n:
                    return then()
            except Exception:
                pass
            time.sleep(0.25)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th


def _check_exact(run: Path, spec, url: str) -> int:
    df = read_results(run)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert df["trial_id"].nunique() == 6 and set(df["status"]) == {"ok"}, df[["trial_id", "status"]]
    check_optuna_values(df, spec, url, per_cell=3)
    return len(df)


@pytest.mark.slow
def test_a_postgres_restart_mid_sweep_loses_nothing(pg, ray_local, tmp_path, caplog):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = _spec("restart", pg["url"])
    restarts = []

    def restart():
        r = pg["pg_ctl"]("-m", "fast", "-w", "stop")
        time.sleep(3)  # trials finish while it is down
        restarts.append((r.returncode, pg["pg_ctl"]("-w", "-t", "60", "start").returncode))

    th = _when_trials_done(pg["url"], spec.name, 1, restart)
    res = run_sweep(spec, out=tmp_path / "run")
    th.join(timeout=120)
    assert restarts == [(0, 0)]
    assert res.trials_run == 6 and res.counts["ok"] == 6
    rows = _check_exact(tmp_path / "run", spec, pg["url"])
    assert any("unreachable" in r.getMessage() for r in caplog.records), "no outage was seen"
    print(f"\nPostgreSQL restarted mid-sweep: 6/6 trials, {rows} rows, Optuna matches")


@pytest.mark.slow
def test_a_postgres_outage_past_the_bound_stops_the_sweep_and_a_resume_finishes_it(
        pg, ray_local, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    import yaml
    from typer.testing import CliRunner

    from scaling.cli import app

    pw = "pw-outage-Zq81"
    url = pg["url"].replace("postgres@", f"postgres:{pw}@")  # the server trusts any password
    monkeypatch.setenv("SCALING_STORAGE_RETRY_S", "2")
    monkeypatch.setenv("SCALING_LEASE_TIMEOUT_S", "15")  # longer than the retry bound, as by default
    spec = _spec("outage", url)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "outage", "axes": {"dataset_size": [64], "epochs": [1, 2]},
                                    "learning_rate": {"low": 1e-3, "high": 3e-2}, "trials_per_cell": 3,
                                    "eval": {"validation_size": 64, "test_size": 64},
                                    "resources": {"cpus": 1, "max_failures": 1}, "storage": {"optuna": url},
                                    "sampler": {"extra_trials": 0}}))  # fmt: skip
    run = tmp_path / "run"
    th = _when_trials_done(pg["url"], "outage", 2, lambda: pg["pg_ctl"]("-m", "fast", "-w", "stop"))
    first = CliRunner().invoke(app, ["sweep", str(path), "--out", str(run)])
    th.join(timeout=60)
    before = read_results(run) if (run / "results").exists() or (run / "results.parquet").exists() else None
    n_before = 0 if before is None else len(before)
    errors = [line for line in first.output.splitlines() if line.startswith("error:")]
    assert pg["pg_ctl"]("-w", "-t", "60", "start").returncode == 0
    assert first.exit_code == 2, first.output
    assert pw not in first.output and "Traceback" not in first.output and len(errors) == 1, first.output
    assert "'postgresql://postgres:***@127.0.0.1" in errors[0] and "unreachable" in errors[0]
    assert "re-runs only the trials without rows" in errors[0]
    assert before is not None and n_before >= 2 and not before.duplicated(["trial_id", "epoch"]).any()
    time.sleep(15.5)  # our own lease (this pid: not dead) times out; a new process takes it at once
    second = CliRunner().invoke(app, ["sweep", str(path), "--out", str(run)])
    assert second.exit_code == 0, second.output
    rows = _check_exact(run, spec, pg["url"])
    kept = read_results(run).merge(before, on=["trial_id", "epoch"], suffixes=("", "_0"))
    assert len(kept) == n_before and (kept["val_eval_loss"] == kept["val_eval_loss_0"]).all()
    print(f"\nPostgreSQL down past the bound: exit {first.exit_code} with {n_before} rows kept \n  {errors[0]}\n ; "
          f"resume exit {second.exit_code}, {rows} rows, Optuna matches")


def test_optimize_mode_also_halts_on_an_outage_and_a_resume_tells_what_the_rows_say(tmp_path):
    from scaling.sweep.optimize import make_searcher

    spec = parse_spec({"name": "o", "axes": {"dataset_size": [100, 200], "epochs": [1, 2]},
                       "learning_rate": {"low": 1e-3, "high": 3e-2}, "sampler": {"mode": "optimize"},
                       "budget": {"flops": 1e12}})  # fmt: skip
    inner, other = _locked_sqlite(tmp_path / "o.db")
    s = make_searcher(spec, RetryingStorage(inner, f"sqlite:///{tmp_path / 'o.db'}", bound=0.5), cells=spec.cells())
    a = s.suggest("a")
    last = {"val_eval_loss": 0.75, "epoch": a["epochs"], "epochs": a["epochs"], "status": "ok", "train_flops": 1e9}
    s.on_trial_result("a", last)
    other.execute("BEGIN EXCLUSIVE")
    s.on_trial_complete("a", result=last)  # no exception: the sweep stops instead
    assert s.storage_halt_reason() is not None and s.untold == 1 and s.suggest("b") == "FINISHED"
    other.execute("COMMIT")
    again = make_searcher(spec, inner, cells=spec.cells(), recorded={f"{a['optuna_study']}#{a['optuna_trial']}": last})
    t = optuna.load_study(study_name=a["optuna_study"], storage=inner).get_trials()[a["optuna_trial"]]
    assert t.state.name == "COMPLETE" and t.value == 0.75 and t.user_attrs["cost"] == 1e9
    assert again.orphans_found == 0 and again.spent() == 1e9
