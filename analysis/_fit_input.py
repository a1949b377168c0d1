"""Input handling of analysis.fit (private): columns, law names, weights, groups.

Everything that turns a user's table and arguments into checked numpy arrays,
raising FitError with the offending column and row, plus the JSON helpers of
``LawFit.to_dict``. See analysis/fit.py's docstring for how a fit runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from analysis._fit_errors import FitError
from analysis.laws import LAW_NAMES, Law, get_law

__all__: list[str] = []  # private: analysis.fit and its helpers import the names they need


def _columns_of(data: Any) -> list[str]:
    if hasattr(data, "columns"):
        return list(data.columns)
    if isinstance(data, Mapping):
        return list(data.keys())
    raise FitError(f"data must be a DataFrame or a mapping of columns, got {type(data).__name__}")


def _labels(data: Any, n: int) -> Sequence:
    return list(data.index) if hasattr(data, "index") else range(n)


def _column(data: Any, name: str, *, role: str, positive: bool = True) -> np.ndarray:
    """One numeric column as float64, finite (and > 0 if ``positive``), or FitError."""
    cols = _columns_of(data)
    if name not in cols:
        raise FitError(
            f"{role} column {name!r} not in data; available columns: {', '.join(map(str, cols))}"
        )
    try:
        v = np.asarray(data[name], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise FitError(f"{role} column {name!r} is not numeric: {err}") from None
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitError(
            f"{role} column {name!r} has a non-finite value {float(v[i])!r} at row "
            f"{_labels(data, v.size)[i]!r} ({int(bad.sum())} such rows)"
        )
    if positive and (v <= 0).any():
        i = int(np.flatnonzero(v <= 0)[0])
        raise FitError(
            f"{role} column {name!r} must be > 0 (laws are fitted in log space), got "
            f"{float(v[i])!r} at row {_labels(data, v.size)[i]!r} ({int((v <= 0).sum())} such rows)"
        )
    return v


def _as_x_list(x: str | Sequence[str], law: Law) -> list[str]:
    lo, hi = law.n_x
    roles = ", ".join(law.x_roles)
    if isinstance(x, str):
        x = [x]
    x = list(x)
    if not lo <= len(x) <= hi:
        want = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise FitError(f"law {law.name!r} needs {want} x column(s) ({roles}), got {len(x)}: {x!r}")
    return x


def _law_or_error(name: Any, breaks: int | None) -> Law:
    if not isinstance(name, str) or name not in LAW_NAMES:
        known = ", ".join((*LAW_NAMES, "auto"))
        raise FitError(f"unknown law {name!r}; known laws: {known}")
    if breaks is not None and name != "bnsl":
        raise FitError(f"breaks={breaks!r} applies only to law 'bnsl', not to {name!r}")
    try:
        return get_law(name, breaks=1 if breaks is None else breaks)
    except ValueError as err:
        raise FitError(str(err)) from None


def _check_params(law: Law, values: Mapping[str, Any], what: str) -> None:
    names = law.param_names
    for k in values:
        if k not in names:
            raise FitError(
                f"{what} names unknown parameter {k!r} of law {law.name!r}; "
                f"parameters: {', '.join(names)}"
            )


def _weights(data, weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    if isinstance(weights, str):
        w = _column(data, weights, role="weights", positive=False)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != n:
            raise FitError(f"weights has {w.size} values but data has {n} rows")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        bad = w[~np.isfinite(w) | (w < 0)]
        shown = bad[0] if bad.size else w.sum()
        raise FitError(f"weights must be finite, >= 0 and not all 0, got {shown!r}")
    return w


def _groups(data, groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    cols = _columns_of(data)
    if groups not in cols:
        raise FitError(
            f"groups column {groups!r} not in data; available columns: {', '.join(map(str, cols))}"
        )
    vals = list(data[groups])
    _, codes = np.unique(np.array([str(v) for v in vals]), return_inverse=True)
    return codes.reshape(n)


class _Inputs(NamedTuple):
    """A fit's checked inputs, as ``_validate`` returns them."""

    x: list[str]  # x column names
    X: np.ndarray  # (n, q) x values
    yv: np.ndarray  # (n,) y values
    w: np.ndarray  # (n,) point weights
    fixed: dict[str, Any]  # {param: natural value} as given
    fixed_theta: dict[str, float]  # {param: fitting-space value}
    k: int  # free parameters
    codes: np.ndarray | None  # (n,) group codes for the bootstrap, or None


def _validate(
    law: Law,
    data: Any,
    x: str | Sequence[str],
    y: str,
    *,
    weights: str | Sequence[float] | None,
    groups: str | None,
    delta: Any,
    bootstrap: Any,
    level: Any,
    fixed: Mapping[str, float] | None,
) -> _Inputs:
    """Step 1 of ``LawFit.fit`` once the law is known: settings, columns,
    values (finite, > 0), enough points, fixed params; FitError if not."""
    if not (isinstance(delta, int | float) and math.isfinite(delta) and delta > 0):
        raise FitError(f"delta must be a finite number > 0, got {delta!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise FitError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not (isinstance(level, int | float) and 0 < level < 1):
        raise FitError(f"level must be in (0, 1), got {level!r}")
    x = _as_x_list(x, law)
    if not isinstance(y, str):
        raise FitError(f"y must be one column name, got {y!r}")
    cols = [_column(data, c, role="x") for c in x]
    yv = _column(data, y, role="y")
    n = yv.size
    for c, v in zip(x, cols, strict=True):
        if v.size != n:
            raise FitError(f"x column {c!r} has {v.size} values but y column {y!r} has {n}")
    X = np.column_stack(cols) if n else np.zeros((0, len(x)))  # (n, q)
    w = _weights(data, weights, n)
    fixed = dict(fixed or {})
    _check_params(law, fixed, "fixed")
    fixed_theta = {}
    for nm, v in fixed.items():
        prm = law.params[law.param_names.index(nm)]
        if not (isinstance(v, int | float | np.floating) and math.isfinite(v)) or (
            prm.log and v <= 0
        ):
            need = "a finite number > 0" if prm.log else "a finite number"
            raise FitError(f"fixed {nm} must be {need}, got {v!r}")
        fixed_theta[nm] = math.log(v) if prm.log else float(v)
    k = len(law.params) - len(fixed)
    if k == 0:
        raise FitError(f"all parameters of law {law.name!r} are fixed: nothing to fit")
    if n < k:
        raise FitError(
            f"law {law.name!r} has {k} free parameters but data has only {n} rows "
            f"(need at least {k})"
        )
    codes = _groups(data, groups, n)
    return _Inputs(x, X, yv, w, fixed, fixed_theta, k, codes)


def _json_float(v: Any) -> Any:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def _json_selection(sel: dict[str, Any] | None) -> dict[str, Any] | None:
    if sel is None:
        return None
    cands = {
        nm: {
            **c,
            "holdout_error": None
            if c["holdout_error"] is None
            else _json_float(c["holdout_error"]),
        }
        for nm, c in sel["candidates"].items()
    }
    return {**sel, "split_at": _json_float(sel["split_at"]), "candidates": cands}
