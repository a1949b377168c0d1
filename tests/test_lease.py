"""Two drivers, one storage (issue 17, section 2): the lease on a study in its Optuna storage.

Real Ray, real Optuna storages (a shared SQLite file, a real PostgreSQL server), real drivers.
RunLock guards one run directory; a copy of it (rsync'ed to a second machine) resumed against
the same storage passes the identity check (same study uid) and used to take the first
driver's RUNNING trials for a dead driver's leftovers and run them a second time. The second
driver is refused now, naming the holder; a dead driver's stale lease is taken over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time

import optuna
import pandas as pd
import pytest
import yaml
from conftest import live_trials
from test_postgres import postgres_url  # noqa: F401  (fixture)
from test_reliability import (
    SCALING,
    check_complete,
    check_optuna,
    cli_env,
    optuna_trials,
    trials_in_table,
    wait_for,
)
from test_sweep import ray_local  # noqa: F401  (fixture)

from scaling.records import read_results
from scaling.records_io import RecordsError
from scaling.spec import parse_spec
from scaling.sweep.identity import open_storage
from scaling.sweep.lease import LEASE_ATTR, Lease

pytestmark = pytest.mark.slow


def _data(name: str, url: str, trials: int) -> dict:
    return {
        "name": name,
        "task": {"kind": "addition", "digits": 2},
        "axes": {"dataset_size": [64], "epochs": [2]},
        "learning_rate": {"low": 1e-3, "high": 3e-2},
        "trials_per_cell": trials,
        "eval": {"validation_size": 32, "test_size": 32},
        "train": {"batch_size": 32},
        "resources": {"cpus": 1, "max_failures": 0, "max_concurrent": 1},
        "sampler": {"extra_trials": 0},
        "storage": {"optuna": url},
    }


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".sweep.lock" and "ray" not in p.relative_to(run).parts}  # fmt: skip


def _has_uid(run) -> bool:
    try:
        return bool(yaml.safe_load((run / "spec.yaml").read_text())["run"]["study_uid"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return False


def _leases(url: str) -> dict[str, dict]:
    storage = optuna.storages.RDBStorage(url)
    try:
        return {s.study_name: s.user_attrs.get(LEASE_ATTR) for s in optuna.get_all_study_summaries(storage)}
    finally:
        storage.engine.dispose()


def _while_alive(first, cond):
    """cond(), failing at once (with its error) if the first driver ended before it held."""
    def check():
        if not first.is_alive():
            pytest.fail(f"the first sweep ended first: {first.box.get('err') or first.box.get('res')}")
        return cond()
    return check


class _Sweep(threading.Thread):
    """run_sweep in a thread (this process is the first driver)."""

    def __init__(self, spec, run):
        super().__init__()
        self.spec, self.run_dir, self.box = spec, run, {}

    def run(self) -> None:
        from scaling.sweep import run_sweep

        try:
            self.box["res"] = run_sweep(self.spec, out=self.run_dir)
        except BaseException as err:  # surfaced by the assertions
            self.box["err"] = err


def test_a_copy_of_the_run_dir_resumed_on_the_same_sqlite_storage_is_refused_naming_the_holder(
        ray_local, tmp_path):  # noqa: F811  # fmt: skip
    """Without the lease the second driver (exit 0) re-ran the first's RUNNING trial as an orphan."""
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    data = _data("twodrv", url, trials=8)
    spec_file = tmp_path / "twodrv.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    run, copy = tmp_path / "run", tmp_path / "copy"
    first = _Sweep(spec, run)
    first.start()
    try:
        # a copy with the same study uid, taken while the first driver has a trial RUNNING
        wait_for(_while_alive(first, lambda: _has_uid(run) and live_trials(db)), timeout=240, what="a running trial of the first sweep")
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".sweep.lock", "ray"))
        before = _files(copy)
        t0 = time.perf_counter()
        second = subprocess.run([str(SCALING), "sweep", str(spec_file), "--out", str(copy), "--resume"],
                                cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
        refused_s = time.perf_counter() - t0
        running_after = first.is_alive()
    finally:
        first.join(timeout=600)
    assert "err" not in first.box, first.box.get("err")
    msg = (second.stdout + second.stderr).replace("\n", "")
    assert second.returncode == 2, msg[-3000:]
    assert running_after, "the first sweep ended before the second driver was refused: the test proved nothing"
    assert f"driver {socket.gethostname()}:{os.getpid()}:" in msg, msg
    assert f"run directory {run.resolve()}" in msg and "last heartbeat" in msg and "s ago" in msg, msg
    assert str(copy.resolve()) in msg and url in msg and "Wait for that sweep to finish" in msg, msg
    assert "Traceback" not in msg
    assert _files(copy) == before  # the second driver wrote nothing to its run directory
    # the first finished with nothing lost or run twice, in the table and in Optuna
    res = first.box["res"]
    assert res.counts == {"ok": 8, "failed": 0, "pruned": 0} and res.orphans_resumed == 0
    df = check_complete(run, spec)
    check_optuna(url, spec, df)
    assert all(lease["holder"] is None for lease in _leases(url).values())  # released at the end
    print(f"\nsecond driver refused after {refused_s:.1f}s while the first ran; first: {len(df)} rows, 0 duplicated")


def test_a_stale_lease_of_a_dead_driver_is_taken_over_and_the_study_completes(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    run = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = parse_spec(_data("stale", url, trials=3))
    assert run_sweep(spec, out=run, max_trials=1).trials_run == 1
    # a driver that died (SIGKILL, its machine gone) 10 minutes ago left its lease behind
    storage = optuna.storages.RDBStorage(url)
    (sid,) = [storage.get_study_id_from_name(n) for n in _leases(url)]
    dead = {"holder": "gone-host:4242:deadbeef", "heartbeat": time.time() - 600, "run_dir": "/elsewhere/run"}
    storage.set_study_user_attr(sid, LEASE_ATTR, dead)
    storage.engine.dispose()
    res = run_sweep(spec, out=run)
    assert res.trials_run == 2
    assert res.lease_taken_over is not None
    assert "gone-host:4242:deadbeef" in res.lease_taken_over and "/elsewhere/run" in res.lease_taken_over
    assert re.search(r"last heartbeat 60\d s ago", res.lease_taken_over), res.lease_taken_over
    df = check_complete(run, spec)
    check_optuna(url, spec, df)
    (lease,) = _leases(url).values()
    assert lease["holder"] is None and lease["last_holder"].startswith(f"{socket.gethostname()}:{os.getpid()}:")


def test_a_live_lease_refuses_and_a_short_timeout_from_the_env_frees_it(ray_local, tmp_path, monkeypatch):  # noqa: F811
    from scaling.sweep import run_sweep

    run = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = parse_spec(_data("live", url, trials=2))
    run_sweep(spec, out=run, max_trials=1)
    storage = optuna.storages.RDBStorage(url)
    (sid,) = [storage.get_study_id_from_name(n) for n in _leases(url)]
    other = {"holder": "other-host:7:cafe", "heartbeat": time.time() - 20, "run_dir": "/other/run"}
    storage.set_study_user_attr(sid, LEASE_ATTR, other)
    before = _files(run)
    with pytest.raises(RecordsError, match=r"driven by driver other-host:7:cafe \(run directory /other/run, "
                                           r"last heartbeat 2\d s ago\)"):  # fmt: skip
        run_sweep(spec, out=run)  # 20 s old: live under the default 60 s
    assert _files(run) == before
    assert storage.get_study_user_attrs(sid)[LEASE_ATTR] == other  # the holder's lease left alone
    storage.engine.dispose()
    monkeypatch.setenv("SCALING_LEASE_TIMEOUT_S", "5")  # now 20 s is stale
    res = run_sweep(spec, out=run)
    assert res.trials_run == 1 and "other-host:7:cafe" in (res.lease_taken_over or "")
    check_complete(run, spec)


def test_a_second_driver_on_a_real_postgresql_storage_is_refused(postgres_url, ray_local, tmp_path):  # noqa: F811
    """Two processes, as on a cluster: this one drives the study; a separate `scaling sweep` on a
    copy of its run directory, against the same PostgreSQL server, is refused with exit 2."""
    data = _data("pglease", postgres_url, trials=8)
    spec_file = tmp_path / "pglease.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    run, copy = tmp_path / "run", tmp_path / "copy"
    first = _Sweep(spec, run)
    first.start()
    storage = open_storage(postgres_url)  # may race the first driver to create Optuna's schema

    def running() -> bool:
        try:
            sid = storage.get_study_id_from_name("pglease/D=64,E=2,r=8")
        except KeyError:
            return False
        return any(t.state.name == "RUNNING" for t in storage.get_all_trials(sid, deepcopy=False))

    try:
        wait_for(_while_alive(first, lambda: _has_uid(run) and running()), timeout=240, what="a running trial on PostgreSQL")
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".sweep.lock", "ray"))
        before = _files(copy)
        second = subprocess.run([str(SCALING), "sweep", str(spec_file), "--out", str(copy), "--resume"],
                                cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
        running_after = first.is_alive()
    finally:
        first.join(timeout=600)
        storage.engine.dispose()
    msg = (second.stdout + second.stderr).replace("\n", "")
    assert second.returncode == 2, msg[-3000:]
    assert running_after, "the first sweep ended before the second driver was refused: the test proved nothing"
    assert f"driver {socket.gethostname()}:{os.getpid()}:" in msg and f"run directory {run.resolve()}" in msg, msg
    assert postgres_url in msg and "last heartbeat" in msg and "Wait for that sweep to finish" in msg, msg
    assert "Traceback" not in msg
    assert _files(copy) == before  # the second driver wrote nothing to its run directory
    assert "err" not in first.box, first.box.get("err")
    assert first.box["res"].counts == {"ok": 8, "failed": 0, "pruned": 0} and first.box["res"].orphans_resumed == 0
    df = check_complete(run, spec)
    check_optuna(postgres_url, spec, df)
    assert all(lease["holder"] is None for lease in _leases(postgres_url).values())  # released at the end


def test_a_lease_held_by_a_process_of_this_host_that_is_gone_is_stale_at_once(tmp_path):
    """A driver SIGKILLed on this host resumes at once, without waiting out the 60 s timeout;
    a live process's fresh lease still refuses."""
    storage = optuna.storages.InMemoryStorage()
    names = ["s/D=64,E=2,r=8"]
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped: its pid names no process now
    sid = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], names[0])
    dead = {"holder": f"{socket.gethostname()}:{gone.pid}:0bad", "heartbeat": time.time(), "run_dir": "/r"}
    storage.set_study_user_attr(sid, LEASE_ATTR, dead)
    with Lease(names, storage, url_shown="sqlite:///x.db", run_dir=tmp_path, study="s", settle=False) as lease:
        assert lease.taken_over is not None and f":{gone.pid}:0bad" in lease.taken_over
        assert storage.get_study_user_attrs(sid)[LEASE_ATTR]["holder"] == lease.holder
    alive = subprocess.Popen(["sleep", "30"])
    try:
        live = {"holder": f"{socket.gethostname()}:{alive.pid}:0ok", "heartbeat": time.time(), "run_dir": "/r"}
        storage.set_study_user_attr(sid, LEASE_ATTR, live)
        with pytest.raises(RecordsError, match=rf"driven by driver {re.escape(socket.gethostname())}:{alive.pid}:0ok"):
            Lease(names, storage, url_shown="sqlite:///x.db", run_dir=tmp_path, study="s", settle=False).take()
    finally:
        alive.kill()
        alive.wait()


