"""Best learning rate per (dataset size, epochs) cell, and how it moves.

`best_lr(table)` finds, in every cell, the learning rate that optimises a
*validation* metric, with an interval; `lr_rule(best)` fits how that optimum
moves with data and epochs, ``log lr* = c + p log D + q log E`` (natural logs),
a power law in the spirit of Bjorck et al. 2024 ("Scaling Optimal LR Across
Token Horizons": LR* proportional to D**-0.32) and DeepSeek LLM 2024
(eta_opt proportional to C**-0.125).

Selection reads the validation split only
------------------------------------------
`selection_columns()` lists every column `best_lr` reads, and `best_lr`'s
first step cuts the table down to exactly those columns, so no "test_" column
can influence the choice (scrambling them leaves the output unchanged). Asking
it to select on split="test", or on a metric column starting with "test_",
raises ValueError.

Decision rules of `best_lr`
---------------------------
1. Trials. Rows are grouped by the ``by`` columns and ``trial_id``. Rows with
   status "failed" or a NaN metric are ignored. A trial is *complete* when
   none of its rows is "pruned" and it has a usable row, *pruned* when one is,
   *failed* when it has no usable row. Its value is the metric at its last
   evaluated epoch (``use="final"``) or its best over epochs
   (``use="best_epoch"``). Trials of the "repeat" phase (extra seeds of a
   cell's best config) are trials like any other: more points at their LR.
2. Counts. ``n_trials`` counts complete and pruned trials; ``n_failed`` the
   rest. Only complete trials may be best and only they enter the fit
   (a pruned trial's value is from an earlier epoch, not comparable).
3. Point estimate. Take the best complete trial (``trial_id_best``,
   ``metric_best``). Fit a quadratic of the metric in log10(lr) to the complete
   trials whose LR is within ``window`` [2] distinct LR values of it on either
   side (at least 3 distinct LRs). If it curves the right way (opens upward for
   mode="min"), ``lr_best`` is its vertex, clipped to the window; otherwise, or
   with fewer than 3 distinct LRs, ``lr_best`` is the best observed LR
   (``method`` says which).
4. Interval. ``bootstrap`` [200] resamples of the cell's complete trials
   (with replacement) each repeat step 3; ``lr_low``/``lr_high`` are the
   ``level`` [0.9] percentile interval of the resampled optima, widened to
   contain ``lr_best``. Where step 3 fell back to the best observed LR, or
   bootstrap=0, the interval is the neighbouring searched LRs (the best LR
   itself on a side with no neighbour); with a single trial it is NaN.
5. Edge. ``at_edge`` is True when the best complete trial's LR is the smallest
   or largest LR searched in the cell — all trials count here, failed and
   pruned ones too, since a diverged large LR does bound the optimum. ``edge``
   says "low", "high" or "both". Either way the optimum is censored, but the
   fix differs, and ``edge_kind`` says which, from ``lr_range`` (the range
   the search was allowed: `search_range` reads it from the Optuna
   distributions stored with the trials or from the spec):
   *beyond_range* — the best is at the range's own low/high: widen the range;
   *not_bracketed* — the best is the extreme of the tried LRs but the range
   goes further: run more trials in that cell (the advice names it);
   *unknown* — no ``lr_range`` was given, so the advice names both fixes.
   ``advice`` holds the sentence; with ``edge_warn`` an `LREdgeWarning` says it.

Decision rules of `lr_rule`
---------------------------
``log lr* = c + sum_k b_k log(axis_k)`` over ``axes`` (default dataset_size
and epochs; add "lora_r" or the base model's size when the study has them as
axes). The exponents are named "p" (dataset_size), "q" (epochs) and after the
axis otherwise. Cells with NaN lr_best are dropped; cells at the edge are
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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student t quantile; scipy.stats costs ~0.7 s to import

from analysis.table import trial_summary

__all__ = [
    "LREdgeWarning",
    "LRRule",
    "LRRuleError",
    "RULE_AXES",
    "best_lr",
    "lr_rule",
    "search_range",
    "selection_columns",
]

# ---- defaults --------------------------------------------------------------
BY = ("dataset_size", "epochs")  # the axes of a study; LR is the nuisance optimised per cell
WINDOW = 2  # distinct LRs each side of the best: loss vs log LR is only locally a parabola
BOOTSTRAP = 200  # resamples: enough for a 90% percentile interval to settle to ~1 grid step
LEVEL = 0.9  # interval level for both best_lr and lr_rule (90%: 5% in each tail)
MIN_DISTINCT = 3  # a quadratic needs three distinct LRs

_RESULT_COLUMNS = (
    "lr_best",
    "lr_low",
    "lr_high",
    "metric_best",
    "n_trials",
    "n_failed",
    "trial_id_best",
    "at_edge",
    "edge",
    "edge_kind",
    "advice",
    "method",
)


class LREdgeWarning(UserWarning):
    """The best learning rate of a cell sits at the edge of the searched range."""


# ---- which columns are read -------------------------------------------------


def _resolve_metric(columns: Iterable[str], metric: str, split: str) -> str:
    cols = set(columns)
    if split == "test":
        raise ValueError(
            "learning-rate selection reads the validation split only, got split='test'; "
            "use split='val' and report test_ metrics separately"
        )
    col = f"{split}_{metric}" if split and f"{split}_{metric}" in cols else metric
    if col.startswith("test_"):
        raise ValueError(
            f"learning-rate selection must not read a test_ column, got metric={metric!r}"
        )
    if col not in cols:
        raise ValueError(
            f"metric column {f'{split}_{metric}'!r} (or plain {metric!r}) is not in the table "
            f"(columns: {sorted(cols)})"
        )
    return col


def _q(value: Any) -> str:
    """repr of a value with numpy/pandas scalars unwrapped (-0.001, not np.float64(-0.001))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _as_by(by: str | Sequence[str]) -> tuple[str, ...]:
    return (by,) if isinstance(by, str) else tuple(by)


