"""The jump criteria of `analysis.jumps.detect_jumps`, one pass over a curve (private).

`_jump_test` fits the constant, line and sigmoid models and returns the first criterion a curve
fails (or none: a jump); `_transient` recognises a jump that falls back; `_before_last` decides
whether the points before the last interval rise on their own. The rule itself is described in
`analysis.jumps`' docstring; this module holds its steps, as `_sigmoid` holds the curve fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis._sigmoid import (
    _WIDTH_PER_S,
    _centre_in_gap,
    _fit_sigmoid,
    _largest_step,
    _Sigmoid,
    _wls_rss,
)

__all__: list[str] = []

_RSS_FLOOR_REL = 1e-9  # RSS floor per point, relative to the range of y (keeps BIC finite)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# ---- the detector ---------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """The thresholds of one `detect_jumps` call (see the module docstring)."""

    min_delta_bic: float
    max_width_decades: float
    min_before: int
    noise_z: float
    min_trend_bic: float
    last_share: float


@dataclass(frozen=True)
class _Outcome:
    """One pass of the jump criteria over a curve: the first failure (None: a jump) and the fit."""

    failure: str | None
    fit: dict[str, float]  # dbic, width, mid, step (the JumpResult fields)
    lo: float  # the fitted level before the rise
    a: int  # sampled points that bracket the fitted transition
    b: int
    trend: float  # BIC(constant) - min(BIC(line), BIC(sigmoid)): > 0 means some trend
    scale: float  # the errors' lack-of-fit factor (1 without se, or when the best model fits)
    ends_differ: bool  # with se: the last point differs from the first by > noise_z scaled errors


def _wls_line(t: np.ndarray, z: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Weighted least-squares line z = c0 + c1 t: (c0, c1, weighted RSS)."""
    sw = np.sqrt(w)
    design = np.column_stack([np.ones(t.size), t])
    coef, *_ = np.linalg.lstsq(design * sw[:, None], z * sw, rcond=None)
    return float(coef[0]), float(coef[1]), float(np.sum(w * (design @ coef - z) ** 2))


def _before_last(
    t: np.ndarray, z: np.ndarray, w: np.ndarray, *, weighted: bool, min_trend_bic: float
) -> tuple[float, bool]:
    """Share of the rise that sits in the last interval, and whether the points before it trend.

    A straight line (unweighted: the share is the curve's shape, not a statistic) is fitted to
    every point but the last; the rise before is its change across them (>= 0), the last step
    the last point's height above the line's end. The earlier points trend when their
    weighted line beats a constant by ``min_trend_bic`` (BIC, errors scaled by the line's own
    lack of fit as in `detect_jumps`).
    """
    tb, zb, wb = t[:-1], z[:-1], w[:-1]
    m = int(tb.size)
    c0, c1, _ = _wls_line(tb, zb, np.ones(m))
    rise_before = max(c1 * float(tb[-1] - tb[0]), 0.0)
    last = float(z[-1]) - (c0 + c1 * float(tb[-1]))
    share = last / (last + rise_before) if last > 0.0 else 0.0
    _, _, rss_l = _wls_line(tb, zb, wb)
    rss_c = _wls_rss(np.ones((m, 1)), zb, wb)
    if m < 3:
        return share, False
    if weighted:
        f = max(1.0, rss_l / (m - 2))
        gain = (rss_c - rss_l) / f - math.log(m)
    else:
        floor = m * (_RSS_FLOOR_REL * max(float(np.ptp(z)), 1e-300)) ** 2
        gain = m * math.log(max(rss_c, floor) / max(rss_l, floor)) - math.log(m)
    return share, bool(gain >= min_trend_bic)


