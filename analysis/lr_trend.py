"""How the best learning rate moves across cells: `lr_rule(best)` over a `best_lr` frame.

It fits ``log lr* = c + p log D + q log E`` (natural logs), a power law in the
spirit of Bjorck et al. 2024 ("Scaling Optimal LR Across Token Horizons": LR*
proportional to D**-0.32) and DeepSeek LLM 2024 (eta_opt proportional to
C**-0.125).

Decision rules of `lr_rule`
---------------------------
``log lr* = c + sum_k b_k log(axis_k)`` over ``axes`` (default dataset_size
and epochs, plus the base model's non-embedding parameter count N,
``model_params_n``, when the frame holds two or more N: a model axis; add
"lora_r" when the study has it as an axis). The exponents are named "p"
(dataset_size), "q" (epochs), "n" (model_params_n) and after the axis
otherwise. Cells with NaN lr_best are dropped; cells at the edge are
dropped too (``drop_edge=True``: their optimum is censored, not measured) with
a warning. The first axis must take >= 2 values; any other axis with one value
left is dropped (its exponent 0, interval NaN). Ordinary least squares of
log lr_best on [1, log axis...]. With fewer usable cells than terms + 2 the
rule refuses (`LRRuleError`, a ValueError, saying how many it needs): a rule
is only ever returned with >= 2 residual degrees of freedom, so ``ci_`` (t
intervals at ``level`` [0.9]) and `predict_interval` (the fit's uncertainty
plus the scatter of cells around the rule) are always finite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student t quantile; scipy.stats costs ~0.7 s to import

from analysis.lr_cell import LEVEL, _q
from analysis.lr_edge import LREdgeWarning

__all__ = ["LRRule", "LRRuleError", "N_AXIS", "RULE_AXES", "default_axes", "lr_rule"]


RULE_AXES = ("dataset_size", "epochs")  # the axes every study has; add "lora_r", model size, ...
N_AXIS = "model_params_n"  # the base model's N (analysis.selection.MODEL_AXIS)
_TERM = {"dataset_size": "p", "epochs": "q", N_AXIS: "n"}  # the historical names, and N's


def default_axes(best: pd.DataFrame) -> tuple[str, ...]:
    """RULE_AXES, plus model_params_n when ``best`` holds two or more distinct N (a model axis)."""
    if N_AXIS in getattr(best, "columns", ()) and pd.to_numeric(best[N_AXIS], errors="coerce").dropna().nunique() >= 2:
        return (*RULE_AXES, N_AXIS)
    return RULE_AXES


def _term(axis: str) -> str:
    """The parameter name of an axis's exponent: p for dataset_size, q for epochs, else the axis."""
    return _TERM.get(axis, axis)


class LRRuleError(ValueError):
    """The LR rule refuses to fit: too few usable cells for its terms (a ValueError)."""


