"""Bootstrap intervals of analysis.fit (private): step 5 of ``LawFit.fit``.

Resampled data enter as integer weights on the original points (or on whole
groups), so every resample is refitted in one batched L-BFGS run, each from
the best solution and the other competitive end points of the multi-start, in
coordinates whitened by the Gauss-Newton curvature at the fit. See
analysis/fit.py's docstring for how a fit runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis._solver import (
    _BOOT_FTOL,
    _BOOT_MAXITER,
    _BOOT_STALL,
    _lbfgs_batch,
    _Objective,
    _Space,
    _whitener,
)

__all__: list[str] = []  # private: analysis.fit imports the names it needs


def _bootstrap(fit: Any, obj: _Objective, space: _Space, starts: np.ndarray, codes) -> None:
    """Refit ``fit.bootstrap`` resamples from ``starts`` (r, k), best first; set
    the LawFit ``fit``'s draws_, draw_thetas_ and ci_ (percentile intervals at
    ``fit.level``, each reaching its own estimate). Warns through ``fit._warn``,
    so it must be called from ``LawFit.fit`` itself (the warnings' stacklevel)."""
    B, n, r = int(fit.bootstrap), obj.n, starts.shape[0]
    rng = np.random.default_rng(fit.seed)
    if codes is None:  # resample points
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)
    else:  # resample whole groups (e.g. all seeds of a cell together)
        G = int(codes.max()) + 1
        counts = rng.multinomial(G, np.full(G, 1.0 / G), size=B).astype(np.float64)[:, codes]
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

    u, f, _, _ = _lbfgs_batch(
        fg, U0, lo, hi, ftol=_BOOT_FTOL, stall=_BOOT_STALL, maxiter=_BOOT_MAXITER
    )
    z = np.clip(z0 + u @ L.T, space.lo, space.hi)
    f = f.reshape(B, r)
    pick = np.argmin(np.where(np.isfinite(f), f, np.inf), axis=1)
    ok = np.isfinite(f[np.arange(B), pick])
    zbest = z.reshape(B, r, -1)[np.arange(B), pick][ok]
    thetas = space.theta(zbest)
    if (~ok).sum() > 0.1 * B:
        fit._warn(f"{int((~ok).sum())} of {B} bootstrap refits failed; intervals use the rest")
    if not ok.any():
        return
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
            fit._warn(f"{prm.name}={est:.4g} lies outside its bootstrap interval [{lo_:.4g}, {hi_:.4g}]; "
                      "the interval is extended to it (the refits find another optimum)")  # fmt: skip
            lo_, hi_ = min(lo_, est), max(hi_, est)
        fit.ci_[prm.name] = (float(lo_), float(hi_))
