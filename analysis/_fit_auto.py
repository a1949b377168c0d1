"""How analysis.fit searches (private): which law under law="auto", and from where.

``_select_law`` is the leave-largest-out choice among AUTO_CANDIDATES (on
distinct x values; the rule itself is ``_pick``, which the bootstrap of
analysis/_fit_bootstrap.py also runs per resample); ``_starts`` builds the grid of starting points and ``_multistart`` runs step 4
of ``LawFit.fit``: every start minimised by the batched L-BFGS of
analysis._solver, the competitive distinct end points taken further. See
analysis/fit.py's docstring for how a fit runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis._fit_errors import FitError, FitWarning
from analysis._fit_input import _check_params, _column, _weights
from analysis._fit_profile import _PROFILE_KEEP, _profiled_starts
from analysis._solver import (
    _BOOT_EXTRA_STARTS,
    _FTOL_FINE,
    _MAXITER_FINE,
    _N_REFINE,
    _distinct_best,
    _lbfgs_batch,
    _newton_polish,
    _Objective,
    _Space,
)
from analysis.laws import Law, get_law

__all__: list[str] = []  # private: analysis.fit imports the names it needs

# law="auto": the candidates, simplest first (issue 16): power without a floor,
# power with a floor, the rectified law of Lin et al. (2024, arXiv:2402.02314)
# with its pre-power phase, BNSL with one break (Caballero et al. 2022).
AUTO_CANDIDATES: tuple[str, ...] = ("power_nofloor", "power", "rectified", "bnsl")
# Leave-largest-out: the largest fifth of the distinct x values (at least one)
# is predicted from the rest: the split is on x values, not rows, so repeat
# seeds of one size are never on both sides. A more complex candidate wins only when its
# held-out error is below _AUTO_SIMPLER times the best simpler one's: held-out
# errors on a handful of points are noisy, and a tie goes to the simpler law.
# And it wins only when the pick's held-out error is above _AUTO_NOISE times the challenger's
# own error on the training points (the more flexible fit's residual: an estimate of the
# noise): a pick that predicts the held-out points about as well as the data scatter has left
# nothing for extra terms to explain. On the planted curves of tests/test_fit.py and
# test_report.py a true law's held-out error ran 1.4-2.1x that noise estimate (extrapolation
# adds the fit's own uncertainty), a wrong law's 13-43x; without this rule bnsl (held-out
# 0.0074) was chosen over the true rectified law (0.0088), both at the noise floor.
_AUTO_HOLDOUT_FRACTION = 0.2
_AUTO_SIMPLER = 0.9
_AUTO_NOISE = 3.0
# The bootstrap of law="auto" (analysis/_fit_bootstrap.py) refits every candidate on every
# resample below the split, to score it: from its best start only, for at most
# _AUTO_BOOT_MAXITER iterations (the slowest refits crawl along a vanishing term for 300-500).
# On 12 planted power laws (20 points, 1% and 5% noise, 100 resamples) 3.8% of the resamples'
# picks differed from those of 3 starts and 500 iterations, at 0.85x the time per fit.
_AUTO_BOOT_STARTS = 1
_AUTO_BOOT_MAXITER = 100
# A rising y: law="auto" fits laws of a quantity that falls as x grows (loss, error rate).
# y "rises" when its least-squares slope in log-log times the span of log x exceeds
# _AUTO_RISE_Z times the scatter around that line: more than noise.
_AUTO_RISE_Z = 2.0
# Multi-start: a grid of more than _PROFILE_KEEP starts is replaced by the _PROFILE_KEEP best
# variable-projection starts (analysis/_fit_profile.py); where a law cannot be profiled, or
# under search="grid", a grid of more than _SCREEN_KEEP starts is screened by one batched
# evaluation of the objective and only the _SCREEN_KEEP best starts are minimised (Hoffmann et
# al.'s 4,500-start Chinchilla grid: the 256 best reach the same optimum, to the printed
# digits, at a fraction of the cost), a smaller one minimised whole. bench/fit_speed.py prints
# the two searches side by side. The power law's 150-start grid was minimised whole before
# issue 16's law="auto" bootstrap: profiled, 30 planted curves (20 points, 1% and 5% noise)
# reached the same optimum (objective within 6e-15) in a tenth of the time, and law="auto"
# fits the power law twice (below the split and on all points).
_SCREEN_KEEP = 256


@dataclass
class _AutoState:
    """What law="auto"'s bootstrap needs from the selection: the data, the
    held-out rows, and each candidate's fit below the split (None when it was
    not fitted) with whether its distinct x values make it eligible."""

    X: np.ndarray  # (n, 1)
    yv: np.ndarray
    test: np.ndarray  # (n,) bool: x >= split_at
    cands: dict[str, Any]  # name -> LawFit fitted below the split, or None
    eligible: list[bool]  # by the count of distinct x values


def _split(xv: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """Leave-largest-out on distinct values of the x column ``xv`` (for a law of
    several x columns, its primary one): (test rows, split_at, distinct x
    values below the split, distinct x values held out)."""
    ux = np.unique(xv)
    m = max(1, int(round(_AUTO_HOLDOUT_FRACTION * ux.size)))
    split_at = float(ux[ux.size - m])
    return xv >= split_at, split_at, int(ux.size - m), m


def _rel_error(pred: np.ndarray, y: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Mean |pred - y| / y over the points, each counted ``counts`` times (S, n);
    pred (S, n). Returns (S,)."""
    e = np.abs(pred - y) / y
    if counts is None:
        return e.mean(axis=-1)
    return (e * counts).sum(axis=-1) / counts.sum(axis=-1)


