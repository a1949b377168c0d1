"""Robust scaling-law fitting: a multi-start Huber fit in log space, bootstrap CIs.

    from analysis.fit import fit_law
    fit = fit_law(law="chinchilla", data=df, x=["N", "D"], y="loss", bootstrap=1000)
    fit.params_, fit.ci_, fit.metrics_, fit.predict(df2)

How a fit runs (``LawFit.fit``), top to bottom, and where each step lives:

1. validate: law, columns, values (finite, > 0), enough points, fixed params
   (analysis/_fit_input.py; law="auto" first picks the law, _fit_auto.py).
2. reparametrise: positive parameters as logs (Hoffmann et al. 2022, D.2:
   log L = LSE(a - alpha log N, b - beta log D, e)), log x centred inside each
   power term so that a and alpha are not nearly collinear (analysis/_solver.py).
3. objective: SUM over points of w_i * Huber_delta(log pred_i - log y_i) / delta.
   The sum (not a mean) and the 1/delta put it at O(sum |r|) ~ O(1), where
   relative tolerances mean something: a mean Huber (~1e-5 here) under
   scipy's default tolerances stops early, the pitfall Besiroglu et al.
   (2024) discuss for the original Chinchilla fit.
4. starts are minimised by a batched projected L-BFGS written in numpy: all
   starts advance together, so the Python overhead is paid once per
   iteration, not once per start (scipy's L-BFGS-B start by start takes ~70 s
   for Chinchilla's grid here). A grid of up to 16 starts is minimised
   whole. A larger one (power: 150; Chinchilla: Besiroglu et al.'s 4,500) is
   replaced by variable projection: the law is linear in E, A, B once the exponents are
   fixed, so over a finer grid of the nonlinear parameters the coefficients
   are solved by non-negative least squares, and the 16 best of those starts
   by the Huber objective are minimised (analysis/_fit_profile.py). The best
   distinct end points then go on at a tighter tolerance, the best one is
   kept and, after variable projection, finished by a few Newton steps
   (analysis/_fit_auto.py, on analysis/_solver.py).
5. bootstrap (optional): resampled data enter as integer weights on the
   original points, so every resample is refitted in the same batched run,
   each from the best solution and the other competitive end points of step
   4, in coordinates whitened by the Gauss-Newton curvature at the fit
   (analysis/_fit_bootstrap.py). Under law="auto" every resample also chooses
   its own law again, and prediction intervals come from each resample's
   choice, so they carry the uncertainty of the choice.
6. metrics and warnings (doubtful fit, flat curve, extrapolation)
   (analysis/_fit_diagnose.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis._fit_auto import AUTO_CANDIDATES, _multistart, _select_law, _starts
from analysis._fit_bootstrap import _bootstrap, _bootstrap_auto
from analysis._fit_diagnose import _diagnose, _metrics, _param_status
from analysis._fit_errors import FitError, FitWarning
from analysis._fit_input import (
    _column,
    _columns_of,
    _json_float,
    _json_selection,
    _labels,
    _law_or_error,
    _validate,
)
from analysis._solver import _Objective, _space
from analysis.laws import Law

__all__ = [
    "FitError",
    "FitWarning",
    "LawFit",
    "HoldoutResult",
    "fit_law",
    "holdout",
    "compare",
    "AUTO_CANDIDATES",
]

# Huber delta on log residuals: 1e-3 as in Hoffmann et al. (2022, D.2) and
# Besiroglu et al. (2024). Residuals of real loss curves are ~1e-2, so most
# points sit in the linear (L1-like) part: a few bad runs cannot drag the fit.
# (Scaling delta to 1.345 x a robust SD of the residuals, a near least-squares
# fit, was tried for issue 16: the 90% interval at 4x then covered 0.82 of 100
# planted power laws, 20 points at 1% noise, against 0.90 at 1e-3, and 0.71
# against 0.79 on the demo's 5 sizes x 2 seeds at 5%: the pairs bootstrap of a
# least-squares fit is too narrow at small n, and 1e-3 stays.)
DEFAULT_DELTA = 1e-3
# 90% intervals: what Besiroglu et al. report, and at 1,000 resamples each
# tail holds 50 draws, enough for a stable percentile.
DEFAULT_LEVEL = 0.9


# ---------------------------------------------------------------------------
# 1. the estimator
# ---------------------------------------------------------------------------


class LawFit:
    """Fit one scaling law to a table, sklearn style: ``LawFit(...).fit(data, x, y)``.

    Parameters (all keyword-only after ``law``):
      law        one of analysis.laws.LAW_NAMES, or "auto": fit AUTO_CANDIDATES
                 and keep the one with the smallest leave-largest-out error
                 (one x column only; see ``selection_``)
      delta      Huber delta on log residuals (default 1e-3, Hoffmann et al.)
      fixed      {param: natural value} held fixed, e.g. {"R_D_star": 15.387756}
      breaks     number of BNSL breaks (bnsl only; default 1)
      init_grid  {param: natural-scale starting values}, replacing the law's grid
      bootstrap  number of resamples for intervals (0: none)
      level      interval level (default 0.9)
      seed       seed of the bootstrap's numpy Generator

    Fitted attributes: params_, ci_, metrics_, warnings_, draws_ (bootstrap
    params, natural scale, (B, p); under "auto" the chosen law refitted on
    every resample: its intervals are conditional on that law), mixture_
    ([(law, fitting-space thetas (B_l, p_l))]: the draws predictions come
    from; under "auto" each resample's refit of the law it chose, see
    ``predict_draws``), x_, y_, x_range_, n_starts_, optimizer_, law_name_
    (the law fitted: the winner under "auto"), selection_ (None unless
    "auto": see analysis._fit_auto._select_law; with a bootstrap,
    selection_["bootstrap"]["chosen_share"] is each law's share of the
    resamples, analysis._fit_bootstrap._bootstrap_auto), param_status_ ({param:
    "estimated" | "fixed" | "lower_bound" | "upper_bound"}) and param_text_
    ({param: a human string, e.g. "alpha = 0.35 [0.33, 0.37]" or "no floor
    resolved: E < 0.01"}).
    """

    # step 4's choice of starts on a large grid (analysis._fit_auto._multistart):
    # "profile" (variable projection) or "grid" (the screened grid it replaced;
    # set on an instance to compare the two, as bench/fit_speed.py does)
    _search = "profile"

    def __init__(
        self,
        law: str = "power",
        *,
        delta: float = DEFAULT_DELTA,
        fixed: Mapping[str, float] | None = None,
        breaks: int | None = None,
        init_grid: Mapping[str, Iterable[float]] | None = None,
        bootstrap: int = 0,
        level: float = DEFAULT_LEVEL,
        seed: int | None = 0,
    ):
        self.law = law
        self.delta = delta
        self.fixed = fixed
        self.breaks = breaks
        self.init_grid = init_grid
        self.bootstrap = bootstrap
        self.level = level
        self.seed = seed

    # -- fitting -------------------------------------------------------------

    def fit(
        self,
        data: Any,
        x: str | Sequence[str],
        y: str,
        *,
        weights: str | Sequence[float] | None = None,
        groups: str | None = None,
    ) -> LawFit:
        """Fit on ``data`` (DataFrame or mapping of columns); returns self."""
        # 1. validate
        self.selection_: dict[str, Any] | None = None
        if self.law == "auto":
            selection, auto_state = _select_law(self, data, x, y, weights=weights)
            law = _law_or_error(selection["chosen"], None)
        else:
            selection = auto_state = None
            law = _law_or_error(self.law, self.breaks)
        inp = _validate(
            law,
            data,
            x,
            y,
            weights=weights,
            groups=groups,
            delta=self.delta,
            bootstrap=self.bootstrap,
            level=self.level,
            fixed=self.fixed,
        )
        X, yv, w, k = inp.X, inp.yv, inp.w, inp.k
        n = yv.size

        self.law_ = law
        self.law_name_ = law.name
        self.selection_ = selection
        self.x_, self.y_ = list(inp.x), y
        self.x_range_ = {
            c: (float(X[:, j].min()), float(X[:, j].max())) for j, c in enumerate(inp.x)
        }
        self.fixed_ = {k_: float(v) for k_, v in inp.fixed.items()}
        self.warnings_: list[str] = []
        self.X_, self.yv_ = X, yv  # training data, for plots and compare()

        # 2-3. reparametrise, objective
        ly = np.log(yv)
        space = _space(law, X, ly, inp.fixed_theta)
        obj = _Objective(law, X, ly, w, float(self.delta), space)

        # 4. all starts, batched; the competitive distinct end points further
        T0 = _starts(law, X, inp.fixed, self.init_grid)
        starts, self.optimizer_ = _multistart(law, obj, space, T0, X, search=self._search)
        self._solution = (obj, space, starts)  # for law="auto"'s bootstrap of its candidates
        z_best = starts[0]
        theta = space.theta(z_best)
        self.theta_ = theta
        self.params_ = {**law.from_theta(theta), **self.fixed_}  # fixed ones exactly as given
        self.n_starts_ = self.optimizer_["n_starts"]

        # 5. bootstrap
        self.draws_ = np.empty((0, len(law.params)))
        self.draw_thetas_ = None
        self.mixture_: list[tuple[Law, np.ndarray]] = []
        self.ci_: dict[str, tuple[float, float]] = {}
        if self.bootstrap > 0 and auto_state is not None:
            _bootstrap_auto(self, obj, space, starts, inp.codes, auto_state)
        elif self.bootstrap > 0:
            _bootstrap(self, obj, space, starts, inp.codes)

        # 6. metrics, warnings
        self.metrics_ = _metrics(obj, theta, yv, w, self.delta, k)
        _diagnose(self, law, space, z_best, yv, k, n)
        self.param_status_, self.param_text_ = _param_status(self, law, space, z_best)
        return self

    def residuals(self) -> np.ndarray:
        """Log residuals log pred - log y on the training data."""
        lp = self.law_.log_predict(self.theta_, self.X_)[0]
        return lp - np.log(self.yv_)

    def _warn(self, msg: str) -> None:
        # called by the helpers that fit() calls itself (_bootstrap, _diagnose):
        # _warn, the helper, fit, then the user's call site
        self.warnings_.append(msg)
        warnings.warn(msg, FitWarning, stacklevel=4)

    # -- using a fit ---------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise FitError("this LawFit is not fitted yet: call fit(data, x, y) first")

    def _x_of(self, data: Any) -> np.ndarray:
        self._check_fitted()
        X = np.column_stack([_column(data, c, role="x") for c in self.x_])
        if X.shape[0] == 0:
            return X
        outside = []
        for j, c in enumerate(self.x_):
            lo, hi = self.x_range_[c]
            v = X[:, j]
            if v.min() < lo * (1 - 1e-12) or v.max() > hi * (1 + 1e-12):
                outside.append(
                    f"{c} in [{v.min():.4g}, {v.max():.4g}] vs fitted [{lo:.4g}, {hi:.4g}]"
                )
        if outside:
            warnings.warn(
                "predicting outside the fitted range (extrapolation): " + "; ".join(outside),
                FitWarning,
                stacklevel=3,
            )
        return X

    def predict(self, data: Any) -> np.ndarray:
        """Predicted y for the rows of ``data`` (needs the x columns)."""
        X = self._x_of(data)
        return np.exp(self.law_.log_predict(self.theta_, X)[0])

    def predict_draws(self, data: Any) -> np.ndarray:
        """(B, m) bootstrap predictions for the m rows of ``data``, one row per
        resample: under law="auto" each from the law that resample chose
        (``mixture_``); needs bootstrap > 0."""
        X = self._x_of(data)
        if not self.mixture_:
            raise FitError("bootstrap predictions need bootstrap draws: fit with bootstrap > 0")
        return np.vstack([np.exp(law.log_predict(th, X)) for law, th in self.mixture_])

    def predict_interval(
        self, data: Any, level: float = DEFAULT_LEVEL
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) percentile band of bootstrap predictions; needs bootstrap > 0.
        Under law="auto" it carries the uncertainty of the choice of law too."""
        if not 0 < level < 1:
            raise FitError(f"level must be in (0, 1), got {level!r}")
        self._check_fitted()
        if self.draws_.shape[0] == 0:
            raise FitError("predict_interval needs bootstrap draws: fit with bootstrap > 0")
        preds = self.predict_draws(data)  # (B, m)
        lo, hi = np.quantile(preds, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (non-finite numbers become None)."""
        self._check_fitted()
        return {
            "law": self.law_.name,
            "x": list(self.x_),
            "y": self.y_,
            "params": {k: _json_float(v) for k, v in self.params_.items()},
            "ci": {k: [_json_float(a), _json_float(b)] for k, (a, b) in self.ci_.items()},
            "metrics": {k: _json_float(v) for k, v in self.metrics_.items()},
            "warnings": list(self.warnings_),
            "fixed": {k: _json_float(v) for k, v in self.fixed_.items()},
            "param_status": dict(self.param_status_),
            "param_text": dict(self.param_text_),
            "selection": _json_selection(self.selection_),
        }

    def __repr__(self) -> str:
        if not hasattr(self, "params_"):
            return f"LawFit(law={self.law!r}, unfitted)"
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items())
        return f"LawFit({self.law_.name}: {ps}; rmsle={self.metrics_['rmsle']:.3g})"


# ---------------------------------------------------------------------------
# 2. functional API
# ---------------------------------------------------------------------------


def fit_law(
    *,
    law: str,
    data: Any,
    x: str | Sequence[str],
    y: str,
    bootstrap: int = 0,
    seed: int | None = 0,
    delta: float = DEFAULT_DELTA,
    fixed: Mapping[str, float] | None = None,
    breaks: int | None = None,
    weights: str | Sequence[float] | None = None,
    groups: str | None = None,
    init_grid: Mapping[str, Iterable[float]] | None = None,
    level: float = DEFAULT_LEVEL,
) -> LawFit:
    """Fit ``law`` to ``data[x] -> data[y]``; see LawFit for the arguments.

    ``law="auto"`` (one x column): fit AUTO_CANDIDATES, keep the one with the
    smallest leave-largest-out error (the simpler on near ties and when
    distinct x values are fewer than 2 per parameter), then refit it on all
    the data with the bootstrap asked for, each resample choosing again;
    ``fit.law_name_`` says which won and ``fit.selection_`` holds every
    candidate's held-out error.
    """
    est = LawFit(
        law,
        delta=delta,
        fixed=fixed,
        breaks=breaks,
        init_grid=init_grid,
        bootstrap=bootstrap,
        level=level,
        seed=seed,
    )
    return est.fit(data, x, y, weights=weights, groups=groups)


@dataclass(frozen=True)
class HoldoutResult:
    """A fit on rows with split_on < threshold, scored on the rest.

    mape: mean |pred - y| / y over the held-out rows, as a fraction (0.01 = 1%).
    errors: per held-out row (pred - y) / y, in the rows' order.
    """

    fit: LawFit
    mape: float
    errors: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    n_train: int
    n_test: int
    split_on: str
    threshold: float
    test_rows: list = field(default_factory=list)


def holdout(
    *,
    law: str,
    data: Any,
    x: str | Sequence[str],
    y: str,
    split_on: str,
    threshold: float,
    **fit_kwargs: Any,
) -> HoldoutResult:
    """Fit on rows with ``split_on < threshold``; MAPE of the extrapolation on the rest."""
    col = _column(data, split_on, role="split_on", positive=False)
    if not (isinstance(threshold, int | float | np.number) and math.isfinite(threshold)):
        raise FitError(f"threshold must be a finite number, got {threshold!r}")
    train = col < threshold
    n_tr, n_te = int(train.sum()), int((~train).sum())
    if n_tr == 0 or n_te == 0:
        span = f" ({split_on} spans [{col.min():.4g}, {col.max():.4g}])" if col.size else ""
        raise FitError(
            f"holdout on {split_on!r} at threshold {threshold!r} leaves {n_tr} training and "
            f"{n_te} test rows{span}; need both > 0"
        )
    part = {c: np.asarray(data[c]) for c in _columns_of(data)}
    tr = {c: v[train] for c, v in part.items()}
    te = {c: v[~train] for c, v in part.items()}
    w = fit_kwargs.get("weights")
    if w is not None and not isinstance(w, str):  # per-row weights follow their rows
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size != col.size:
            raise FitError(f"weights has {w.size} values but data has {col.size} rows")
        fit_kwargs = {**fit_kwargs, "weights": w[train]}
    fit = fit_law(law=law, data=tr, x=x, y=y, **fit_kwargs)
    with warnings.catch_warnings():  # extrapolating is the point of a holdout
        warnings.simplefilter("ignore", FitWarning)
        pred = fit.predict(te)
    obs = _column(te, y, role="y")
    err = (pred - obs) / obs
    labels = list(np.asarray(_labels(data, col.size))[~train])
    return HoldoutResult(
        fit=fit,
        mape=float(np.mean(np.abs(err))),
        errors=err,
        predicted=pred,
        observed=obs,
        n_train=n_tr,
        n_test=n_te,
        split_on=split_on,
        threshold=float(threshold),
        test_rows=labels,
    )


def compare(fits: Sequence[LawFit] | Mapping[str, LawFit]):
    """Table of fits sorted by AIC (best first), with delta AIC and Akaike weights.

    Fits must share the data (same y values) for AIC to mean anything; a
    FitWarning says so when they do not.
    """
    import pandas as pd  # deferred: keeps `import analysis.fit` fast

    items = list(fits.items()) if isinstance(fits, Mapping) else [(None, f) for f in fits]
    if not items:
        raise FitError("compare needs at least one fit")
    for name, f in items:
        if not isinstance(f, LawFit) or not hasattr(f, "params_"):
            raise FitError(
                f"compare takes fitted LawFit objects, got {type(f).__name__} for {name!r}"
            )
    y0 = items[0][1].yv_
    if any(f.yv_.shape != y0.shape or not np.array_equal(f.yv_, y0) for _, f in items[1:]):
        warnings.warn(
            "compare: the fits were made on different data; AIC differences mean little",
            FitWarning,
            stacklevel=2,
        )
    rows = []
    for name, f in items:
        m = f.metrics_
        rows.append(
            {
                "name": name if name is not None else f.law_.name,
                "law": f.law_.name,
                "n": m["n"],
                "k": m["k"],
                "aic": m["aic"],
                "bic": m["bic"],
                "rmsle": m["rmsle"],
                "r2": m["r2"],
                "huber": m["huber"],
            }
        )
    table = pd.DataFrame(rows).sort_values("aic", kind="stable").reset_index(drop=True)
    table["delta_aic"] = table["aic"] - table["aic"].iloc[0]
    rel = np.exp(-0.5 * table["delta_aic"].to_numpy())
    table["weight"] = rel / rel.sum()
    return table
