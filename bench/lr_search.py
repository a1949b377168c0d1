"""Does the bracketing LR sampler beat today's per-cell TPE on the same study?

Side by side, on the same cells and the same trial budget:
  * "tpe": today's search, a TPE per cell as scaling/sweep/searcher.py once built it
    (constant liar, 2 startup trials), with the anchor at the log-midpoint first;
  * "bracket": `scaling.lr_sampler.BracketSampler`, cells sharing one storage so
    later cells start at the LR the earlier, bracketed ones predict.
Per cell it reports whether the best LR was bracketed after 3 trials (a tried LR
on each side), the lr* interval width (lr_high / lr_low of `analysis.lr_cell.best_lr`,
90%, after the full budget) and lr*'s distance from the reference (a dense grid
of 12 LRs on the real model; the planted optimum in the synthetic mode).
Goal: bracketed with 3 trials in >= 80% of cells, lr* within 1.3x of the reference.

    .venv/bin/python bench/lr_search.py real      [--budget 6]   # 2 sizes x 2 epochs, tiny model
    .venv/bin/python bench/lr_search.py synthetic [--reps 10]    # 21 planted cells x reps, + packs of 8

Trials of the real mode run in this process through `run_trial` (no Ray), one
thread; identical configs are trained once (training is deterministic on CPU).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd

from analysis.lr_cell import best_lr
from scaling.lr_sampler import BracketSampler, cell_attrs
from scaling.models import ensure_base_model
from scaling.spec import parse_spec
from scaling.sweep.searcher import (
    _sampler as sweep_tpe_sampler,  # today's TPE, as the sweep builds it
)
from scaling.tiny import BUILTIN_TINY

# the one import of the trial code (scaling/trial/)
from scaling.trial import TrialConfig, TrialDiverged, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

# real mode: small enough for 2 CPU cores (about 1.5-8 s a trial), wide enough to need a search
REAL_SIZES = (400, 1600)
REAL_EPOCHS = (1, 2)
REAL_RANGE = (3e-4, 3e-2)  # two decades around the tiny model's usual ~3e-3
GRID = 12  # reference LRs per cell, log-spaced over the range: a x1.52 step
BRACKET_AT = 3  # trials by which a cell should be bracketed
TOL = 1.3  # lr* must be within 1.3x of the reference


# ---- the two searches on one cell ----------------------------------------------------


def tpe_cell(
    evaluate: Callable[[float], float | None], *, index: int, budget: int, lr_range, pack: int = 1
) -> list[tuple[float, float | None]]:
    """Today's per-cell TPE with the anchor: (lr, value or None if diverged) per trial."""
    spec = parse_spec(
        {
            "name": "bench",
            "axes": {"dataset_size": [1000], "epochs": [1]},
            "learning_rate": {"low": lr_range[0], "high": lr_range[1], "log": True},
            "trials_per_cell": budget,
            "sampler": {"kind": "tpe", "seed": 0, "anchor": True},
        }
    )
    study = optuna.create_study(sampler=sweep_tpe_sampler(spec, index), direction="minimize")
    study.enqueue_trial(
        {"learning_rate": math.sqrt(lr_range[0] * lr_range[1])}, user_attrs={"anchor": True}
    )
    return _drive(study, evaluate, budget=budget, lr_range=lr_range, pack=pack)


