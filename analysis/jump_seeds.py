"""Jump verdicts across seeds: does `detect_jumps`' verdict survive the seed noise?

`jumps_across_seeds(x, y)` takes one curve with repeated x (one entry per seed). The verdict
of `analysis.jumps.detect_jumps` on the per-x means is reported when at least ``agree``
[0.9] of ``n_boot`` [100] bootstrap resamples (seeds drawn with replacement within each x)
give it too, else "uncertain", with the fraction of each verdict in ``fractions``.
`analysis.mirage.check_mirage(..., seeds=...)` resamples seeds the same way and shares the
defaults and the helpers here.
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