def _pick(eligible: np.ndarray, err: np.ndarray, fit_err: np.ndarray) -> np.ndarray:
    """The leave-largest-out rule, for S selections at once: candidates (the M
    columns, simplest first) with held-out errors ``err`` (S, M) and training
    errors ``fit_err``; a column that is not ``eligible`` (or whose error is not
    finite) never wins. The first eligible candidate is the pick; a later one
    replaces it when its error is below _AUTO_SIMPLER x the pick's and the
    pick's is above _AUTO_NOISE x the challenger's training error. Returns the
    chosen column per row (S,), 0 (the simplest) when none is eligible."""
    S, M = err.shape
    chosen = np.full(S, -1)
    best = np.full(S, np.inf)
    with np.errstate(invalid="ignore"):
        for j in range(M):
            ok = eligible[:, j] & np.isfinite(err[:, j])
            explained = best <= _AUTO_NOISE * fit_err[:, j]  # the pick is at the noise floor
            take = ok & ((chosen < 0) | ((err[:, j] < _AUTO_SIMPLER * best) & ~explained))
            chosen[take] = j
            best[take] = err[take, j]
    chosen[chosen < 0] = 0
    return chosen


def _check_direction(xv: np.ndarray, yv: np.ndarray, x: str, y: str) -> None:
    """FitError when y clearly rises with x: every candidate of law="auto" falls."""
    lx, ly = np.log(xv), np.log(yv)
    if np.unique(lx).size < 3:
        return
    slope, icpt = np.polyfit(lx, ly, 1)
    scatter = float(np.std(ly - (slope * lx + icpt)))
    rise = slope * float(np.ptp(lx))
    if slope > 0 and rise > _AUTO_RISE_Z * scatter:
        raise FitError(
            f'law="auto" fits laws of a quantity that falls as x grows (a loss, an error rate), '
            f"but y column {y!r} rises with x column {x!r} (log-log slope {slope:+.3g}, a rise of "
            f"{rise:.3g} in log y against a scatter of {scatter:.3g}): fit a falling quantity "
            f"(e.g. 1 - {y}) or name a law"
        )


