"""The Optuna storage in a real PostgreSQL server, as on a cluster (search_spaces/cluster_gpu.yaml).

A throw-away server is started for this module: initdb into a temporary directory, pg_ctl
start on a free port of 127.0.0.1 (as the `postgres` user when the tests run as root, since
PostgreSQL refuses to run as root). Debian's `postgresql` package is installed with apt-get
where it is missing and we may; the tests skip, saying why, only where that is impossible.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from scaling.records import read_results
from scaling.spec import parse_spec

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):  # Debian's layout
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _install_postgres() -> str:
    """Install Debian's postgresql package; returns why not, or '' when done."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and this is not a root Debian/Ubuntu machine (apt-get install postgresql)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "postgresql"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "postgresql"]):  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if cmd[1] == "install" and r.returncode == 0:
            return ""
    return f"apt-get install postgresql failed: {r.stderr.strip()[-300:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    server = postgres_server()
    yield next(server)["url"]
    server.close()


def postgres_server():
    """A throw-away server (a generator: the first next() gives {"url", "pg_ctl"}, close() stops it);
    pg_ctl(*args) runs pg_ctl on its data directory (tests/test_storage_outage.py restarts it)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is the driver of postgresql:// URLs (pip install -e .[dev])")
    bindir = _pg_bin()
    if bindir is None:
        why = _install_postgres()
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip(why or "PostgreSQL's initdb/pg_ctl not found after installing it")
    # PostgreSQL will not run as root: run it as the `postgres` user the package creates
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="scaling-pg-"))  # not under pytest's private tmp: postgres must reach it
    data = root / "data"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*cmd: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout, cwd=root)

    r = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    assert r.returncode == 0, r.stderr
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts, "-w", "-t", "60", "start")
    assert r.returncode == 0, r.stdout + r.stderr + (root / "server.log").read_text()
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE optuna")

        def pg_ctl(*args: str) -> subprocess.CompletedProcess:
            return run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts, *args)

        yield {"url": f"postgresql://postgres@127.0.0.1:{port}/optuna", "pg_ctl": pg_ctl}
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def check_optuna_values(df, spec, url: str, *, per_cell: int) -> None:
    """Optuna's view of every cell study: exactly ``per_cell`` trials, all COMPLETE, each with the
    value the table's last-epoch row records (the validation loss)."""
    storage = optuna.storages.RDBStorage(url)
    for cell in spec.cells():
        trials = optuna.load_study(study_name=f"{spec.name}/{cell.key}", storage=storage).get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * per_cell, cell.key
        final = df[(df.cell == cell.key) & (df.epoch == cell.epochs)].set_index("optuna_trial")
        for t in trials:
            assert final.loc[t.number, "val_eval_loss"] == pytest.approx(t.value)
    storage.engine.dispose()


@pytest.fixture(scope="module")
def ray_local(tiny_model_dir):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_sweep_with_postgres_storage_stops_and_resumes_exactly(postgres_url, ray_local, tmp_path):
    import psycopg

    from scaling.sweep import run_sweep

    spec = parse_spec({
        "name": "pg",
        "axes": {"dataset_size": [64], "epochs": [1, 2]},
        "learning_rate": {"low": 1e-3, "high": 3e-2},
        "trials_per_cell": 2,
        "eval": {"validation_size": 64, "test_size": 64},
        "resources": {"cpus": 1, "max_failures": 1},
        "storage": {"optuna": postgres_url},
        "sampler": {"extra_trials": 0},  # a fixed budget: the trial counts below are exact
    })  # fmt: skip
    run = tmp_path / "run"
    t0 = time.perf_counter()
    first = run_sweep(spec, out=run, max_trials=3)  # stop early ...
    assert first.trials_run == 3 and first.optuna_url == postgres_url
    second = run_sweep(spec, out=run)  # ... and resume: only what is left
    assert second.trials_run == 1 and second.orphans_resumed == 0
    took = time.perf_counter() - t0

    df = read_results(run)
    assert df["trial_id"].nunique() == 4 and not df.duplicated(["trial_id", "epoch"]).any()
    assert set(df["status"]) == {"ok"} and len(df) == 2 * (1 + 2)
    assert not (run / "optuna.db").exists()  # nothing fell back to SQLite
    # Optuna's view, through PostgreSQL: one study per cell, each with exactly its 2 trials done
    check_optuna_values(df, spec, postgres_url, per_cell=2)
    # and the rows really are in the server
    with psycopg.connect(postgres_url) as con:
        names = sorted(r[0] for r in con.execute("SELECT study_name FROM studies"))
        n_done = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    assert names == ["pg/D=64,E=1,r=8", "pg/D=64,E=2,r=8"] and n_done == 4
    print(f"\nPostgreSQL storage: 3 trials, stop, resume 1 more: 4/4 complete, {len(df)} rows in {took:.0f}s")


def test_no_file_or_output_of_a_sweep_and_its_report_holds_the_password(postgres_url, ray_local, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """The server trusts local connections, so any password connects: put one in the URL (through
    ${SCALING_OPTUNA_URL} and written literally), run a real sweep and report through the CLI,
    and grep every byte they printed and wrote for it."""
    import yaml
    from typer.testing import CliRunner

    from scaling.cli import app

    pw = "pw-Kx93zQ-never-shown"
    url = postgres_url.replace("postgres@", f"postgres:{pw}@")
    base = {"axes": {"dataset_size": [64]}, "learning_rate": {"low": 1e-3, "high": 3e-2}, "trials_per_cell": 1,
            "eval": {"validation_size": 32, "test_size": 32}, "sampler": {"extra_trials": 0}}  # fmt: skip
    monkeypatch.setenv("SCALING_OPTUNA_URL", url)
    for name, optuna_value in (("viaenv", "${SCALING_OPTUNA_URL}"), ("literal", url)):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, **base, "storage": {"optuna": optuna_value}}))
        run = tmp_path / f"run-{name}"
        out = []
        for cmd in (["validate", str(spec)], ["sweep", str(spec), "--out", str(run)], ["report", str(run)],
                    ["best-lr", str(run)], ["show", str(run)]):  # fmt: skip
            r = CliRunner().invoke(app, cmd)
            assert r.exit_code == 0, (cmd, r.output)
            out.append(r.output)
        assert read_results(run)["status"].eq("ok").all()
        printed = "\n".join(out)
        assert pw not in printed and "postgres:***@" in printed
        files = [p for p in run.rglob("*") if p.is_file()]
        assert len(files) > 5 and (run / "spec.yaml") in files and (run / "report" / "report.html") in files
        leaks = [str(p) for p in files if pw.encode() in p.read_bytes()]
        assert leaks == [], f"the password is in {leaks}"
