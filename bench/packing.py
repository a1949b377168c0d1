"""Packed LoRA trials vs one trial at a time: trials per hour and peak memory, side by side.

For K = 1, 4, 8, 16 configs of one cell (same D and epochs, K learning rates, the
cell's seed; the demo model and task: 2-digit addition), on this machine, 1 thread each:

1. baseline (a): one trial per fresh process: interpreter, imports, base model load,
   tokenizing, run_trial; what a Ray worker without actor reuse pays per trial;
2. baseline (b): the K trials back to back with trial.run_trial (a pack of one) in one process whose
   base model is already loaded (a reused Ray actor);
3. packed: the same K configs as one pack (trial.run_packed) in a fresh process per K:
   warm time (the run_packed call, comparable with b), cold time (process start to end,
   comparable with a), and the process's peak RSS (ru_maxrss) for the memory column;
4. trials per hour and the ratios packed / baseline. Every K runs its baseline and its
   pack one after the other, and a fresh-process trial between Ks, so load from other
   users of the machine falls on both sides. CPU seconds (process_time) are printed
   beside wall seconds: they are less sensitive to a busy machine.

    .venv/bin/python bench/packing.py [--ks 1,4,8,16] [--dataset-size 1000] [--epochs 2]
                                      [--eval-size 200] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _configs(args: argparse.Namespace, k: int) -> list:
    from scaling.tiny import BUILTIN_TINY
    from scaling.trial import TrialConfig

    lrs = [3e-3] if k == 1 else [1e-3 * 10 ** (i / (k - 1)) for i in range(k)]  # the demo's LR range
    return [
        TrialConfig(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None,
                    task_seed=0, dataset_size=args.dataset_size, epochs=args.epochs,
                    learning_rate=lr, seed=0, validation_size=args.eval_size,
                    test_size=args.eval_size, threads=1)  # fmt: skip
        for lr in lrs
    ]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # what run_trial and Pack pick


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU, {os.cpu_count()} cores (torch {torch.__version__})"


def _gpu_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


# -----------------------------------------------------------------------------
# The child process: one measurement, one JSON line on stdout


def _child(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    from scaling import trial
    from scaling.trial import base as trial_base
    from scaling.trial import run_packed

    t_import = time.perf_counter() - t0
    cfgs = _configs(args, args.k)
    cache: dict = {}
    out: dict = {"import_s": t_import}
    if args.child == "fresh":  # baseline (a): everything from a cold cache
        w, c = time.perf_counter(), time.process_time()
        trial.run_trial(cfgs[0], cache=cache)
        _sync()
        out.update(run_s=time.perf_counter() - w, run_cpu_s=time.process_time() - c)
    else:
        t1 = time.perf_counter()
        base = trial_base.get_base(cfgs[0], cache, _device())  # a warm worker: base loaded, data tokenized
        trial_base.get_data(cfgs[0], cache, base)
        if args.child == "packed" and _device() == "cuda":  # warm the pack's kernels, as seq's first trial
            run_packed(cfgs[:1], cache=cache)  # warms its own; the sequential loop gets the same below
        if args.child == "seq" and _device() == "cuda":
            trial.run_trial(cfgs[0], cache=cache)
        _sync()
        out.update(setup_s=time.perf_counter() - t1, rss_setup_mb=_rss_mb(), gpu_setup_mb=_gpu_peak_mb())
        w, c = time.perf_counter(), time.process_time()
        if args.child == "seq":  # baseline (b)
            for cfg in cfgs:
                trial.run_trial(cfg, cache=cache)
        else:
            results = run_packed(cfgs, cache=cache)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
        _sync()
        out.update(run_s=time.perf_counter() - w, run_cpu_s=time.process_time() - c)
    out["rss_peak_mb"] = _rss_mb()
    out["gpu_peak_mb"] = _gpu_peak_mb()
    print("RESULT " + json.dumps(out), flush=True)


def _dump(path: str, fresh: list, rows: list) -> None:
    with open(path, "w") as f:
        json.dump({"device": _device_name(), "fresh": fresh,
                   "rows": [{"k": k, "seq": s, "packed": p} for k, s, p in rows]}, f, indent=1)


def _spawn(args: argparse.Namespace, mode: str, k: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--k", str(k),
           "--dataset-size", str(args.dataset_size), "--epochs", str(args.epochs),
           "--eval-size", str(args.eval_size)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} K={k} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "process_s": wall}


# -----------------------------------------------------------------------------
# The driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,4,8,16")
    ap.add_argument("--dataset-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--fresh-once", action="store_true",
                    help="time baseline (a) once, not again between the Ks (a machine nobody else uses)")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--child", choices=("fresh", "seq", "packed"))
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="per K, keep the fastest of n runs of each side")
    args = ap.parse_args()
    if args.child:
        return _child(args)

    from scaling.models import ensure_base_model

    ensure_base_model("tiny-llama")  # a cold build is not what this bench measures
    ks = [int(k) for k in args.ks.split(",")]
    print(f"cell: D={args.dataset_size}, epochs={args.epochs}, eval {args.eval_size}+{args.eval_size}, "
          f"batch 32, LoRA r=8 on 7 projections; 1 thread per process; device: {_device_name()}",
          flush=True)  # fmt: skip
    rows, fresh = [], [_spawn(args, "fresh", 1)]
    for i, k in enumerate(ks):
        got: dict[str, dict] = {}
        for r in range(args.repeats):  # alternate which side goes first
            for mode in ("seq", "packed") if (i + r) % 2 == 0 else ("packed", "seq"):
                res = _spawn(args, mode, k)
                if mode not in got or res["run_s"] < got[mode]["run_s"]:
                    got[mode] = res
            if not args.fresh_once:
                fresh.append(_spawn(args, "fresh", 1))
        rows.append((k, got["seq"], got["packed"]))
        if args.json:  # after every K, so a run cut short keeps what it measured
            _dump(args.json, fresh, rows)
        s, p = got["seq"], got["packed"]
        print(f"  K={k:2d}: sequential {s['run_s']:6.1f} s, packed {p['run_s']:6.1f} s "
              f"(cold {p['process_s']:.1f} s), fresh trial {fresh[-1]['process_s']:.1f} s", flush=True)  # fmt: skip

    # per-trial costs; baseline (a) is the mean over the fresh processes run between the Ks
    a_wall = sum(f["process_s"] for f in fresh) / len(fresh)
    startup = sum(f["process_s"] - f["run_s"] for f in fresh) / len(fresh)  # interpreter + imports
    per_h = lambda seconds: 3600.0 / seconds  # noqa: E731  trials per hour from seconds per trial
    print(f"\nbaseline (a), one trial per fresh process: {a_wall:.2f} s per trial "
          f"({startup:.2f} s of it interpreter + imports; run_trial then loads the base and tokenizes) "
          f"= {per_h(a_wall):.0f} trials/h; peak RSS {fresh[0]['rss_peak_mb']:.0f} MB per process")  # fmt: skip
    head = (f"{'K':>3} | {'(b) seq':>8} {'packed':>8} {'ratio':>6} {'cpu ratio':>9} | "
            f"{'(a) fresh':>9} {'packed cold':>11} {'ratio':>6} | {'RSS seq':>8} {'RSS pack':>8} "
            f"{'+K':>6} {'K x (a)':>8}")  # fmt: skip
    print("\ntrials per hour (one core each)\n" + head + "\n" + "-" * len(head))
    for k, s, p in rows:
        b, w, cold = s["run_s"] / k, p["run_s"] / k, p["process_s"] / k
        cpu_ratio = (s["run_cpu_s"] / k) / (p["run_cpu_s"] / k)
        print(f"{k:3d} | {per_h(b):8.0f} {per_h(w):8.0f} {b / w:6.2f} {cpu_ratio:9.2f} | "
              f"{per_h(a_wall):9.0f} {per_h(cold):11.0f} {a_wall / cold:6.2f} | "
              f"{s['rss_peak_mb']:6.0f}MB {p['rss_peak_mb']:6.0f}MB "
              f"{p['rss_peak_mb'] - p['rss_setup_mb']:4.0f}MB {k * fresh[0]['rss_peak_mb']:6.0f}MB")  # fmt: skip
    print("\nratio = packed trials/h / baseline trials/h (goal >= 3 at K = 8); cpu ratio: the same "
          "from CPU seconds;\nRSS: peak resident memory of the process (one base copy in both); "
          "+K: the pack's peak above its loaded base (activations of K batches, K adapters' AdamW);\n"
          "K x (a): K fresh single-trial processes side by side, a base copy and a runtime each.")  # fmt: skip
    print("CPU seconds per packed trial vs K (flat = compute-bound: packing shares only overheads): "
          + ", ".join(f"K={k}: {p['run_cpu_s'] / k:.2f}" for k, _, p in rows)
          + f"; alone: {sum(s['run_cpu_s'] for _, s, _ in rows) / sum(k for k, _, _ in rows):.2f}")
    if any(p["gpu_peak_mb"] for _, _, p in rows):
        print("GPU memory, peak allocated per process: "
              + ", ".join(f"K={k}: packed {p['gpu_peak_mb']:.0f} MB" for k, _, p in rows)
              + f"; one trial alone {fresh[0]['gpu_peak_mb']:.0f} MB (base {rows[0][2]['gpu_setup_mb']:.0f} MB)")  # fmt: skip
    if args.json:
        _dump(args.json, fresh, rows)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
