"""Does early stopping save compute without changing the answer?

1. run the same study twice, side by side in this process: without early stopping
   and with per-cell ASHA on the validation loss;
2. compare train FLOPs and wall time (ratios), and per cell whether the best LR
   agrees: the same LR, or each one inside the other's lr_low-lr_high interval;
3. print the figures (goal: >= 2x less compute, best LR agreeing in >= 80 % of cells).

    .venv/bin/python bench/early_stopping.py [--trials 8] [--epochs 4] [--packing K]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from analysis.lr_cell import best_lr
from scaling.records import read_results
from scaling.spec import parse_spec


def _spec(name: str, *, trials: int, epochs: int, sizes: list[int], method: str, rf: float, packing: int):
    return parse_spec(
        {
            "packing": {"adapters_per_worker": packing},
            "name": name,
            "axes": {"dataset_size": sizes, "epochs": [epochs]},
            "learning_rate": {"low": 3e-4, "high": 3e-2},
            "trials_per_cell": trials,
            "sampler": {"extra_trials": 0},  # both arms get the same fixed budget
            "eval": {"validation_size": 300, "test_size": 300},
            "early_stopping": {"method": method, "grace_epochs": 1, "reduction_factor": rf},
        }
    )


def _inside(lr, row) -> bool:
    return bool(np.isfinite(row.lr_low) and row.lr_low <= lr <= row.lr_high)


def _agrees(ref, es) -> bool:
    """The early-stopped answer agrees when it is the same LR or lies inside the
    full-compute run's interval (the reference's own uncertainty)."""
    return bool(np.isclose(ref.lr_best, es.lr_best, rtol=1e-9) or _inside(es.lr_best, ref))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--sizes", default="300,600,1200,2400")
    ap.add_argument("--reduction-factor", type=float, default=3)
    ap.add_argument("--packing", type=int, default=1,
                    help="adapters per worker in both runs (K > 1: packs stop their own members)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from scaling.models import ensure_base_model
    from scaling.sweep import run_sweep

    ensure_base_model("tiny-llama")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("none", "asha"):
            spec = _spec(
                f"es-{method}", trials=args.trials, epochs=args.epochs, sizes=sizes, method=method,
                rf=args.reduction_factor, packing=args.packing,
            )  # fmt: skip
            t0 = time.perf_counter()
            res = run_sweep(spec, out=Path(tmp) / method)
            wall = time.perf_counter() - t0
            df = read_results(res.run_dir)
            final = df.sort_values("epoch").groupby("trial_id").tail(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best = best_lr(df, bootstrap=200).set_index(["dataset_size", "epochs"])
            out[method] = {
                "wall": wall,
                "flops": float(final["train_flops"].sum()),
                "pruned": int((final["status"] == "pruned").sum()),
                "trials": len(final),
                "best": best,
            }
            print(f"{method:5s}: {len(final)} trials, {out[method]['pruned']} pruned, "
                  f"{out[method]['flops']:.3e} train FLOPs, {wall:.1f} s")  # fmt: skip

    a, b = out["none"]["best"], out["asha"]["best"]
    cells = a.index.intersection(b.index)
    agree = [_agrees(a.loc[c], b.loc[c]) for c in cells]
    for c, ok in zip(cells, agree, strict=True):
        print(f"  cell D={c[0]} E={c[1]}: lr* {a.loc[c].lr_best:.2e} [{a.loc[c].lr_low:.2e}, {a.loc[c].lr_high:.2e}]"
              f" vs {b.loc[c].lr_best:.2e} [{b.loc[c].lr_low:.2e}, {b.loc[c].lr_high:.2e}] -> {'agree' if ok else 'DIFFER'}"
              f" (mutual: {'yes' if _inside(a.loc[c].lr_best, b.loc[c]) and ok else 'no'})")  # fmt: skip
    print(f"compute ratio (none/asha): {out['none']['flops'] / out['asha']['flops']:.2f}x  (goal >= 2)")
    print(f"wall ratio    (none/asha): {out['none']['wall'] / out['asha']['wall']:.2f}x")
    print(f"best LR agrees in {sum(agree)}/{len(agree)} cells ({100 * np.mean(agree):.0f} %, goal >= 80 %):"
          " same LR, or the early-stopped lr* inside the full run's interval")  # fmt: skip


if __name__ == "__main__":
    main()
