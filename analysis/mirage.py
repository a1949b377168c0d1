"""Mirage check: is a jump in a discontinuous metric (exact match) real?

`check_mirage(table, x)`, after Schaeffer et al. 2023 ("Are Emergent Abilities of Large
Language Models a Mirage?"): aggregate the table to one value per x, run
`analysis.jumps.detect_jumps` on the discontinuous metric and on each continuous one
measured on the same runs (loss, per-token accuracy; a metric whose name contains "loss",
"perplexity" or "ppl" is lower-is-better). Verdicts: "no jump" (the discontinuous metric does
not jump, or jumps and gives the gain back: a "transient" jump verdict), "insufficient" (too
few x values), "genuine jump" (a continuous metric jumps too, over an overlapping interval of
x), "metric artefact" (the discontinuous metric jumps but no
tested continuous metric does), "inconclusive" (no continuous metric could be tested),
"uncertain" (with ``seeds``: no verdict holds in ``agree`` of the seed resamples, drawn as in
`analysis.jump_seeds`).

Standard errors come from the table's ``n_problems`` column or an eval size passed as
``n_problems=`` (`analysis.jumps.binomial_se` for a proportion).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis._jump_rules import _fmt
from analysis.jump_seeds import AGREE, N_BOOT, _agreed, _fmt_fractions, _fractions, _inflation
from analysis.jumps import JumpResult, _clean, binomial_se, detect_jumps
from analysis.table import trial_summary

__all__ = ["MirageResult", "check_mirage"]


@dataclass(frozen=True)
class MirageResult:
    """Verdict of `check_mirage`.

    verdict: "metric artefact" | "genuine jump" | "no jump" | "insufficient" |
        "inconclusive" | "uncertain" (see the module docstring).
    x: the scale column. discontinuous: the discontinuous metric's name.
    results: metric name -> JumpResult (read-only mapping), discontinuous first.
    columns: metric name -> the table column read.
    series: metric name -> ((x...), (y...)), the aggregated curve tested.
    agg: how rows were aggregated per x. reason: one sentence.
    fractions: with ``seeds``, verdict -> fraction of the seed resamples giving it (empty
        otherwise). n_boot: resamples drawn (0 without seeds).
    """

    verdict: str
    x: str
    discontinuous: str
    results: Mapping[str, JumpResult]
    columns: Mapping[str, str]
    series: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]
    agg: str
    reason: str
    missing: tuple[str, ...] = field(default=())
    fractions: Mapping[str, float] = field(default_factory=dict)
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None)."""
        return _clean(
            {
                "verdict": self.verdict,
                "x": self.x,
                "discontinuous": self.discontinuous,
                "agg": self.agg,
                "reason": self.reason,
                "columns": dict(self.columns),
                "missing": list(self.missing),
                "fractions": dict(self.fractions),
                "n_boot": self.n_boot,
                "results": {k: v.to_dict() for k, v in self.results.items()},
                "series": {k: {"x": list(v[0]), "y": list(v[1])} for k, v in self.series.items()},
            }
        )


_AGGS = ("selected", "best", "mean", "median")


def _resolve(columns: Iterable[str], metric: str, split: str | None) -> str | None:
    cols = set(columns)
    if split and f"{split}_{metric}" in cols:
        return f"{split}_{metric}"
    return metric if metric in cols else None


def _lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return "loss" in m or "perplexity" in m or "ppl" in m


def _is_proportion(y: Sequence[float], higher_is_better: bool) -> bool:
    arr = np.asarray(y, dtype=float)
    return bool(higher_is_better and arr.size and np.all((arr >= 0.0) & (arr <= 1.0)))


def _series_se(
    df: pd.DataFrame,
    *,
    col: str,
    y: tuple[tuple[float, ...], tuple[float, ...]],
    n_problems: int | str | None,
    proportion: bool,
) -> np.ndarray | None:
    """Standard errors of one aggregated curve (None when the table cannot give them)."""
    xs, ys = np.asarray(y[0], dtype=float), np.asarray(y[1], dtype=float)
    if xs.size == 0:
        return None
    if f"{col}_stderr" in df.columns:
        per_x = pd.to_numeric(df[f"{col}_stderr"], errors="coerce").groupby(df["_x"]).mean()
        se = per_x.reindex(xs).to_numpy(dtype=float)
        return se if np.all(np.isfinite(se) & (se > 0)) else None
    if isinstance(n_problems, str):
        if n_problems not in df.columns:
            return None
        counts = pd.to_numeric(df[n_problems], errors="coerce").groupby(df["_x"]).median()
        n = counts.reindex(xs).to_numpy(dtype=float)
    elif n_problems is None:
        return None
    else:
        if not n_problems >= 1:
            raise ValueError(f"n_problems must be >= 1, got {n_problems!r}")
        n = np.full(xs.size, float(n_problems))
    if not np.all(np.isfinite(n) & (n >= 1)):
        return None
    if proportion:
        return binomial_se(ys, n)
    if f"{col}_std" in df.columns:
        std = pd.to_numeric(df[f"{col}_std"], errors="coerce").groupby(df["_x"]).mean()
        se = std.reindex(xs).to_numpy(dtype=float) / np.sqrt(n)
        return se if np.all(np.isfinite(se) & (se > 0)) else None
    return None


