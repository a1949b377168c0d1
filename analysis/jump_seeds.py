"""Jump verdicts across seeds: does `detect_jumps`' verdict survive the seed noise?

`jumps_across_seeds(x, y)` takes one curve with repeated x (one entry per seed). The verdict
of `analysis.jumps.detect_jumps` on the per-x means is reported when at least ``agree``
[0.9] of ``n_boot`` [100] bootstrap resamples (seeds drawn with replacement within each x)
give it too, else "uncertain", with the fraction of each verdict in ``fractions``.
`analysis.mirage.check_mirage(..., seeds=...)` resamples seeds the same way and shares the
defaults and the helpers here.

Few seeds. A plain bootstrap of k seeds spreads their mean by the plug-in variance
``s**2 (k - 1) / k**2``, short of the mean's ``s**2 / k`` by a factor (k - 1) / k: with 2 seeds
it halves the variance. Each resampled mean's distance from the seeds' mean is therefore scaled
by ``sqrt(k / (k - 1))`` (`_rescaled_mean`), which gives the unbiased variance; with 2 seeds
the spread is still estimated from one difference, so a verdict that holds is a weak check.
With one seed per x nothing is resampled: the seed noise is unmeasured, the verdict is that of
the single curve, ``fractions`` is empty and the reason says so.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.jumps import JumpResult, _as_1d, _clean, detect_jumps

__all__ = ["SeedJumpResult", "jumps_across_seeds"]

N_BOOT = 100  # seed resamples: a fraction near 0.9 known to +-0.03; ~30-60 ms each (a full check)
AGREE = 0.9  # a verdict stands when >= 90% of the seed resamples give it


@dataclass(frozen=True)
class SeedJumpResult:
    """Verdict on a curve measured with several seeds per scale point.

    verdict: the verdict of ``detect_jumps`` on the seed means when at least ``agree`` of the
        bootstrap resamples over seeds give it, else "uncertain"; with one seed per x, the
        single curve's verdict (the seed noise is unmeasured: ``n_boot`` 0, no fractions).
    fractions: verdict -> fraction of the resamples giving it (sums to 1; empty when n_boot is 0).
    point: the ``JumpResult`` on the seed means. n_boot: resamples drawn (0: none, one seed per x).
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


def _inflation(k: int) -> float:
    """Factor on a bootstrap mean's distance from the mean of k seeds: sqrt(k / (k - 1))."""
    return float(np.sqrt(k / (k - 1))) if k >= 2 else 1.0


def _rescaled_mean(values: np.ndarray, rng: np.random.Generator) -> float:
    """Mean of k values drawn with replacement, its distance from their mean scaled by
    `_inflation` (k), so that its variance is the unbiased s**2 / k, not (k - 1) / k of it."""
    k = int(values.size)
    draw = float(values[rng.integers(0, k, k)].mean())
    centre = float(values.mean())
    return centre + _inflation(k) * (draw - centre)


def _seed_counts_text(counts: Sequence[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo} seeds per x" if lo == hi else f"{lo}-{hi} seeds per x"


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
    ``n_boot`` bootstrap resamples (seeds drawn with replacement within each x, then averaged,
    the average's spread scaled to the unbiased one for few seeds; see the module docstring)
    give it too; otherwise "uncertain", with the fraction each way in ``fractions``. With one
    seed per x the seed noise is unmeasured: the single curve's verdict, no resamples, and a
    reason that says so.
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
    n_seeds = {float(u): int(g.size) for u, g in zip(ux, groups, strict=True)}
    counts = [g.size for g in groups]
    if max(counts, default=0) < 2:
        reason = (
            f"{point.reason} Seed noise unmeasured: one seed per x, so this verdict is not "
            "checked across seeds (repeat seeds at some x to check it)."
        )
        return SeedJumpResult(
            point.verdict, types.MappingProxyType({}), point, 0,
            types.MappingProxyType(n_seeds), reason,
        )  # fmt: skip
    bounds = jump_kwargs.get("bounds")
    rng = np.random.default_rng(random_state)
    verdicts = []
    for _ in range(n_boot):
        boot = np.array([_rescaled_mean(g, rng) for g in groups])
        if bounds is not None:  # a scaled-up draw must stay a possible value of the metric
            boot = np.clip(boot, float(bounds[0]), float(bounds[1]))
        verdicts.append(detect_jumps(ux, boot, **jump_kwargs).verdict)
    fractions = _fractions(verdicts)
    verdict = _agreed(point.verdict, fractions, agree)
    single = sum(c == 1 for c in counts)
    limits = f" {single} of {len(counts)} x values have one seed: their noise is not measured." if single else ""
    seeds_text = _seed_counts_text(counts)
    if verdict == "uncertain":
        reason = (
            f"uncertain: on the seed means the curve reads {point.verdict!r}, but over {n_boot} "
            f"resamples of the seeds ({seeds_text}): {_fmt_fractions(fractions)} (a verdict "
            f"needs {agree:.0%}).{limits}"
        )
    else:
        reason = (
            f"{point.reason} It holds in {fractions[verdict]:.0%} of {n_boot} seed resamples "
            f"({seeds_text}).{limits}"
        )
    return SeedJumpResult(
        verdict, types.MappingProxyType(fractions), point, n_boot,
        types.MappingProxyType(n_seeds), reason,
    )  # fmt: skip