def _select_law(
    est: Any, data: Any, x: Any, y: str, *, weights: Any
) -> tuple[dict[str, Any], _AutoState]:
    """Leave-largest-out choice among AUTO_CANDIDATES for the LawFit ``est``.

    Each candidate is fitted (same delta, no bootstrap) on the points below
    the largest fifth of the distinct x values and scored by the mean absolute
    relative error of its predictions on the points at or above it
    (``_split``). A candidate needs at least 2 distinct x values per
    parameter to be eligible (the simplest is always eligible) and k + 1 of
    them below the split to be fitted, and none of its parameters may end on
    a bound (it would be a simpler law in disguise); ``_pick`` applies the
    rule. A y that clearly rises with x is refused (FitError): every
    candidate falls. Returns (selection, state): selection is {"chosen",
    "n_train", "n_test" (rows), "n_x_train", "n_x_test" (distinct x values),
    "split_at", "candidates": {name: {"k", "eligible", "holdout_error",
    "train_error", "note"}}}; state is what the bootstrap needs (_AutoState).
    """
    if est.fixed or est.init_grid or est.breaks is not None:
        raise FitError('law="auto" takes no fixed, init_grid or breaks: they belong to one law')
    cols = [x] if isinstance(x, str) else list(x)
    if len(cols) != 1:
        raise FitError(f'law="auto" needs exactly one x column, got {len(cols)}: {cols!r}')
    xv = _column(data, cols[0], role="x")
    yv = _column(data, y, role="y")
    n = yv.size
    if xv.size != n:
        raise FitError(f"x column {cols[0]!r} has {xv.size} values but y column {y!r} has {n}")
    w = _weights(data, weights, n)
    _check_direction(xv[w > 0], yv[w > 0], cols[0], y)
    test, split_at, nx_train, nx_test = _split(xv)
    train = ~test
    nx = nx_train + nx_test
    out: dict[str, Any] = {
        "chosen": None,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "n_x_train": nx_train,
        "n_x_test": nx_test,
        "split_at": split_at,
        "candidates": {},
    }
    state = _AutoState(X=xv[:, None], yv=yv, test=test, cands={}, eligible=[])
    M = len(AUTO_CANDIDATES)
    err, fit_err = np.full((1, M), np.nan), np.full((1, M), np.nan)
    eligible = np.zeros((1, M), dtype=bool)
    for j, name in enumerate(AUTO_CANDIDATES):
        k = len(get_law(name).params)
        by_count = nx >= 2 * k or j == 0
        info: dict[str, Any] = {"k": k, "eligible": bool(by_count), "holdout_error": None}
        state.cands[name] = None
        state.eligible.append(bool(by_count))
        out["candidates"][name] = info
        if nx_train < k + 1:
            info["note"] = f"{nx_train} distinct x values below the split for {k} parameters"
            continue
        cand = type(est)(name, delta=est.delta)  # a LawFit, without importing analysis.fit
        cand._search = est._search
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FitWarning)
                cand.fit({"x": xv[train], "y": yv[train]}, "x", "y", weights=w[train])
                pred = cand.predict({"x": xv[test]})
                fitted = cand.predict({"x": xv[train]})
        except FitError as exc:
            info["note"] = f"fit failed: {exc}"
            continue
        state.cands[name] = cand
        err[0, j] = float(_rel_error(pred, yv[test]))
        fit_err[0, j] = float(_rel_error(fitted, yv[train]))
        info["holdout_error"] = float(err[0, j]) if math.isfinite(err[0, j]) else None
        info["train_error"] = float(fit_err[0, j]) if math.isfinite(fit_err[0, j]) else None
        info["note"] = "" if by_count else f"fewer than 2 distinct x values per parameter ({nx}/{k})"
        # a fit with a parameter on its bound has degenerated into a
        # simpler form (no floor, no break, no pre-power phase): it is
        # no evidence for its own extra terms
        stuck = [p for p, st in cand.param_status_.items() if st.endswith("_bound")]
        if stuck and j > 0:
            by_count = info["eligible"] = False
            info["note"] = f"degenerate: {', '.join(stuck)} on a bound"
        eligible[0, j] = by_count
    out["chosen"] = AUTO_CANDIDATES[int(_pick(eligible, err, fit_err)[0])]
    return out, state


def _starts(
    law: Law,
    X: np.ndarray,
    fixed: Mapping[str, float],
    init_grid: Mapping[str, Iterable[float]] | None,
) -> np.ndarray:
    """Full-theta starting rows (S, p): the product of the free params' grids
    (``init_grid``'s values where it names a param, else the law's grid)."""
    user = dict(init_grid or {})
    _check_params(law, user, "init_grid")
    axes = []
    for prm in law.params:
        if prm.name in fixed:  # in fitting space, like every column (log for a log param)
            v = float(fixed[prm.name])
            axes.append(np.array([math.log(v) if prm.log else v]))
            continue
        vals = np.asarray(
            list(user[prm.name]) if prm.name in user else prm.grid_values(X), dtype=np.float64
        ).reshape(-1)
        if vals.size == 0 or not np.isfinite(vals).all() or (prm.log and (vals <= 0).any()):
            kind = "finite positive" if prm.log else "finite"
            raise FitError(
                f"init_grid for {prm.name} must be non-empty {kind} values, got {vals.tolist()!r}"
            )
        axes.append(np.log(vals) if prm.log else vals)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.reshape(-1) for a in mesh], axis=1)