def _seed_fractions(
    df: pd.DataFrame,
    *,
    x: str,
    seeds: str,
    n_boot: int,
    random_state: int,
    call: Any,
    scale: Mapping[str, tuple[float, float] | None] | None = None,
) -> tuple[dict[str, float], int]:
    """Fractions of mirage verdicts over bootstrap resamples of seeds within each x.

    scale: columns (-> the range to clip them to, or None) whose values are moved away from
    their mean at each x by `analysis.jump_seeds._inflation` of that x's seed count, so that the
    mean over drawn seeds spreads as much as the seeds' mean (right for ``agg="mean"``).
    """
    if seeds not in df.columns:
        raise ValueError(
            f"seeds column {seeds!r} is not in the table (columns: {list(df.columns)})"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    df = df.assign(**{seeds: df[seeds].astype(object).where(df[seeds].notna(), "<no seed>")})
    per_x = {}
    for xv, grp in df.groupby("_x", sort=True):
        by_seed = {key: g for key, g in grp.groupby(seeds, sort=True)}
        c = _inflation(len(by_seed))
        cols = [col for col in (scale or {}) if col in grp.columns] if c != 1.0 else []
        centre = {col: float(pd.to_numeric(grp[col], errors="coerce").mean()) for col in cols}
        scaled = {}
        for key, g in by_seed.items():
            moved = {}
            for col in cols:
                v = centre[col] + c * (pd.to_numeric(g[col], errors="coerce") - centre[col])
                lim = (scale or {})[col]
                moved[col] = v if lim is None else v.clip(lim[0], lim[1])
            scaled[key] = g.assign(**moved).drop(columns="_x")
        per_x[xv] = scaled
    if not any(len(v) > 1 for v in per_x.values()):
        return {}, 0
    rng = np.random.default_rng(random_state)
    verdicts = []
    for _ in range(n_boot):
        parts = []
        for groups in per_x.values():
            keys = list(groups)
            for d, k in enumerate(rng.integers(0, len(keys), len(keys))):
                part = groups[keys[int(k)]]
                parts.append(part.assign(**{seeds: f"{keys[int(k)]}#{d}"}))
        verdicts.append(call(pd.concat(parts, ignore_index=True)))
    return _fractions(verdicts), n_boot


def _mirage_verdict(
    *,
    series: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]],
    ses: Mapping[str, np.ndarray | None],
    bounds: Mapping[str, tuple[float, float]],
    direction: Mapping[str, bool],
    kwargs: Mapping[str, Any],
    discontinuous: str,
    x: str,
    missing: Sequence[str],
) -> tuple[dict[str, JumpResult], str, str]:
    """Jump verdicts per metric (discontinuous first) and the mirage verdict with its reason."""
    results = {
        m: detect_jumps(
            *series[m],
            higher_is_better=direction[m],
            se=ses.get(m),
            bounds=bounds.get(m),
            **kwargs,
        )
        for m in series
    }
    disc = results[discontinuous]
    cont = {m: r for m, r in results.items() if m != discontinuous}
    tested = {m: r for m, r in cont.items() if r.verdict != "insufficient"}

    def overlaps(r: JumpResult) -> bool:
        if r.interval is None or disc.interval is None:
            return False
        return r.interval[0] <= disc.interval[1] and disc.interval[0] <= r.interval[1]

    note_missing = f" (no column for {', '.join(missing)})" if missing else ""
    if disc.verdict == "insufficient":
        verdict = "insufficient"
        reason = f"{discontinuous} has too few x values to judge: {disc.reason}"
    elif disc.verdict != "jump":
        verdict = "no jump"
        lasting = "lasting " if disc.verdict == "transient" else ""
        reason = f"{discontinuous} shows no {lasting}jump against {x}: {disc.reason}"
    elif not tested:
        verdict = "inconclusive"
        reason = (
            f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
            f"{_fmt(disc.interval[1])}, but no continuous metric could be tested{note_missing}."
        )
    else:
        genuine = [m for m, r in tested.items() if r.verdict == "jump" and overlaps(r)]
        if genuine:
            verdict = "genuine jump"
            reason = (
                f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
                f"{_fmt(disc.interval[1])} and so does {', '.join(genuine)}: the model changes there, "
                "not only the metric."
            )
        else:
            verdict = "metric artefact"
            elsewhere = [m for m, r in tested.items() if r.verdict == "jump"]
            extra = f"; {', '.join(elsewhere)} jump(s) elsewhere in {x}" if elsewhere else ""
            reason = (
                f"{discontinuous} jumps between {x}={_fmt(disc.interval[0])} and "
                f"{_fmt(disc.interval[1])} but {', '.join(tested)} change smoothly there{extra}: "
                "the jump is likely an artefact of the all-or-nothing metric "
                f"(Schaeffer et al. 2023){note_missing}."
            )
    return results, verdict, reason


