"""What does the sweep machinery cost? The same K trials through Ray Tune + Optuna vs a plain loop.

1. run K trials of one cell through `run_sweep` (local Ray, one trial at a time so
   both sides use the same cores), timing everything: Ray start-up, Optuna,
   actor start, recording rows;
2. run the very same configs (the LRs Optuna chose) back to back in this process
   with `trial.run_trial`, the base model loaded once, as a hand-written script would;
3. print both wall times and their ratio (goal <= 1.15 for trials of ~20 s).

    .venv/bin/python bench/sweep_overhead.py [--k 4] [--dataset-size 4000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scaling.records import read_results
from scaling.spec import parse_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dataset-size", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    from scaling.models import ensure_base_model

    ensure_base_model("tiny-llama")  # a cold build is not what this bench measures
    spec = parse_spec(
        {
            "name": "overhead",
            "axes": {"dataset_size": [args.dataset_size], "epochs": [args.epochs]},
            "learning_rate": {"low": 1e-3, "high": 1e-2},
            "trials_per_cell": args.k,
            "sampler": {"extra_trials": 0},  # exactly k trials, as the direct loop runs
            "resources": {"cpus": 1, "max_concurrent": 1},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        # 1. through the sweep
        from scaling.sweep import run_sweep

        t0 = time.perf_counter()
        res = run_sweep(spec, out=Path(tmp) / "run")
        t_sweep = time.perf_counter() - t0
        df = read_results(res.run_dir)
        configs = df.drop_duplicates("trial_id")[["learning_rate", "seed"]].to_dict("records")
        in_trial = df.sort_values("epoch").groupby("trial_id").tail(1)["wall_seconds"].sum()

    # 2. the same configs, back to back in one plain process
    from scaling import trial

    cache: dict = {}
    t0 = time.perf_counter()
    for c in configs:
        cfg = trial.TrialConfig(
            model=spec.model, task_kind="addition", task_digits=2, task_path=None, task_seed=0,
            dataset_size=args.dataset_size, epochs=args.epochs, learning_rate=float(c["learning_rate"]),
            seed=int(c["seed"]), threads=1,
        )  # fmt: skip
        trial.run_trial(cfg, cache=cache)
    t_plain = time.perf_counter() - t0

    # 3. the figures
    k = len(configs)
    print(f"trials: {k} x (D={args.dataset_size}, epochs={args.epochs}), one at a time, 1 thread each")
    print(f"plain loop      : {t_plain:7.1f} s  ({t_plain / k:.1f} s per trial)")
    print(f"sweep (Ray+Optuna): {t_sweep:7.1f} s  (time inside trials {in_trial:.1f} s)")
    print(f"ratio sweep/plain: {t_sweep / t_plain:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