class LRRule:
    """``log lr* = c + sum_k b_k log(axis_k)`` (natural logs), by OLS over the cells.

    Parameters: ``axes`` the columns of the `best_lr` frame the rule runs over
    [("dataset_size", "epochs")]; the first must vary, any other with a single
    value in the usable cells is dropped (its exponent 0, interval NaN).
    ``level`` of the intervals [0.9]; ``drop_edge`` drops cells whose optimum
    sits at the searched edge [True: censored, not measured].

    Refuses (`LRRuleError`) with fewer usable cells than terms + 2: with two
    residual degrees of freedom at least, every interval is finite, so a rule
    that is returned always says how sure it is.

    Fitted attributes: ``params_`` {"c", one per axis: "p" (dataset_size), "q"
    (epochs), the axis name otherwise}; ``ci_`` {name: (low, high)}; ``terms_``
    the fitted names; ``exponents_`` {axis: exponent}; ``cov_`` covariance of
    the fitted terms; ``n_cells_``; ``dof_``; ``rmse_`` residual RMS in
    natural-log units; ``cells_`` the cells used.
    """

    def __init__(
        self,
        *,
        axes: Sequence[str] | None = None,
        level: float = LEVEL,
        drop_edge: bool = True,
    ) -> None:
        # None: RULE_AXES, with model_params_n added at fit time when the cells hold >= 2 N
        self._auto = axes is None
        self.axes = None if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        self.level = level
        self.drop_edge = drop_edge

    # 1. validate, 2. design matrix, 3. OLS, 4. intervals
    def fit(self, best: pd.DataFrame) -> LRRule:
        """Fit the rule to a `best_lr` frame; returns self."""
        if not isinstance(best, pd.DataFrame):
            raise ValueError(
                f"best must be a pandas DataFrame (from best_lr), got {type(best).__name__}"
            )
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level!r}")
        if self._auto:
            self.axes = default_axes(best)
        if not self.axes or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axes must name distinct columns, got {list(self.axes)}")
        # epochs may be absent (a study at one epochs setting); the rule then has no epochs term
        needed = ["lr_best", *(a for a in self.axes if a != "epochs")]
        missing = [c for c in needed if c not in best.columns]
        if missing:
            raise ValueError(
                f"column(s) {missing} are required to fit the LR rule, but best has {list(best.columns)}"
            )
        df = best.copy()
        df["_lr"] = pd.to_numeric(df["lr_best"], errors="coerce").astype(float)
        cols = {a: f"_ax{i}" for i, a in enumerate(self.axes)}
        for a, col in cols.items():
            df[col] = (
                pd.to_numeric(df[a], errors="coerce").astype(float) if a in df.columns else 1.0
            )
        keep = np.isfinite(df["_lr"]) & (df["_lr"] > 0)
        first = self.axes[0]
        if self.drop_edge and "at_edge" in df.columns:
            edge = df["at_edge"].fillna(False).astype(bool) & keep
            if edge.any():
                warnings.warn(
                    f"lr_rule: dropped {int(edge.sum())} cell(s) whose best LR is at the searched edge "
                    f"({first}={df.loc[edge, first].tolist()}); bracket them (more trials, or a wider "
                    "range where the edge is the range's) to use them",
                    LREdgeWarning,
                    stacklevel=2,
                )
            keep &= ~edge
        df = df[keep]
        for a, col in cols.items():
            bad = df[~(df[col] > 0) | ~np.isfinite(df[col])]
            if len(bad):
                raise ValueError(f"{a} must be > 0 to take its log, got {_q(bad.iloc[0][a])}")
        if df[cols[first]].nunique() < 2:
            raise ValueError(
                f"lr_rule needs cells at >= 2 distinct {first} values, got "
                f"{sorted(df[cols[first]].unique().tolist())} after dropping NaN"
                f"{' and edge' if self.drop_edge else ''} cells"
            )
        fitted = [a for a in self.axes if a == first or df[cols[a]].nunique() >= 2]
        terms = ["c", *(_term(a) for a in fitted)]
        design = np.column_stack(
            [np.ones(len(df)), *(np.log(df[cols[a]].to_numpy()) for a in fitted)]
        )
        target = np.log(df["_lr"].to_numpy())
        n, k = design.shape
        if n < k + 2:
            raise LRRuleError(
                f"lr_rule refuses to fit {k} terms {terms} from {n} usable cell(s): it needs at least "
                f"{k + 2} (terms + 2) for finite intervals; bracket more cells (or fit fewer axes)"
            )

        # 3. OLS, 4. t intervals (dof >= 2 by the check above)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        resid = target - design @ coef
        dof = n - k
        xtx_inv = np.linalg.pinv(design.T @ design)
        s2 = float(resid @ resid) / dof
        cov = s2 * xtx_inv
        tq = float(stdtrit(dof, 0.5 + self.level / 2.0))
        half = tq * np.sqrt(np.diag(cov))

        names = ["c", *(_term(a) for a in self.axes)]
        self.terms_ = tuple(terms)
        self.params_ = {"c": 0.0, "p": 0.0, "q": 0.0, **dict.fromkeys(names, 0.0)}
        self.ci_ = {name: (math.nan, math.nan) for name in self.params_}
        for name, b, h in zip(terms, coef, half, strict=True):
            self.params_[name] = float(b)
            self.ci_[name] = (float(b - h), float(b + h))
        self.exponents_ = {a: self.params_[_term(a)] for a in self.axes}
        self.cov_ = cov
        self.n_cells_ = int(n)
        self.dof_ = int(dof)
        self.rmse_ = float(math.sqrt(float(resid @ resid) / n))
        self._s2 = s2
        self._tq = tq
        self._xtx_inv = xtx_inv
        self._fitted_axes = tuple(fitted)
        self._seen = {a: sorted(df[cols[a]].unique().tolist()) for a in self.axes}
        self.cells_ = df.drop(columns=["_lr", *cols.values()]).reset_index(drop=True)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise ValueError("this LRRule is not fitted yet; call fit(best) or use lr_rule(best)")

    def _row(self, values: dict[str, Any]) -> tuple[np.ndarray, bool]:
        unknown = sorted(set(values) - set(self.axes))
        if unknown:
            raise ValueError(f"this rule runs over axes {list(self.axes)}, got {unknown}")
        arrays = []
        for a in self._fitted_axes:
            if values.get(a) is None:
                raise ValueError(
                    f"this rule depends on {a} ({_term(a)}={self.params_[_term(a)]:.3g}); pass {a}=..."
                )
            x = np.asarray(values[a], dtype=float)
            if np.any(~(x > 0)):
                raise ValueError(f"{a} must be > 0, got {values[a]!r}")
            arrays.append(x)
        for a in self.axes:
            if a in self._fitted_axes or values.get(a) is None:
                continue
            x = np.asarray(values[a], dtype=float)
            if np.any(~(x > 0)):
                raise ValueError(f"{a} must be > 0, got {values[a]!r}")
            if np.any(~np.isin(x, self._seen[a])):
                warnings.warn(
                    f"lr_rule was fitted at {a}={self._seen[a]} only and has no {a} term; "
                    f"the prediction at {a}={values[a]!r} ignores {a}",
                    stacklevel=3,
                )
        arrays = list(np.broadcast_arrays(*arrays))
        cols = [np.ones_like(arrays[0]), *(np.log(x) for x in arrays)]
        return np.stack(cols, axis=-1), arrays[0].ndim == 0

    def _beta(self) -> np.ndarray:
        return np.array([self.params_[t] for t in self.terms_])

    def predict(self, **axes: Any) -> float | np.ndarray:
        """Predicted optimal learning rate at the given axes (float for scalars, array otherwise)."""
        self._check_fitted()
        row, scalar = self._row(axes)
        lr = np.exp(row @ self._beta())
        return float(lr) if scalar else lr

    def predict_interval(
        self, *, level: float | None = None, **axes: Any
    ) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
        """Prediction interval (low, high) for the optimal LR of a new cell at ``axes``.

        Includes the fit's uncertainty and the cells' scatter around the rule;
        ``level`` defaults to the rule's. Always finite (dof >= 2).
        """
        self._check_fitted()
        level = self.level if level is None else level
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        row, scalar = self._row(axes)
        mean = row @ self._beta()
        tq = float(stdtrit(self.dof_, 0.5 + level / 2.0))
        var = self._s2 * (1.0 + np.einsum("...i,ij,...j->...", row, self._xtx_inv, row))
        half = tq * np.sqrt(var)
        lo, hi = np.exp(mean - half), np.exp(mean + half)
        return (float(lo), float(hi)) if scalar else (lo, hi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN becomes None)."""
        self._check_fitted()

        def clean(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "form": "log lr* = c" + "".join(f" + {_term(a)}*log({a})" for a in self._fitted_axes),
            "log": "natural",
            "axes": list(self.axes),
            "params": {k: clean(v) for k, v in self.params_.items()},
            "ci": {k: [clean(a), clean(b)] for k, (a, b) in self.ci_.items()},
            "level": self.level,
            "terms": list(self.terms_),
            "n_cells": self.n_cells_,
            "dof": self.dof_,
            "rmse_log": clean(self.rmse_),
        }

    def __repr__(self) -> str:
        if not hasattr(self, "params_"):
            return f"LRRule(axes={None if self.axes is None else list(self.axes)!r}, level={self.level!r}, drop_edge={self.drop_edge!r})"
        shown = ", ".join(f"{t}={self.params_[t]:.3g}" for t in self.terms_)
        return f"LRRule({shown}, n_cells={self.n_cells_})"


def lr_rule(
    best: pd.DataFrame,
    *,
    axes: Sequence[str] | None = None,
    level: float = LEVEL,
    drop_edge: bool = True,
) -> LRRule:
    """Fit `LRRule` over ``axes`` to a `best_lr` frame: ``LRRule(axes=..., ...).fit(best)``; ``axes``
    None: dataset_size and epochs, plus model_params_n when the frame holds two or more N."""
    return LRRule(axes=axes, level=level, drop_edge=drop_edge).fit(best)