def check_mirage(
    table: pd.DataFrame,
    x: str,
    *,
    discontinuous: str = "exact_match",
    continuous: Sequence[str] = ("eval_loss", "token_accuracy"),
    split: str = "test",
    agg: str = "selected",
    select_metric: str = "eval_loss",
    select_split: str = "val",
    higher_is_better: Mapping[str, bool] | None = None,
    jump_kwargs: Mapping[str, Any] | None = None,
    n_problems: int | str | None = "n_problems",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    seeds: str | None = None,
    n_boot: int = N_BOOT,
    agree: float = AGREE,
    random_state: int = 0,
) -> MirageResult:
    """Does a jump in a discontinuous metric survive in the continuous ones?

    Only rows with status "ok" (all rows when there is no status column) and a
    positive, finite x are used. Per x value, ``agg`` makes one point per
    metric:

    * "selected" (default): the one evaluation (row) with the best validation
      ``select_metric`` at that x (early stopping and LR choice on val), whose
      ``split`` metrics are then reported — no selection on the test split;
    * "best": each metric's own best value at that x (optimistic: it selects
      on the reported split);
    * "mean" / "median": over the rows at that x (e.g. seeds).

    Metric columns resolve to f"{split}_{metric}" when present, else `metric`.
    ``higher_is_better`` overrides the direction per metric (default: names with
    "loss" or "perplexity" are lower-is-better). ``jump_kwargs`` go to
    `detect_jumps`.

    n_problems: problems per evaluation, an int (the spec's eval size) or the name of a
    column (used when present). With it each point gets a standard error: binomial
    (`binomial_se`) for a metric in [0, 1] that is higher-is-better (exact match, accuracy),
    ``{column}_std / sqrt(n)`` for another metric when the table has its per-problem spread
    in a ``{column}_std`` column. A ``{column}_stderr`` column is used as it is.
    bounds: metric -> (low, high); metrics in [0, 1] that are higher-is-better get (0, 1), so
    a rise below ``min_rise`` of that range is flat.
    seeds: the seed column. When given and some x has several seeds, the seeds are resampled
    with replacement within each x ``n_boot`` times (rows of the drawn seeds, then ``agg``
    as above: with "mean" the mean over the drawn seeds, its distance from the seeds' mean
    scaled by sqrt(k / (k - 1)) for k seeds, as in `analysis.jump_seeds`, so 2 seeds do not
    halve the spread) and the verdict stands only when at least ``agree`` of the resamples
    give it; otherwise "uncertain". ``fractions`` holds the fraction of resamples per verdict
    (empty, with ``n_boot`` 0, when every x has one seed: the seed noise is unmeasured).
    Raises ValueError for a missing x or discontinuous column.
    """
    # 1. validate
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if agg not in _AGGS:
        raise ValueError(f"agg must be one of {_AGGS}, got {agg!r}")
    if x not in table.columns:
        raise ValueError(f"x column {x!r} is not in the table (columns: {list(table.columns)})")
    if isinstance(continuous, str):
        continuous = (continuous,)
    disc_col = _resolve(table.columns, discontinuous, split)
    if disc_col is None:
        raise ValueError(
            f"discontinuous metric {discontinuous!r} has no column {f'{split}_{discontinuous}'!r} "
            f"or {discontinuous!r} in the table (columns: {list(table.columns)})"
        )
    columns = {discontinuous: disc_col}
    missing = []
    for m in continuous:
        col = _resolve(table.columns, m, split)
        if col is None:
            missing.append(m)
        else:
            columns[m] = col
    sel_col = None
    if agg == "selected":
        sel_col = _resolve(table.columns, select_metric, select_split)
        if sel_col is None:
            raise ValueError(
                f"agg='selected' needs the selection metric {f'{select_split}_{select_metric}'!r} "
                f"or {select_metric!r} in the table; pass agg='best' or 'mean' otherwise"
            )
        if sel_col.startswith("test_"):
            raise ValueError(
                f"agg='selected' must select rows on the validation split, got the column {sel_col!r}; "
                "use select_split='val'"
            )
    direction = {m: not _lower_is_better(m) for m in columns}
    direction.update(dict(higher_is_better or {}))
    kwargs = dict(jump_kwargs or {})

    # 2. completed rows with a usable x; a run table (trial_id) is one row per trial first, its
    # final evaluation (analysis.table.trial_summary, the summary every analysis command reads)
    df = table
    if "trial_id" in df.columns:
        order = pd.unique(df["trial_id"])  # the table's order: means and ties come out as before
        # the noise columns too: per-problem spreads, eval sizes and the seed (steps 4-5)
        noise = [c for col in columns.values() for c in (f"{col}_std", f"{col}_stderr")]
        noise += [c for c in (n_problems, seeds) if isinstance(c, str)]
        carry = (x, *columns.values(), *([sel_col] if sel_col else []), *noise)
        df = trial_summary(df, carry=tuple(dict.fromkeys(c for c in carry if c in df.columns)))
        df = df.set_index("trial_id").loc[order].reset_index()
    if "status" in df.columns:
        df = df[df["status"].astype("string").fillna("") == "ok"]
    xv = pd.to_numeric(df[x], errors="coerce").astype(float)
    df = df[np.isfinite(xv) & (xv > 0)].assign(_x=xv)

    # 3. one point per x and metric
    series: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for m, col in columns.items():
        vals = pd.to_numeric(df[col], errors="coerce").astype(float)
        if agg == "selected":
            s = pd.to_numeric(df[sel_col], errors="coerce").astype(float)
            ok = np.isfinite(s)
            sub = df.loc[ok, ["_x"]].assign(_s=s[ok], _v=vals[ok])
            sel_hib = bool(
                dict(higher_is_better or {}).get(select_metric, not _lower_is_better(select_metric))
            )
            sub = sub.sort_values(["_x", "_s"], ascending=[True, not sel_hib], kind="stable")
            per_x = sub.groupby("_x", sort=True)["_v"].first()
        else:
            sub = df.loc[np.isfinite(vals), ["_x"]].assign(_v=vals[np.isfinite(vals)])
            grouped = sub.groupby("_x", sort=True)["_v"]
            if agg == "best":
                per_x = grouped.max() if direction[m] else grouped.min()
            else:
                per_x = grouped.mean() if agg == "mean" else grouped.median()
        per_x = per_x[np.isfinite(per_x.to_numpy(dtype=float))]
        series[m] = (tuple(map(float, per_x.index)), tuple(map(float, per_x.to_numpy(dtype=float))))

    # 4. standard errors from the evaluation size, bounds of bounded metrics
    ses = {
        m: _series_se(df, col=columns[m], y=series[m], n_problems=n_problems,
                      proportion=_is_proportion(series[m][1], direction[m]))
        for m in columns
    }  # fmt: skip
    bnds = {m: (0.0, 1.0) for m in columns if _is_proportion(series[m][1], direction[m])}
    bnds.update(dict(bounds or {}))

    # 5. detect jumps, discontinuous metric first, and the verdict
    results, verdict, reason = _mirage_verdict(
        series=series, ses=ses, bounds=bnds, direction=direction, kwargs=kwargs,
        discontinuous=discontinuous, x=x, missing=missing,
    )  # fmt: skip

    # 6. across seeds: the verdict must hold over bootstrap resamples of the seeds
    fractions: dict[str, float] = {}
    boot = 0
    if seeds is not None:
        # with agg="mean" the drawn seeds' mean spreads as the seeds' mean does (few seeds)
        scale = {columns[m]: bnds.get(m) for m in columns} if agg == "mean" else None
        fractions, boot = _seed_fractions(
            df, x=x, seeds=seeds, n_boot=n_boot, random_state=random_state, scale=scale,
            call=lambda t: check_mirage(
                t, x, discontinuous=discontinuous, continuous=continuous, split=split, agg=agg,
                select_metric=select_metric, select_split=select_split,
                higher_is_better=higher_is_better, jump_kwargs=jump_kwargs,
                n_problems=n_problems, bounds=bounds,
            ).verdict,
        )  # fmt: skip
        if boot:
            point = verdict
            verdict = _agreed(point, fractions, agree)
            if verdict == "uncertain":
                reason = (
                    f"uncertain across seeds: on the seed means it reads {point!r} ({reason}) but "
                    f"over {boot} resamples of the seeds: {_fmt_fractions(fractions)} "
                    f"(a verdict needs {agree:.0%})."
                )
            else:
                reason = f"{reason} It holds in {fractions[verdict]:.0%} of {boot} seed resamples."
    return MirageResult(
        verdict=verdict,
        x=x,
        discontinuous=discontinuous,
        results=types.MappingProxyType(results),
        columns=types.MappingProxyType(columns),
        series=types.MappingProxyType(series),
        agg=agg,
        reason=reason,
        missing=tuple(missing),
        fractions=types.MappingProxyType(fractions),
        n_boot=boot,
    )
