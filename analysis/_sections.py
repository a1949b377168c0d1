"""Blocks of the report's later sections: loss against compute (sampler.mode optimize), sudden
ability jumps, and the base model (axes.model). Like report.py's, each turns an Analysis's
numbers into blocks and computes nothing; report.py puts them in order and renders them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from analysis.findings import Analysis
from analysis.findings.common import _ci, _d, _g, _measured, _pct
from analysis.selection import n_text

__all__ = ["_blocks_emergence", "_blocks_models", "_blocks_pareto"]


def _blocks_pareto(an: Analysis) -> list[tuple]:
    N = an.numbers.get("pareto", {})
    blocks: list[tuple] = []
    budget, spent = N.get("budget") or {}, N.get("spent") or {}
    if budget:
        unit = "flops" if budget.get("flops") is not None else "trial_hours"
        name = "training FLOPs" if unit == "flops" else "trial-hours"
        blocks.append(("p", f"Budget: {_g(budget.get(unit))} {name} ({N['objective']} objective: "
                       + ("validation loss alone, TPE" if N["objective"] == "single" else
                          "validation loss and train FLOPs, NSGA-II")
                       + f"); spent {_g(spent.get(unit))} {name}, measured, no uncertainty. A config estimated above "
                       f"{_pct(budget.get('max_trial_share', 0.1))} of the budget was not run."))  # fmt: skip
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
        return blocks
    left = N.get("n_left_out") or {}
    blocks.append(("p", f"The Pareto front of {N['n_trials']} completed trials: those no other trial beats on both "
                   f"the final {N['y']} (validation split) and {N['x']} (6 x forward-pass parameters x training tokens); "
                   f"{left.get('pruned', 0)} pruned and {left.get('failed', 0)} failed trials are left out. "
                   f"Uncertainty: {N['uncertainty']}. Test loss is shown, never used to choose."))  # fmt: skip
    head = ["train FLOPs", f"val loss ({N['y']})", "test loss", "D", "epochs", "r", "learning rate", "trial"]
    rows = [[_g(p[N["x"]]), _g(p[N["y"]], 4), _g(p["test_eval_loss"], 4), _d(p["dataset_size"]), _g(p["epochs"]),
             _g(p["lora_r"]), _g(p["learning_rate"]), p["trial_id"]] for p in N["front"]]  # fmt: skip
    blocks.append(("table", head, rows))
    blocks.append(("figure", "pareto", "Validation loss against training FLOPs, one point per completed trial "
                   "(log x); the front (no trial better on both) in colour, joined as a staircase."))  # fmt: skip
    return blocks


def _verdict_text(e: Mapping[str, Any]) -> str:
    """The mirage verdict, with the fraction of seed resamples each way when it is "uncertain", and
    "(holds across seeds)" when seed resamples agreed; a single-seed verdict says so."""
    fr = e.get("fractions") or {}
    if e["mirage"] == "uncertain" and fr:
        return "uncertain (" + ", ".join(f"{k} {_pct(v)}" for k, v in sorted(fr.items(), key=lambda kv: -kv[1])) + \
            f" of {e.get('n_boot') or 'the'} seed resamples)"
    if fr:
        return f"{e['mirage']} (holds across seeds: {_pct(fr.get(e['mirage'], math.nan))} of resamples)"
    return f"{e['mirage']} (one seed per size: not checked across seeds)" if e.get("seeds") is False else e["mirage"]


def _blocks_emergence(an: Analysis) -> list[tuple]:
    N = an.numbers.get("emergence", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    if N.get("series"):
        blocks.append(("p", "Each discontinuous metric is tested for a sudden jump against dataset size (a sigmoid in "
                       "log D against a straight line, by BIC), then checked against the continuous metrics measured "
                       "on the same trials (Schaeffer et al. 2023): a jump that the continuous metrics do not share "
                       "is an artefact of the all-or-nothing metric. Test split, config chosen on validation, mean "
                       "over its seeds."))  # fmt: skip
        rows = []
        for e in N["series"]:
            iv = f"D={_d(e['interval'][0])} .. {_d(e['interval'][1])}" if e["interval"] else "-"
            cont = ", ".join(f"{k}: {v}" for k, v in e["continuous"].items()) or "none measured"
            rows.append([e["label"], e["metric"], e["verdict"], iv, cont, _verdict_text(e)])
        blocks.append(
            (
                "table",
                ["series", "metric", "jump verdict", "where", "continuous metrics", "verdict"],
                rows,
            )
        )
        blocks.append(("list", [f"{e['label']}, {e['metric']}: {_verdict_text(e)}: {e['plain']}. ({e['reason']})"
                                for e in N["series"]]))  # fmt: skip
        blocks.append(("figure", "emergence", "Test metrics against dataset size, one line per epochs setting; shaded: "
                       "the interval of a detected jump."))  # fmt: skip
    return blocks


def _law_params(law: Mapping[str, Any]) -> str:
    """A joint law's parameters for a person: each with its interval, or its one-sided text."""
    parts = []
    for k, v in law["params"].items():
        if law.get("param_status", {}).get(k, "estimated") != "estimated":
            parts.append(law["param_text"].get(k, f"{k} = {_g(v)}"))
        else:
            ci = law["ci"].get(k)
            parts.append(f"{k} = {_g(v)} {_ci(*ci) if ci else '(no interval: no bootstrap)'}")
    return "; ".join(parts)


