"""Per-append time and full-read time of the results table at 1k, 10k and 100k rows: the part-file
layout (scaling.records_io) beside the whole-file rewrite it replaced (append_rows at commit 2bcee32,
loaded from git at run time into a temp module).

An append is one trial's 4 rows (4 epochs), as the sweep's recorder writes them. The new layout is
grown by real appends from 0 to 100k rows (25,000 appends: parts, merges and all, fsyncs included)
and timed over the 200 appends that end at each size; the old one is filled to each size in one
write and timed over a few appends there. Run: `python bench/records_scale.py [--out DIR]`
(DIR on the disk the runs live on; default a temp dir under the current directory).
Goal (issue 17 section 6): <= 5 ms per append at 100k rows, a full read <= 1 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaling import records, records_io  # noqa: E402

OLD_COMMIT = "2bcee32"
SIZES = (1_000, 10_000, 100_000)
WINDOW = 200  # appends timed at each size (new layout)
OLD_APPENDS = {1_000: 20, 10_000: 10, 100_000: 5}


def old_records(tmp: Path):
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:scaling/records.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    path = tmp / f"records_{OLD_COMMIT}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"records_{OLD_COMMIT}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trial_rows(i: int) -> list[dict]:
    """One trial's 4 evaluation rows, every column filled as a sweep fills it."""
    d = [100, 200, 400, 800][i % 4]
    return [{
        "study": "bench", "trial_id": f"bench/D={d},E=4#{i}", "optuna_trial": i, "cell": f"D={d},E=4",
        "phase": "search", "dataset_size": d, "epochs": 4, "learning_rate": 1e-4 * (1 + i % 97), "lora_r": 8,
        "lora_alpha": 16.0, "seed": 0, "model": "tiny", "task": "addition", "epoch": e, "step": 10 * e,
        "train_tokens": 1000 * e, "train_flops": 1e9 * e, "train_loss": 2.0 / e,
        "val_eval_loss": 1.0 / e, "val_token_accuracy": 0.5, "val_exact_match": 0.1, "val_answer_logprob": -1.0,
        "test_eval_loss": 1.1 / e, "test_token_accuracy": 0.5, "test_exact_match": 0.1, "test_answer_logprob": -1.0,
        "trainable_params": 1000, "wall_seconds": 0.5 * e, "pack_size": 1, "worker_pid": 123,
        "worker_rss_mb": 300.0, "status": "ok", "error": None, "node": "n0", "recorded_at": "2026-01-01T00:00:00",
    } for e in range(1, 5)]  # fmt: skip


def timed_read(run: Path) -> float:
    t = time.perf_counter()
    df = records.read_results(run)
    took = time.perf_counter() - t
    assert len(df) > 0
    return took


def bench_new(base: Path) -> dict[int, dict[str, float]]:
    run = base / "new"
    out: dict[int, dict[str, float]] = {}
    took: list[float] = []
    for i in range(max(SIZES) // 4):
        rows = trial_rows(i)
        t = time.perf_counter()
        n = records.append_rows(run, rows)
        took.append(time.perf_counter() - t)
        if n in SIZES:
            w = np.array(took[-WINDOW:]) * 1e3
            files = len(records_io.result_files(run))
            out[n] = {"mean_ms": w.mean(), "p99_ms": np.percentile(w, 99), "max_ms": w.max(),
                      "read_s": timed_read(run), "files": files}  # fmt: skip
    records_io._WRITERS.clear()  # a resumed sweep's process: its first append reads the keys from disk
    t = time.perf_counter()
    records.append_rows(run, trial_rows(len(took)))
    out[max(SIZES)]["reopen_s"] = time.perf_counter() - t
    t = time.perf_counter()
    records.compact(run)
    out[max(SIZES)]["compact_s"] = time.perf_counter() - t
    out[max(SIZES)]["read_compacted_s"] = timed_read(run)
    return out


def bench_old(base: Path, old) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for n in SIZES:
        run = base / f"old{n}"
        old.append_rows(run, [r for i in range(n // 4) for r in trial_rows(i)])
        w = []
        for j in range(OLD_APPENDS[n]):
            t = time.perf_counter()
            old.append_rows(run, trial_rows(n // 4 + j))
            w.append(time.perf_counter() - t)
        w = np.array(w) * 1e3
        t = time.perf_counter()
        old.read_results(run)
        out[n] = {"mean_ms": w.mean(), "max_ms": w.max(), "read_s": time.perf_counter() - t}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="scratch directory (removed afterwards)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="records_scale_", dir=args.out or ROOT))
    load0 = os.getloadavg()[0]
    try:
        old = old_records(scratch)
        new = bench_new(scratch)
        was = bench_old(scratch, old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"results table: per-append time (4 rows = one trial) and full read, new part files vs append_rows "
          f"at {OLD_COMMIT} (whole-file rewrite); fsyncs included; scratch on {args.out or ROOT}")  # fmt: skip
    print(f"{'rows':>7} | {'new ms/append':>13} {'p99':>6} {'max':>6} {'files':>5} {'read s':>7} | "
          f"{'old ms/append':>13} {'read s':>7} | {'append x':>8}")  # fmt: skip
    for n in SIZES:
        a, b = new[n], was[n]
        print(f"{n:>7} | {a['mean_ms']:>13.2f} {a['p99_ms']:>6.1f} {a['max_ms']:>6.1f} {a['files']:>5} "
              f"{a['read_s']:>7.3f} | {b['mean_ms']:>13.1f} {b['read_s']:>7.3f} | {b['mean_ms'] / a['mean_ms']:>7.0f}x")  # fmt: skip
    big = new[max(SIZES)]
    print(f"at {max(SIZES)} rows: first append of a resumed run (reads the keys) {big['reopen_s']:.2f} s; "
          f"compact {big['compact_s']:.2f} s; read after compact {big['read_compacted_s']:.3f} s")  # fmt: skip
    print(f"load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs")
    ok = big["mean_ms"] <= 5 and big["read_s"] <= 1
    print(f"goal (<= 5 ms per append and a full read <= 1 s at {max(SIZES)} rows): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