def test_a_driver_whose_lease_is_taken_mid_sweep_stops_naming_the_new_holder(ray_local, tmp_path, monkeypatch):  # noqa: F811
    """A second driver takes the lease over while the first still runs (the first stalled past the
    timeout, say): the first stops at once, naming the new holder, keeps the rows it recorded and
    asks no more trials; once the new holder is gone, a resume completes the plan, nothing lost."""
    from scaling.sweep import run_sweep

    monkeypatch.setenv("SCALING_LEASE_TIMEOUT_S", "3")  # a heartbeat every 0.5 s
    run = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = parse_spec(_data("stolen", url, trials=8))
    first = _Sweep(spec, run)
    first.start()
    try:
        wait_for(_while_alive(first, lambda: trials_in_table(run) >= 1), timeout=300, what="the first trial's rows")
        storage = optuna.storages.RDBStorage(url)
        (sid,) = [storage.get_study_id_from_name(n) for n in _leases(url)]
        rows_then = len(read_results(run))
        stolen_at = time.time()
        thief = {"holder": "thief-host:77:beef", "heartbeat": stolen_at, "run_dir": "/thief/run", "taken_at": stolen_at}
        storage.set_study_user_attr(sid, LEASE_ATTR, thief)
    finally:
        first.join(timeout=600)
    stopped_s = time.time() - stolen_at
    err = first.box.get("err")
    assert isinstance(err, RecordsError), first.box
    msg = str(err)
    assert "lost its lease on study 'stolen'" in msg, msg
    assert "taken by driver thief-host:77:beef (run directory /thief/run, last heartbeat" in msg, msg
    assert str(run) in msg and "rows recorded so far are kept" in msg
    assert storage.get_study_user_attrs(sid)[LEASE_ATTR] == thief  # neither renewed over nor released
    storage.engine.dispose()
    # what it recorded is kept, whole; it asked no trial once the lease was gone
    df = read_results(run)
    trials = next(iter(optuna_trials(url, spec).values()))
    assert rows_then <= len(df) < 8 * 2 and set(df["status"]) == {"ok"}, df
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert (df.groupby("trial_id")["epoch"].apply(sorted) == pd.Series([[1, 2]] * df.trial_id.nunique(),
                                                                       index=sorted(df.trial_id.unique()))).all()  # fmt: skip
    late = [t.number for t in trials if t.datetime_start > dt.datetime.fromtimestamp(stolen_at + 3)]
    assert late == [] and len(trials) < 8, (late, len(trials))
    # the new holder is gone (its heartbeat 3 s old is stale): the study resumes and completes
    time.sleep(max(0.0, stolen_at + 3.5 - time.time()))
    res = run_sweep(spec, out=run)
    assert "thief-host:77:beef" in (res.lease_taken_over or "")
    df = check_complete(run, spec)
    check_optuna(url, spec, df)
    print(f"\nlease taken mid-sweep: stopped {stopped_s:.1f} s later with {len(trials)} trials asked; the resume "
          f"ran {res.trials_run} ({res.orphans_resumed} left running): {len(df)} rows, 0 lost, 0 duplicated")