def bracket_cell(
    evaluate: Callable[[float], float | None],
    *,
    storage,
    name: str,
    axes: dict,
    budget: int,
    lr_range,
    pack: int = 1,
) -> list[tuple[float, float | None]]:
    """The bracketing sampler on one cell of a shared storage."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=BracketSampler(pack_size=pack),
        direction="minimize",
    )
    for k, v in cell_attrs(group=name.rsplit("/", 1)[0], axes=axes).items():
        study.set_user_attr(k, v)
    return _drive(study, evaluate, budget=budget, lr_range=lr_range, pack=pack)


def _drive(
    study, evaluate, *, budget: int, lr_range, pack: int
) -> list[tuple[float, float | None]]:
    """Ask/tell in packs of `pack` (all asked before any is told), as the sweep does."""
    out = []
    while len(out) < budget:
        asked = []
        for _ in range(min(pack, budget - len(out))):
            t = study.ask()
            asked.append((t, t.suggest_float("learning_rate", *lr_range, log=True)))
        for t, lr in asked:
            v = evaluate(lr)
            if v is None:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(t, v)
            out.append((lr, v))
    return out


# ---- reading a cell's trials the way the report does ------------------------------------


def _table(
    trials: dict[tuple, list[tuple[float, float | None]]], n: int | None = None
) -> pd.DataFrame:
    rows = []
    for (d, e), tr in trials.items():
        for i, (lr, v) in enumerate(tr[:n]):
            rows.append(
                {
                    "dataset_size": d,
                    "epochs": e,
                    "trial_id": f"{d}-{e}-{i}",
                    "learning_rate": lr,
                    "epoch": e,
                    "status": "ok" if v is not None else "failed",
                    "val_eval_loss": v if v is not None else np.nan,
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


def _best(trials, n=None, lr_range=None) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return best_lr(_table(trials, n), bootstrap=200, lr_range=lr_range).set_index(
            ["dataset_size", "epochs"]
        )


def score(
    trials, ref: dict[tuple, float], lr_range, *, early_n: int = BRACKET_AT
) -> dict[str, np.ndarray]:
    """Per cell: bracketed after `early_n` trials, final lr*, ratio to the reference, width."""
    early, final = _best(trials, early_n, lr_range), _best(trials, None, lr_range)
    keys = list(trials)
    ratio = np.array([final.loc[k, "lr_best"] / ref[k] for k in keys])
    return {
        "bracketed3": np.array(
            [not bool(early.loc[k, "at_edge"]) and early.loc[k, "method"] != "none" for k in keys]
        ),
        "bracketed": np.array([not bool(final.loc[k, "at_edge"]) for k in keys]),
        "lr": np.array([final.loc[k, "lr_best"] for k in keys]),
        "ratio": ratio,
        "width": np.array([final.loc[k, "lr_high"] / final.loc[k, "lr_low"] for k in keys]),
        "kind": np.array([early.loc[k, "edge_kind"] for k in keys]),
    }


def _summary(label: str, s: dict[str, np.ndarray], *, early_n: int = BRACKET_AT) -> str:
    dist = np.exp(np.abs(np.log(s["ratio"])))
    return (
        f"{label:<8} bracketed@{early_n}: {s['bracketed3'].mean():6.1%}   bracketed@budget: "
        f"{s['bracketed'].mean():6.1%}   lr* within {TOL}x: {np.mean(dist < TOL):6.1%}   "
        f"distance median {np.median(dist):.3f}x max {dist.max():.3f}x   "
        f"interval width median {np.nanmedian(s['width']):.2f}x"
    )


# ---- real mode: the tiny model on 2-digit addition --------------------------------------


def real(budget: int) -> None:
    ensure_base_model(BUILTIN_TINY)
    cache: dict = {}
    done: dict[tuple, float | None] = {}
    spent = {"n": 0, "s": 0.0}

    def evaluator(d: int, e: int) -> Callable[[float], float | None]:
        def f(lr: float) -> float | None:
            key = (d, e, float(lr))
            if key not in done:
                cfg = TrialConfig(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None,
                                  task_seed=0, dataset_size=d, epochs=e, learning_rate=float(lr),
                                  batch_size=32, validation_size=300, test_size=50)  # fmt: skip
                t0 = time.perf_counter()
                try:
                    done[key] = float(run_trial(cfg, cache=cache)[-1]["val_eval_loss"])
                except TrialDiverged:
                    done[key] = None
                spent["n"] += 1
                spent["s"] += time.perf_counter() - t0
            return done[key]

        return f

    cells = [(d, e) for d in REAL_SIZES for e in REAL_EPOCHS]
    print(f"real mode: tiny-llama, 2-digit addition, D x epochs = {REAL_SIZES} x {REAL_EPOCHS}, "
          f"LR range {REAL_RANGE}, budget {budget} trials per cell, reference grid of {GRID} LRs")  # fmt: skip
    grid = {
        k: [(float(lr), evaluator(*k)(lr)) for lr in np.geomspace(*REAL_RANGE, GRID)] for k in cells
    }
    gbest = _best(grid, None, REAL_RANGE)
    ref = {k: float(gbest.loc[k, "lr_best"]) for k in cells}
    tpe = {
        k: tpe_cell(evaluator(*k), index=i, budget=budget, lr_range=REAL_RANGE)
        for i, k in enumerate(cells)
    }
    storage = optuna.storages.InMemoryStorage()
    brk = {
        k: bracket_cell(evaluator(*k), storage=storage, name=f"real/D={k[0]},E={k[1]}",
                        axes={"dataset_size": k[0], "epochs": k[1]}, budget=budget, lr_range=REAL_RANGE)
        for k in cells
    }  # fmt: skip
    st, sb = score(tpe, ref, REAL_RANGE), score(brk, ref, REAL_RANGE)
    print(f"{spent['n']} distinct trials trained in {spent['s']:.0f} s")
    print("\nper cell (reference = quadratic optimum of the 12-LR grid, best_lr):")
    print(f"{'D':>6} {'E':>3} {'grid lr*':>9} | {'sampler':<8} {'LRs tried (x1e-3)':<44} {'brk@3':>5} "
          f"{'lr*':>9} {'dist':>6} {'width':>6}")  # fmt: skip
    for i, k in enumerate(cells):
        for label, tr, s in (("tpe", tpe, st), ("bracket", brk, sb)):
            tried = " ".join(f"{lr * 1e3:.2f}" + ("!" if v is None else "") for lr, v in tr[k])
            dist = math.exp(abs(math.log(s["ratio"][i])))
            print(f"{k[0]:>6} {k[1]:>3} {ref[k]:9.2e} | {label:<8} {tried:<44} {str(bool(s['bracketed3'][i])):>5} "
                  f"{s['lr'][i]:9.2e} {dist:5.2f}x {s['width'][i]:5.2f}x")  # fmt: skip
    print("\ngrid (val loss per LR):")
    for k in cells:
        print(
            f"  D={k[0]} E={k[1]}: "
            + " ".join(f"{lr:.1e}:{'div' if v is None else f'{v:.3f}'}" for lr, v in grid[k])
        )
    print()
    print(_summary("tpe", st))
    print(_summary("bracket", sb))


# ---- synthetic mode: many planted cells ------------------------------------------------


SYN_SIZES = (500, 1000, 2000, 4000, 8000, 16000, 32000)
SYN_EPOCHS = (1, 2, 4)
SYN_RANGE = (1e-4, 1e-1)  # three decades
CURV, NOISE = 0.05, 0.002  # loss = 1 + 0.05 (ln lr - ln lr*)^2 + N(0, 0.002), as in the tests


def synthetic(reps: int) -> None:
    print(f"synthetic mode: {len(SYN_SIZES)} sizes x {len(SYN_EPOCHS)} epochs = {len(SYN_SIZES) * len(SYN_EPOCHS)} "
          f"cells x {reps} studies; lr* = C (D/1000)^-0.4 E^-0.3, C log-uniform in [1e-3, 1e-2]; "
          f"range {SYN_RANGE}; z = ln(lr/lr*); loss = 1 + {CURV} z^2 (+ {CURV} z^3 above lr*: 'asymmetric', "
          f"a steeper high-LR side as real curves have) + N(0, {NOISE})")  # fmt: skip
    for shape in ("parabola", "asymmetric"):
        _synthetic(reps, shape=shape)


def _synthetic(reps: int, *, shape: str) -> None:
    for pack, budget in ((1, 6), (8, 16)):
        res = {"tpe": [], "bracket": []}
        for rep in range(reps):
            c = 10 ** np.random.default_rng(rep).uniform(-3, -2)
            truth = {
                (d, e): c * (d / 1000) ** -0.4 * e**-0.3 for d in SYN_SIZES for e in SYN_EPOCHS
            }

            def evaluator(d, e, rep=rep, truth=truth):
                def f(lr):
                    bits = int(np.float64(lr).view(np.int64)) & 0x7FFFFFFF
                    z = math.log(lr / truth[(d, e)])
                    steep = CURV * z**3 if shape == "asymmetric" and z > 0 else 0.0
                    noise = NOISE * float(np.random.default_rng([rep, d, e, bits]).normal())
                    return 1.0 + CURV * z * z + steep + noise

                return f

            tpe = {k: tpe_cell(evaluator(*k), index=i, budget=budget, lr_range=SYN_RANGE, pack=pack)
                   for i, k in enumerate(truth)}  # fmt: skip
            storage = optuna.storages.InMemoryStorage()
            brk = {k: bracket_cell(evaluator(*k), storage=storage, name=f"syn{rep}/D={k[0]},E={k[1]}",
                                   axes={"dataset_size": k[0], "epochs": k[1]}, budget=budget,
                                   lr_range=SYN_RANGE, pack=pack)
                   for k in truth}  # fmt: skip
            early_n = BRACKET_AT if pack == 1 else pack  # packed: bracketed by the first pack?
            res["tpe"].append(score(tpe, truth, SYN_RANGE, early_n=early_n))
            res["bracket"].append(score(brk, truth, SYN_RANGE, early_n=early_n))
        print(
            f"\n{shape}: pack size {pack}, budget {budget} trials per cell"
            + (" (2 packs)" if pack > 1 else "")
        )
        for label, parts in res.items():
            s = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            print(_summary(label, s, early_n=early_n))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", choices=("real", "synthetic"))
    ap.add_argument("--budget", type=int, default=6, help="trials per cell in real mode")
    ap.add_argument("--reps", type=int, default=10, help="studies of 21 cells in synthetic mode")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.mode == "real":
        real(args.budget)
    else:
        synthetic(args.reps)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