def _jump_test(
    t: np.ndarray, xs: np.ndarray, zz: np.ndarray, ses: np.ndarray | None, *, rng: float, rule: _Rule
) -> _Outcome:
    """The jump criteria (step 3 of the module docstring) on one curve, in order."""
    n = int(t.size)
    w = np.ones(n) if ses is None else 1.0 / ses**2
    tol = 1e-9 * max(1.0, float(t[-1] - t[0]))
    rss_c = _wls_rss(np.ones((n, 1)), zz, w)
    rss_l = _wls_rss(np.column_stack([np.ones(n), t]), zz, w)
    sig = _centre_in_gap(_fit_sigmoid(t, zz, w), t, zz, w)
    if sig.t0 >= t[-1] - tol and n >= 3:
        # a midpoint on the last sample is not identified (the rise may go on beyond it): the
        # data say only "the rise sits in the last interval", a step there, when the points
        # before it do not carry a trend of their own (else it is the end of a smooth rise)
        share, trending = _before_last(
            t, zz, w, weighted=ses is not None, min_trend_bic=rule.min_trend_bic
        )
        if share >= rule.last_share or not trending:
            wb = w[:-1] / w[:-1].sum()
            lo = float(np.sum(wb * zz[:-1]))
            gap = float(t[-1] - t[-2])
            sig = _Sigmoid(
                lo, max(float(zz[-1]) - lo, 0.0), float(t[-2] + t[-1]) / 2.0,
                gap / _WIDTH_PER_S / 2.0, float(np.sum(w[:-1] * (zz[:-1] - lo) ** 2)),
            )  # fmt: skip
    if ses is None:
        floor = n * (_RSS_FLOOR_REL * rng) ** 2
        scale = 1.0

        def bic(rss: float, k: int) -> float:
            return n * math.log(max(rss, floor) / n) + k * math.log(n)
    else:
        # with tiny errors any misfit blows chi-square up and the least bad model wins by a
        # mile: scale the errors by the lack of fit of the best of the three models (its
        # reduced chi-square, when above 1), so the models are compared on what the data allow
        scale = max(1.0, min(r / (n - k) for r, k in ((rss_c, 1), (rss_l, 2), (sig.rss, 4)) if n > k))

        def bic(rss: float, k: int) -> float:
            return rss / scale + k * math.log(n)  # chi-square with the scaled errors

    bic_c, bic_l, bic_s = bic(rss_c, 1), bic(rss_l, 2), bic(sig.rss, 4)
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
    if not dbic >= rule.min_delta_bic:
        failure = (
            f"a sigmoid in log x beats a straight line by only delta BIC={dbic:.1f} "
            f"(a jump needs >= {rule.min_delta_bic:g})"
        )
    elif not width <= rule.max_width_decades:
        failure = (
            f"the fitted rise is gradual: its 10-90% width is {width:.2f} decades of x "
            f"(a jump needs <= {rule.max_width_decades:g})"
        )
    elif t_lo < t[0] - tol or n_before < rule.min_before or n_after < 1:
        failure = (
            f"the fitted transition (midpoint x={_fmt(mid)}) is not inside the data: "
            f"{n_before} point(s) before its midpoint, {n_after} after, and its 10% point is at "
            f"x={_fmt(10.0**t_lo)} against the smallest x={_fmt(float(xs[0]))} "
            f"(a jump needs >= {rule.min_before} before, >= 1 after and the start observed)"
        )
    elif ses is not None:
        gain = float(zz[b] - zz[a])
        noise = rule.noise_z * math.sqrt(scale * float(ses[a] ** 2 + ses[b] ** 2))
        if not gain > noise:
            failure = (
                f"the improvement across the transition (x={_fmt(float(xs[a]))} to "
                f"{_fmt(float(xs[b]))}) is {_fmt(gain)}, within {rule.noise_z:g} standard errors "
                f"({_fmt(noise)})"
            )
    trend = bic_c - min(bic_l, bic_s)
    ends = ses is not None and abs(float(zz[-1] - zz[0])) > rule.noise_z * math.sqrt(
        scale * float(ses[0] ** 2 + ses[-1] ** 2)
    )
    return _Outcome(failure, fit, sig.lo, a, b, trend, scale, ends)


def _transient(
    t: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    z: np.ndarray,
    ses: np.ndarray | None,
    *,
    rng: float,
    rule: _Rule,
    min_points: int,
) -> tuple[str, tuple[float, float], dict[str, float]] | None:
    """(reason, interval, fit) when the curve jumps up to its best point and then gives the rise
    back: its last point ends below half the jump (the fitted level before it plus half its
    step) and, with se, the fall exceeds ``noise_z`` combined errors. None otherwise."""
    n = int(z.size)
    p = int(np.argmax(z))
    if p >= n - 1 or p + 1 < min_points:
        return None
    fall = float(z[p] - z[-1])
    if fall < 0.5 * float(z[p] - np.min(z[: p + 1])):  # cheap guard: most of the rise stays
        return None
    ses_p = None if ses is None else ses[: p + 1]
    up = _jump_test(t[: p + 1], xs[: p + 1], z[: p + 1], ses_p, rng=rng, rule=rule)
    half = up.lo + 0.5 * up.fit["step"]
    high = int(np.sum(z[: p + 1] >= half))
    # without se the high level must be seen at two scales: one high point is not told from an
    # outlier (with se, rule 3d and the fall's own test below stand in for that)
    if up.failure is not None or high < (1 if ses is not None else 2) or not float(z[-1]) < half:
        return None
    if ses is not None and not fall > rule.noise_z * math.sqrt(
        up.scale * float(ses[p] ** 2 + ses[-1] ** 2)
    ):
        return None
    i = _largest_step(z, up.a, up.b)
    interval = (float(xs[i]), float(xs[i + 1]))
    hib = z is ys
    reason = (
        f"transient: y {'rises' if hib else 'improves'} between x={_fmt(interval[0])} and "
        f"x={_fmt(interval[1])} (from {_fmt(float(ys[i]))} to {_fmt(float(ys[p]))} at "
        f"x={_fmt(float(xs[p]))}; a sigmoid in log x beats a straight line there by delta "
        f"BIC={up.fit['dbic']:.1f}), then {'falls' if hib else 'climbs'} back to "
        f"{_fmt(float(ys[-1]))} at x={_fmt(float(xs[-1]))}, past half the gain: it is not kept "
        f"at larger x.{' The high level was seen at one x only.' if high == 1 else ''}"
    )
    return reason, interval, up.fit


# ---- standard errors from counts ------------------------------------------
