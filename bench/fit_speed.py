"""Speed of analysis.fit against its goals; prints ratios (time / goal, < 1 is good).

    .venv/bin/python bench/fit_speed.py [--repeat 7] [--coverage 200] [--auto-coverage 100]

1. Chinchilla replication (Besiroglu et al. 2024): 240 points, the full
   4,500-start grid. Goal (issue 16): <= 0.25 s, same optimum.
2. A 7-parameter data-constrained fit on 150 points. Goal (issue 16): <= 1 s.
3. A 50-point power-law fit with 1,000 bootstrap resamples. Goal: < 2 s.
4. law="auto" on 24 points (four candidates, leave-largest-out).
5. Coverage of the 90% prediction interval at 4x beyond the data: power laws
   (the issue 16 check), and planted Chinchilla laws (a large grid, where the
   two searches differ).
6. The same under law="auto" (planted power laws with a floor; 20 points at 1%
   and 5% noise, and the demo's 5 sizes x 2 seeds at 5%): each resample
   choosing its law again (today's intervals) side by side with the law fixed
   at the one chosen on the data (the chosen law's own refits: how intervals
   were made before issue 16's fix, on today's choice), from the same fits,
   and the time per fit.

Every item runs today's search ("profile": variable-projection starts, see
analysis/_fit_profile.py) side by side with the one it replaced ("grid": the
256 best of the screened grid; LawFit._search = "grid"), interleaved run by
run (grid, profile, grid, profile, ...), and prints the MEDIAN wall and CPU
time of each, the optimum each found (parameters and objective) and their
largest relative parameter difference.

Wall time is what the goal is about; CPU time is printed beside it because
this machine is shared (the load average is printed too): when the load is
above the core count, wall time overstates the cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.fit import LawFit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL_CHINCHILLA_S = 0.25
GOAL_DATA_CONSTRAINED_S = 1.0
GOAL_BOOTSTRAP_S = 2.0
SEARCHES = ("grid", "profile")


def fit_with(search: str, law: str, data, x, y, **kw) -> LawFit:
    est = LawFit(law, **kw)
    est._search = search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(data, x, y)


def data_constrained_data(n: int = 150) -> pd.DataFrame:
    from analysis.laws import data_constrained

    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), n))
    U = np.exp(rng.uniform(np.log(1e8), np.log(2e9), n))
    D = U * np.exp(rng.uniform(0.0, np.log(60.0), n))  # up to 60 epochs
    y = data_constrained(
        N, D, U, E=1.7, A=400.0, B=2e3, alpha=0.34, beta=0.37, R_D_star=15.0, R_N_star=5.0
    )
    return pd.DataFrame({"N": N, "D": D, "U_D": U, "loss": y * np.exp(rng.normal(0, 0.01, n))})


def coverage(n_curves: int, search: str) -> tuple[float, float]:
    """(share covered, seconds): 90% interval at 4x beyond the data, power laws
    as in tests/test_fit.py::_extrapolation_coverage."""
    rng = np.random.default_rng(0)
    x = np.geomspace(1e2, 1e4, 20)
    hit, t0 = 0, time.perf_counter()
    for i in range(n_curves):
        E, A, al = rng.uniform(0.3, 1.5), np.exp(rng.uniform(1, 4)), rng.uniform(0.2, 0.6)
        y = (E + A * x**-al) * np.exp(rng.normal(0, 0.01, x.size))
        f = fit_with(search, "power", {"x": x, "y": y}, "x", "y", bootstrap=200, seed=i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = f.predict_interval({"x": [4e4]}, level=0.9)
        hit += bool(lo[0] <= E + A * 4e4**-al <= hi[0])
    return hit / n_curves, time.perf_counter() - t0


def chinchilla_coverage(n_curves: int, search: str) -> tuple[float, float, float]:
    """(share covered, mean 90% width / prediction, seconds): planted
    Chinchilla laws on a 5 x 5 (N, D) design with 1% noise, default 4,500-start
    grid, 100 resamples; the 90% prediction interval at 4x the largest N and D."""
    rng = np.random.default_rng(0)
    N, D = np.repeat(np.geomspace(1e7, 1e9, 5), 5), np.tile(np.geomspace(1e8, 1e11, 5), 5)
    hit, widths, t0 = 0, [], time.perf_counter()
    for i in range(n_curves):
        p = dict(
            E=rng.uniform(1.0, 2.5),
            A=np.exp(rng.uniform(4, 7)),
            B=np.exp(rng.uniform(5, 8)),
            alpha=rng.uniform(0.25, 0.45),
            beta=rng.uniform(0.25, 0.45),
        )
        truth = p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]
        y = truth * np.exp(rng.normal(0, 0.01, N.size))
        f = fit_with(search, "chinchilla", {"N": N, "D": D, "y": y}, ["N", "D"], "y",
                     bootstrap=100, seed=i)  # fmt: skip
        Nq, Dq = 4e9, 4e11
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = f.predict_interval({"N": [Nq], "D": [Dq]}, level=0.9)
            mid = f.predict({"N": [Nq], "D": [Dq]})
        t = p["E"] + p["A"] * Nq ** -p["alpha"] + p["B"] * Dq ** -p["beta"]
        hit += bool(lo[0] <= t <= hi[0])
        widths.append((hi[0] - lo[0]) / mid[0])
    return hit / n_curves, float(np.mean(widths)), time.perf_counter() - t0


AUTO_SCENARIOS = {  # name: (x values, noise SD)
    "20 points, 1% noise": (np.geomspace(1e2, 1e4, 20), 0.01),
    "20 points, 5% noise": (np.geomspace(1e2, 1e4, 20), 0.05),
    "demo: 5 sizes x 2 seeds, 5% noise": (np.repeat([300.0, 600, 1200, 2400, 4800], 2), 0.05),
}


def auto_coverage(n_curves: int, x: np.ndarray, noise: float) -> dict:
    """law="auto" on planted power laws (E in [0.3, 1.5], A in [e, e^4], alpha in
    [0.2, 0.6]), 100 resamples: the share of curves whose 90% interval at 4x the
    largest x covers the truth, with each resample choosing its law ("rechosen")
    and with the law fixed at the one chosen on the data ("fixed": the chosen
    law's own refits, draw_thetas_), the median wall and CPU seconds per fit and
    how often each law was chosen."""
    rng = np.random.default_rng(0)
    xq = np.array([[4 * x.max()]])
    hit = {"rechosen": 0, "fixed": 0}
    walls, cpus, chosen = [], [], {}
    for i in range(n_curves):
        E, A, al = rng.uniform(0.3, 1.5), np.exp(rng.uniform(1, 4)), rng.uniform(0.2, 0.6)
        y = (E + A * x**-al) * np.exp(rng.normal(0, noise, x.size))
        w0, c0 = time.perf_counter(), time.process_time()
        f = fit_with("profile", "auto", {"x": x, "y": y}, "x", "y", bootstrap=100, seed=i)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        truth = E + A * xq[0, 0] ** -al
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = f.predict_interval({"x": xq[:, 0]}, level=0.9)
        own = np.exp(f.law_.log_predict(f.draw_thetas_, xq))[:, 0]
        o_lo, o_hi = np.quantile(own, [0.05, 0.95])
        hit["rechosen"] += bool(lo[0] <= truth <= hi[0])
        hit["fixed"] += bool(o_lo <= truth <= o_hi)
        chosen[f.law_name_] = chosen.get(f.law_name_, 0) + 1
    return {**{k: v / n_curves for k, v in hit.items()}, "wall": float(np.median(walls)),
            "cpu": float(np.median(cpus)), "chosen": chosen}  # fmt: skip


def paired(fn, repeat: int):
    """{search: (median wall, median CPU, last result)}: fn(search) run
    ``repeat`` times per search, the searches interleaved, after one warm-up each."""
    for s in SEARCHES:
        fn(s)
    walls: dict[str, list[float]] = {s: [] for s in SEARCHES}
    cpus: dict[str, list[float]] = {s: [] for s in SEARCHES}
    out = {}
    for _ in range(repeat):
        for s in SEARCHES:
            w0, c0 = time.perf_counter(), time.process_time()
            out[s] = fn(s)
            walls[s].append(time.perf_counter() - w0)
            cpus[s].append(time.process_time() - c0)
    return {s: (float(np.median(walls[s])), float(np.median(cpus[s])), out[s]) for s in SEARCHES}


def report(title: str, res, goal: float | None, ignore: tuple[str, ...] = ()) -> None:
    """Print the side-by-side block of one paired timing."""
    print(title)
    for s in SEARCHES:
        w, c, fit = res[s]
        ratio = f"  goal {goal:.2f} s  ratio {w / goal:.2f}" if goal else ""
        print(f"  {s:8s} wall {w:.3f} s  cpu {c:.3f} s{ratio}   "
              f"minimised {fit.optimizer_['n_minimised']} of {fit.n_starts_} "
              f"(search used: {fit.optimizer_['search']})")  # fmt: skip
    for s in SEARCHES:
        fit = res[s][2]
        ps = "  ".join(f"{k}={v:.10g}" for k, v in fit.params_.items())
        print(f"  {s:8s} objective {fit.optimizer_['objective']:.15g}  {ps}")
    g, p = res["grid"][2], res["profile"][2]
    fg, fp = g.optimizer_["objective"], p.optimizer_["objective"]
    keys = [k for k in g.params_ if k not in ignore]
    diff = max(abs(p.params_[k] / g.params_[k] - 1.0) for k in keys)
    note = f" (not counting {', '.join(ignore)}: not identified by these data)" if ignore else ""
    print(f"  profile vs grid: objective {fp - fg:+.3e} ({(fp - fg) / fg:+.2e} relative), "
          f"largest relative parameter difference {diff:.2e}{note}")  # fmt: skip
    print(f"  speed-up (median wall) {res['grid'][0] / res['profile'][0]:.2f}x, "
          f"(median cpu) {res['grid'][1] / res['profile'][1]:.2f}x")  # fmt: skip


def chinchilla_data() -> pd.DataFrame:
    raw = pd.read_csv(ROOT / "tests" / "data" / "chinchilla_svg_extracted.csv")
    df = pd.DataFrame({"N": raw["Model Size"], "loss": raw["loss"]})
    df["D"] = raw["Training FLOP"] / (6 * raw["Model Size"])
    return df.sort_values("loss").iloc[:-5]  # Besiroglu et al. drop the 5 highest losses


def power_data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = np.geomspace(1e2, 1e5, 50)
    return pd.DataFrame({"x": x, "y": (0.5 + 30 * x**-0.4) * np.exp(rng.normal(0, 0.02, 50))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="paired runs per timing; medians count")
    ap.add_argument("--coverage", type=int, default=200, help="power-law curves for coverage")
    ap.add_argument("--chinchilla-coverage", type=int, default=40,
                    help="planted Chinchilla curves for coverage")  # fmt: skip
    ap.add_argument("--auto-coverage", type=int, default=100,
                    help="planted power-law curves per law='auto' coverage scenario")  # fmt: skip
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average (1 min): {load:.2f}, "
          f"paired repeats: {args.repeat} (medians)")  # fmt: skip

    df = chinchilla_data()
    res = paired(lambda s: fit_with(s, "chinchilla", df, ["N", "D"], "loss"), args.repeat)
    report(f"\nChinchilla, {len(df)} points, {res['grid'][2].n_starts_} starts",
           res, GOAL_CHINCHILLA_S)  # fmt: skip
    print("  Besiroglu et al.: E=1.8172 A=482.01 B=2085.43 alpha=0.3478 beta=0.3658")

    dc = data_constrained_data()
    res = paired(lambda s: fit_with(s, "data_constrained", dc, ["N", "D", "U_D"], "loss"),
                 args.repeat)  # fmt: skip
    report(f"\nData-constrained (7 parameters), {len(dc)} points, {res['grid'][2].n_starts_} starts",
           res, GOAL_DATA_CONSTRAINED_S, ignore=("R_N_star",))  # fmt: skip
    print("  (U_N = N here, so R_N is 0 and R_N_star has no effect on any prediction)")

    pw = power_data()
    res = paired(lambda s: fit_with(s, "power", pw, "x", "y", bootstrap=1000, seed=0),
                 max(1, args.repeat // 2))  # fmt: skip
    report(f"\nPower law, {len(pw)} points, 1,000 bootstrap resamples", res, GOAL_BOOTSTRAP_S)
    for s in SEARCHES:
        fit = res[s][2]
        print(f"  {s:8s} " + "  ".join(
            f"{k}={v:.4g} [{fit.ci_[k][0]:.4g}, {fit.ci_[k][1]:.4g}]" for k, v in fit.params_.items()
        ))  # fmt: skip

    x = np.geomspace(1e2, 1e5, 24)
    y = (0.3 + 50 / (300 + x**0.8)) * np.exp(np.random.default_rng(0).normal(0, 0.01, x.size))
    res = paired(lambda s: fit_with(s, "auto", {"x": x, "y": y}, "x", "y"), 1)
    print("\nlaw='auto', 24 points of a planted rectified law")
    for s in SEARCHES:
        w, c, fit = res[s]
        errs = {k: v["holdout_error"] for k, v in fit.selection_["candidates"].items()}
        print(
            f"  {s:8s} chose {fit.law_name_}  wall {w:.2f} s  cpu {c:.2f} s  held-out errors "
            + "  ".join(f"{k}={'n/a' if v is None else f'{v:.4f}'}" for k, v in errs.items())
        )

    if args.coverage:
        print(f"\nCoverage of the 90% interval at 4x beyond the data, {args.coverage} power-law "
              "curves (goal 0.85-0.95; 150-start grid: both searches minimise every start)")  # fmt: skip
        for s in SEARCHES:
            share, secs = coverage(args.coverage, s)
            print(f"  {s:8s} {share:.3f}  ({secs:.1f} s)")
    if args.chinchilla_coverage:
        n = args.chinchilla_coverage
        print(f"\nCoverage of the 90% interval at 4x the largest N and D, {n} planted Chinchilla "
              "laws (25 points, 1% noise, 4,500-start grid, 100 resamples)")  # fmt: skip
        for s in SEARCHES:
            share, width, secs = chinchilla_coverage(n, s)
            print(f"  {s:8s} {share:.3f}  mean width {width:.4f} of the prediction  ({secs:.1f} s)")

    if args.auto_coverage:
        n = args.auto_coverage
        print(f"\nlaw='auto': coverage of the 90% interval at 4x beyond the data, {n} planted power laws "
              "with a floor per line, 100 resamples (goal 0.85-0.95); 'rechosen': each resample chooses "
              "its law again (today); 'fixed': the law chosen on the data, its own refits (the method before)")  # fmt: skip
        for name, (xs, noise) in AUTO_SCENARIOS.items():
            r = auto_coverage(n, xs, noise)
            print(f"  {name:36s} rechosen {r['rechosen']:.3f}  fixed {r['fixed']:.3f}  "
                  f"per fit: wall {r['wall']:.2f} s  cpu {r['cpu']:.2f} s  chosen {r['chosen']}")  # fmt: skip


if __name__ == "__main__":
    main()