def selection_columns(
    table: pd.DataFrame | Iterable[str],
    *,
    by: str | Sequence[str] = BY,
    metric: str = "eval_loss",
    split: str = "val",
) -> list[str]:
    """Every column `best_lr` reads for these arguments — and never a "test_" one.

    ``table`` is a DataFrame or its column names. The list is the ``by``
    columns, "trial_id", "learning_rate", the resolved metric column
    (f"{split}_{metric}" when present, else `metric`) and, when present,
    "epoch" and "status". Raises ValueError when a required column is missing
    or the metric would resolve to the test split.
    """
    cols = list(table.columns) if isinstance(table, pd.DataFrame) else list(table)
    by = _as_by(by)
    metric_col = _resolve_metric(cols, metric, split)
    required = [*by, "trial_id", "learning_rate"]
    missing = [c for c in required if c not in cols]
    if missing:
        raise ValueError(
            f"column(s) {missing} are required to find the best LR, but the table has {cols}"
        )
    out = [*by, "trial_id", "learning_rate", metric_col]
    out += [c for c in ("epoch", "status") if c in cols and c not in out]
    assert not any(c.startswith("test_") for c in out)
    return list(dict.fromkeys(out))


# ---- the allowed range and the two kinds of edge ---------------------------------


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


# ---- per-cell estimate -------------------------------------------------------


def _fit_vertex(u: np.ndarray, v: np.ndarray, *, sign: float, window: int) -> tuple[float, bool]:
    """Optimum in u = log10 lr from trials (u, v); sign=+1 for min, -1 for max.

    Returns (u_hat, fitted): the clipped quadratic vertex, or the best
    observed u with fitted=False when the quadratic cannot be trusted.
    """
    ib = int(np.argmin(sign * v))  # first best on ties
    u_best = float(u[ib])
    distinct = np.unique(u)
    if distinct.size < MIN_DISTINCT:
        return u_best, False
    k = int(np.searchsorted(distinct, u_best))
    lo, hi = max(0, k - window), min(distinct.size, k + window + 1)
    while hi - lo < MIN_DISTINCT:  # near an edge: take more on the other side
        lo, hi = max(0, lo - 1), min(distinct.size, hi + 1)
    u_lo, u_hi = float(distinct[lo]), float(distinct[hi - 1])
    m = (u >= u_lo) & (u <= u_hi)
    du = u[m] - u_best  # centred for conditioning
    design = np.column_stack([np.ones(du.size), du, du**2])
    coef, *_ = np.linalg.lstsq(design, v[m], rcond=None)
    b, c = float(coef[1]), float(coef[2])
    # curvature must be clearly the right way, relative to the spread of the values
    scale = max(float(np.ptp(v[m])), 1e-300) / max((u_hi - u_lo) ** 2, 1e-300)
    if not sign * c > 1e-9 * scale:
        return u_best, False
    return float(np.clip(u_best - b / (2.0 * c), u_lo, u_hi)), True


