"""Section 5, sudden abilities: the jump verdict and the mirage check per discontinuous metric,
on the test points of the configs chosen on validation (mean over their seeds)."""

from __future__ import annotations

from typing import Any

from analysis.findings.common import CONTINUOUS, DISCONTINUOUS, Analysis, Finding
from analysis.mirage import check_mirage
from analysis.table import _py

__all__ = ["emergence_finding"]


_PLAIN = {
    "metric artefact": "the all-or-nothing metric jumps while the continuous metrics improve smoothly: the model "
                       "gets steadily better and only the exact-match threshold makes it look sudden",
    "genuine jump": "a continuous metric jumps at the same place: the model itself changes there",
    "no jump": "no sudden jump: the metric changes gradually (or not at all) with data",
    "insufficient": "too few dataset sizes to tell a jump from a trend (at least 4 are needed)",
    "inconclusive": "the metric jumps, but no continuous metric was measured to check it against",
    "uncertain": "the verdict does not hold across seeds: resampling the seeds gives different verdicts",
}  # fmt: skip
N_BOOT = 40  # seed resamples per check (~60 ms each): a fraction near AGREE known to about +-0.05
BOUNDED = {"exact_match": (0.0, 1.0), "token_accuracy": (0.0, 1.0)}  # metrics in [0, 1]


def _test_size(an: Analysis) -> int | None:
    """How many problems each test evaluation had (spec eval.test_size), for binomial errors."""
    ev = (an.spec or {}).get("eval") or {}
    n = ev.get("test_size") if isinstance(ev, dict) else None
    return int(n) if isinstance(n, int | float) and n > 0 else None


def emergence_finding(an: Analysis) -> Finding:
    """Section 5: jump and mirage verdicts per series and discontinuous metric."""
    em: dict[str, Any] = {"series": [], "metrics": []}
    out: dict[str, Any] = {"x": "dataset_size", "split": "test", "agg": "mean over the seeds of the chosen config",
                           "series": []}  # fmt: skip
    pts = an.points
    if pts.empty:
        out["reason"] = "no completed trial with test metrics"
        return Finding(numbers=out, figures={"emergence": em})
    present = [
        m
        for m in (*DISCONTINUOUS, *CONTINUOUS)
        if f"test_{m}" in pts and pts[f"test_{m}"].notna().any()
    ]
    disc = [m for m in DISCONTINUOUS if m in present]
    cont = [m for m in CONTINUOUS if m in present]
    em["metrics"] = present
    if not disc:
        out["reason"] = f"no discontinuous metric ({', '.join(DISCONTINUOUS)}) has test values"
    for s in an.series():
        sp = an.series_points(s["key"])
        fig: dict[str, Any] = {"label": s["label"], "curves": {}, "jumps": {}}
        em["series"].append(fig)
        for m in present:
            g = sp.groupby("dataset_size")[f"test_{m}"].mean().dropna()
            fig["curves"][m] = (g.index.to_numpy(float), g.to_numpy(float))
        has_seeds = "seed" in sp and bool((sp.groupby("dataset_size")["seed"].nunique() >= 2).any())
        n_problems = _test_size(an)
        for m in disc:
            res = check_mirage(
                sp, "dataset_size", discontinuous=m, continuous=cont, split="test", agg="mean",
                n_problems=n_problems, bounds={k: v for k, v in BOUNDED.items() if k in (m, *cont)},
                seeds="seed" if has_seeds else None, n_boot=N_BOOT, random_state=an.seed,
            )  # fmt: skip
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
