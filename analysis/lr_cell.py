"""Best learning rate per (dataset size, epochs) cell, with an interval.

`best_lr(table)` finds, in every cell, the learning rate that optimises a
*validation* metric, with an interval (how it moves across cells is
`analysis.lr_trend.lr_rule`).

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

The LR rule over the cells is `analysis.lr_trend.lr_rule`; the range and the two
kinds of edge are in `analysis.lr_edge`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.lr_edge import LREdgeWarning, _check_range, _edge_advice, _range_for
from analysis.table import trial_summary

__all__ = ["BOOTSTRAP", "best_lr", "selection_columns"]

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