def _neighbours(searched: np.ndarray, u: float) -> tuple[float, float]:
    """Searched log-LRs just below and above u (u itself where there is none)."""
    below, above = searched[searched < u - 1e-12], searched[searched > u + 1e-12]
    return (float(below.max()) if below.size else u, float(above.min()) if above.size else u)


def _trial_summary(
    data: pd.DataFrame, *, by: tuple[str, ...], metric_col: str, use: str, sign: float
) -> pd.DataFrame:
    """One row per trial: by..., trial_id, lr, status, value (from analysis.table.trial_summary)."""
    df = data.copy()
    df["_lr"] = pd.to_numeric(df["learning_rate"], errors="coerce").astype(float)
    status = (
        df["status"].astype("string").fillna("")
        if "status" in df.columns
        else pd.Series("ok", index=df.index)
    )
    # a failed row may lack its LR (it counts as failed, not as a searched LR); else an error
    bad_lr = df[
        (~(df["_lr"] > 0) | ~np.isfinite(df["_lr"]))
        & ~(status.astype(str).eq("failed") & df["_lr"].isna())
    ]
    if len(bad_lr):
        row = bad_lr.iloc[0]
        raise ValueError(
            f"learning_rate must be a finite number > 0, got {_q(row['learning_rate'])} for trial_id={_q(row['trial_id'])}"
        )
    keys = [*by, "trial_id"]
    for col in keys:
        if df[col].isna().any():
            raise ValueError(
                f"column {col!r} has missing values (e.g. row {df.index[df[col].isna()][0]!r})"
            )
    lr_range = df.groupby(keys, sort=False)["_lr"].agg(["min", "max"])
    spread = np.log(lr_range["max"] / lr_range["min"])
    if (spread > 1e-9).any():
        key = spread.index[int(np.argmax(spread.to_numpy() > 1e-9))]
        raise ValueError(f"trial {key!r} has more than one learning_rate; each trial must use one")

    summary = trial_summary(data, by=by, value=metric_col, use=use, higher=sign < 0).set_index(keys)
    trials = df.groupby(keys, sort=True).agg(lr=("_lr", "first"))
    s = summary.reindex(trials.index)
    trials = trials.reset_index()
    trials["value"] = s["value"].to_numpy(dtype=float)
    trials["status"] = np.where(
        ~np.isfinite(trials["value"].to_numpy(dtype=float)),
        "failed",
        np.where(s["pruned"].to_numpy(dtype=bool), "pruned", "ok"),
    )
    return trials


