"""The LR range a search was allowed, and the two kinds of edge a cell's best LR can sit at.

*beyond_range*: the best is at the range's own low/high (widen the range);
*not_bracketed*: the best is the extreme of the tried LRs but the range goes
further (run more trials in that cell). `search_range` reads the range from the
Optuna distributions stored with the trials or from a spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["LREdgeWarning", "search_range"]


class LREdgeWarning(UserWarning):
    """The best learning rate of a cell sits at the edge of the searched range."""


def search_range(source: Any, *, param: str = "learning_rate") -> tuple[float, float]:
    """The LR range a search was allowed: (low, high).

    ``source`` is a spec (a mapping with ``learning_rate: {low, high}``, as in
    spec.yaml, or an object with a ``learning_rate`` attribute having ``low``
    and ``high``), or Optuna trials (anything with ``.distributions[param]``
    having ``low``/``high``: the distribution Optuna stored with each trial;
    the widest over the trials is returned). Raises ValueError when none is found.
    """
    spec = source.get(param) if isinstance(source, Mapping) else getattr(source, param, None)
    if spec is not None:
        low, high = (spec.get("low"), spec.get("high")) if isinstance(spec, Mapping) else (
            getattr(spec, "low", None), getattr(spec, "high", None))  # fmt: skip
        return _check_range((low, high))  # type: ignore[return-value]
    lows, highs = [], []
    if not isinstance(source, Mapping | str):
        for t in source:
            d = getattr(t, "distributions", {}).get(param)
            if d is not None:
                lows.append(float(d.low))
                highs.append(float(d.high))
    if not lows:
        raise ValueError(
            f"no {param!r} range found in {type(source).__name__} (a spec or Optuna trials)"
        )
    return _check_range((min(lows), max(highs)))  # type: ignore[return-value]


def _check_range(lr_range: Any) -> Any:
    """Validate (low, high) or {cell: (low, high)}; returns it with floats."""
    if lr_range is None:
        return None
    if isinstance(lr_range, Mapping):
        return {k: _check_range(v) for k, v in lr_range.items()}
    try:
        low, high = (float(v) for v in lr_range)
    except (TypeError, ValueError):
        raise ValueError(f"lr_range must be (low, high), got {lr_range!r}") from None
    if not (0.0 < low <= high and math.isfinite(high)):
        raise ValueError(f"lr_range must be (low, high) with 0 < low <= high, got {lr_range!r}")
    return (low, high)


def _range_for(ranges: Any, key: tuple) -> tuple[float, float] | None:
    if ranges is None or isinstance(ranges, tuple):
        return ranges
    return ranges.get(key, ranges.get(key[0]) if len(key) == 1 else None)


def _edge_advice(
    edge: str, *, lr: float, searched: np.ndarray, label: str, allowed: tuple[float, float] | None
) -> tuple[str, str]:
    """(edge_kind, advice) for a cell whose best LR is the extreme tried one (``edge``)."""
    if not edge:
        return "", ""
    span = f"searched {10.0 ** searched[0]:.3g}..{10.0 ** searched[-1]:.3g}"
    if allowed is None:  # the range is unknown: say both possibilities
        if edge == "both":
            return "unknown", "only one learning rate was searched; search a range around it"
        way, side = (
            ("upward, above", "largest") if edge == "high" else ("downward, below", "smallest")
        )
        return "unknown", (
            f"it is the {side} searched ({span}); widen the range {way} {lr:.3g}, or, if the range "
            f"goes further, run more trials in cell ({label}) (pass lr_range to tell which)"
        )
    low, high = allowed
    tol = 1e-6  # relative: a float's round trip through storage, not a real gap
    at_low, at_high = lr <= low * (1 + tol), lr >= high * (1 - tol)
    rng = f"range {low:.3g}..{high:.3g}"
    if (edge in ("high", "both") and at_high) or (edge in ("low", "both") and at_low):
        way = "upward, above" if at_high else "downward, below"
        return "beyond_range", (
            f"beyond the range: it is the {rng}'s {'top' if at_high else 'bottom'}; "
            f"widen the range {way} {lr:.3g}"
        )
    if edge == "both":
        where = "around it"
    else:
        where = (
            f"above {lr:.3g} (up to {high:.3g})"
            if edge == "high"
            else f"below {lr:.3g} (down to {low:.3g})"
        )
    return "not_bracketed", (
        f"not bracketed: it is the {'only' if edge == 'both' else 'largest' if edge == 'high' else 'smallest'} "
        f"LR tried ({span}) inside the {rng}; run more trials in cell ({label}) {where}"
    )

