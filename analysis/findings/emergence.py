"""Section 5, sudden abilities: the jump verdict and the mirage check per discontinuous metric,
on the test points of the configs chosen on validation (mean over their seeds).

`series_check` is the check of one series, shared with `scaling emergence` so that the command
and the report give one verdict: `analysis.mirage.check_mirage` on the mean over seeds, with
[0, 1] bounds for bounded metrics, binomial errors from the spec's evaluation size and, where
some x has two seeds or more, the verdict across seed resamples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.findings.common import CONTINUOUS, DISCONTINUOUS, Analysis, Finding
from analysis.jumps import MIN_POINTS
from analysis.mirage import MirageResult, check_mirage
from analysis.table import _py

__all__ = ["emergence_finding", "eval_size", "measured", "metric_bounds", "series_check"]


_PLAIN = {
    "metric artefact": "the all-or-nothing metric jumps while the continuous metrics improve smoothly: the model "
                       "gets steadily better and only the exact-match threshold makes it look sudden",
    "genuine jump": "a continuous metric jumps at the same place: the model itself changes there",
    "no jump": "no sudden jump that lasts: the metric changes gradually (or not at all) with data, or jumps and "
               "falls back",
    "insufficient": f"too few dataset sizes to tell a jump from a trend (at least {MIN_POINTS} are needed)",
    "inconclusive": "the metric jumps, but no continuous metric was measured to check it against",
    "uncertain": "the verdict does not hold across seeds: resampling the seeds gives different verdicts",
}  # fmt: skip
N_BOOT = 40  # seed resamples per check (~60 ms each): a fraction near AGREE known to about +-0.05
BOUNDED = {"exact_match": (0.0, 1.0), "token_accuracy": (0.0, 1.0)}  # metrics in [0, 1]
_SPLITS = {"test": "test_size", "val": "validation_size"}  # spec eval key of each split's size


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The possible range of a bounded metric ([0, 1] for exact match and token accuracy), with
    or without a ``val_``/``test_`` prefix; None for an unbounded one (a loss)."""
    split, _, rest = metric.partition("_")
    return BOUNDED.get(rest if split in _SPLITS else metric)


def eval_size(spec: Mapping[str, Any] | None, split: str = "test") -> int | None:
    """How many problems each evaluation of ``split`` had (spec eval.test_size or
    eval.validation_size), for binomial errors; None when the spec does not say."""
    ev = (spec or {}).get("eval") or {}
    n = ev.get(_SPLITS.get(split, "")) if isinstance(ev, Mapping) else None
    return int(n) if isinstance(n, int | float) and not isinstance(n, bool) and n > 0 else None


def measured(points: pd.DataFrame, split: str = "test") -> tuple[list[str], list[str]]:
    """(discontinuous, continuous) metrics with at least one value on ``split`` in ``points``."""
    def has(m: str) -> bool:
        col = f"{split}_{m}"
        return col in points and bool(points[col].notna().any())

    return [m for m in DISCONTINUOUS if has(m)], [m for m in CONTINUOUS if has(m)]


def series_check(
    points: pd.DataFrame,
    x: str,
    *,
    metric: str,
    continuous: Sequence[str],
    split: str = "test",
    n_problems: int | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    across_seeds: bool = True,
) -> tuple[MirageResult, bool]:
    """The jump and mirage check of one series (its rows, mean over seeds per x) and whether
    it was resampled over seeds (some x has two seeds or more, and ``across_seeds``)."""
    has_seeds = across_seeds and "seed" in points and bool((points.groupby(x)["seed"].nunique() >= 2).any())
    res = check_mirage(
        points, x, discontinuous=metric, continuous=continuous, split=split, agg="mean",
        n_problems=n_problems,
        bounds={k: b for k in (metric, *continuous) if (b := metric_bounds(k)) is not None},
        seeds="seed" if has_seeds else None, n_boot=n_boot, random_state=seed,
    )  # fmt: skip
    return res, has_seeds


def emergence_finding(an: Analysis) -> Finding:
    """Section 5: jump and mirage verdicts per series and discontinuous metric."""
    em: dict[str, Any] = {"series": [], "metrics": []}
    out: dict[str, Any] = {"x": "dataset_size", "split": "test", "agg": "mean over the seeds of the chosen config",
                           "series": []}  # fmt: skip
    pts = an.points
    if pts.empty:
        out["reason"] = "no completed trial with test metrics"
        return Finding(numbers=out, figures={"emergence": em})
    disc, cont = measured(pts, "test")
    present = [*disc, *cont]
    em["metrics"] = present
    if not disc:
        out["reason"] = f"no discontinuous metric ({', '.join(DISCONTINUOUS)}) has test values"
    n_problems = eval_size(an.spec, "test")
    for s in an.series():
        sp = an.series_points(s["key"])
        fig: dict[str, Any] = {"label": s["label"], "curves": {}, "jumps": {}}
        em["series"].append(fig)
        for m in present:
            g = sp.groupby("dataset_size")[f"test_{m}"].mean().dropna()
            fig["curves"][m] = (g.index.to_numpy(float), g.to_numpy(float))
        for m in disc:
            res, has_seeds = series_check(sp, "dataset_size", metric=m, continuous=cont, n_problems=n_problems,
                                          seed=an.seed)  # fmt: skip
            jump = res.results[m]
            entry = {
                "label": s["label"], **{c: _py(v) for c, v in s["key"].items()}, "metric": m,
                "jump": jump.to_dict(), "verdict": jump.verdict,
                "interval": list(jump.interval) if jump.interval else None,
                "mirage": res.verdict, "reason": res.reason, "plain": _PLAIN.get(res.verdict, ""),
                "continuous": {k: r.verdict for k, r in res.results.items() if k != m},
                "missing": list(res.missing),
                "seeds": bool(has_seeds), "n_problems": n_problems, "fractions": dict(res.fractions),
                "n_boot": int(getattr(res, "n_boot", 0) or 0),
            }  # fmt: skip
            out["series"].append(entry)
            if jump.verdict == "jump" and jump.interval:
                fig["jumps"][m] = jump.interval
            for k, r in res.results.items():
                if k != m and r.verdict == "jump" and r.interval:
                    fig["jumps"][k] = r.interval
    return Finding(numbers=out, figures={"emergence": em})
