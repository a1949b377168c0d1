"""Sudden ability jumps: is a metric's rise with scale a jump, and is it real?

`detect_jumps(x, y)` looks at one curve (a metric against a scale x: dataset
size, tokens, FLOPs, parameters) and `check_mirage(table, x)` asks whether a
jump in a discontinuous metric (exact match) is also there in the continuous
ones (loss, per-token accuracy) measured on the same runs.

Decision rule of `detect_jumps` (every threshold is a keyword argument; the
defaults are in brackets)
---------------------------------------------------------------------------
Work in t = log10(x), with y oriented so that up is better (``-y`` when
``higher_is_better=False``). Fit three least-squares models of y against t,
weighted by 1/se**2 when standard errors ``se`` are given:

* a constant (1 parameter),
* a straight line in log x (2 parameters),
* a rising sigmoid ``lo + step / (1 + exp(-(t - t0) / s))`` with step >= 0
  and its midpoint t0 inside the sampled range (4 parameters).

BIC is ``n log(RSS / n) + k log n`` (RSS floored at (1e-9 * range of y)**2 per
point so a perfect fit stays finite), or ``chi2 + k log n`` when ``se`` is
given. ``delta_bic = BIC(line) - BIC(sigmoid)``; positive favours the sigmoid.
The *width* of the transition is its 10%-90% rise, ``2 ln(9) s`` decades of x.

1. **insufficient** — fewer than ``min_points`` [5] points (the 4-parameter sigmoid
   passes through any 4, leaving no residual to compare models on).
2. **flat** — y is constant (range <= ``flat_rtol`` [1e-9] x max|y|), or, when ``bounds``
   (the metric's possible range, e.g. (0, 1) for exact match) are given, y moves by less
   than ``min_rise`` [0.05] of that range whatever its shape (exact match 0 -> 0.007).
3. **jump** — all of:
   a. ``delta_bic >= min_delta_bic`` [10: "very strong" evidence on Kass &
      Raftery's 1995 scale];
   b. ``width_decades <= max_width_decades`` [1.0];
   c. the transition lies inside the data: its 10% point is at or above the
      smallest x, at least ``min_before`` [2] points lie below its midpoint
      and at least one above (so the level before the jump was observed);
   d. when ``se`` is given: the improvement between the sampled points that
      bracket the transition exceeds ``noise_z`` [2.0] combined standard
      errors, ``noise_z * sqrt(se_a**2 + se_b**2)``.
   A curve that fails 3 but jumps and then falls back part of the way (non-monotone after
   the jump, e.g. Pythia 16-shot addition: 0.69 at 2.8B, 0.48 at 6.9B, 0.87 at 12B) is
   tested again on its running best ``max(y[:i+1])``; that counts only when every point
   after the jump stays above every point before it by half the fitted step. When the
   fitted step is sharper than the gap between the two samples around it, its midpoint is
   put at the gap's centre (the data only say "in this gap"); a midpoint fitted on the last
   sample becomes a step in the last interval, so a curve whose whole rise sits in its last
   interval is judged (its reason says the level after it was seen once).
4. **flat** — no trend: the best of line and sigmoid beats the constant by
   less than ``min_trend_bic`` [2: "not worth more than a bare mention"].
5. **smooth** — anything else; ``reason`` names the first criterion of step 3
   that failed.

``interval`` is the consecutive pair of sampled x with the largest improvement
— inside the fitted transition for a jump, over the whole curve otherwise
(None for a flat curve). ``midpoint`` is 10**t0 of the fitted sigmoid.

Why these defaults. A power law y = a x**b, drawn against log x, is the lower
tail of a logistic with s = 1 / (b ln 10), i.e. a 10-90% width of 1.91 / b
decades: a one-decade limit lets only exponents above ~1.9 pass, while the
emergent curves of Wei et al. 2022 ("Emergent Abilities of Large Language
Models") rise within about a decade. Rule 3c keeps a saturating curve whose
start was not sampled (Pythia LAMBADA accuracy, Biderman et al. 2023) from
passing as a jump. Known limits: the rule looks at the shape on a linear y
axis, so a very steep power law (b > ~1.9 over the sampled range) reads as a
jump, and with 4-5 points the 4-parameter sigmoid fits almost anything, so
such verdicts are weak.

Breakthroughness (Srivastava et al. 2022, BIG-bench, appendix on linearity
and breakthroughness): ``I / sqrt(median(diff(y)**2))`` with
``I = sign(argmax - argmin) * (max y - min y)``. The denominator is the root
*median* square of consecutive differences, as in BIG-bench: with a root mean
square a single-step curve would score sqrt(n - 1), less than a straight
line's n - 1, which inverts the meaning. Guards: fewer than 2 points -> NaN,
constant y -> 0, a curve whose median step is 0 but which rises -> inf.

Standard errors and seeds. `binomial_se(p, n)` gives the error of a proportion over n
problems (Laplace-smoothed so 0 and 1 keep an error; 500 problems -> +-0.022 at 0.5).
`check_mirage` derives ``se`` from the table's ``n_problems`` column or an eval size passed
as ``n_problems=``. `jumps_across_seeds` (one curve, repeated x) and ``check_mirage(...,
seeds="seed")`` resample the seeds within each x ``n_boot`` [100] times; the verdict is
reported when at least ``agree`` [0.9] of the resamples give it, else "uncertain", with the
fraction of each verdict in ``fractions``.

Mirage check (`check_mirage`), after Schaeffer et al. 2023 ("Are Emergent
Abilities of Large Language Models a Mirage?"): aggregate the table to one
value per x, run `detect_jumps` on the discontinuous metric and on each
continuous one (a metric whose name contains "loss", "perplexity" or "ppl" is
lower-is-better). Verdicts: "no jump" (the discontinuous metric does not jump),
"insufficient" (too few x values), "genuine jump" (a continuous metric jumps
too, over an overlapping interval of x), "metric artefact" (the discontinuous
metric jumps but no tested continuous metric does), "inconclusive" (no
continuous metric could be tested), "uncertain" (with ``seeds``: no verdict holds in
``agree`` of the seed resamples).
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from analysis.table import trial_summary

__all__ = [
    "JumpResult",
    "MirageResult",
    "SeedJumpResult",
    "binomial_se",
    "breakthroughness",
    "check_mirage",
    "detect_jumps",
    "jumps_across_seeds",
]

# ---- defaults (see the module docstring for the rule they feed) ----------
MIN_POINTS = 5  # a 4-parameter sigmoid passes through any 4 points: 5 leave one residual
MIN_RISE = 0.05  # a bounded metric must move >= 5% of its range (exact match 0 -> 0.007 is flat)
N_BOOT = 100  # seed resamples: a fraction near 0.9 known to +-0.03; ~30-60 ms each (a full check)
AGREE = 0.9  # a verdict stands when >= 90% of the seed resamples give it
MIN_DELTA_BIC = 10.0  # Kass & Raftery 1995: a BIC difference above 10 is "very strong"
MAX_WIDTH_DECADES = 1.0  # power law x**b spans 1.91/b decades: only b > ~1.9 would pass
MIN_BEFORE = 2  # the level before the jump must be seen at two scales, not one
NOISE_Z = 2.0  # ~95% two-sided for a normal difference of two points
MIN_TREND_BIC = 2.0  # Kass & Raftery 1995: below 2 "not worth more than a bare mention"
FLAT_RTOL = 1e-9  # relative range below which y is constant (float round-off, not data)

_VERDICTS = ("jump", "smooth", "flat", "insufficient", "uncertain")
_WIDTH_PER_S = 2.0 * math.log(9.0)  # logistic 10%..90% rise, in units of its scale s
_RSS_FLOOR_REL = 1e-9  # RSS floor per point, relative to the range of y (keeps BIC finite)
_GRID_T0 = 121  # midpoints tried before refinement (over the sampled log-x range)
_GRID_S = 48  # scales tried, log-spaced from span/1000 to 2 x span


def _clean(value: Any) -> Any:
    """Plain-Python, JSON-safe value: numpy scalars unwrapped, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class JumpResult:
    """Verdict on one curve; see the module docstring for the decision rule.

    verdict: "jump" | "smooth" | "flat" | "insufficient".
    interval: (x_lo, x_hi), consecutive sampled x with the largest improvement
        (inside the fitted transition for a jump); None when flat or < 2 points.
    breakthroughness: BIG-bench B (root-median-square form), NaN below 2 points.
    delta_bic: BIC(line) - BIC(sigmoid) in log x; > 0 favours the sigmoid.
    width_decades: 10%-90% width of the fitted sigmoid, in decades of x.
    midpoint: x at the fitted sigmoid's midpoint.
    step: fitted size of the sigmoid's rise, in y units (always >= 0, oriented).
    n_points: number of points used.
    higher_is_better: orientation used.
    reason: one sentence for a person.
    """

    verdict: str
    interval: tuple[float, float] | None
    breakthroughness: float
    delta_bic: float
    width_decades: float
    midpoint: float
    step: float
    n_points: int
    higher_is_better: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None)."""
        return _clean(
            {
                "verdict": self.verdict,
                "interval": None if self.interval is None else list(self.interval),
                "breakthroughness": self.breakthroughness,
                "delta_bic": self.delta_bic,
                "width_decades": self.width_decades,
                "midpoint": self.midpoint,
                "step": self.step,
                "n_points": self.n_points,
                "higher_is_better": self.higher_is_better,
                "reason": self.reason,
            }
        )


# ---- input checks ---------------------------------------------------------


def _as_1d(name: str, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be finite, got {name}[{i}]={float(arr[i])!r}")
    return arr


def _validate(x: Any, y: Any, se: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x = _as_1d("x", x)
    y = _as_1d("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same length, got len(x)={x.size} and len(y)={y.size}"
        )
    nonpos = np.flatnonzero(x <= 0)
    if nonpos.size:
        i = int(nonpos[0])
        raise ValueError(f"x must be > 0 (it is put on a log scale), got x[{i}]={float(x[i])!r}")
    if se is not None:
        se = _as_1d("se", se)
        if se.size == 1 and x.size != 1:
            se = np.full_like(x, se[0])
        if se.shape != x.shape:
            raise ValueError(f"se must be a scalar or have len(x)={x.size} entries, got {se.size}")
        bad = np.flatnonzero(se <= 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"se must be > 0, got se[{i}]={float(se[i])!r}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    se = None if se is None else se[order]
    dup = np.flatnonzero(np.diff(x) == 0)
    if dup.size:
        raise ValueError(
            f"x must not repeat (aggregate repeated runs first, e.g. the mean per x), "
            f"got x={float(x[dup[0]])!r} more than once"
        )
    return x, y, se


# ---- breakthroughness -----------------------------------------------------


def _breakthroughness_sorted(z: np.ndarray) -> float:
    if z.size < 2:
        return float("nan")
    rng = float(np.max(z) - np.min(z))
    if rng == 0.0:
        return 0.0
    sign = 1.0 if int(np.argmax(z)) > int(np.argmin(z)) else -1.0
    rmeds = float(np.sqrt(np.median(np.diff(z) ** 2)))
    if rmeds == 0.0:
        return sign * float("inf")
    return sign * rng / rmeds


def breakthroughness(
    x: Sequence[float], y: Sequence[float], *, higher_is_better: bool = True
) -> float:
    """BIG-bench breakthroughness of y against x (sorted by x first).

    ``I(y) / sqrt(median(diff(y)**2))``, I(y) = sign(argmax - argmin) * range(y),
    computed on y oriented so that up is better. Large (>> n) for a curve that
    rises in one step, about n - 1 for a straight line, negative for a curve
    that gets worse with scale. NaN for fewer than 2 points, 0 for constant y,
    +-inf when most steps are exactly zero but one is not.
    """
    xs, ys, _ = _validate(x, y, None)
    return _breakthroughness_sorted(ys if higher_is_better else -ys)


# ---- model fits -----------------------------------------------------------


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


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# ---- the detector ---------------------------------------------------------


def detect_jumps(
    x: Sequence[float],
    y: Sequence[float],
    *,
    higher_is_better: bool = True,
    se: Sequence[float] | float | None = None,
    min_points: int = MIN_POINTS,
    min_delta_bic: float = MIN_DELTA_BIC,
    max_width_decades: float = MAX_WIDTH_DECADES,
    min_before: int = MIN_BEFORE,
    noise_z: float = NOISE_Z,
    min_trend_bic: float = MIN_TREND_BIC,
    flat_rtol: float = FLAT_RTOL,
    bounds: tuple[float, float] | None = None,
    min_rise: float = MIN_RISE,
) -> JumpResult:
    """Is y's rise with x a sudden jump? See the module docstring for the rule.

    x: positive scale values (sorted here, with y and se). y: the metric.
    se: standard errors of y (scalar or per point); with them the fits are
    weighted and a jump smaller than ``noise_z`` combined errors does not count.
    bounds: the metric's possible range, e.g. (0, 1) for exact match or accuracy;
    with it a curve whose whole range is below ``min_rise`` of that range is flat.
    Raises ValueError for mismatched lengths, NaN/inf, x <= 0, repeated x.
    """
    # 1. validate, sort, orient
    if min_points < 2:
        raise ValueError(f"min_points must be >= 2, got {min_points!r}")
    if min_before < 1:
        raise ValueError(f"min_before must be >= 1, got {min_before!r}")
    xs, ys, ses = _validate(x, y, se)
    n = int(xs.size)
    z = ys if higher_is_better else -ys
    hib = bool(higher_is_better)
    nan = float("nan")
    b_score = _breakthroughness_sorted(z)
    rng = float(np.ptp(z)) if n else 0.0

    def result(verdict: str, reason: str, *, interval=None, dbic=nan, width=nan, mid=nan, step=nan):
        assert verdict in _VERDICTS
        return JumpResult(verdict, interval, b_score, dbic, width, mid, step, n, hib, reason)

    def biggest(lo: int = 0, hi: int | None = None) -> tuple[float, float] | None:
        if n < 2 or rng == 0.0:
            return None
        i = _largest_step(z, lo, n - 1 if hi is None else hi)
        return (float(xs[i]), float(xs[i + 1]))

    # 2. too few points, constant curve
    if n < min_points:
        return result(
            "insufficient",
            f"insufficient: {n} point(s); at least {min_points} are needed to tell a jump from a trend.",
            interval=biggest(),
        )
    if rng <= flat_rtol * max(float(np.max(np.abs(z))), 1e-300):
        return result("flat", f"flat: y is constant ({_fmt(float(ys[0]))}) over all {n} points.")

    if bounds is not None:
        b_lo, b_hi = float(bounds[0]), float(bounds[1])
        if not b_hi > b_lo:
            raise ValueError(f"bounds must be (low, high) with high > low, got {tuple(bounds)!r}")
        if rng < min_rise * (b_hi - b_lo):
            return result(
                "flat",
                f"flat: y moves by only {_fmt(rng)} over all {n} points, less than {min_rise:g} of "
                f"its range [{_fmt(b_lo)}, {_fmt(b_hi)}]; a rise that small is not an ability.",
            )

    # 3. fit constant, line and sigmoid in t = log10 x
    t = np.log10(xs)
    w = np.ones(n) if ses is None else 1.0 / ses**2
    if ses is None:
        floor = n * (_RSS_FLOOR_REL * rng) ** 2

        def bic(rss: float, k: int) -> float:
            return n * math.log(max(rss, floor) / n) + k * math.log(n)
    else:

        def bic(rss: float, k: int) -> float:
            return rss + k * math.log(n)  # rss is chi-square here

    tol = 1e-9 * max(1.0, float(t[-1] - t[0]))

    def jump_test(zz: np.ndarray) -> tuple[str | None, dict[str, float], int, int, float, float]:
        """First failed jump criterion (None: a jump), the fit, the bracketing indices, BICs."""
        rss_l = _wls_rss(np.column_stack([np.ones(n), t]), zz, w)
        sig = _centre_in_gap(_fit_sigmoid(t, zz, w), t, zz, w)
        if sig.t0 >= t[-1] - tol and n >= 3:
            # a midpoint on the last sample is not identified (the rise may go on beyond it):
            # the data say only "the rise sits in the last interval", a step there
            wb = w[:-1] / w[:-1].sum()
            lo = float(np.sum(wb * zz[:-1]))
            gap = float(t[-1] - t[-2])
            sig = _Sigmoid(
                lo, max(float(zz[-1]) - lo, 0.0), float(t[-2] + t[-1]) / 2.0,
                gap / _WIDTH_PER_S / 2.0, float(np.sum(w[:-1] * (zz[:-1] - lo) ** 2)),
            )  # fmt: skip
        bic_l, bic_s = bic(rss_l, 2), bic(sig.rss, 4)
        dbic = bic_l - bic_s
        width = _WIDTH_PER_S * sig.s
        mid = float(10.0**sig.t0)
        t_lo, t_hi = sig.t0 - width / 2.0, sig.t0 + width / 2.0
        fit = {"dbic": dbic, "width": width, "mid": mid, "step": sig.step}
        n_before = int(np.sum(t < sig.t0 - tol))
        n_after = int(np.sum(t > sig.t0 + tol))
        a = int(np.flatnonzero(t <= t_lo + tol)[-1]) if np.any(t <= t_lo + tol) else 0
        b = int(np.flatnonzero(t >= t_hi - tol)[0]) if np.any(t >= t_hi - tol) else n - 1
        if b <= a:
            b = min(a + 1, n - 1)
        failure = None
        if not dbic >= min_delta_bic:
            failure = (
                f"a sigmoid in log x beats a straight line by only delta BIC={dbic:.1f} "
                f"(a jump needs >= {min_delta_bic:g})"
            )
        elif not width <= max_width_decades:
            failure = (
                f"the fitted rise is gradual: its 10-90% width is {width:.2f} decades of x "
                f"(a jump needs <= {max_width_decades:g})"
            )
        elif t_lo < t[0] - tol or n_before < min_before or n_after < 1:
            failure = (
                f"the fitted transition (midpoint x={_fmt(mid)}) is not inside the data: "
                f"{n_before} point(s) before its midpoint, {n_after} after, and its 10% point is at "
                f"x={_fmt(10.0**t_lo)} against the smallest x={_fmt(float(xs[0]))} "
                f"(a jump needs >= {min_before} before, >= 1 after and the start observed)"
            )
        elif ses is not None:
            gain = float(zz[b] - zz[a])
            noise = noise_z * math.sqrt(float(ses[a] ** 2 + ses[b] ** 2))
            if not gain > noise:
                failure = (
                    f"the improvement across the transition (x={_fmt(float(xs[a]))} to "
                    f"{_fmt(float(xs[b]))}) is {_fmt(gain)}, within {noise_z:g} standard errors "
                    f"({_fmt(noise)})"
                )
        return failure, fit, a, b, bic_l, bic_s

    # 4. the jump criteria, in order; the first failure is the reason. A curve that jumps and
    # then falls back part of the way (non-monotone after the jump) is judged again on its
    # running best, max(y[:i+1]), when the fall does not undo the jump.
    failure, fit, a, b, bic_l, bic_s = jump_test(z)
    note = ""
    j = _largest_step(z, 0, n - 1) if n >= 2 else 0
    # running best after the largest step only: the level before it stays as measured
    env = np.concatenate([z[: j + 1], np.maximum.accumulate(z[j + 1 :])])
    if failure is not None and np.any(env > z):
        env_failure, env_fit, ea, eb, _, _ = jump_test(env)
        jj = _largest_step(env, ea, eb) if env_failure is None else -1
        # the fall must not undo the jump: every point after it stays above every point
        # before it by at least half the fitted step (noise around a constant fails this)
        kept = jj == j and float(np.min(z[j + 1 :]) - np.max(z[: j + 1])) >= 0.5 * env_fit["step"]
        if kept:
            failure, fit, a, b = None, env_fit, ea, eb
            k = int(np.argmax(env - z))
            note = (
                f" It is not monotone after the jump: y falls back to {_fmt(float(ys[k]))} at "
                f"x={_fmt(float(xs[k]))}, below its earlier best."
            )
            z_used = env
    if failure is None:
        zz = z if not note else z_used
        i = _largest_step(zz, a, b)
        interval = (float(xs[i]), float(xs[i + 1]))
        last = (
            " The whole rise sits in the last interval: the level after it is seen once."
            if i == n - 2
            else ""
        )
        return result(
            "jump",
            f"jump between x={_fmt(interval[0])} and x={_fmt(interval[1])}: a sigmoid in log x "
            f"beats a straight line by delta BIC={fit['dbic']:.1f} and rises within "
            f"{fit['width']:.2f} decades around x={_fmt(fit['mid'])}.{note}{last}",
            interval=interval,
            **fit,
        )

    # 5. no jump: flat (no trend beats a constant) or smooth
    bic_c = bic(_wls_rss(np.ones((n, 1)), z, w), 1)
    trend = bic_c - min(bic_l, bic_s)
    if trend < min_trend_bic:
        return result(
            "flat",
            f"flat: neither a line nor a sigmoid in log x beats a constant "
            f"(delta BIC={trend:.1f} < {min_trend_bic:g}); the changes look like noise.",
            **fit,
        )
    return result("smooth", f"smooth: {failure}.", interval=biggest(), **fit)


# ---- standard errors from counts and verdicts across seeds ----------------


def binomial_se(p: Any, n: Any) -> np.ndarray:
    """Standard error of a proportion p (exact match, accuracy) measured on n problems.

    ``sqrt(q (1 - q) / n)`` with the Laplace-smoothed ``q = (p n + 1) / (n + 2)``, so a score
    of exactly 0 or 1 still carries the error of n problems (0 -> about 1/n, not 0).
    A 500-problem test set at exact match 0.5 gives 0.022.
    """
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p must be proportions in [0, 1], got {p!r}")
    if np.any(~np.isfinite(n)) or np.any(n < 1):
        raise ValueError(f"n must be a count of problems >= 1, got {n!r}")
    q = (p * n + 1.0) / (n + 2.0)
    return np.sqrt(q * (1.0 - q) / n)


@dataclass(frozen=True)
class SeedJumpResult:
    """Verdict on a curve measured with several seeds per scale point.

    verdict: the verdict of ``detect_jumps`` on the seed means when at least ``agree`` of the
        bootstrap resamples over seeds give it, else "uncertain".
    fractions: verdict -> fraction of the resamples giving it (sums to 1).
    point: the ``JumpResult`` on the seed means. n_boot: resamples drawn.
    n_seeds: seeds per x (x -> count). reason: one sentence.
    """

    verdict: str
    fractions: Mapping[str, float]
    point: JumpResult
    n_boot: int
    n_seeds: Mapping[float, int]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return _clean(
            {
                "verdict": self.verdict,
                "fractions": dict(self.fractions),
                "point": self.point.to_dict(),
                "n_boot": self.n_boot,
                "n_seeds": {str(k): v for k, v in self.n_seeds.items()},
                "reason": self.reason,
            }
        )


def _fractions(verdicts: Sequence[str]) -> dict[str, float]:
    names, counts = np.unique(np.asarray(verdicts, dtype=object).astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(names[i]): float(counts[i]) / len(verdicts) for i in order}


def _agreed(point: str, fractions: Mapping[str, float], agree: float) -> str:
    return point if fractions.get(point, 0.0) >= agree else "uncertain"


def _fmt_fractions(fractions: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())


def jumps_across_seeds(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = N_BOOT,
    agree: float = AGREE,
    random_state: int = 0,
    **jump_kwargs: Any,
) -> SeedJumpResult:
    """`detect_jumps` on a curve with repeated x (one entry per seed), with its seed noise.

    The verdict is that of the per-x means, reported only when at least ``agree`` of
    ``n_boot`` bootstrap resamples (seeds drawn with replacement within each x, then averaged)
    give it too; otherwise "uncertain", with the fraction each way in ``fractions``.
    ``jump_kwargs`` go to `detect_jumps` (``se`` is not accepted: the seeds are the noise).
    """
    if "se" in jump_kwargs:
        raise ValueError("se cannot be combined with seeds: the spread over seeds is the noise")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0.5 < agree <= 1.0:
        raise ValueError(f"agree must be in (0.5, 1], got {agree!r}")
    xs, ys = _as_1d("x", x), _as_1d("y", y)
    if xs.shape != ys.shape:
        raise ValueError(
            f"x and y must have the same length, got len(x)={xs.size} and len(y)={ys.size}"
        )
    ux, inv = np.unique(xs, return_inverse=True)
    groups = [ys[inv == i] for i in range(ux.size)]
    means = np.array([g.mean() for g in groups])
    point = detect_jumps(ux, means, **jump_kwargs)
    rng = np.random.default_rng(random_state)
    verdicts = []
    for _ in range(n_boot):
        boot = np.array([g[rng.integers(0, g.size, g.size)].mean() for g in groups])
        verdicts.append(detect_jumps(ux, boot, **jump_kwargs).verdict)
    fractions = _fractions(verdicts)
    verdict = _agreed(point.verdict, fractions, agree)
    n_seeds = {float(u): int(g.size) for u, g in zip(ux, groups, strict=True)}
    if verdict == "uncertain":
        reason = (
            f"uncertain: on the seed means the curve reads {point.verdict!r}, but over {n_boot} "
            f"resamples of the seeds: {_fmt_fractions(fractions)} (a verdict needs {agree:.0%})."
        )
    else:
        reason = f"{point.reason} It holds in {fractions[verdict]:.0%} of {n_boot} seed resamples."
    return SeedJumpResult(
        verdict, types.MappingProxyType(fractions), point, n_boot,
        types.MappingProxyType(n_seeds), reason,
    )  # fmt: skip


# ---- the mirage check -----------------------------------------------------


@dataclass(frozen=True)
class MirageResult:
    """Verdict of `check_mirage`.

    verdict: "metric artefact" | "genuine jump" | "no jump" | "insufficient" |
        "inconclusive" | "uncertain" (see the module docstring).
    x: the scale column. discontinuous: the discontinuous metric's name.
    results: metric name -> JumpResult (read-only mapping), discontinuous first.
    columns: metric name -> the table column read.
    series: metric name -> ((x...), (y...)), the aggregated curve tested.
    agg: how rows were aggregated per x. reason: one sentence.
    fractions: with ``seeds``, verdict -> fraction of the seed resamples giving it (empty
        otherwise). n_boot: resamples drawn (0 without seeds).
    """

    verdict: str
    x: str
    discontinuous: str
    results: Mapping[str, JumpResult]
    columns: Mapping[str, str]
    series: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]
    agg: str
    reason: str
    missing: tuple[str, ...] = field(default=())
    fractions: Mapping[str, float] = field(default_factory=dict)
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None)."""
        return _clean(
            {
                "verdict": self.verdict,
                "x": self.x,
                "discontinuous": self.discontinuous,
                "agg": self.agg,
                "reason": self.reason,
                "columns": dict(self.columns),
                "missing": list(self.missing),
                "fractions": dict(self.fractions),
                "n_boot": self.n_boot,
                "results": {k: v.to_dict() for k, v in self.results.items()},
                "series": {k: {"x": list(v[0]), "y": list(v[1])} for k, v in self.series.items()},
            }
        )


