"""Robust scaling-law fitting: a multi-start Huber fit in log space, bootstrap CIs.

    from analysis.fit import fit_law
    fit = fit_law(law="chinchilla", data=df, x=["N", "D"], y="loss", bootstrap=1000)
    fit.params_, fit.ci_, fit.metrics_, fit.predict(df2)

How a fit runs (``LawFit.fit``), top to bottom:

1. validate: law, columns, values (finite, > 0), enough points, fixed params.
2. reparametrise: positive parameters as logs (Hoffmann et al. 2022, D.2:
   log L = LSE(a - alpha log N, b - beta log D, e)), log x centred inside each
   power term so that a and alpha are not nearly collinear.
3. objective: SUM over points of w_i * Huber_delta(log pred_i - log y_i) / delta.
   The sum (not a mean) and the 1/delta put it at O(sum |r|) ~ O(1), where
   relative tolerances mean something: a mean Huber (~1e-5 here) under
   scipy's default tolerances stops early, the pitfall Besiroglu et al.
   (2024) discuss for the original Chinchilla fit.
4. every start of a grid (Chinchilla: Besiroglu et al.'s 4,500) is minimised
   by a batched projected L-BFGS written in numpy: all starts advance
   together, so the Python overhead is paid once per iteration, not once per
   start (scipy's L-BFGS-B start by start takes ~70 s for that grid here).
   The best distinct end points then go on at a tighter tolerance, and the
   best one is kept.
5. bootstrap (optional): resampled data enter as integer weights on the
   original points, so every resample is refitted in the same batched run,
   each from the best solution and the other competitive end points of step
   4, in coordinates whitened by the Gauss-Newton curvature at the fit.
6. metrics and warnings (doubtful fit, flat curve, extrapolation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis._fit_errors import FitError, FitWarning
from analysis._fit_input import (
    _check_params,
    _column,
    _columns_of,
    _json_float,
    _json_selection,
    _labels,
    _law_or_error,
    _validate,
    _weights,
)
from analysis._solver import (
    _BOOT_EXTRA_STARTS,
    _BOOT_FTOL,
    _BOOT_MAXITER,
    _BOOT_STALL,
    _FTOL_FINE,
    _MAXITER_FINE,
    _N_REFINE,
    _distinct_best,
    _lbfgs_batch,
    _Objective,
    _Space,
    _space,
    _whitener,
)
from analysis.laws import Law, get_law

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
DEFAULT_DELTA = 1e-3
# 90% intervals: what Besiroglu et al. report, and at 1,000 resamples each
# tail holds 50 draws, enough for a stable percentile.
DEFAULT_LEVEL = 0.9
# law="auto": the candidates, simplest first (issue 16): power without a floor,
# power with a floor, the rectified law of Lin et al. (2024, arXiv:2402.02314)
# with its pre-power phase, BNSL with one break (Caballero et al. 2022).
AUTO_CANDIDATES: tuple[str, ...] = ("power_nofloor", "power", "rectified", "bnsl")
# Leave-largest-out: the largest fifth of the x values (at least one point)
# is predicted from the rest. A more complex candidate wins only when its
# held-out error is below _AUTO_SIMPLER times the best simpler one's: held-out
# errors on a handful of points are noisy, and a tie goes to the simpler law.
_AUTO_HOLDOUT_FRACTION = 0.2
_AUTO_SIMPLER = 0.9
# A log-sum-exp term (E, A, B, ...) below 1e-4 of the smallest y changes no
# prediction by more than 0.01%, far below any loss curve's noise: an interval
# reaching down there has not resolved that term (reported as a bound).
_VANISHED = 1e-4


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
    params, natural scale, (B, p)), x_, y_, x_range_, n_starts_, optimizer_,
    law_name_ (the law fitted: the winner under "auto"), selection_ (None
    unless "auto": see ``_select_law``), param_status_ ({param: "estimated" |
    "fixed" | "lower_bound" | "upper_bound"}) and param_text_ ({param: a human
    string, e.g. "alpha = 0.35 [0.33, 0.37]" or "no floor resolved: E < 0.01"}).
    """

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
            selection = self._select_law(data, x, y, weights=weights)
            law = _law_or_error(selection["chosen"], None)
        else:
            selection = None
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
        x, X, yv, w, fixed, fixed_theta, k, codes = inp
        n = yv.size

        self.law_ = law
        self.law_name_ = law.name
        self.selection_ = selection
        self.x_, self.y_ = list(x), y
        self.x_range_ = {c: (float(X[:, j].min()), float(X[:, j].max())) for j, c in enumerate(x)}
        self.fixed_ = {k_: float(v) for k_, v in fixed.items()}
        self.warnings_: list[str] = []
        self.X_, self.yv_ = X, yv  # training data, for plots and compare()

        # 2-3. reparametrise, objective
        ly = np.log(yv)
        space = _space(law, X, ly, fixed_theta)
        obj = _Objective(law, X, ly, w, float(self.delta), space)

        # 4. all starts, batched; the competitive distinct end points further
        def fg(zz, rows):
            return obj(zz)

        Z0 = space.z(self._starts(law, X, fixed))
        zb, fb, nit, status = _lbfgs_batch(fg, Z0, space.lo, space.hi)
        top = _distinct_best(zb, fb, _N_REFINE)
        if not top:
            raise FitError(f"law {law.name!r}: the objective is not finite at any start")
        zb, fb, _, status2 = _lbfgs_batch(
            fg, zb[top], space.lo, space.hi, ftol=_FTOL_FINE, stall=0.0, maxiter=_MAXITER_FINE
        )
        cands = _distinct_best(zb, fb, 1 + _BOOT_EXTRA_STARTS)
        z_best = zb[cands[0]]
        theta = space.theta(z_best)
        self.theta_ = theta
        self.params_ = {**law.from_theta(theta), **self.fixed_}  # fixed ones exactly as given
        self.n_starts_ = int(Z0.shape[0])
        self.optimizer_ = {
            "n_starts": self.n_starts_,
            "median_iterations": float(np.median(nit)),
            "n_converged": int((status == 0).sum()),
            "n_stalled": int((status == 1).sum()),
            "n_maxiter": int((status == 2).sum()),
            "objective": float(fb[cands[0]]),
            "best_converged": bool(status2[cands[0]] == 0),
        }

        # 5. bootstrap
        self.draws_ = np.empty((0, len(law.params)))
        self.draw_thetas_ = None
        self.ci_: dict[str, tuple[float, float]] = {}
        if self.bootstrap > 0:
            starts = [z_best] + [zb[i] for i in cands[1 : 1 + _BOOT_EXTRA_STARTS]]
            self._bootstrap(obj, space, np.array(starts), codes)

        # 6. metrics, warnings
        self._metrics(obj, theta, X, yv, w, k)
        self._diagnose(law, space, z_best, yv, k, n)
        self._param_status(law, space, z_best)
        return self

    def _select_law(self, data: Any, x: Any, y: str, *, weights: Any) -> dict[str, Any]:
        """Leave-largest-out choice among AUTO_CANDIDATES.

        Each candidate is fitted (same delta, no bootstrap) on the points below
        the largest fifth of x and scored by the mean absolute relative error
        of its predictions there. A candidate needs at least 2 points per
        parameter on the whole data to be eligible (the simplest is always
        eligible), and none of its parameters may end on a bound (it would be
        a simpler law in disguise); a more complex eligible one wins over the current pick only
        when its error is below _AUTO_SIMPLER times the pick's. Returns
        {"chosen", "n_train", "n_test", "split_at", "candidates": {name:
        {"k", "eligible", "holdout_error", "note"}}}.
        """
        if self.fixed or self.init_grid or self.breaks is not None:
            raise FitError('law="auto" takes no fixed, init_grid or breaks: they belong to one law')
        cols = [x] if isinstance(x, str) else list(x)
        if len(cols) != 1:
            raise FitError(f'law="auto" needs exactly one x column, got {len(cols)}: {cols!r}')
        xv = _column(data, cols[0], role="x")
        yv = _column(data, y, role="y")
        n = yv.size
        if xv.size != n:
            raise FitError(f"x column {cols[0]!r} has {xv.size} values but y column {y!r} has {n}")
        w = _weights(data, weights, n)
        order = np.argsort(xv, kind="stable")
        m = max(1, int(round(_AUTO_HOLDOUT_FRACTION * n)))
        test = np.zeros(n, dtype=bool)
        test[order[n - m :]] = True
        train = ~test
        split_at = float(xv[order[n - m]])
        out: dict[str, Any] = {
            "chosen": None,
            "n_train": int(train.sum()),
            "n_test": int(m),
            "split_at": split_at,
            "candidates": {},
        }
        best_err = math.inf
        for name in AUTO_CANDIDATES:
            k = len(get_law(name).params)
            eligible = n >= 2 * k or name == AUTO_CANDIDATES[0]
            info: dict[str, Any] = {"k": k, "eligible": bool(eligible), "holdout_error": None}
            if int(train.sum()) < k + 1:
                info["note"] = f"{int(train.sum())} training points for {k} parameters"
            else:
                est = LawFit(name, delta=self.delta)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FitWarning)
                        est.fit({"x": xv[train], "y": yv[train]}, "x", "y", weights=w[train])
                        pred = est.predict({"x": xv[test]})
                    err = float(np.mean(np.abs(pred - yv[test]) / yv[test]))
                except FitError as exc:
                    info["note"] = f"fit failed: {exc}"
                else:
                    info["holdout_error"] = err if math.isfinite(err) else None
                    info["note"] = (
                        "" if eligible else f"fewer than 2 points per parameter ({n}/{k})"
                    )
                    # a fit with a parameter on its bound has degenerated into a
                    # simpler form (no floor, no break, no pre-power phase): it is
                    # no evidence for its own extra terms
                    stuck = [p for p, st in est.param_status_.items() if st.endswith("_bound")]
                    if stuck and name != AUTO_CANDIDATES[0]:
                        eligible = info["eligible"] = False
                        info["note"] = f"degenerate: {', '.join(stuck)} on a bound"
                    if (
                        eligible
                        and math.isfinite(err)
                        and (out["chosen"] is None or err < _AUTO_SIMPLER * best_err)
                    ):
                        out["chosen"], best_err = name, err
            out["candidates"][name] = info
        if out["chosen"] is None:
            out["chosen"] = AUTO_CANDIDATES[0]
        return out

    def _param_status(self, law: Law, space: _Space, z) -> None:
        """param_status_ and param_text_: a parameter whose estimate, or the
        lower (upper) end of whose interval, rests on its bound is reported
        as a one-sided bound from the other end of its interval, not as a
        point with an interval that starts at the bound."""
        names = law.param_names
        status = {nm: "fixed" for nm in self.fixed_}
        at = {}
        tol = 1e-6
        for i, j in enumerate(space.free):
            nm = names[j]
            lo_b, hi_b = space.lo[i], space.hi[i]
            side = None
            if np.isfinite(lo_b) and abs(z[i] - lo_b) <= tol * (1.0 + abs(lo_b)):
                side = "lower_bound"
            elif np.isfinite(hi_b) and abs(z[i] - hi_b) <= tol * (1.0 + abs(hi_b)):
                side = "upper_bound"
            elif getattr(self, "draw_thetas_", None) is not None and self.draws_.shape[0]:
                zd = space.z(self.draw_thetas_)[:, i]
                tail = (1 - self.level) / 2
                if np.isfinite(lo_b) and np.mean(zd <= lo_b + tol * (1.0 + abs(lo_b))) > tail:
                    side = "lower_bound"
                elif np.isfinite(hi_b) and np.mean(zd >= hi_b - tol * (1.0 + abs(hi_b))) > tail:
                    side = "upper_bound"
            prm = law.params[j]
            ci = self.ci_.get(nm)
            if side is None and prm.lse and ci and ci[0] < _VANISHED * float(self.yv_.min()):
                # the interval's lower end is a term that has vanished: bootstrap
                # refits crawl towards the bound and stop short of it
                side = "lower_bound"
            status[nm] = side or "estimated"
            at[nm] = side
        text = {}
        for nm in names:
            v = self.params_[nm]
            ci = self.ci_.get(nm)
            st = status[nm]
            if st == "fixed":
                text[nm] = f"{nm} = {v:.4g} (fixed)"
            elif st == "lower_bound":
                bound = f"{nm} < {ci[1]:.3g}" if ci else f"{nm} at its lower bound ({v:.3g})"
                floor = nm == "E" and law.params[names.index(nm)].lse
                text[nm] = ("no floor resolved: " if floor else "not resolved: ") + bound
            elif st == "upper_bound":
                bound = f"{nm} > {ci[0]:.3g}" if ci else f"{nm} at its upper bound ({v:.3g})"
                text[nm] = "not resolved: " + bound
            else:
                text[nm] = f"{nm} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
        self.param_status_ = status
        self.param_text_ = text

    def _starts(self, law: Law, X: np.ndarray, fixed: Mapping[str, float]) -> np.ndarray:
        """Full-theta starting rows (S, p): the product of the free params' grids."""
        user = dict(self.init_grid or {})
        _check_params(law, user, "init_grid")
        axes = []
        for prm in law.params:
            if prm.name in fixed:
                axes.append(np.array([fixed[prm.name]], dtype=np.float64))
                continue
            vals = np.asarray(
                list(user[prm.name]) if prm.name in user else prm.grid_values(X), dtype=np.float64
            ).reshape(-1)
            if vals.size == 0 or not np.isfinite(vals).all() or (prm.log and (vals <= 0).any()):
                kind = "finite positive" if prm.log else "finite"
                raise FitError(
                    f"init_grid for {prm.name} must be non-empty {kind} values, got {vals.tolist()!r}"
                )
            axes.append(np.log(vals) if prm.log else vals)
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([a.reshape(-1) for a in mesh], axis=1)

    def _bootstrap(self, obj: _Objective, space: _Space, starts: np.ndarray, codes) -> None:
        B, n, r = int(self.bootstrap), obj.n, starts.shape[0]
        rng = np.random.default_rng(self.seed)
        if codes is None:  # resample points
            counts = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)
        else:  # resample whole groups (e.g. all seeds of a cell together)
            G = int(codes.max()) + 1
            counts = rng.multinomial(G, np.full(G, 1.0 / G), size=B).astype(np.float64)[:, codes]
        # rows b*r .. b*r+r-1 belong to resample b; optimise in whitened
        # coordinates u (z = z0 + u L^T) when the bounds are out of reach
        z0 = starts[0]
        L = _whitener(obj, space, z0)
        k = z0.size
        if L is None:
            L, lo, hi = np.eye(k), space.lo, space.hi
        else:
            lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
        U0 = np.tile(np.linalg.solve(L, (starts - z0).T).T, (B, 1))

        def fg(uu, rows):
            fz, gz = obj(z0 + uu @ L.T, counts[rows // r])
            return fz, gz @ L

        u, f, _, _ = _lbfgs_batch(
            fg, U0, lo, hi, ftol=_BOOT_FTOL, stall=_BOOT_STALL, maxiter=_BOOT_MAXITER
        )
        z = np.clip(z0 + u @ L.T, space.lo, space.hi)
        f = f.reshape(B, r)
        pick = np.argmin(np.where(np.isfinite(f), f, np.inf), axis=1)
        ok = np.isfinite(f[np.arange(B), pick])
        zbest = z.reshape(B, r, -1)[np.arange(B), pick][ok]
        thetas = space.theta(zbest)
        if (~ok).sum() > 0.1 * B:
            self._warn(f"{int((~ok).sum())} of {B} bootstrap refits failed; intervals use the rest")
        if not ok.any():
            return
        law = self.law_
        nat = np.where([p.log for p in law.params], np.exp(thetas), thetas)
        self.draws_ = nat
        self.draw_thetas_ = thetas
        qlo, qhi = (1 - self.level) / 2, (1 + self.level) / 2
        for j, prm in enumerate(law.params):
            if prm.name in self.fixed_:
                continue
            lo_, hi_ = np.quantile(nat[:, j], [qlo, qhi])
            est = float(self.params_[prm.name])
            if np.isfinite(est) and not lo_ <= est <= hi_:
                # the refits settle off the estimate (another optimum, or a bound): an interval
                # that excludes its own estimate would mislead, so it reaches the estimate
                self._warn(f"{prm.name}={est:.4g} lies outside its bootstrap interval [{lo_:.4g}, {hi_:.4g}]; "
                           "the interval is extended to it (the refits find another optimum)")  # fmt: skip
                lo_, hi_ = min(lo_, est), max(hi_, est)
            self.ci_[prm.name] = (float(lo_), float(hi_))

    def _metrics(self, obj: _Objective, theta, X, yv, w, k: int) -> None:
        r = obj.residuals(theta)
        a = np.abs(r)
        d = float(self.delta)
        huber = float(np.sum(w * np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))))
        # the rest counts points by weight (normalised to mean 1 over the points
        # that count): plain counts when there are no weights, zero-weight rows out
        used = w > 0
        n = int(used.sum())
        wn = w / w[used].mean()
        rss = float(np.sum(wn * r * r))
        pred = np.exp(np.log(yv) + r)
        ybar = float(np.sum(wn * yv) / n)
        sst = float(np.sum(wn * (yv - ybar) ** 2))
        # AIC/BIC from a Gaussian likelihood of the log residuals: only differences
        # between laws fitted to the same data mean anything (see compare()).
        ll_term = n * math.log(max(rss / n, 1e-300))
        self.metrics_ = {
            "rmsle": math.sqrt(rss / n),
            "r2": 1.0 - float(np.sum(wn * (yv - pred) ** 2)) / sst if sst > 0 else float("nan"),
            "aic": ll_term + 2 * k,
            "bic": ll_term + k * math.log(n),
            "n": n,
            "k": int(k),
            "huber": huber,
        }

    def _diagnose(self, law: Law, space: _Space, z, yv, k: int, n: int) -> None:
        names = law.param_names
        # parameters resting on a bound
        for i, j in enumerate(space.free):
            for b, side in ((space.lo[i], "lower"), (space.hi[i], "upper")):
                if np.isfinite(b) and abs(z[i] - b) <= 1e-6 * (1.0 + abs(b)):
                    what = (
                        "its term vanished or dominates everything"
                        if law.params[j].lse
                        else "the data do not constrain it"
                    )
                    self._warn(
                        f"doubtful fit: {names[j]}={self.params_[names[j]]:.6g} is at its "
                        f"{side} bound ({what})"
                    )
        if n < 2 * k:
            self._warn(
                f"doubtful fit: {n} points for {k} free parameters (fewer than 2 per parameter)"
            )
        if not self.optimizer_["best_converged"]:
            self._warn(
                f"optimizer did not converge: the best start stopped at its iteration limit "
                f"({_MAXITER_FINE}) with f={self.optimizer_['objective']:.6g}"
            )
        # flat curve: y nearly constant, or the fit varies less than its own scatter
        ly = np.log(yv)
        span = float(ly.max() - ly.min())
        fitted = ly + self.residuals()
        if span < 1e-3 or float(np.ptp(fitted)) < self.metrics_["rmsle"]:
            self._warn(
                f"flat curve: {self.y_} varies by {span:.3g} in log over the data and the "
                f"fitted curve by {float(np.ptp(fitted)):.3g}, against a scatter of "
                f"{self.metrics_['rmsle']:.3g}; exponents are not identified"
            )
        # very wide intervals
        for nm, (lo_, hi_) in self.ci_.items():
            prm = law.params[names.index(nm)]
            v = self.params_[nm]
            # positive params: more than a factor 10 between the ends; others:
            # an interval wider than twice the value itself
            wide = (lo_ <= 0 or hi_ / lo_ > 10.0) if prm.log else (hi_ - lo_) > 2.0 * abs(v)
            if wide:
                self._warn(
                    f"doubtful fit: {self.level:.0%} interval of {nm} is [{lo_:.4g}, {hi_:.4g}] "
                    f"around {v:.4g}"
                )

    def residuals(self) -> np.ndarray:
        """Log residuals log pred - log y on the training data."""
        lp = self.law_.log_predict(self.theta_, self.X_)[0]
        return lp - np.log(self.yv_)

    def _warn(self, msg: str) -> None:
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

    def predict_interval(
        self, data: Any, level: float = DEFAULT_LEVEL
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) percentile band of bootstrap predictions; needs bootstrap > 0."""
        if not 0 < level < 1:
            raise FitError(f"level must be in (0, 1), got {level!r}")
        X = self._x_of(data)
        if self.draws_.shape[0] == 0:
            raise FitError("predict_interval needs bootstrap draws: fit with bootstrap > 0")
        preds = np.exp(self.law_.log_predict(self.draw_thetas_, X))  # (B, m)
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
    smallest leave-largest-out error (the simpler on near ties and when points
    are fewer than 2 per parameter), then refit it on all the data with the
    bootstrap asked for; ``fit.law_name_`` says which won and
    ``fit.selection_`` holds every candidate's held-out error.
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
