"""Reliability: real faults, nothing lost.

Every test here causes its fault for real - no mocks:
  1. trial faults: a data fault (a JSONL example the tokenizer cannot encode), a real
     out-of-memory (a model whose weights the kernel will not allocate), and a worker
     process SIGKILLed mid-trial. Faults of the data or the hyperparameters are failed rows
     and never retried; infrastructure faults are retried (FailureConfig.max_failures).
  2. the driver SIGKILLed mid-sweep (a real `scaling sweep` process), then the same
     command again: every planned trial exactly once, in the table and in Optuna.
  4. a second sweep on a run directory in use is refused (exit 2); the first is unharmed.
  6. a reused worker runs 12 trials without its memory growing; fractional GPUs pack
     four trials onto one (logical) GPU.
(3, a dying node, is tests/test_cluster.py; 5, bad input, tests/test_bad_input.py;
7, PostgreSQL, tests/test_postgres.py.)
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
import yaml
from conftest import live_trials
from scipy.stats import theilslopes

from scaling.records import read_results
from scaling.spec import StudySpec, parse_spec

pytestmark = pytest.mark.slow

SCALING = Path(sys.executable).with_name("scaling")  # the console script of this venv
TINY = {
    "task": {"kind": "addition", "digits": 2},
    "learning_rate": {"low": 1e-3, "high": 3e-2},
    "eval": {"validation_size": 64, "test_size": 64},
    "train": {"batch_size": 32},
    "resources": {"cpus": 1, "max_failures": 2},
    # a fixed budget (no extra LR trials for unbracketed cells): each test knows its trial count
    "sampler": {"extra_trials": 0},
}


def spec_dict(name: str, **over) -> dict:
    data = copy.deepcopy({"name": name, **TINY})
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return data


# -- what the run directory says -----------------------------------------------------
def check_complete(run_dir: Path, spec: StudySpec) -> pd.DataFrame:
    """The table holds every planned trial exactly once, each with all its evaluations."""
    df = read_results(run_dir)
    dup = df[df.duplicated(["trial_id", "epoch"], keep=False)]
    assert dup.empty, f"duplicate rows:\n{dup[['trial_id', 'epoch', 'status']]}"
    assert df["trial_id"].nunique() == spec.planned_trials(), sorted(df["trial_id"].unique())
    for tid, rows in df[df.status == "ok"].groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, int(rows["epochs"].iloc[0]) + 1)), tid
    return df


def optuna_trials(url: str, spec: StudySpec) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.RDBStorage(url)
    return {
        f"{spec.name}/{c.key}": optuna.load_study(study_name=f"{spec.name}/{c.key}", storage=storage).get_trials()
        for c in spec.cells()
    }


def check_optuna(url: str, spec: StudySpec, df: pd.DataFrame) -> None:
    """Per cell: exactly the planned number of finished trials, none RUNNING, and the table
    holds exactly those trials."""
    per_cell = spec.trials_per_cell + spec.seeds.repeat_best
    seen = set()
    for name, trials in optuna_trials(url, spec).items():
        assert len(trials) == per_cell, (name, [t.state for t in trials])
        assert all(t.state.is_finished() for t in trials), (name, [t.state for t in trials])
        seen |= {f"{name}#{t.number}" for t in trials}
    assert seen == set(df["trial_id"])


def ray_attempts(run_dir: Path) -> dict[str, int]:
    """Failures Ray Tune counted per trial (its experiment state under RUN_DIR/ray), summed
    over every driver that ran on the directory."""
    out: dict[str, int] = {}
    for f in sorted((run_dir / "ray").glob("*/experiment_state-*.json")):
        for trial_json, runtime_json in json.loads(f.read_text())["trial_data"]:
            cfg = json.loads(trial_json)["config"]
            tid = f"{cfg['optuna_study']}#{cfg['optuna_trial']}"
            out[tid] = out.get(tid, 0) + json.loads(runtime_json)["num_failures"]
    return out


def trials_in_table(run_dir: Path) -> int:
    try:
        # read_results sees the whole table while a sweep appends part files (scaling.records)
        return read_results(run_dir)["trial_id"].nunique()
    except (FileNotFoundError, OSError, ValueError):
        return 0


def wait_for(cond, *, timeout: float, what: str, proc: subprocess.Popen | None = None, every: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited (rc={proc.returncode}) before {what}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def ray_workers(name: str = "ray::ImplicitFunc") -> list[psutil.Process]:
    """Trial actors of the Ray this test process started (they are its descendants)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(name):
                out.append(p)
        except psutil.Error:
            pass
    return out


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- 2. the driver dies ----------------------------------------------------------------
# First in the file: it starts its own Ray in a subprocess before this module's Ray exists.
def test_driver_sigkilled_mid_sweep_then_resumed_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    spec_file = tmp_path / "drv.yaml"
    data = spec_dict("drv", axes={"dataset_size": [64], "epochs": [2]}, trials_per_cell=3)
    spec_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    run = tmp_path / "run"
    cmd = [str(SCALING), "sweep", str(spec_file), "--out", str(run)]

    # 1. start the driver in its own session (its local Ray joins the process group)
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        # 2. wait until the table has rows and another trial is mid-flight, then SIGKILL
        wait_for(lambda: trials_in_table(run) >= 1 and live_trials(run / "optuna.db"),
                 timeout=240, what="a recorded trial and a running one", proc=proc)  # fmt: skip
        family = psutil.Process(proc.pid).children(recursive=True)  # Ray's processes, to clean up
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log1.close()
    # Ray workers sit in process groups of their own: end the ones this driver started
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(family, timeout=10)
    assert proc.returncode == -signal.SIGKILL

    before = read_results(run)
    orphans = live_trials(run / "optuna.db")
    done_before = before["trial_id"].nunique()
    assert 1 <= done_before < spec.planned_trials(), "the kill must land mid-sweep"
    assert orphans, "the dead driver left no RUNNING Optuna trial: nothing to resume"

    # 3. the same command again: resumes, re-runs the orphans under their own numbers
    t0 = time.perf_counter()
    again = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from a dead driver" in again.stdout, again.stdout[-2000:]
    resume_s = time.perf_counter() - t0

    # 4. exactly the plan: nothing lost, nothing duplicated, in the table and in Optuna
    df = check_complete(run, spec)
    assert set(df["status"]) == {"ok"}
    check_optuna(spec.optuna_url(run), spec, df)
    for study, number, _ in orphans:  # the orphans finished under their own trial numbers
        assert f"{study}#{number}" in set(df["trial_id"])
    # every row recorded before the kill is still there, unchanged
    key = ["trial_id", "epoch"]
    merged = before.merge(df, on=key, suffixes=("_before", ""))
    assert len(merged) == len(before)
    assert (merged["val_eval_loss_before"] == merged["val_eval_loss"]).all()
    print(f"\ndriver killed after {done_before}/{spec.planned_trials()} trials with {len(orphans)} "
          f"RUNNING; resume took {resume_s:.0f}s; {len(df)} rows, 0 lost, 0 duplicated")  # fmt: skip


