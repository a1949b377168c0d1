"""Section 5, sudden abilities: the jump verdict and the mirage check per discontinuous metric,
on the test points of the configs chosen on validation (mean over their seeds)."""

from __future__ import annotations

from typing import Any

from analysis.emergence import check_mirage
from analysis.findings.common import CONTINUOUS, DISCONTINUOUS, Analysis, Finding
from analysis.table import _py

__all__ = ["emergence_finding"]


_PLAIN = {
    "metric artefact": "the all-or-nothing metric jumps while the continuous metrics improve smoothly: the model "
                       "gets steadily better and only the exact-match threshold makes it look sudden",
    "genuine jump": "a continuous metric jumps at the same place: the model itself changes there",
    "no jump": "no sudden jump: the metric changes gradually (or not at all) with data",
    "insufficient": "too few dataset sizes to tell a jump from a trend (at least 4 are needed)",
    "inconclusive": "the metric jumps, but no continuous metric was measured to check it against",
}  # fmt: skip


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
        for m in disc:
            res = check_mirage(
                sp, "dataset_size", discontinuous=m, continuous=cont, split="test", agg="mean"
            )
            jump = res.results[m]
            entry = {
                "label": s["label"], **{c: _py(v) for c, v in s["key"].items()}, "metric": m,
                "jump": jump.to_dict(), "verdict": jump.verdict,
                "interval": list(jump.interval) if jump.interval else None,
                "mirage": res.verdict, "reason": res.reason, "plain": _PLAIN.get(res.verdict, ""),
                "continuous": {k: r.verdict for k, r in res.results.items() if k != m},
                "missing": list(res.missing),
            }  # fmt: skip
            out["series"].append(entry)
            if jump.verdict == "jump" and jump.interval:
                fig["jumps"][m] = jump.interval
            for k, r in res.results.items():
                if k != m and r.verdict == "jump" and r.interval:
                    fig["jumps"][k] = r.interval
    return Finding(numbers=out, figures={"emergence": em})
