"""Bootstrap intervals of analysis.fit (private): step 5 of ``LawFit.fit``.

Resampled data enter as integer weights on the original points (or on whole
groups), so every resample is refitted in one batched L-BFGS run, each from
the best solution and the other competitive end points of the multi-start, in
coordinates whitened by the Gauss-Newton curvature at the fit. See
analysis/fit.py's docstring for how a fit runs.

Under law="auto" (``_bootstrap_auto``) each resample also re-runs the choice
of the law: every candidate is refitted on the resample's points below the
split and scored on the rest, the same rule as ``_fit_auto._pick`` picks one,
and the resample's prediction comes from that law refitted on all its points.
Prediction intervals then carry the uncertainty of the choice itself: with
the law fixed at the one chosen on the data, 90% intervals at 4x beyond the
data covered 0.75 and 0.39 of 100 planted power laws (20 points, 1% and 5%
noise; the no-floor law wins on 14 and 77 of them), each resample choosing
again 0.92 and 0.85 (bench/fit_speed.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis._fit_auto import _AUTO_BOOT_MAXITER, _AUTO_BOOT_STARTS, _finish, _pick, _rel_error
from analysis._fit_diagnose import _on_bound
from analysis._solver import (
    _BOOT_FTOL,
    _BOOT_MAXITER,
    _BOOT_STALL,
    _lbfgs_batch,
    _Objective,
    _Space,
    _space,
    _whitener,
)

__all__: list[str] = []  # private: analysis.fit imports the names it needs


def _counts(rng: np.random.Generator, B: int, n: int, codes) -> np.ndarray:
    """(B, n) multiplicities of B resamples: of the points, or of whole groups
    (``codes``)."""
    if codes is not None:  # resample whole groups (e.g. all seeds of a cell together)
        G = int(codes.max()) + 1
        return rng.multinomial(G, np.full(G, 1.0 / G), size=B).astype(np.float64)[:, codes]
    return rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)


def _refit(
    obj: _Objective, space: _Space, starts: np.ndarray, counts: np.ndarray, *, maxiter: int = _BOOT_MAXITER
):
    """Refit the resamples ``counts`` (B, n) from ``starts`` (r, k), best first,
    in one batched run of at most ``maxiter`` iterations. Returns (thetas (B, p),
    ok (B,)): each resample's best end point (NaN where every start failed)."""
    B, r = counts.shape[0], starts.shape[0]
    # rows b*r .. b*r+r-1 belong to resample b; optimise in whitened
    # coordinates u (z = z0 + u L^T) when the bounds are out of reach
    z0 = starts[0]
    L = _whitener(obj, space, z0)
    k = z0.size
    if L is None:  # u = z - z0 itself, so the bounds on z move by z0
        L, lo, hi = np.eye(k), space.lo - z0, space.hi - z0
    else:
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
    U0 = np.tile(np.linalg.solve(L, (starts - z0).T).T, (B, 1))

    def fg(uu, rows):
        fz, gz = obj(z0 + uu @ L.T, counts[rows // r])
        return fz, gz @ L

    u, f, _, _ = _lbfgs_batch(fg, U0, lo, hi, ftol=_BOOT_FTOL, stall=_BOOT_STALL, maxiter=maxiter)
    z = np.clip(z0 + u @ L.T, space.lo, space.hi)
    f = f.reshape(B, r)
    pick = np.argmin(np.where(np.isfinite(f), f, np.inf), axis=1)
    ok = np.isfinite(f[np.arange(B), pick])
    thetas = space.theta(z.reshape(B, r, -1)[np.arange(B), pick])
    thetas[~ok] = np.nan
    return thetas, ok


def _intervals(fit: Any, thetas: np.ndarray) -> list[str]:
    """Set the LawFit ``fit``'s draws_, draw_thetas_ and ci_ from the refits
    ``thetas`` (B, p) of its law (percentile intervals at ``fit.level``, each
    reaching its own estimate); returns the warnings to give."""
    msgs = []
    law = fit.law_
    nat = np.where([p.log for p in law.params], np.exp(thetas), thetas)
    fit.draws_ = nat
    fit.draw_thetas_ = thetas
    qlo, qhi = (1 - fit.level) / 2, (1 + fit.level) / 2
    for j, prm in enumerate(law.params):
        if prm.name in fit.fixed_:
            continue
        lo_, hi_ = np.quantile(nat[:, j], [qlo, qhi])
        est = float(fit.params_[prm.name])
        if np.isfinite(est) and not lo_ <= est <= hi_:
            # the refits settle off the estimate (another optimum, or a bound): an interval
            # that excludes its own estimate would mislead, so it reaches the estimate
            msgs.append(f"{prm.name}={est:.4g} lies outside its bootstrap interval [{lo_:.4g}, {hi_:.4g}]; "
                        "the interval is extended to it (the refits find another optimum)")  # fmt: skip
            lo_, hi_ = min(lo_, est), max(hi_, est)
        fit.ci_[prm.name] = (float(lo_), float(hi_))
    return msgs


def _failed(B: int, ok: np.ndarray) -> list[str]:
    bad = int((~ok).sum())
    return [f"{bad} of {B} bootstrap refits failed; intervals use the rest"] if bad > 0.1 * B else []


def _bootstrap(fit: Any, obj: _Objective, space: _Space, starts: np.ndarray, codes) -> None:
    """Refit ``fit.bootstrap`` resamples from ``starts`` (r, k), best first; set
    the LawFit ``fit``'s draws_, draw_thetas_, ci_ and mixture_. Warns through
    ``fit._warn``, so it must be called from ``LawFit.fit`` itself (the
    warnings' stacklevel)."""
    _, thetas, ok, messages = _resample(fit, obj, space, starts, codes)
    for msg in messages:
        fit._warn(msg)
    if ok.any():
        fit.mixture_ = [(fit.law_, thetas[ok])]


def _resample(fit: Any, obj: _Objective, space: _Space, starts: np.ndarray, codes):
    """The draws both bootstraps share: ``fit.bootstrap`` resamples (seeded by ``fit.seed``)
    refitted from ``starts``, the fit's ci_ / draws_ set from the ok ones. Returns (counts, thetas,
    ok, warnings to give): the callers warn themselves, so the warnings' stacklevel stays theirs."""
    B = int(fit.bootstrap)
    counts = _counts(np.random.default_rng(fit.seed), B, obj.n, codes)
    thetas, ok = _refit(obj, space, starts, counts)
    messages = list(_failed(B, ok))
    if ok.any():
        messages += list(_intervals(fit, thetas[ok]))
    return counts, thetas, ok, messages


def _bootstrap_auto(
    fit: Any, obj: _Objective, space: _Space, starts: np.ndarray, codes, state: Any
) -> None:
    """``_bootstrap`` for law="auto": the resamples re-run the choice of the law.

    The resamples are those of ``_bootstrap`` (same seed, same counts), so the
    chosen law's intervals are those of a fit of that law alone. Per resample,
    every candidate that the selection fitted and whose
    distinct x values allow it is refitted (from its best start) on the points
    below the split and scored on the rest; ``_pick`` chooses as on the data
    (a candidate refit on a bound is out). The chosen law's parameter intervals
    (``ci_``, ``draws_``) are its refits on every resample, conditional on that
    law; ``mixture_`` holds, per resample, the refit of the law that resample
    chose, on all its points, and prediction intervals come from it.
    ``selection_["bootstrap"]`` gets each law's share of the resamples.
    """
    B = int(fit.bootstrap)
    test = state.test
    counts, thetas, ok, messages = _resample(fit, obj, space, starts, codes)
    for msg in messages:
        fit._warn(msg)
    if not ok.any():
        return
    names = list(state.cands)
    M = len(names)
    err, fit_err = np.full((B, M), np.nan), np.full((B, M), np.nan)
    eligible = np.zeros((B, M), dtype=bool)
    c_tr, c_te = counts[:, ~test], counts[:, test]
    # a resample that drew none of the held-out points is scored on them all (20 points with
    # 4 held out: 1% of resamples; 5 sizes x 2 seeds: 11%)
    c_te = np.where(c_te.sum(1, keepdims=True) > 0, c_te, 1.0)
    X, yv = state.X, state.yv
    for j, nm in enumerate(names):
        cand = state.cands[nm]
        if cand is None or not state.eligible[j]:
            continue
        cobj, cspace, cstarts = cand._solution
        th, okj = _refit(cobj, cspace, cstarts[:_AUTO_BOOT_STARTS], c_tr, maxiter=_AUTO_BOOT_MAXITER)
        law = cand.law_
        with np.errstate(over="ignore", invalid="ignore"):
            err[:, j] = _rel_error(np.exp(law.log_predict(th, X[test])), yv[test], c_te)
            fit_err[:, j] = _rel_error(np.exp(law.log_predict(th, X[~test])), yv[~test], c_tr)
        eligible[:, j] = okj
        if j > 0:  # a refit on a bound is a simpler law in disguise
            eligible[:, j] &= ~_on_bound(cspace, cspace.z(np.where(okj[:, None], th, 0.0))).any(1)
    pick = _pick(eligible, err, fit_err)
    pick[~ok] = -1
    chosen = names.index(fit.law_name_)
    mixture = [(fit.law_, thetas[pick == chosen])]
    for j, nm in enumerate(names):
        rows = np.flatnonzero(pick == j)
        if j == chosen or rows.size == 0:
            continue
        th = _full_refit(state.cands[nm], X, obj, counts[rows])
        if th is not None:
            mixture.append((state.cands[nm].law_, th))
    fit.mixture_ = [(law, th) for law, th in mixture if th.shape[0]]
    n_draws = sum(th.shape[0] for _, th in fit.mixture_)
    share = {nm: 0.0 for nm in names}
    for law, th in fit.mixture_:
        share[law.name] = th.shape[0] / n_draws
    fit.selection_["bootstrap"] = {"n": n_draws, "chosen_share": share}


def _full_refit(cand: Any, X: np.ndarray, obj: _Objective, counts: np.ndarray) -> np.ndarray | None:
    """The candidate LawFit ``cand`` (fitted below the split) refitted on the
    resamples ``counts`` of all the points ``X`` of ``obj``: its end points are
    first finished on all the points (no bootstrap), then each resample
    refitted from the best. Returns the ok refits' thetas, or None."""
    law = cand.law_
    cobj, cspace, cstarts = cand._solution
    sp = _space(law, X, obj.ly, {})
    full = _Objective(law, X, obj.ly, obj.w, cobj.delta, sp)
    Z = np.clip(sp.z(cspace.theta(cstarts)), sp.lo, sp.hi)
    try:
        z_full, _, _ = _finish(full, sp, Z, polish=False)
    except ValueError:  # FitError: no finite end point
        return None
    th, ok = _refit(full, sp, z_full[:_AUTO_BOOT_STARTS], counts)
    return th[ok] if ok.any() else None