# -- a local Ray for the in-process tests ----------------------------------------------
@pytest.fixture(scope="module")
def ray_local(tiny_model_dir):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # 4 logical CPUs and 1 logical GPU on this CPU machine: enough to show four trials packed
    # onto one GPU at gpus: 0.25 (torch itself stays on the CPU: there is no CUDA here)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


# -- 1. trial faults ---------------------------------------------------------------------
def _jsonl_with_one_bad_training_example(path: Path, *, n: int, bad_at: int) -> str:
    """A JSONL addition task whose training example number `bad_at` (in the seeded order)
    has a character the tiny model's tokenizer does not know; returns that character."""
    from scaling.tasks import make_task

    rng = random.Random(0)
    pairs = rng.sample([(a, b) for a in range(100) for b in range(100)], n)
    lines = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in pairs]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    target = make_task(kind="jsonl", path=str(path), seed=0, validation_size=64, test_size=64).train_pool(bad_at + 1)[-1]
    bad = "Σ"  # not in the tokenizer's vocabulary
    for x in lines:
        if x["prompt"] == target.prompt:
            x["completion"] += bad
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    task = make_task(kind="jsonl", path=str(path), seed=0, validation_size=64, test_size=64)
    assert not any(bad in e.completion for e in task.train_pool(64) + task.validation() + task.test())
    assert bad in task.train_pool(bad_at + 1)[-1].completion
    return bad