_AGGS = ("selected", "best", "mean", "median")


def _resolve(columns: Iterable[str], metric: str, split: str | None) -> str | None:
    cols = set(columns)
    if split and f"{split}_{metric}" in cols:
        return f"{split}_{metric}"
    return metric if metric in cols else None


def _lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return "loss" in m or "perplexity" in m or "ppl" in m


def _is_proportion(y: Sequence[float], higher_is_better: bool) -> bool:
    arr = np.asarray(y, dtype=float)
    return bool(higher_is_better and arr.size and np.all((arr >= 0.0) & (arr <= 1.0)))


def _series_se(
    df: pd.DataFrame,
    *,
    col: str,
    y: tuple[tuple[float, ...], tuple[float, ...]],
    n_problems: int | str | None,
    proportion: bool,
) -> np.ndarray | None:
    """Standard errors of one aggregated curve (None when the table cannot give them)."""
    xs, ys = np.asarray(y[0], dtype=float), np.asarray(y[1], dtype=float)
    if xs.size == 0:
        return None
    if f"{col}_stderr" in df.columns:
        per_x = pd.to_numeric(df[f"{col}_stderr"], errors="coerce").groupby(df["_x"]).mean()
        se = per_x.reindex(xs).to_numpy(dtype=float)
        return se if np.all(np.isfinite(se) & (se > 0)) else None
    if isinstance(n_problems, str):
        if n_problems not in df.columns:
            return None
        counts = pd.to_numeric(df[n_problems], errors="coerce").groupby(df["_x"]).median()
        n = counts.reindex(xs).to_numpy(dtype=float)
    elif n_problems is None:
        return None
    else:
        if not n_problems >= 1:
            raise ValueError(f"n_problems must be >= 1, got {n_problems!r}")
        n = np.full(xs.size, float(n_problems))
    if not np.all(np.isfinite(n) & (n >= 1)):
        return None
    if proportion:
        return binomial_se(ys, n)
    if f"{col}_std" in df.columns:
        std = pd.to_numeric(df[f"{col}_std"], errors="coerce").groupby(df["_x"]).mean()
        se = std.reindex(xs).to_numpy(dtype=float) / np.sqrt(n)
        return se if np.all(np.isfinite(se) & (se > 0)) else None
    return None


