"""Metrics, warnings and parameter status of analysis.fit (private): step 6 of
``LawFit.fit``.

``_metrics`` gives ``metrics_`` (rmsle, r2, AIC/BIC, Huber); ``_diagnose``
warns about doubtful fits (a parameter on its bound, too few points, no
convergence, a flat curve, very wide intervals); ``_param_status`` says which
parameters are estimated and which only bounded, and writes them as text. See
analysis/fit.py's docstring for how a fit runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis._solver import _MAXITER_FINE, _Objective, _Space
from analysis.laws import Law

__all__: list[str] = []  # private: analysis.fit imports the names it needs

# A log-sum-exp term (E, A, B, ...) below 1e-4 of the smallest y changes no
# prediction by more than 0.01%, far below any loss curve's noise: an interval
# reaching down there has not resolved that term (reported as a bound).
_VANISHED = 1e-4


def _bound_sides(space: _Space, Z: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(at_lower, at_upper), each (S, k) bool: which free parameters of the rows Z
    (S, k) rest on their lower (upper) bound, to ``tol`` relative."""
    Z = np.atleast_2d(Z)
    lo, hi = space.lo, space.hi
    with np.errstate(invalid="ignore"):
        at_lo = np.isfinite(lo) & (np.abs(Z - lo) <= tol * (1.0 + np.abs(lo)))
        at_hi = np.isfinite(hi) & (np.abs(Z - hi) <= tol * (1.0 + np.abs(hi)))
    return at_lo, at_hi


def _on_bound(space: _Space, Z: np.ndarray) -> np.ndarray:
    """(S, k) bool: the free parameters of the rows Z that rest on a bound."""
    at_lo, at_hi = _bound_sides(space, Z)
    return at_lo | at_hi


def _metrics(obj: _Objective, theta, yv, w, delta: float, k: int) -> dict[str, Any]:
    """``metrics_`` of the fit ``theta`` on the training data ``yv``, weights ``w``."""
    r = obj.residuals(theta)
    a = np.abs(r)
    d = float(delta)
    huber = float(np.sum(w * np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))))
    # the rest counts points by weight (normalised to mean 1 over the points
    # that count): plain counts when there are no weights, zero-weight rows out
    used = w > 0
    n = int(used.sum())
    wn = w / w[used].mean()
    rss = float(np.sum(wn * r * r))
    pred = np.exp(np.log(yv) + r)
    ybar = float(np.sum(wn * yv) / n)
    sst = float(np.sum(wn * (yv - ybar) ** 2))
    # AIC/BIC from a Gaussian likelihood of the log residuals: only differences
    # between laws fitted to the same data mean anything (see compare()).
    ll_term = n * math.log(max(rss / n, 1e-300))
    return {
        "rmsle": math.sqrt(rss / n),
        "r2": 1.0 - float(np.sum(wn * (yv - pred) ** 2)) / sst if sst > 0 else float("nan"),
        "aic": ll_term + 2 * k,
        "bic": ll_term + k * math.log(n),
        "n": n,
        "k": int(k),
        "huber": huber,
    }