def _distinct_rows(z: np.ndarray, f: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` row indices, best finite f first, that differ from each
    other in z (by more than 1e-4 relative) and in f (by more than 1e-12
    relative: starts that differ only in a parameter the data do not reach,
    such as R*_N when U_N = N, are one start)."""
    order = np.argsort(f, kind="stable")
    keep: list[int] = []
    for i in order:
        if len(keep) == count or not np.isfinite(f[i]):
            break
        if keep:
            zk, fk = z[keep], f[keep]
            same_z = np.max(np.abs(z[i] - zk) / (1.0 + np.abs(zk)), axis=1) <= 1e-4
            same_f = np.abs(f[i] - fk) <= 1e-12 * np.abs(fk)
            if np.any(same_z | same_f):
                continue
        keep.append(int(i))
    return np.array(keep, dtype=int)


def _multistart(
    law: Law,
    obj: _Objective,
    space: _Space,
    T0: np.ndarray,
    X: np.ndarray,
    *,
    search: str = "profile",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 4: minimise the starts of the grid T0 (S, p; full theta), then the
    _N_REFINE best distinct end points at a tighter tolerance. Returns (starts,
    optimizer): the best end point and up to _BOOT_EXTRA_STARTS other
    competitive ones, best first (the bootstrap's starts), and the
    ``optimizer_`` summary.

    Which starts are minimised: under ``search="profile"`` (the default), a
    grid of more than _PROFILE_KEEP starts is replaced by the _PROFILE_KEEP
    best distinct starts of the variable-projection grid
    (analysis/_fit_profile.py), ranked by the objective; under
    ``search="grid"`` (the fitter before issue 16's variable projection, kept
    for bench/fit_speed.py and the tests that compare the two), or where the
    law cannot be profiled, a grid of at most _SCREEN_KEEP starts is
    minimised whole and a larger one screened to its _SCREEN_KEEP best
    starts by one batched evaluation of the objective.
    """

    def fg(zz, rows):
        return obj(zz)

    if search not in ("profile", "grid"):
        raise ValueError(f"search must be 'profile' or 'grid', got {search!r}")
    Z0 = space.z(T0)
    n_grid = int(Z0.shape[0])
    used = "all"
    if n_grid > _PROFILE_KEEP and search == "profile":
        TH = _profiled_starts(law, X, np.exp(obj.ly), obj.w, T0, {int(j) for j in space.free})
        if TH is not None:
            Zp = np.clip(space.z(TH), space.lo, space.hi)
            f0 = np.asarray(obj(Zp)[0], dtype=np.float64)
            keep = _distinct_rows(Zp, np.where(np.isfinite(f0), f0, np.inf), _PROFILE_KEEP)
            if keep.size:
                Z0, used = Zp[keep], "profile"
    if n_grid > _SCREEN_KEEP and used == "all":
        # screen: one batched evaluation of every start, then minimise the best
        f0 = np.asarray(obj(np.clip(Z0, space.lo, space.hi))[0], dtype=np.float64)
        f0 = np.where(np.isfinite(f0), f0, np.inf)
        Z0, used = Z0[np.argsort(f0, kind="stable")[:_SCREEN_KEEP]], "grid"
    zb, fb, nit, status = _lbfgs_batch(fg, Z0, space.lo, space.hi)
    top = _distinct_best(zb, fb, _N_REFINE)
    if not top:
        raise FitError(f"law {law.name!r}: the objective is not finite at any start")
    starts, f_best, converged = _finish(obj, space, zb[top], polish=used == "profile")
    optimizer = {
        "n_starts": n_grid,
        "search": used,
        "n_minimised": int(Z0.shape[0]),
        "median_iterations": float(np.median(nit)),
        "n_converged": int((status == 0).sum()),
        "n_stalled": int((status == 1).sum()),
        "n_maxiter": int((status == 2).sum()),
        "objective": f_best,
        "best_converged": converged,
    }
    return starts, optimizer


def _finish(
    obj: _Objective, space: _Space, Z: np.ndarray, *, polish: bool
) -> tuple[np.ndarray, float, bool]:
    """The second stage of step 4: the end points Z (r, k) minimised at the tight
    tolerance, the best one (under ``polish``) finished by Newton steps. Returns
    (starts, f, converged): the best end point and up to _BOOT_EXTRA_STARTS other
    competitive distinct ones, best first, the best f, and whether it converged."""

    def fg(zz, rows):
        return obj(zz)

    zb, fb, _, status = _lbfgs_batch(
        fg, Z, space.lo, space.hi, ftol=_FTOL_FINE, stall=0.0, maxiter=_MAXITER_FINE
    )
    cands = _distinct_best(zb, fb, 1 + _BOOT_EXTRA_STARTS)
    if not cands:
        raise FitError(f"law {obj.law.name!r}: the objective is not finite at any start")
    b = cands[0]
    if polish:  # to the bottom of the basin: a lower f than the grid path's
        zb[b], fb[b] = _newton_polish(obj, space, zb[b], float(fb[b]))
    return np.array([zb[i] for i in cands]), float(fb[b]), bool(status[b] == 0)
