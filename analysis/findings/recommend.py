"""Section 6, recommendations: what the next run should change, derived from the numbers of
sections 1-5."""

from __future__ import annotations

import math
import re
from typing import Any

from analysis.findings.common import (
    HOLDOUT_BAD,
    WIDE_CI,
    Analysis,
    Finding,
    _ci,
    _d,
    _f,
    _g,
    _measured,
    _pct,
)
from analysis.jumps import MIN_POINTS

__all__ = ["recommend_finding"]


def recommend_finding(an: Analysis) -> Finding:
    """Section 6: what the next run should change, read off the sections before it."""
    recs: list[dict[str, Any]] = []
    N = an.numbers

    def add(kind: str, text: str, **data: Any) -> None:
        recs.append({"kind": kind, "text": text, **data})

    study = N.get("study", {})
    tr = study.get("trials", {})
    if tr.get("total", 0) == 0:
        add("run", "The table holds no trials: run `scaling sweep` on the spec first.")
    elif tr.get("ok", 0) == 0:
        kinds = study.get("failure_kinds") or [{"error": "n/a", "trials": 0}]
        add("failures", f"No trial completed ({tr.get('failed', 0)} failed, {tr.get('pruned', 0)} pruned); the most "
            f"common error is: {kinds[0]['error']} ({kinds[0]['trials']} trials). Fix it before reading any law.",
            error=kinds[0]["error"])  # fmt: skip
    elif tr.get("failed", 0):
        div = [
            f
            for f in study.get("failed_trials", [])
            if re.search(r"diverg|\bnan\b|\binf\b", f["error"], re.I)
        ]
        diverged = len(div)
        lowest = min(
            (f["learning_rate"] for f in div if math.isfinite(_f(f["learning_rate"]))),
            default=math.nan,
        )
        extra = (f" {diverged} of them diverged (non-finite loss), the lowest at learning rate {_g(lowest)}: keep "
                 "learning_rate.high below it." if diverged else "")  # fmt: skip
        add("failures", f"{tr['failed']} of {tr['total']} trials failed; see section 1 for their errors.{extra}",
            failed=tr["failed"], diverged=diverged)  # fmt: skip
    # LR range: a best LR at the searched range's edge wants a wider range; one at the edge of
    # the LRs tried inside a wider range wants more trials in that cell (analysis.lr_edge kinds)
    edges = N.get("lr", {}).get("edges", [])
    rng = N.get("lr", {}).get("searched_range") or [None, None]
    for side, word in (("high", "upward"), ("low", "downward"), ("both", "around the single value")):
        cells = [e for e in edges if e["edge"] == side and e.get("edge_kind") != "not_bracketed"]
        if cells:
            names = ", ".join(f"D={_d(c['dataset_size'])} epochs={c['epochs']}" for c in cells)
            bound = rng[1] if side == "high" else rng[0]
            add("lr_range", f"Widen the learning-rate range {word}"
                + (f" (beyond {_g(bound)})" if bound is not None and side != "both" else "")
                + f": the best LR sits at the edge of the search in {len(cells)} cell(s) ({names}), so their optimum "
                "is censored and the LR rule leaves them out.", side=side, cells=len(cells))  # fmt: skip
    unbracketed = [e for e in edges if e.get("edge_kind") == "not_bracketed"]
    if unbracketed:
        names = "; ".join(e["advice"].split("; ", 1)[-1] for e in unbracketed)
        add("lr_trials", f"{len(unbracketed)} cell(s) were not bracketed (their best LR is the extreme one tried, "
            f"inside the searched range), so their optimum is censored and the LR rule leaves them out: {names}.",
            cells=len(unbracketed))  # fmt: skip
    # seeds, sizes, and whether more data pays
    data = N.get("data", {})
    has_seeds = any((s.get("seed_noise") or {}).get("dof", 0) > 0 for s in data.get("series", []))
    if an.points is not None and len(an.points) and not has_seeds:
        add("seeds", "No cell has repeat seeds of its best config, so noise is estimated from the scatter around the "
            "fit only: set seeds.repeat_best: 2 (or more) in the spec for error bars.")  # fmt: skip
    for s in data.get("series", []):
        ex = s.get("exponent")
        if not ex:
            if s.get("reason"):
                add("sizes", f"{s['label']}: add dataset sizes: {s['reason']}.", series=s["label"])
            continue
        lo, hi = ex["ci"]
        a = ex["alpha"]
        if (
            lo is not None
            and hi is not None
            and math.isfinite(lo)
            and math.isfinite(hi)
            and a > 0
            and (hi - lo) / a > WIDE_CI
        ):
            add("seeds", f"{s['label']}: the exponent alpha={_g(a)} has a wide {an.level:.0%} interval {_ci(lo, hi)}: "
                "add seeds (seeds.repeat_best) and dataset sizes to pin it down.", series=s["label"])  # fmt: skip
        g = s.get("gain_2x") or {}
        z = g.get("gain_over_noise", math.nan)
        v = g.get("verdict")
        m = g.get("measured_last") or {}
        pred = (f"doubling D from {_d(g.get('from'))} to {_d(g.get('to'))} is predicted to lower test loss by "
                f"{_g(g.get('gain'))} {_ci(g.get('lo'), g.get('hi'))}, {_g(z, 2)}x the {g.get('noise_kind')} "
                f"({_g(g.get('noise'))})")  # fmt: skip
        # the measured step beside the noise it must beat, so "1.8x" is never read as a gain the law denies
        step_z = _f(m.get("change")) / _f(g.get("noise")) if m and _f(g.get("noise")) > 0 else math.nan
        last = (f"the last measured step (D={_d(m.get('from'))} to {_d(m.get('to'))}) took test loss from "
                f"{_g(m.get('loss_from'))} to {_g(m.get('loss_to'))} ({_g(m.get('ratio'), 2)}x"
                + (f", a change of {_g(step_z, 2)}x the {g.get('noise_kind')}" if math.isfinite(step_z) else "")
                + ")") if m else ""  # fmt: skip
        if v == "pays":
            add("more_data", f"{s['label']}: more data still pays: {pred}" + (f"; {last}" if last else "") + ".",
                series=s["label"], gain_over_noise=z, verdict=v)  # fmt: skip
        elif v == "hardly_measurable":
            add("more_data", f"{s['label']}: {pred}" + (f"; {last}" if last else "") + ": the next doubling would "
                "hardly be measurable; spend elsewhere (epochs, rank, learning rate).",
                series=s["label"], gain_over_noise=z, verdict=v)  # fmt: skip
        elif v == "disagrees":
            add("more_data", f"{s['label']}: no advice on more data: the fitted law and the measurements disagree: "
                f"{pred}, but {last}. Add a larger size (or seeds) before deciding.",
                series=s["label"], gain_over_noise=z, verdict=v)  # fmt: skip
        elif v == "unclear":
            add("more_data", f"{s['label']}: whether more data pays is unclear: {pred}; the interval spans both a "
                "measurable and an unmeasurable gain. Add seeds to narrow it.",
                series=s["label"], gain_over_noise=z, verdict=v)  # fmt: skip
        h = s.get("holdout") or {}
        if math.isfinite(_f(h.get("mape"))) and h["mape"] > HOLDOUT_BAD:
            add("holdout", f"{s['label']}: the law fitted without the largest size misses it by {_pct(h['mape'])}: "
                "treat extrapolations with care and add a larger size.", series=s["label"])  # fmt: skip
    for dc in N.get("epochs", {}).get("data_constrained", []):
        rows = [r for r in dc.get("effective_data", []) if r["epochs"] > 1 and r["studied"]]
        if rows:
            r = rows[-1]
            worth = r["repeat_worth"]
            if worth < 0.5:
                add("epochs", f"Repeated epochs add little: {r['epochs']} epochs over D examples are worth "
                    f"{_g(r['multiplier'])}x D fresh examples (each repeat {_pct(worth)} of a fresh one); "
                    "prefer fresh data over more epochs.", repeat_worth=worth)  # fmt: skip
            else:
                add("epochs", f"Repeating is nearly as good as fresh data up to {r['epochs']} epochs (each repeat is "
                    f"worth {_pct(worth)} of a fresh example): when data is scarce, more epochs are a good use of "
                    "compute.", repeat_worth=worth)  # fmt: skip
    for e in N.get("emergence", {}).get("series", []):
        if e["mirage"] == "genuine jump" and e["interval"]:
            add("emergence", f"{e['label']}: {e['metric']} and a continuous metric jump between D={_d(e['interval'][0])} "
                f"and D={_d(e['interval'][1])}: add dataset sizes in that range to resolve the transition.")  # fmt: skip
        elif e["mirage"] == "metric artefact":
            add("emergence", f"{e['label']}: the jump of {e['metric']} is an artefact of the metric; track "
                "token accuracy and answer log-prob to forecast it.")  # fmt: skip
        elif e["mirage"] == "uncertain":
            fr = ", ".join(f"{k} {_pct(v)}" for k, v in (e.get("fractions") or {}).items())
            add("emergence", f"{e['label']}: the verdict on {e['metric']} does not hold across seeds ({fr}): add seeds "
                "(seeds.repeat_best) in the cells around the transition before calling it.")  # fmt: skip
        elif e["mirage"] == "insufficient":
            add(
                "emergence",
                f"{e['label']}: add dataset sizes (at least {MIN_POINTS}) to judge whether {e['metric']} jumps.",
            )
    # the base model (section 6): which to fine-tune at the target D, and how sure the ranking is
    for s in N.get("models", {}).get("series", []):
        rows = (s.get("ranking") or {}).get("rows") or []
        if len(rows) < 2:
            continue
        top, nxt = rows[0], rows[1]
        run = [r for r in rows if r.get("measured") is not None]
        best = min(run, key=lambda r: r["measured"]) if len(run) >= 2 else None
        if not s["ranking"]["extrapolated"] and best is not None and best["model"] != top["model"] \
                and top.get("measured") is not None:
            # the target D was run and the measurements there rank another model first: they, not the
            # law (whose form ranks a larger N first), say which base to fine-tune
            se = [r.get("measured_se") for r in (best, top)]
            gap = top["measured"] - best["measured"]
            clear = None not in se and gap > 2 * math.hypot(*se)
            add("base_model", f"{s['label']}: fine-tune {best['model']}: measured at D={_d(s['ranking']['dataset_size'])}, "
                f"its test loss is {_measured(best)} against {_measured(top)} for {top['model']} ("
                + ("a gap of more than twice its standard error" if clear else "no interval" if None in se
                   else "within twice its standard error: add seeds to settle it")
                + f"). The joint {s['ranking']['law']} law ranks {top['model']} first ({_g(top['loss'])} "
                f"{_ci(top['lo'], top['hi'])}), as its form ranks a larger N first; the measurements it was fitted "
                "to disagree there, so it does not describe these bases at this D.",
                model=best["model"], clear=clear)  # fmt: skip
            continue
        held = (s.get("holdout") or {}).get(s["ranking"]["law"]) or {}
        check = ("" if "order_agrees" not in held else
                 "; fitted without the largest D, the law ordered the models as measured there" if held["order_agrees"]
                 else "; but fitted without the largest D, the law ordered the models differently from the "
                      "measurements there: check the ranking against a run at the target D")  # fmt: skip
        add("base_model", f"{s['label']}: fine-tune {top['model']}: its predicted test loss at D={_d(top['dataset_size'])} "
            f"is {_g(top['loss'])} {_ci(top['lo'], top['hi'])} against {_g(nxt['loss'])} {_ci(nxt['lo'], nxt['hi'])} for "
            f"{nxt['model']} ({'clearly ahead' if top['clear'] else 'the intervals overlap'}; best in {_pct(top['p_best'])} "
            f"of bootstrap draws){check}.", model=top["model"], clear=top["clear"])  # fmt: skip
    if not recs:
        add("none", "Nothing stands out: the numbers above raise no warning.")
    return Finding(numbers=recs)