def best_lr(
    table: pd.DataFrame,
    *,
    by: str | Sequence[str] = BY,
    metric: str = "eval_loss",
    mode: str = "min",
    split: str = "val",
    use: str = "final",
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    edge_warn: bool = True,
    level: float = LEVEL,
    window: int = WINDOW,
    lr_range: tuple[float, float] | Mapping[Any, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """Best learning rate per cell of ``by``, with an interval; see the module docstring.

    ``lr_range`` is the LR range the search was allowed, (low, high) for every
    cell or {cell key tuple: (low, high)}; `search_range` reads it from the
    Optuna trials' distributions or from a spec. It tells the two kinds of edge
    apart (step 5); without it they cannot be told apart and the advice says so.

    Returns a DataFrame: the ``by`` columns, lr_best, lr_low, lr_high,
    metric_best (the best complete trial's value), n_trials (complete +
    pruned), n_failed, trial_id_best, at_edge, edge ("low" | "high" | "both" |
    ""), edge_kind ("beyond_range" | "not_bracketed" | "unknown" | ""), advice
    (what to do about an edge, naming the cell; "" inside), method ("quadratic"
    | "best_observed" | "none"). Degenerate cells never raise: they get the
    best observed LR and an honest interval (NaN or the neighbouring searched
    LRs); a cell with no complete trial gets NaN and a warning.
    """
    # 1. validate; from here on only the selection columns exist
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if use not in ("final", "best_epoch"):
        raise ValueError(f"use must be 'final' or 'best_epoch', got {use!r}")
    if not (isinstance(bootstrap, int | np.integer) and bootstrap >= 0):
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not (isinstance(window, int | np.integer) and window >= 1):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    by = _as_by(by)
    ranges = _check_range(lr_range)
    cols = selection_columns(table, by=by, metric=metric, split=split)
    metric_col = cols[len(by) + 2]
    data = table.loc[:, cols]
    sign = 1.0 if mode == "min" else -1.0
    rng = np.random.default_rng(seed)
    tails = (100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0)

    # 2. one row per trial
    work_by = by if by else ("_all",)
    if not by:
        data = data.assign(_all=0)
    trials = _trial_summary(data, by=work_by, metric_col=metric_col, use=use, sign=sign)

    # 3. per cell: best observed, quadratic vertex, bootstrap, edge
    rows: list[dict[str, Any]] = []
    for key, cell in trials.groupby(list(work_by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c}={v!r}" for c, v in zip(work_by, key, strict=True))
        lrs = cell["lr"].to_numpy(dtype=float)
        searched = np.unique(np.log10(lrs[np.isfinite(lrs)]))
        done = cell[cell["status"] == "ok"]
        row: dict[str, Any] = dict(zip(work_by, key, strict=True))
        row.update(
            n_trials=int((cell["status"] != "failed").sum()),
            n_failed=int((cell["status"] == "failed").sum()),
        )
        if done.empty:
            warnings.warn(
                f"best_lr: cell ({label}) has no complete trial; lr_best is NaN", stacklevel=2
            )
            row.update(
                lr_best=np.nan,
                lr_low=np.nan,
                lr_high=np.nan,
                metric_best=np.nan,
                trial_id_best=None,
                at_edge=False,
                edge="",
                edge_kind="",
                advice="",
                method="none",
            )
            rows.append(row)
            continue
        u = np.log10(done["lr"].to_numpy(dtype=float))
        v = done["value"].to_numpy(dtype=float)
        ib = int(np.argmin(sign * v))
        u_hat, fitted = _fit_vertex(u, v, sign=sign, window=window)

        if fitted and bootstrap > 0:
            boot = np.empty(bootstrap)
            for i in range(bootstrap):
                idx = rng.integers(0, u.size, u.size)
                boot[i] = _fit_vertex(u[idx], v[idx], sign=sign, window=window)[0]
            u_low, u_high = np.percentile(boot, tails)
            u_low, u_high = min(float(u_low), u_hat), max(float(u_high), u_hat)
        elif searched.size > 1:
            u_low, u_high = _neighbours(searched, float(u[ib]))
        else:
            u_low = u_high = np.nan

        lo_edge = bool(np.isclose(u[ib], searched[0], atol=1e-12))
        hi_edge = bool(np.isclose(u[ib], searched[-1], atol=1e-12))
        edge = "both" if lo_edge and hi_edge else "low" if lo_edge else "high" if hi_edge else ""
        kind, advice = _edge_advice(
            edge, lr=10.0 ** u[ib], searched=searched, label=label, allowed=_range_for(ranges, key)
        )
        if edge and edge_warn:
            warnings.warn(
                f"best_lr: cell ({label}): the best learning_rate {10.0 ** u[ib]:.3g} is at the edge of "
                f"the search: {advice}",
                LREdgeWarning,
                stacklevel=2,
            )
        row.update(
            lr_best=float(10.0**u_hat),
            lr_low=float(10.0**u_low),
            lr_high=float(10.0**u_high),
            metric_best=float(v[ib]),
            trial_id_best=done["trial_id"].iloc[ib],
            at_edge=bool(edge),
            edge=edge,
            edge_kind=kind,
            advice=advice,
            method="quadratic" if fitted else "best_observed",
        )
        rows.append(row)

    # 4. assemble
    out = pd.DataFrame(rows, columns=[*work_by, *_RESULT_COLUMNS])
    if not by:
        out = out.drop(columns="_all")
    return out.reset_index(drop=True)


# ---- the LR rule -------------------------------------------------------------


RULE_AXES = ("dataset_size", "epochs")  # the axes every study has; add "lora_r", model size, ...
_TERM = {"dataset_size": "p", "epochs": "q"}  # the historical names of the two exponents


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
        axes: Sequence[str] = RULE_AXES,
        level: float = LEVEL,
        drop_edge: bool = True,
    ) -> None:
        self.axes = (axes,) if isinstance(axes, str) else tuple(axes)
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
            return f"LRRule(axes={list(self.axes)!r}, level={self.level!r}, drop_edge={self.drop_edge!r})"
        shown = ", ".join(f"{t}={self.params_[t]:.3g}" for t in self.terms_)
        return f"LRRule({shown}, n_cells={self.n_cells_})"


def lr_rule(
    best: pd.DataFrame,
    *,
    axes: Sequence[str] = RULE_AXES,
    level: float = LEVEL,
    drop_edge: bool = True,
) -> LRRule:
    """Fit `LRRule` over ``axes`` to a `best_lr` frame: ``LRRule(axes=..., ...).fit(best)``."""
    return LRRule(axes=axes, level=level, drop_edge=drop_edge).fit(best)