def _blocks_models(an: Analysis) -> list[tuple]:
    N = an.numbers.get("models", {})
    if N.get("reason"):
        return [("p", f"Not computed: {N['reason']}.")]
    ms = N.get("models", [])
    blocks: list[tuple] = [("p", "Base models: " + ", ".join(f"{m['model']} (N = {m['n_text']})" for m in ms)
                            + ". N is the non-embedding parameter count, read from each model's config. Two joint "
                            "laws are fitted to the test loss of the configs chosen on validation (robust fit in log "
                            f"space, {an.level:.0%} bootstrap intervals over {an.bootstrap} resamples) and compared by "
                            "AIC: the multiplicative fine-tuning law of Zhang et al. (2024), where base-model size "
                            "and data multiply, and the additive Chinchilla form.")]  # fmt: skip
    for s in N.get("series", []):
        lab = s["label"]
        rows = []
        for law, d in s.get("laws", {}).items():
            if d.get("reason"):
                rows.append([law, "not fitted: " + d["reason"], "n/a", "n/a", "n/a"])
                continue
            w = (s.get("weights") or {}).get(law)
            rows.append([d["form"], _law_params(d), _g(d["metrics"].get("rmsle")), _g(d["metrics"].get("aic"), 4),
                         _pct(w) if w is not None else "n/a"])  # fmt: skip
        blocks.append(("table", [f"law ({lab})", f"parameters [{an.level:.0%} CI]", "RMS log error", "AIC",
                                 "Akaike weight"], rows))  # fmt: skip
        if s.get("better") and "delta_aic" in s:
            blocks.append(("p", f"{lab}: the {s['better']} law fits better by {_g(s['delta_aic'])} AIC."))
        items = []
        for law, h in (s.get("holdout") or {}).items():
            if h.get("reason"):
                items.append(f"{law}: no hold-out check: {h['reason']}.")
                continue
            per = "; ".join(f"{p['model']} {_g(p['predicted'])} vs {_g(p['observed'])}" for p in h["per_model"])
            items.append(f"{law}, fitted on D = {', '.join(_d(v) for v in h['train_sizes'])} only, predicts the test "
                         f"loss at D = {_d(h['test_size'])} ({_pct(h['mape'])} mean error; predicted vs measured: "
                         f"{per}); its order of the models {'matches' if h['order_agrees'] else 'differs from'} the "
                         f"measured one ({' < '.join(h['observed_order'])}).")  # fmt: skip
        if items:
            blocks.append(("list", items))
        rk = s.get("ranking", {})
        if rk.get("rows") and s is N["series"][0]:
            blocks.append(("figure", "loss_vs_n_d", f"Test loss against D, one colour per base model: measured points "
                           f"and the {rk['law']} law fitted to all models at once, evaluated at each model's N, with "
                           "its bootstrap band."))  # fmt: skip
        if rk.get("rows"):
            t = N.get("target", {})
            blocks.append(("p", f"{lab}: base models ranked by the {rk['law']} law's predicted test loss at D = "
                           f"{_d(rk['dataset_size'])} ({t.get('why', '')}{'; beyond the fitted sizes' if rk['extrapolated'] else ''}); "
                           "'best in draws' is the share of bootstrap resamples in which the model predicts the lowest loss. "
                           "Both laws keep alpha >= 0, so they always rank a larger N first: whether that holds is for the "
                           "intervals, the measured losses and the hold-out check above to say."))  # fmt: skip
            blocks.append(("table", ["rank", "model", "N", "predicted test loss", f"{an.level:.0%} CI", "best in draws",
                                     "clearly ahead of the next", "measured there (± SE over seeds)"],
                           [[str(r["rank"]), r["model"], n_text(r["model_params_n"]), _g(r["loss"], 4), _ci(r["lo"], r["hi"]),
                             _pct(r["p_best"]), "yes" if r["clear"] else "no", _measured(r)] for r in rk["rows"]]))  # fmt: skip
        elif rk.get("reason"):
            blocks.append(("p", f"{lab}: no ranking: {rk['reason']}."))
        fe = s.get("first_exact_match") or []
        if fe:
            blocks.append(("table", ["model", "N", "smallest D with test exact match >= 0.5", "exact match there (± binomial SE)",
                                     "exact match per D"],
                           [[f["model"], n_text(f["model_params_n"]), _d(f["first_d"]) if f["first_d"] else f"not reached by {_d(f['largest_d'])}",
                             f"{_g(f['exact_match'])} ± {_g(f['se'])}" if f["se"] is not None else _g(f["exact_match"]),
                             ", ".join(f"{_d(k)}: {_g(v, 2)}" for k, v in f["exact_match_by_d"].items())] for f in fe]))  # fmt: skip
        jv = s.get("jumps_vs_n") or []
        if jv:
            blocks.append(("list", [f"Exact match against N at D = {_d(j['dataset_size'])}: {j['verdict']}"
                                    + (f" between N = {n_text(j['interval'][0])} and {n_text(j['interval'][1])}"
                                       if j.get("interval") and j["verdict"] == "jump" else "")
                                    + f"; checked against the continuous metrics: {j['mirage']} ({j.get('reason', '')})."
                                    for j in jv]))  # fmt: skip
    return blocks