def _diagnose(fit: Any, law: Law, space: _Space, z, yv, k: int, n: int) -> None:
    """Warn, through ``fit._warn``, about what makes the LawFit ``fit`` doubtful.
    Must be called from ``LawFit.fit`` itself (the warnings' stacklevel)."""
    names = law.param_names
    # parameters resting on a bound
    at_lo, at_hi = _bound_sides(space, z)
    for i, j in enumerate(space.free):
        for at, side in ((at_lo[0, i], "lower"), (at_hi[0, i], "upper")):
            if at:
                what = (
                    "its term vanished or dominates everything"
                    if law.params[j].lse
                    else "the data do not constrain it"
                )
                fit._warn(
                    f"doubtful fit: {names[j]}={fit.params_[names[j]]:.6g} is at its "
                    f"{side} bound ({what})"
                )
    if n < 2 * k:
        fit._warn(f"doubtful fit: {n} points for {k} free parameters (fewer than 2 per parameter)")
    if not fit.optimizer_["best_converged"]:
        fit._warn(
            f"optimizer did not converge: the best start stopped at its iteration limit "
            f"({_MAXITER_FINE}) with f={fit.optimizer_['objective']:.6g}"
        )
    # flat curve: y nearly constant, or the fit varies less than its own scatter
    ly = np.log(yv)
    span = float(ly.max() - ly.min())
    fitted = ly + fit.residuals()
    if span < 1e-3 or float(np.ptp(fitted)) < fit.metrics_["rmsle"]:
        fit._warn(
            f"flat curve: {fit.y_} varies by {span:.3g} in log over the data and the "
            f"fitted curve by {float(np.ptp(fitted)):.3g}, against a scatter of "
            f"{fit.metrics_['rmsle']:.3g}; exponents are not identified"
        )
    # very wide intervals
    for nm, (lo_, hi_) in fit.ci_.items():
        prm = law.params[names.index(nm)]
        v = fit.params_[nm]
        # positive params: more than a factor 10 between the ends; others:
        # an interval wider than twice the value itself
        wide = (lo_ <= 0 or hi_ / lo_ > 10.0) if prm.log else (hi_ - lo_) > 2.0 * abs(v)
        if wide:
            fit._warn(
                f"doubtful fit: {fit.level:.0%} interval of {nm} is [{lo_:.4g}, {hi_:.4g}] "
                f"around {v:.4g}"
            )


def _param_status(fit: Any, law: Law, space: _Space, z) -> tuple[dict[str, str], dict[str, str]]:
    """(param_status_, param_text_) of the LawFit ``fit``: a parameter whose
    estimate, or the lower (upper) end of whose interval, rests on its bound
    is reported as a one-sided bound from the other end of its interval, not
    as a point with an interval that starts at the bound."""
    names = law.param_names
    status = {nm: "fixed" for nm in fit.fixed_}
    at = {}
    tol = 1e-6
    at_lo, at_hi = _bound_sides(space, z, tol)
    for i, j in enumerate(space.free):
        nm = names[j]
        lo_b, hi_b = space.lo[i], space.hi[i]
        side = None
        if at_lo[0, i]:
            side = "lower_bound"
        elif at_hi[0, i]:
            side = "upper_bound"
        elif getattr(fit, "draw_thetas_", None) is not None and fit.draws_.shape[0]:
            zd = space.z(fit.draw_thetas_)[:, i]
            tail = (1 - fit.level) / 2
            if np.isfinite(lo_b) and np.mean(zd <= lo_b + tol * (1.0 + abs(lo_b))) > tail:
                side = "lower_bound"
            elif np.isfinite(hi_b) and np.mean(zd >= hi_b - tol * (1.0 + abs(hi_b))) > tail:
                side = "upper_bound"
        prm = law.params[j]
        ci = fit.ci_.get(nm)
        if side is None and prm.lse and ci and ci[0] < _VANISHED * float(fit.yv_.min()):
            # the interval's lower end is a term that has vanished: bootstrap
            # refits crawl towards the bound and stop short of it
            side = "lower_bound"
        status[nm] = side or "estimated"
        at[nm] = side
    text = {}
    for nm in names:
        v = fit.params_[nm]
        ci = fit.ci_.get(nm)
        st = status[nm]
        if st == "fixed":
            text[nm] = f"{nm} = {v:.4g} (fixed)"
        elif st == "lower_bound":
            bound = f"{nm} < {ci[1]:.3g}" if ci else f"{nm} at its lower bound ({v:.3g})"
            floor = nm == "E" and law.params[names.index(nm)].lse
            text[nm] = ("no floor resolved: " if floor else "not resolved: ") + bound
        elif st == "upper_bound":
            bound = f"{nm} > {ci[0]:.3g}" if ci else f"{nm} at its upper bound ({v:.3g})"
            text[nm] = "not resolved: " + bound
        else:
            text[nm] = f"{nm} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
    return status, text
