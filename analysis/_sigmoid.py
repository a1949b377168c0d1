"""Fits behind `analysis.jumps.detect_jumps`: a rising sigmoid in log x and the step helpers.

A rising sigmoid ``lo + step / (1 + exp(-(t - t0) / s))`` in t = log10(x), fitted by weighted
least squares (an exhaustive grid over (t0, s), closed form in (lo, step), then refined), a
midpoint moved to the centre of the gap it cannot be placed within, the largest step of a
curve, and the weighted RSS of a linear model. Private: the decision rule lives in
`analysis.jumps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

_WIDTH_PER_S = 2.0 * math.log(9.0)  # logistic 10%..90% rise, in units of its scale s
_GRID_T0 = 121  # midpoints tried before refinement (over the sampled log-x range)
_GRID_S = 48  # scales tried, log-spaced from span/1000 to 2 x span


def _wls_rss(design: np.ndarray, z: np.ndarray, w: np.ndarray) -> float:
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], z * sw, rcond=None)
    return float(np.sum(w * (design @ coef - z) ** 2))


@dataclass(frozen=True)
class _Sigmoid:
    lo: float
    step: float
    t0: float
    s: float
    rss: float


def _fit_sigmoid(t: np.ndarray, z: np.ndarray, w: np.ndarray) -> _Sigmoid:
    """Rising sigmoid in t, weighted least squares: grid over (t0, s), then refine.

    For fixed (t0, s) the model is linear in (lo, step), solved in closed form,
    so the grid search is exhaustive over the shape and cannot miss the basin.
    """
    t_min, t_max = float(t[0]), float(t[-1])
    span = t_max - t_min
    s_min, s_max = span * 1e-3, span * 2.0
    t0_grid = np.linspace(t_min, t_max, _GRID_T0)
    s_grid = np.geomspace(s_min, s_max, _GRID_S)
    # g: (T0, S, n) sigmoid shapes
    g = expit((t[None, None, :] - t0_grid[:, None, None]) / s_grid[None, :, None])
    wn = w / w.sum()
    gm = np.sum(wn * g, axis=-1)  # (T0, S)
    zm = float(np.sum(wn * z))
    gc = g - gm[..., None]
    sgg = np.sum(wn * gc**2, axis=-1)
    sgz = np.sum(wn * gc * (z - zm), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(sgg > 1e-15, sgz / sgg, 0.0)
    step = np.maximum(step, 0.0)  # rising only: a jump is an improvement
    lo = zm - step * gm
    rss = np.sum(w * (z - lo[..., None] - step[..., None] * g) ** 2, axis=-1)
    i, j = np.unravel_index(int(np.argmin(rss)), rss.shape)
    best = _Sigmoid(
        float(lo[i, j]), float(step[i, j]), float(t0_grid[i]), float(s_grid[j]), float(rss[i, j])
    )

    from scipy.optimize import least_squares  # here, not at the top: ~0.3 s of import time

    sw = np.sqrt(w)

    def resid(p: np.ndarray) -> np.ndarray:
        return sw * (p[0] + p[1] * expit((t - p[2]) / p[3]) - z)

    scale = max(float(np.ptp(z)), 1e-300)
    x0 = np.array([best.lo, best.step, best.t0, best.s])
    lb = np.array([-np.inf, 0.0, t_min, s_min])
    ub = np.array([np.inf, np.inf, t_max, s_max])
    x0 = np.clip(x0, lb, ub)
    try:
        # the trust region's first radius and trial steps may overflow on a steep, far-off
        # start; the solver recovers (or the grid optimum stands), so the warning is noise
        with np.errstate(over="ignore", invalid="ignore"):
            sol = least_squares(
                resid, x0, bounds=(lb, ub), x_scale=[scale, scale, span, span], max_nfev=400
            )
        rss_ref = float(np.sum(sol.fun**2))
        if np.isfinite(rss_ref) and rss_ref < best.rss:
            best = _Sigmoid(*map(float, sol.x), rss_ref)
    except (ValueError, np.linalg.LinAlgError):
        pass  # the grid optimum stands
    return best


def _centre_in_gap(sig: _Sigmoid, t: np.ndarray, z: np.ndarray, w: np.ndarray) -> _Sigmoid:
    """Put a step sharper than the gap it sits in at the gap's centre (in log x).

    When the whole rise falls between two samples, every midpoint in that gap fits the same,
    and the optimiser may leave it at an end (at the last sample for a rise in the last
    interval, which then looks like a transition outside the data). The data only say "in
    this gap", so the centre is the honest midpoint; kept only when the fit is as good.
    """
    k = int(np.searchsorted(t, sig.t0, side="right")) - 1
    k = min(max(k, 0), t.size - 2)
    gap = float(t[k + 1] - t[k])
    if not _WIDTH_PER_S * sig.s < gap:
        return sig
    t0 = float(t[k] + t[k + 1]) / 2.0
    rss = float(np.sum(w * (sig.lo + sig.step * expit((t - t0) / sig.s) - z) ** 2))
    if rss <= sig.rss * (1.0 + 1e-3) + 1e-18 * max(float(np.ptp(z)), 1e-300) ** 2:
        return _Sigmoid(sig.lo, sig.step, t0, sig.s, min(rss, sig.rss) if rss <= sig.rss else rss)
    return sig


def _largest_step(z: np.ndarray, lo: int, hi: int) -> int:
    """Index i (lo <= i < hi) of the largest improvement z[i+1] - z[i]."""
    d = np.diff(z[lo : hi + 1])
    return lo + int(np.argmax(d))