def test_data_fault_is_a_failed_row_not_retried_and_the_sweep_goes_on(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    # D=64 trials never see the bad example; D=128 trials reach it (training example 100)
    task_file = tmp_path / "sums.jsonl"
    bad = _jsonl_with_one_bad_training_example(task_file, n=400, bad_at=100)
    data = spec_dict(
        "datafault", task={"kind": "jsonl", "path": str(task_file)},
        axes={"dataset_size": [64, 128], "epochs": [1]}, trials_per_cell=2,
        resources={"max_failures": 2, "max_concurrent": 2},
    )  # fmt: skip
    spec = parse_spec(data)
    res = run_sweep(spec, out=tmp_path / "run")

    assert res.counts == {"ok": 2, "failed": 2, "pruned": 0}
    df = check_complete(res.run_dir, spec)
    assert set(df[df.dataset_size == 64]["status"]) == {"ok"}
    failed = df[df.dataset_size == 128]
    assert set(failed["status"]) == {"failed"}
    for err in failed["error"]:
        assert "TaskError" in err and "does not know" in err and bad in err, err
    # a data fault is not an infrastructure fault: Ray never retried it
    assert set(ray_attempts(res.run_dir).values()) == {0}
    states = {k: [t.state.name for t in v] for k, v in optuna_trials(res.optuna_url, spec).items()}
    assert states == {"datafault/D=64,E=1,r=8": ["COMPLETE"] * 2, "datafault/D=128,E=1,r=8": ["FAIL"] * 2}


def _model_too_big_for_memory(tiny_model_dir: str, out: Path) -> int:
    """A real model directory (the tiny model's tokenizer, a Llama config, a weights file)
    whose MLP needs one allocation several times this machine's RAM + swap."""
    import numpy as np
    from safetensors.numpy import save_file

    src = Path(tiny_model_dir)
    out.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            (out / f).write_bytes((src / f).read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    mem = psutil.virtual_memory().total + psutil.swap_memory().total
    inter = 1 << max(20, (4 * mem // (cfg["hidden_size"] * 4)).bit_length())
    cfg["intermediate_size"] = inter  # gate_proj alone: hidden x inter float32
    (out / "config.json").write_text(json.dumps(cfg))
    save_file({"model.norm.weight": np.ones(cfg["hidden_size"], dtype=np.float32)}, str(out / "model.safetensors"))
    return cfg["hidden_size"] * inter * 4


def test_out_of_memory_is_retried_as_infrastructure_then_a_failed_row(ray_local, tiny_model_dir, tmp_path):
    from scaling.sweep import run_sweep

    mode = Path("/proc/sys/vm/overcommit_memory")
    if not mode.exists() or mode.read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1 (or unknown): the kernel would grant the allocation and the "
                    "OOM killer, not the allocator, would fail it - possibly in another process")  # fmt: skip
    need = _model_too_big_for_memory(tiny_model_dir, tmp_path / "big-model")
    assert need > 2 * (psutil.virtual_memory().total + psutil.swap_memory().total)
    data = spec_dict("oom", model=str(tmp_path / "big-model"), axes={"dataset_size": [64], "epochs": [1]},
                     trials_per_cell=1, resources={"max_failures": 1})  # fmt: skip
    spec = parse_spec(data)
    res = run_sweep(spec, out=tmp_path / "run")

    assert res.counts == {"ok": 0, "failed": 1, "pruned": 0}
    df = check_complete(res.run_dir, spec)
    err = df["error"].item()
    assert "allocate memory" in err, err
    # an infrastructure fault: tried 1 + max_failures times before it became a failed row
    assert list(ray_attempts(res.run_dir).values()) == [1 + spec.resources.max_failures]
    assert [t.state.name for t in optuna_trials(res.optuna_url, spec)["oom/D=64,E=1,r=8"]] == ["FAIL"]
    print(f"\nOOM: one allocation of {need / 2**30:.0f} GiB refused; error row: {err[-160:]!r}")


def test_worker_killed_mid_trial_is_retried_and_the_trial_completes_once(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    data = spec_dict("killworker", axes={"dataset_size": [128], "epochs": [3]}, trials_per_cell=2,
                     resources={"max_failures": 2, "max_concurrent": 1})  # fmt: skip
    spec = parse_spec(data)
    run = tmp_path / "run"
    killed: dict = {}

    def kill_after_first_epoch() -> None:
        # SIGKILL is what the kernel's OOM killer and a preempted VM look like to Ray
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240 and "pid" not in killed:
            live = [t for t in live_trials(run / "optuna.db") if t[2] >= 1]
            workers = ray_workers()
            if live and len(workers) == 1:  # one trial at a time: the worker is running it
                killed.update(pid=workers[0].pid, trial=f"{live[0][0]}#{live[0][1]}", epochs=live[0][2])
                os.kill(workers[0].pid, signal.SIGKILL)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    res = run_sweep(spec, out=run)
    killer.join(timeout=5)

    assert killed.get("pid"), "the worker was never killed"
    assert res.counts == {"ok": 2, "failed": 0, "pruned": 0}
    df = check_complete(run, spec)
    assert set(df["status"]) == {"ok"} and len(df) == 2 * 3
    # the killed attempt's epoch(s) were dropped: every row comes from a live worker
    assert killed["pid"] not in set(df["worker_pid"])
    assert ray_attempts(run) == {killed["trial"]: 1, **{t: 0 for t in set(df.trial_id) - {killed["trial"]}}}
    check_optuna(res.optuna_url, spec, df)
    print(f"\nworker {killed['pid']} killed after epoch {killed['epochs']} of {killed['trial']}: "
          f"retried once, {len(df)} rows, 0 duplicated")  # fmt: skip


# -- 4 + 6. one reused worker, twelve trials, a second sweep refused meanwhile -------------
def test_reused_worker_memory_is_flat_and_a_second_sweep_is_refused(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    TRIALS, WARMUP = 20, 4  # 16 warm trials: the slope is then known to well under 1 MiB/trial

    spec_file = tmp_path / "mem.yaml"
    data = spec_dict("mem", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=TRIALS,
                     resources={"max_failures": 0, "max_concurrent": 1})  # fmt: skip
    spec_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    run = tmp_path / "run"
    box: dict = {}

    def first() -> None:
        try:
            box["res"] = run_sweep(spec, out=run)
        except BaseException as err:  # surfaced by the assertions below
            box["err"] = err

    sweeper = threading.Thread(target=first)
    sweeper.start()
    try:
        # the first sweep holds the run directory once its lock file names it
        wait_for(lambda: (run / ".sweep.lock").exists() and (run / ".sweep.lock").read_text().startswith("pid"),
                 timeout=60, what="the first sweep to take the run directory")  # fmt: skip
        second = subprocess.run([str(SCALING), "sweep", str(spec_file), "--out", str(run)], cwd=tmp_path,
                                env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        refused_while = trials_in_table(run)
    finally:
        sweeper.join(timeout=400)
    assert "err" not in box, box.get("err")
    assert second.returncode == 2, second.stdout + second.stderr
    msg = second.stderr
    assert f"pid {os.getpid()}" in msg and "another sweep" in msg and str(run) in msg.replace("\n", ""), msg
    assert "Traceback" not in second.stdout + second.stderr

    # the first sweep was not harmed
    res = box["res"]
    assert res.counts == {"ok": TRIALS, "failed": 0, "pruned": 0}
    df = check_complete(run, spec)
    check_optuna(res.optuna_url, spec, df)
    assert refused_while < TRIALS

    # one worker ran all the trials (reuse_actors), and its memory did not grow
    assert df["worker_pid"].nunique() == 1
    rss = df.sort_values("optuna_trial")["worker_rss_mb"].to_numpy()
    warm = rss[WARMUP:]  # the first trials build the data, optimizer and peft caches
    growth = float(pd.Series(warm[-3:]).median() - pd.Series(warm[:3]).median())  # medians: RSS jitters ~10 MiB
    # Theil-Sen slope (median of all pairwise slopes): RSS zig-zags by ~8 MiB between trials,
    # which made the median of successive differences swing by +-4 MiB on a flat series
    slope = float(theilslopes(warm)[0])
    print(f"\nworker RSS per trial (MiB): {[round(x) for x in rss]}; growth after warm-up {growth:+.1f} MiB "
          f"over {len(warm) - 1} trials; second sweep refused with: {msg.strip()[:160]!r}")  # fmt: skip
    assert growth < 25, f"worker RSS grew {growth:.1f} MiB over {len(warm) - 1} trials: {rss}"
    assert abs(slope) < 2, f"RSS grows {slope:.2f} MiB per trial (Theil-Sen): {rss}"


def test_fractional_gpus_run_four_trials_at_once_on_one_gpu(ray_local, tmp_path):
    import ray

    from scaling.sweep import run_sweep

    assert ray.cluster_resources().get("GPU") == 1  # one logical GPU (no CUDA: torch stays on CPU)
    # D=256: a trial must outlast the start of the other three workers (each imports torch; on 2
    # cores that took longer than a D=64 trial once, and the fourth trial reused the first's worker)
    data = spec_dict("gpu4", axes={"dataset_size": [256], "epochs": [2]}, trials_per_cell=4,
                     resources={"cpus": 1, "gpus": 0.25, "max_failures": 0})  # fmt: skip
    spec = parse_spec(data)
    samples: list[tuple[float, dict[int, float]]] = []  # (free GPU, {live trial worker: its start})
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            workers = {}
            for p in ray_workers():
                try:
                    workers[p.pid] = p.create_time()
                except psutil.Error:
                    pass
            samples.append((ray.available_resources().get("GPU", 0.0), workers))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = run_sweep(spec, out=tmp_path / "run")
    finally:
        stop.set()
        sampler.join(timeout=5)

    assert res.counts == {"ok": 4, "failed": 0, "pruned": 0}
    df = check_complete(tmp_path / "run", spec)
    pids = set(df["worker_pid"])
    assert len(pids) == 4  # four workers, not one reused four times
    # Ray's own accounting: at one moment the GPU was fully taken (4 x 0.25) by the four live workers
    packed = [w for g, w in samples if g == pytest.approx(0.0) and set(w) == pids]
    assert packed, [(g, sorted(w)) for g, w in samples[::10]]
    # and their lifetimes overlap: the last worker started before the first trial finished
    started = {pid: t for _, w in samples for pid, t in w.items() if pid in pids}
    done = [t.datetime_complete.timestamp() for t in optuna_trials(res.optuna_url, spec)["gpu4/D=256,E=2,r=8"]]
    assert len(started) == 4 and max(started.values()) < min(done)
    print(f"\nfractional GPUs: 4 trials x 0.25 GPU held the one GPU together for {0.1 * len(packed):.1f}s; "
          f"all four workers alive {min(done) - max(started.values()):.1f}s before the first trial ended")  # fmt: skip