def test_heartbeats_failing_past_the_timeout_lose_the_lease_and_do_not_hide_the_error(tmp_path, monkeypatch, caplog):
    """The storage stops answering (a real SQLite file held by another connection's exclusive
    lock): heartbeats fail, and past the timeout the lease counts as lost (another driver may take
    the study over by then). The error the sweep raised meanwhile is the one that comes out of the
    ``with Lease``: the release, which cannot reach the storage, only warns."""
    monkeypatch.setenv("SCALING_LEASE_TIMEOUT_S", "1")
    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 2}})  # busy: 2 s, not 60
    names = ["s/D=64,E=2,r=8"]
    lease = Lease(names, storage, url_shown=url, run_dir=tmp_path, study="s", settle=False)
    locker = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        with caplog.at_level(logging.WARNING, logger="scaling.sweep.lease"), pytest.raises(ZeroDivisionError):
            with lease:
                (sid,) = lease._ids
                assert lease.halt_reason() is None
                locker.execute("BEGIN EXCLUSIVE")  # the database stops answering
                wait_for(lambda: lease.lost, timeout=120, what="the lease to count as lost")
                raise ZeroDivisionError("the sweep's own error, on its way out while the storage is still down")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    msg = str(lease.halt_reason())
    assert "lost its lease on study 's'" in msg and "its heartbeat has failed for" in msg, msg
    assert "past the 1 s timeout" in msg and "database is locked" in msg, msg
    assert "could not release the lease on study 's'" in caplog.text and "database is locked" in caplog.text
    # the storage is back: the lease still names this driver, its heartbeat from before the outage
    held = storage.get_study_user_attrs(sid)[LEASE_ATTR]
    assert held["holder"] == lease.holder and time.time() - held["heartbeat"] > 1