def _seed_fractions(
    df: pd.DataFrame, *, x: str, seeds: str, n_boot: int, random_state: int, call: Any
) -> tuple[dict[str, float], int]:
    """Fractions of mirage verdicts over bootstrap resamples of seeds within each x."""
    if seeds not in df.columns:
        raise ValueError(
            f"seeds column {seeds!r} is not in the table (columns: {list(df.columns)})"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    df = df.assign(**{seeds: df[seeds].astype(object).where(df[seeds].notna(), "<no seed>")})
    per_x = {
        xv: {s: g.drop(columns="_x") for s, g in grp.groupby(seeds, sort=True)}
        for xv, grp in df.groupby("_x", sort=True)
    }
    if not any(len(v) > 1 for v in per_x.values()):
        return {}, 0
    rng = np.random.default_rng(random_state)
    verdicts = []
    for _ in range(n_boot):
        parts = []
        for groups in per_x.values():
            keys = list(groups)
            for d, k in enumerate(rng.integers(0, len(keys), len(keys))):
                part = groups[keys[int(k)]]
                parts.append(part.assign(**{seeds: f"{keys[int(k)]}#{d}"}))
        verdicts.append(call(pd.concat(parts, ignore_index=True)))
    return _fractions(verdicts), n_boot


def _mirage_verdict(
    *,
    series: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]],
    ses: Mapping[str, np.ndarray | None],
    bounds: Mapping[str, tuple[float, float]],
    direction: Mapping[str, bool],
    kwargs: Mapping[str, Any],
    discontinuous: str,
    x: str,
    missing: Sequence[str],
) -> tuple[dict[str, JumpResult], str, str]:
    """Jump verdicts per metric (discontinuous first) and the mirage verdict with its reason."""
    results = {
        m: detect_jumps(
            *series[m],
            higher_is_better=direction[m],
            se=ses.get(m),
            bounds=bounds.get(m),
            **kwargs,
        )
        for m in series
    }
    disc = results[discontinuous]
    cont = {m: r for m, r in results.items() if m != discontinuous}
    tested = {m: r for m, r in cont.items() if r.verdict != "insufficient"}

    def overlaps(r: JumpResult) -> bool:
        if r.interval is None or disc.interval is None:
            return False
        return r.interval[0] <= disc.interval[1] and disc.interval[0] <= r.interval[1]

    note_missing = f" (no column for {', '.join(missing)})" if missing else ""
    if disc.verdict == "insufficient":
        verdict = "insufficient"
        reason = f"{discontinuous} has too few x values to judge: {disc.reason}"
    elif disc.verdict != "jump":
        verdict = "no jump"
        reason = f"{discontinuous} shows no jump against {x}: {disc.reason}"
    elif not tested:
        verdict = "inconclusive"
        reason = (
            f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
            f"{_fmt(disc.interval[1])}, but no continuous metric could be tested{note_missing}."
        )
    else:
        genuine = [m for m, r in tested.items() if r.verdict == "jump" and overlaps(r)]
        if genuine:
            verdict = "genuine jump"
            reason = (
                f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
                f"{_fmt(disc.interval[1])} and so does {', '.join(genuine)}: the model changes there, "
                "not only the metric."
            )
        else:
            verdict = "metric artefact"
            elsewhere = [m for m, r in tested.items() if r.verdict == "jump"]
            extra = f"; {', '.join(elsewhere)} jump(s) elsewhere in {x}" if elsewhere else ""
            reason = (
                f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
                f"{_fmt(disc.interval[1])} but {', '.join(tested)} change smoothly there{extra}: "
                "the jump is likely an artefact of the all-or-nothing metric "
                f"(Schaeffer et al. 2023){note_missing}."
            )
    return results, verdict, reason


