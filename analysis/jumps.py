"""Sudden ability jumps: is a metric's rise with scale a jump?

`detect_jumps(x, y)` looks at one curve (a metric against a scale x: dataset size, tokens,
FLOPs, parameters). Whether a jump in a discontinuous metric is real is asked by
`analysis.mirage.check_mirage`; a curve with several seeds per x is judged by
`analysis.jump_seeds.jumps_across_seeds`.

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
point so a perfect fit stays finite), or ``chi2 / f + k log n`` when ``se`` is
given, with f = max(1, the smallest reduced chi-square ``chi2 / (n - k)`` of the three
models): the errors are scaled up by the lack of fit of the model that fits best. Without
that, tiny errors (a 500-problem test set) make chi-square explode for any misfit, and a
smooth curve that none of the three models follows exactly reads as a jump because the
sigmoid misfits it least. The same f scales the errors of rule 3d.
``delta_bic = BIC(line) - BIC(sigmoid)``; positive favours the sigmoid.
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
   put at the gap's centre (the data only say "in this gap"). A midpoint fitted on the last
   sample becomes a step in the last interval, so a curve whose whole rise sits in its last
   interval is judged (its reason says the level after it was seen once), but only when
   the points before it do not rise on their own: a straight line in log x through them
   either does not beat a constant (``min_trend_bic``) or leaves at least ``last_share``
   [0.9] of the rise to the last interval. Otherwise the last point is the end of a smooth
   rise (a power law sampled up to its steep part) and the fit stays as it is.
4. **transient** — the curve jumps (rule 3 on the points up to its best one) and then gives
   the gain back: its last point is below the fitted level before the jump plus half the
   step, and either the high level was seen at two or more x (without ``se`` one high point
   is not told from an outlier) or ``se`` is given; with ``se`` the fall must also exceed
   ``noise_z`` combined (scaled) errors. The
   reason names the rise and the fall (a spike at 16-32 that is back near 0.1 at 128).
   Checked before rule 3's verdict is given: a jump that is not kept is not an ability.
5. **flat** — no trend: the best of line and sigmoid beats the constant by
   less than ``min_trend_bic`` [2: "not worth more than a bare mention"] and, with ``se``,
   the last point is within ``noise_z`` combined (scaled) errors of the first (with tiny
   binomial errors near 0 the weighted fits can all misfit a steep rise alike, and a rise of
   dozens of errors must not read as noise).
6. **smooth** — anything else; ``reason`` names the first criterion of step 3
   that failed.

A jump's reason says "the whole rise sits in the last interval" only when the largest
step is the last one and that interval holds at least ``last_share`` of the rise.

``interval`` is the consecutive pair of sampled x with the largest improvement
— inside the fitted transition for a jump or a transient, over the whole curve otherwise
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
such verdicts are weak. The lack-of-fit factor f is measured on few degrees of freedom
(n - 4 for the sigmoid), so it is noisy itself: a real jump with scattered points can lose
its verdict to it (it then reads smooth), the price of not calling smooth curves jumps.

Breakthroughness (Srivastava et al. 2022, BIG-bench, appendix on linearity
and breakthroughness): ``I / sqrt(median(diff(y)**2))`` with
``I = sign(argmax - argmin) * (max y - min y)``. The denominator is the root
*median* square of consecutive differences, as in BIG-bench: with a root mean
square a single-step curve would score sqrt(n - 1), less than a straight
line's n - 1, which inverts the meaning. Guards: fewer than 2 points -> NaN,
constant y -> 0, a curve whose median step is 0 but which rises -> inf.

Standard errors. `binomial_se(p, n)` gives the error of a proportion over n problems
(Laplace-smoothed so 0 and 1 keep an error; 500 problems -> +-0.022 at 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis._jump_rules import _before_last, _fmt, _jump_test, _Rule, _transient
from analysis._sigmoid import (
    _largest_step,
)

__all__ = ["JumpResult", "binomial_se", "breakthroughness", "detect_jumps"]

# ---- defaults (see the module docstring for the rule they feed) ----------
MIN_POINTS = 5  # a 4-parameter sigmoid passes through any 4 points: 5 leave one residual
MIN_RISE = 0.05  # a bounded metric must move >= 5% of its range (exact match 0 -> 0.007 is flat)
MIN_DELTA_BIC = 10.0  # Kass & Raftery 1995: a BIC difference above 10 is "very strong"
MAX_WIDTH_DECADES = 1.0  # power law x**b spans 1.91/b decades: only b > ~1.9 would pass
MIN_BEFORE = 2  # the level before the jump must be seen at two scales, not one
NOISE_Z = 2.0  # ~95% two-sided for a normal difference of two points
MIN_TREND_BIC = 2.0  # Kass & Raftery 1995: below 2 "not worth more than a bare mention"
FLAT_RTOL = 1e-9  # relative range below which y is constant (float round-off, not data)
LAST_SHARE = 0.9  # "the whole rise sits in the last interval": >= 90% of it, by a line's reckoning

_VERDICTS = ("jump", "transient", "smooth", "flat", "insufficient", "uncertain")


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

    verdict: "jump" | "transient" (a jump whose gain is given back at larger x) | "smooth" |
        "flat" | "insufficient".
    interval: (x_lo, x_hi), consecutive sampled x with the largest improvement
        (inside the fitted transition for a jump or a transient); None when flat or < 2 points.
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
    last_share: float = LAST_SHARE,
) -> JumpResult:
    """Is y's rise with x a sudden jump? See the module docstring for the rule.

    x: positive scale values (sorted here, with y and se). y: the metric.
    se: standard errors of y (scalar or per point); with them the fits are
    weighted (the errors scaled up by the best model's lack of fit) and a jump smaller
    than ``noise_z`` combined errors does not count.
    bounds: the metric's possible range, e.g. (0, 1) for exact match or accuracy;
    with it a curve whose whole range is below ``min_rise`` of that range is flat.
    Raises ValueError for mismatched lengths, NaN/inf, x <= 0, repeated x.
    """
    # 1. validate, sort, orient
    if min_points < 2:
        raise ValueError(f"min_points must be >= 2, got {min_points!r}")
    if min_before < 1:
        raise ValueError(f"min_before must be >= 1, got {min_before!r}")
    if not 0.5 <= last_share <= 1.0:
        raise ValueError(f"last_share must be in [0.5, 1], got {last_share!r}")
    xs, ys, ses = _validate(x, y, se)
    n = int(xs.size)
    z = ys if higher_is_better else -ys
    hib = bool(higher_is_better)
    nan = float("nan")
    b_score = _breakthroughness_sorted(z)
    rng = float(np.ptp(z)) if n else 0.0
    rule = _Rule(min_delta_bic, max_width_decades, min_before, noise_z, min_trend_bic, last_share)

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

    # 3. a rise that is given back: the curve up to its best point jumps, and the last point
    # falls back below half that rise (and, with se, by more than the noise): transient
    t = np.log10(xs)
    transient = _transient(t, xs, ys, z, ses, rng=rng, rule=rule, min_points=min_points)
    if transient is not None:
        return result("transient", transient[0], interval=transient[1], **transient[2])

    # 4. the jump criteria on the curve, in t = log10 x; the first failure is the reason
    first = _jump_test(t, xs, z, ses, rng=rng, rule=rule)

    # 5. a curve that jumps and then falls back part of the way (non-monotone after the jump)
    # is judged again on its running best, max(y[:i+1]), when the fall does not undo the jump
    out, note, zz = first, "", z
    j = _largest_step(z, 0, n - 1)
    # running best after the largest step only: the level before it stays as measured
    env = np.concatenate([z[: j + 1], np.maximum.accumulate(z[j + 1 :])])
    if first.failure is not None and np.any(env > z):
        again = _jump_test(t, xs, env, ses, rng=rng, rule=rule)
        jj = _largest_step(env, again.a, again.b) if again.failure is None else -1
        # the fall must not undo the jump: every point after it stays above every point
        # before it by at least half the fitted step (noise around a constant fails this)
        kept = jj == j and float(np.min(z[j + 1 :]) - np.max(z[: j + 1])) >= 0.5 * again.fit["step"]
        if kept:
            out, zz = again, env
            k = int(np.argmax(env - z))
            note = (
                f" It is not monotone after the jump: y falls back to {_fmt(float(ys[k]))} at "
                f"x={_fmt(float(xs[k]))}, below its earlier best."
            )
    if out.failure is None:
        i = _largest_step(zz, out.a, out.b)
        interval = (float(xs[i]), float(xs[i + 1]))
        if not note and i + 2 < n:
            # a jump that passed as it is may still fall back after it: name a fall of at least
            # a tenth of the step (and, with se, beyond the stated errors: the fall itself is
            # what the lack-of-fit factor grows on) as the running-best path does
            after = z[i + 1 :]
            best = np.maximum.accumulate(after)
            k = int(np.argmax(best - after))
            drop = float(best[k] - after[k])
            worth = drop >= 0.1 * out.fit["step"] and drop > 0.0
            if ses is not None and worth:
                top = i + 1 + int(np.argmax(after[: k + 1]))
                worth = drop > noise_z * math.sqrt(float(ses[i + 1 + k] ** 2 + ses[top] ** 2))
            if worth:
                note = (
                    f" It is not monotone after the jump: y falls back to {_fmt(float(ys[i + 1 + k]))} "
                    f"at x={_fmt(float(xs[i + 1 + k]))}, below its earlier best."
                )
        last = ""
        if i == n - 2:
            share, _ = _before_last(
                t, zz, np.ones(n) if ses is None else 1.0 / ses**2,
                weighted=ses is not None, min_trend_bic=min_trend_bic,
            )  # fmt: skip
            if share >= last_share:
                last = " The whole rise sits in the last interval: the level after it is seen once."
        return result(
            "jump",
            f"jump between x={_fmt(interval[0])} and x={_fmt(interval[1])}: a sigmoid in log x "
            f"beats a straight line by delta BIC={out.fit['dbic']:.1f} and rises within "
            f"{out.fit['width']:.2f} decades around x={_fmt(out.fit['mid'])}.{note}{last}",
            interval=interval,
            **out.fit,
        )

    # 6. no jump: flat (no trend beats a constant) or smooth
    if first.trend < min_trend_bic and not first.ends_differ:
        return result(
            "flat",
            f"flat: neither a line nor a sigmoid in log x beats a constant "
            f"(delta BIC={first.trend:.1f} < {min_trend_bic:g}); the changes look like noise.",
            **first.fit,
        )
    return result("smooth", f"smooth: {first.failure}.", interval=biggest(), **first.fit)


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