def check_mirage(
    table: pd.DataFrame,
    x: str,
    *,
    discontinuous: str = "exact_match",
    continuous: Sequence[str] = ("eval_loss", "token_accuracy"),
    split: str = "test",
    agg: str = "selected",
    select_metric: str = "eval_loss",
    select_split: str = "val",
    higher_is_better: Mapping[str, bool] | None = None,
    jump_kwargs: Mapping[str, Any] | None = None,
    n_problems: int | str | None = "n_problems",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    seeds: str | None = None,
    n_boot: int = N_BOOT,
    agree: float = AGREE,
    random_state: int = 0,
) -> MirageResult:
    """Does a jump in a discontinuous metric survive in the continuous ones?

    Only rows with status "ok" (all rows when there is no status column) and a
    positive, finite x are used. Per x value, ``agg`` makes one point per
    metric:

    * "selected" (default): the one evaluation (row) with the best validation
      ``select_metric`` at that x (early stopping and LR choice on val), whose
      ``split`` metrics are then reported — no selection on the test split;
    * "best": each metric's own best value at that x (optimistic: it selects
      on the reported split);
    * "mean" / "median": over the rows at that x (e.g. seeds).

    Metric columns resolve to f"{split}_{metric}" when present, else `metric`.
    ``higher_is_better`` overrides the direction per metric (default: names with
    "loss" or "perplexity" are lower-is-better). ``jump_kwargs`` go to
    `detect_jumps`.

    n_problems: problems per evaluation, an int (the spec's eval size) or the name of a
    column (used when present). With it each point gets a standard error: binomial
    (`binomial_se`) for a metric in [0, 1] that is higher-is-better (exact match, accuracy),
    ``{column}_std / sqrt(n)`` for another metric when the table has its per-problem spread
    in a ``{column}_std`` column. A ``{column}_stderr`` column is used as it is.
    bounds: metric -> (low, high); metrics in [0, 1] that are higher-is-better get (0, 1), so
    a rise below ``min_rise`` of that range is flat.
    seeds: the seed column. When given and some x has several seeds, the seeds are resampled
    with replacement within each x ``n_boot`` times (rows of the drawn seeds, then ``agg``
    as above: with "mean" the mean over the drawn seeds) and the verdict stands only when
    at least ``agree`` of the resamples give it; otherwise "uncertain". ``fractions`` holds
    the fraction of resamples per verdict. Raises ValueError for a missing x or discontinuous column.
    """
    # 1. validate
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if agg not in _AGGS:
        raise ValueError(f"agg must be one of {_AGGS}, got {agg!r}")
    if x not in table.columns:
        raise ValueError(f"x column {x!r} is not in the table (columns: {list(table.columns)})")
    if isinstance(continuous, str):
        continuous = (continuous,)
    disc_col = _resolve(table.columns, discontinuous, split)
    if disc_col is None:
        raise ValueError(
            f"discontinuous metric {discontinuous!r} has no column {f'{split}_{discontinuous}'!r} "
            f"or {discontinuous!r} in the table (columns: {list(table.columns)})"
        )
    columns = {discontinuous: disc_col}
    missing = []
    for m in continuous:
        col = _resolve(table.columns, m, split)
        if col is None:
            missing.append(m)
        else:
            columns[m] = col
    sel_col = None
    if agg == "selected":
        sel_col = _resolve(table.columns, select_metric, select_split)
        if sel_col is None:
            raise ValueError(
                f"agg='selected' needs the selection metric {f'{select_split}_{select_metric}'!r} "
                f"or {select_metric!r} in the table; pass agg='best' or 'mean' otherwise"
            )
        if sel_col.startswith("test_"):
            raise ValueError(
                f"agg='selected' must select rows on the validation split, got the column {sel_col!r}; "
                "use select_split='val'"
            )
    direction = {m: not _lower_is_better(m) for m in columns}
    direction.update(dict(higher_is_better or {}))
    kwargs = dict(jump_kwargs or {})

    # 2. completed rows with a usable x; a run table (trial_id) is one row per trial first, its
    # final evaluation (analysis.table.trial_summary, the summary every analysis command reads)
    df = table
    if "trial_id" in df.columns:
        order = pd.unique(df["trial_id"])  # the table's order: means and ties come out as before
        # the noise columns too: per-problem spreads, eval sizes and the seed (steps 4-5)
        noise = [c for col in columns.values() for c in (f"{col}_std", f"{col}_stderr")]
        noise += [c for c in (n_problems, seeds) if isinstance(c, str)]
        carry = (x, *columns.values(), *([sel_col] if sel_col else []), *noise)
        df = trial_summary(df, carry=tuple(dict.fromkeys(c for c in carry if c in df.columns)))
        df = df.set_index("trial_id").loc[order].reset_index()
    if "status" in df.columns:
        df = df[df["status"].astype("string").fillna("") == "ok"]
    xv = pd.to_numeric(df[x], errors="coerce").astype(float)
    df = df[np.isfinite(xv) & (xv > 0)].assign(_x=xv)

    # 3. one point per x and metric
    series: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for m, col in columns.items():
        vals = pd.to_numeric(df[col], errors="coerce").astype(float)
        if agg == "selected":
            s = pd.to_numeric(df[sel_col], errors="coerce").astype(float)
            ok = np.isfinite(s)
            sub = df.loc[ok, ["_x"]].assign(_s=s[ok], _v=vals[ok])
            sel_hib = bool(
                dict(higher_is_better or {}).get(select_metric, not _lower_is_better(select_metric))
            )
            sub = sub.sort_values(["_x", "_s"], ascending=[True, not sel_hib], kind="stable")
            per_x = sub.groupby("_x", sort=True)["_v"].first()
        else:
            sub = df.loc[np.isfinite(vals), ["_x"]].assign(_v=vals[np.isfinite(vals)])
            grouped = sub.groupby("_x", sort=True)["_v"]
            if agg == "best":
                per_x = grouped.max() if direction[m] else grouped.min()
            else:
                per_x = grouped.mean() if agg == "mean" else grouped.median()
        per_x = per_x[np.isfinite(per_x.to_numpy(dtype=float))]
        series[m] = (tuple(map(float, per_x.index)), tuple(map(float, per_x.to_numpy(dtype=float))))

    # 4. standard errors from the evaluation size, bounds of bounded metrics
    ses = {
        m: _series_se(df, col=columns[m], y=series[m], n_problems=n_problems,
                      proportion=_is_proportion(series[m][1], direction[m]))
        for m in columns
    }  # fmt: skip
    bnds = {m: (0.0, 1.0) for m in columns if _is_proportion(series[m][1], direction[m])}
    bnds.update(dict(bounds or {}))

    # 5. detect jumps, discontinuous metric first, and the verdict
    results, verdict, reason = _mirage_verdict(
        series=series, ses=ses, bounds=bnds, direction=direction, kwargs=kwargs,
        discontinuous=discontinuous, x=x, missing=missing,
    )  # fmt: skip

    # 6. across seeds: the verdict must hold over bootstrap resamples of the seeds
    fractions: dict[str, float] = {}
    boot = 0
    if seeds is not None:
        fractions, boot = _seed_fractions(
            df, x=x, seeds=seeds, n_boot=n_boot, random_state=random_state,
            call=lambda t: check_mirage(
                t, x, discontinuous=discontinuous, continuous=continuous, split=split, agg=agg,
                select_metric=select_metric, select_split=select_split,
                higher_is_better=higher_is_better, jump_kwargs=jump_kwargs,
                n_problems=n_problems, bounds=bounds,
            ).verdict,
        )  # fmt: skip
        if boot:
            point = verdict
            verdict = _agreed(point, fractions, agree)
            if verdict == "uncertain":
                reason = (
                    f"uncertain across seeds: on the seed means it reads {point!r} ({reason}) but "
                    f"over {boot} resamples of the seeds: {_fmt_fractions(fractions)} "
                    f"(a verdict needs {agree:.0%})."
                )
            else:
                reason = f"{reason} It holds in {fractions[verdict]:.0%} of {boot} seed resamples."
    return MirageResult(
        verdict=verdict,
        x=x,
        discontinuous=discontinuous,
        results=types.MappingProxyType(results),
        columns=types.MappingProxyType(columns),
        series=types.MappingProxyType(series),
        agg=agg,
        reason=reason,
        missing=tuple(missing),
        fractions=types.MappingProxyType(fractions),
        n_boot=boot,
    )
