"""The scaling report, rendering only: an Analysis (analysis.findings) in; blocks, figures,
report.html, report.md and report.json out.

    >>> from scaling.records import read_run      # the caller's side: analysis never imports scaling
    >>> from analysis.report import write_report
    >>> paths = write_report(read_run("runs/demo"))   # runs/demo/report/report.{html,md,json} + PNGs

How a report is made, top to bottom:

1. the caller reads the run directory (scaling.records.read_run: the results table, the spec
   the sweep saved and the Optuna storage URL) and hands it in as a Run;
2. `analysis.findings.analyse` computes every number, one module per section, each
   answering a question (the study; loss vs data; data or epochs; best LR; sudden abilities;
   recommendations), on the configs chosen by `analysis.selection`;
3. figures: analysis.plots (matplotlib, Agg canvas), as PNG bytes, from the plain arrays the
   findings returned;
4. blocks: each section's numbers -> paragraphs, lists, tables and figures;
5. render (analysis.page.Report): HTML (figures inline as base64 data: URIs, CSS inline, no
   network), Markdown (PNG files beside it) and JSON (NaN -> null).

A step that cannot run leaves a ``reason`` in the JSON and a sentence in the report; an
unexpected exception in a section, a figure or a layout is recorded under ``errors`` and the
report goes on. `analysis` never imports ray, torch or scaling; matplotlib and optuna are
imported only when figures or importances are made.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis._sections import _blocks_emergence, _blocks_models, _blocks_pareto
from analysis.findings import BOOTSTRAP, LEVEL, SECTIONS, Analysis, analyse
from analysis.findings.common import EXTRAPOLATE, _ci, _d, _f, _g, _pct
from analysis.page import Report
from analysis.selection import n_text
from analysis.table import SELECT, Run

__all__ = ["ReportPaths", "build_report", "write_report"]

_TITLES = {
    "study": ("The study", "What ran, what failed and why, and what it cost?"),
    "data": ("How loss scales with data", "How does test loss fall as the fine-tuning set grows, and what would more data buy?"),
    "epochs": ("Data or epochs?", "Is another pass over the same examples worth as much as fresh examples?"),
    "lr": ("Best learning rate", "Which learning rate is best in each cell, how sure are we, and how does it move with data?"),
    "pareto": ("Loss against compute", "Which trials does no other beat on both validation loss and training FLOPs?"),
    "emergence": ("Sudden abilities", "Does exact match jump suddenly with data, and is the jump real or an artefact of the metric?"),
    "models": ("The base model", "How does test loss scale with the base model's size N and the data D together, and which base model should be fine-tuned?"),
    "recommendations": ("Recommendations", "What should the next run change?"),
}  # fmt: skip


def _shows_pareto(an: Analysis) -> bool:
    """The Pareto section is an optimize run's: the cells design is no compute search (its front
    stays in report.json)."""
    return (an.numbers.get("pareto") or {}).get("mode") == "optimize"


def _figures(an: Analysis, errors: list[dict[str, str]]) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by file stem; a figure that fails is left out and noted in errors."""
    from analysis import plots

    figs: dict[str, bytes] = {}

    def make(name: str, fn: Callable[[], Any]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figs[name] = plots.to_png(fn())
        except Exception as err:  # a figure is not worth losing the report over; say so
            errors.append({"section": f"figure {name}", "error": f"{type(err).__name__}: {err}"})

    if an.figdata.get("loss"):
        make("loss_vs_data", lambda: plots.plot_loss_vs_data(an.figdata["loss"]))
    if an.figdata.get("compute") and an.points["epochs"].nunique() >= 2:
        xl = ("training compute (FLOPs, log scale)" if an.figdata.get("compute_x") == "flops"
              else "examples seen (dataset size x epochs, log scale)")  # fmt: skip
        make("loss_vs_compute", lambda: plots.plot_compute(an.figdata["compute"], x_label=xl))
    eff = an.figdata.get("effective")
    if eff:
        make("effective_data", lambda: plots.plot_effective_data(eff["rows"], curve=eff["curve"]))
    lr = an.figdata.get("lr")
    if lr and len(lr["trials"]):
        rng = an.numbers.get("lr", {}).get("searched_range")
        rng_t = tuple(rng) if rng and all(v is not None for v in rng) else None
        make("lr_sensitivity", lambda: plots.plot_lr_sensitivity(lr["trials"], lr_range=rng_t))
    if lr and lr["best"] is not None and lr["best"]["lr_best"].notna().any():
        make("lr_rule", lambda: plots.plot_lr_rule(lr["best"], lr["curves"], lr["predictions"]))
    pf = an.figdata.get("pareto")
    if pf is not None and len(pf["x"]) and _shows_pareto(an):
        make("pareto", lambda: plots.plot_pareto(pf["x"], pf["y"], pf["front"]))
    if an.figdata.get("models"):
        make("loss_vs_n_d", lambda: plots.plot_loss_vs_data(
            an.figdata["models"], title="Test loss vs dataset size per base model: the preferred joint L(N, D) law"))
    em = an.figdata.get("emergence")
    if em and em["series"] and em["metrics"]:
        make("emergence", lambda: plots.plot_emergence(em["series"], em["metrics"]))
    return figs


def _fit_table(fit: Mapping[str, Any], level: float) -> tuple[list[str], list[list[str]]]:
    rows = []
    for k, v in fit["params"].items():
        ci = fit["ci"].get(k)
        rows.append(
            [k, _g(v, 4), _ci(*ci) if ci else ("fixed" if k in fit.get("fixed", {}) else "n/a")]
        )
    return ["parameter", "value", f"{level:.0%} CI"], rows


def _blocks_study(an: Analysis) -> list[tuple]:
    N = an.numbers.get("study", {})
    if not N.get("spec"):
        return [("p", N.get("reason", "no study information"))]
    s, t, c, o = N["spec"], N["trials"], N["compute"], N["optuna"]
    task = s["task"]
    if isinstance(task, dict):
        task = ", ".join(f"{k}={v}" for k, v in task.items() if v is not None)
    rng = s.get("learning_rate_range")
    rows = [
        ["study", _g(s["name"])], ["model", _g(s["model"])], ["task", _g(task)],
        ["dataset sizes (D)", ", ".join(_d(v) for v in s["dataset_sizes"]) or "n/a"],
        ["epochs", ", ".join(map(str, s["epochs"] or [])) or "n/a"], ["LoRA rank", _g(s["lora_r"])],
        ["learning-rate range", f"{_g(rng[0])} .. {_g(rng[1])} (log)" if rng else "n/a"],
        ["LR trials per cell", _g(s["trials_per_cell"])], ["repeat seeds of the best config", _g(s["repeat_seeds"])],
        ["sampler", _g(", ".join(f"{k}={v}" for k, v in (s["sampler"] or {}).items()) or None)],
        ["early stopping", _g(s["early_stopping"])], ["planned trials", _g(s["planned_trials"])],
    ]  # fmt: skip
    blocks: list[tuple] = [("table", ["setting", "value"], rows)]
    blocks.append(("p", f"Trials run: {t['total']} ({t['ok']} completed, {t['failed']} failed, {t['pruned']} pruned), "
                   f"{t['rows']} evaluation rows. Selection of every config below reads the validation split only; "
                   "every reported number is on the test split."))  # fmt: skip
    if N["failed_trials"]:
        shown = N["failed_trials"][:20]
        blocks.append(("table", ["failed trial", "cell", "learning rate", "error"],
                       [[f["trial_id"], _g(f["cell"]), _g(f["learning_rate"]), f["error"][:300]] for f in shown]))  # fmt: skip
        if len(N["failed_trials"]) > 20:
            blocks.append(
                (
                    "p",
                    f"... and {len(N['failed_trials']) - 20} more failed trials (all in report.json).",
                )
            )
    hours = _f(c["trial_seconds_total"]) / 3600
    if math.isfinite(_f(c["train_flops_total"])) or math.isfinite(hours):
        blocks.append(("p", f"Compute spent: {_g(c['train_flops_total'])} training FLOPs over "
                       f"{_g(c['trial_seconds_total'])} trial-seconds ({_g(hours)} trial-hours); "
                       f"{_g(c['elapsed_seconds'])} s from the first to the last recorded trial. Measured throughput "
                       f"{_g(c['flops_per_second'])} FLOPs/s per trial and {_g(c['flops_per_example'])} FLOPs per "
                       "training example seen."))  # fmt: skip
    else:
        blocks.append(
            (
                "p",
                "Compute spent: no trial recorded training FLOPs or wall time (none reached an evaluation).",
            )
        )
    if o["url"]:
        blocks.append(("p", f"Optuna storage: `{o['url']}`, one Optuna study per cell named `{o['study_names']}` "
                       f"(LR parameter `{o['lr_param']}`). Browse it with:"))  # fmt: skip
        blocks.append(("code", o["dashboard_command"]))
    return blocks


def _param_cell(d: Mapping[str, Any], key: str) -> str:
    """A parameter for a person: on its bound, its one-sided text ("no floor resolved: E < 0.01");
    otherwise the point with its interval."""
    if d.get("status") not in (None, "estimated"):
        return d.get("text", "n/a")
    return f"{_g(d[key])} {_ci(*d['ci'])}"


def _candidates_text(sel: Mapping[str, Any] | None) -> str:
    if not sel:
        return ""
    parts = []
    for name, c in (sel.get("candidates") or {}).items():
        err = c.get("holdout_error")
        parts.append(f"{name} {_pct(err) if err is not None else 'n/a'}" + ("" if c.get("eligible") else " (ineligible)"))
    return "; ".join(parts)


def _blocks_data(an: Analysis) -> list[tuple]:
    N = an.numbers.get("data", {})
    if N.get("reason"):
        return [("p", f"Not computed: {N['reason']}.")]
    blocks: list[tuple] = [("p", "Each point is the final test loss of the config chosen on validation in one cell (with "
                            "its repeat seeds). Per epochs setting the law is chosen among power without a floor, power "
                            "with a floor, rectified (pre-power phase) and BNSL by leave-largest-out error (fit on the "
                            "smaller sizes, predict the largest fifth of the sizes), then refitted on all points by a robust (Huber) "
                            "fit in log space, each point weighted by 1/SD^2 over its seeds where there are repeats; "
                            f"intervals are {an.level:.0%} bootstrap percentiles over {an.bootstrap} resamples (each "
                            "resample chooses its own law, so predictions carry the choice's uncertainty). A "
                            "parameter on its bound is shown as a bound, not a point. The hold-out check repeats the "
                            "whole procedure, choice of law included, without the largest size and predicts it.")]  # fmt: skip
    rows = []
    for s in N.get("series", []):
        if "fit" not in s:
            rows.append([s["label"], "n/a", "n/a", "n/a", "n/a", "n/a", "-"])
            continue
        ex, fl, x = s.get("exponent"), s["floor"], s["extrapolation"]
        h = s["holdout"]
        rows.append([s["label"], s["law"], _candidates_text(s.get("selection")),
                     (f"{ex['name']} = " + _param_cell(ex, "alpha")) if ex else "n/a", _param_cell(fl, "E"),
                     f"{_g(x['loss'])} {_ci(x['lo'], x['hi'])}", _pct(h.get("mape")) if "mape" in h else h.get("reason", "")])  # fmt: skip
    blocks.append(("table", ["series", "law chosen", "held-out error per candidate", f"exponent [{an.level:.0%} CI]",
                             "floor E", f"loss at {EXTRAPOLATE:g}x the largest D [CI]", "hold-out error"], rows))  # fmt: skip
    blocks.append(("figure", "loss_vs_data", "Test loss vs dataset size (log-log): measured points (hollow: mean over "
                   "seeds), fitted law (solid), extrapolation (dashed), bootstrap band, prediction at 10x the "
                   "largest size (diamond) and the hold-out prediction (x)."))  # fmt: skip
    items = []
    for s in N.get("series", []):
        if "fit" not in s:
            items.append(f"{s['label']}: no law: {s.get('reason', '')}.")
            continue
        x, g, h, ex = s["extrapolation"], s["gain_2x"], s["holdout"], s.get("exponent")
        m = g.get("measured_last") or {}
        exs = (f"exponent {ex['name']} = {_g(ex['alpha'])} (CI {_ci(*ex['ci'])})" if ex and ex["status"] == "estimated"
               else (ex["text"] if ex else "no exponent"))  # fmt: skip
        items.append(f"{s['label']}: law {s['law']} (held-out errors: {_candidates_text(s.get('selection'))}); {exs}; "
                     f"{s['floor']['text'] if s['floor']['status'] != 'estimated' else 'floor E = ' + _param_cell(s['floor'], 'E')}. "
                     f"{EXTRAPOLATE:g}x more data (D={_d(x['dataset_size'])}) is predicted to give test loss "
                     f"{_g(x['loss'])} {_ci(x['lo'], x['hi'])}; doubling D from {_d(g['from'])} gains {_g(g['gain'])} "
                     f"{_ci(g['lo'], g['hi'])} against a {g['noise_kind']} of {_g(g['noise'])}"
                     + (f"; the last measured step (D={_d(m['from'])} to {_d(m['to'])}) gained {_g(m['change'])} "
                        f"({_g(m['ratio'], 2)}x)" if m else "") + f" (verdict: {g.get('verdict', 'n/a')}).")  # fmt: skip
        if "mape" in h:
            chosen = (f"the law was also chosen there ({h['law_train']}), never seeing D={_d(h['test_size'])}, and "
                      if h.get("nested") else "the law ")  # fmt: skip
            items.append(f"{s['label']}: hold-out check: fitted on D={', '.join(_d(v) for v in h['train_sizes'])}, "
                         f"{chosen}predicts {_g(h['predicted'])} at D={_d(h['test_size'])} where {_g(h['observed'])} was "
                         f"measured ({_pct(h['mape'])} error).")  # fmt: skip
        else:
            items.append(f"{s['label']}: no hold-out check: {h.get('reason', '')}.")
        for w in s["fit"].get("warnings", []):
            items.append(f"{s['label']}: fit warning: {w}")
    blocks.append(("list", items))
    return blocks


def _blocks_epochs(an: Analysis) -> list[tuple]:
    N = an.numbers.get("epochs", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    for dc in N.get("data_constrained", []):
        if dc.get("reason"):
            blocks.append(
                ("p", f"Data-constrained law ({dc['label']}): not fitted: {dc['reason']}.")
            )
            continue
        r = dc["R_D_star"]
        blocks.append(("p", "The data-constrained law of Muennighoff et al. (2023) treats E passes over D examples as "
                       "D' = D·(1 + R*·(1 - exp(-(E-1)/R*))) fresh examples: R* is the number of repeats after which "
                       "repeated data has lost 1 - 1/e of its value. Fitted on the test loss of all epochs settings "
                       "at once (the base model is fixed, so its parameter term folds into E): "
                       f"R* = {_g(r['value'])} {_ci(*r['ci'])}, beta = {_g(dc['beta']['value'])} {_ci(*dc['beta']['ci'])}."))  # fmt: skip
        rows = [[str(e["epochs"]), _g(e["multiplier"]), _ci(e["lo"], e["hi"]),
                 _pct(e["repeat_worth"]) if e["repeat_worth"] is not None else "-",
                 _pct(e["last_epoch_worth"]) if e["last_epoch_worth"] is not None else "-",
                 "yes" if e["studied"] else "no"] for e in dc["effective_data"]]  # fmt: skip
        blocks.append(("table", ["epochs", "effective data D'/D", f"{an.level:.0%} CI", "worth of a repeat (avg)",
                                 "worth of the last epoch", "studied"], rows))  # fmt: skip
        items = [f"{e['epochs']} epochs over D examples are worth {_g(e['multiplier'])}x D fresh examples "
                 f"{_ci(e['lo'], e['hi'])}: each repeated pass is worth {_pct(e['repeat_worth'])} of a fresh one."
                 for e in dc["effective_data"] if e["epochs"] > 1]  # fmt: skip
        blocks.append(("list", items))
        for w in dc["fit"].get("warnings", []):
            blocks.append(("p", f"Fit warning: {w}"))
    if an.figdata.get("effective"):
        blocks.append(("figure", "effective_data", "Effective data D'/D against epochs (data-constrained law, band: "
                       "bootstrap interval of R*); dotted: repeats as good as fresh data; dash-dot: repeats worthless."))  # fmt: skip
    for ec in N.get("equal_compute", []):
        if ec.get("reason"):
            blocks.append(("p", f"Equal-compute comparison: {ec['reason']}."))
            continue
        opts = "; ".join(f"{o['epochs']} epoch(s) over D={_d(o['dataset_size'])}: {_g(o['loss'], 4)} "
                         f"[{_g(o['lo'], 4)}, {_g(o['hi'], 4)}]"
                         for o in ec["options"])  # fmt: skip
        rank = (
            f" (r={_g(ec['lora_r'])})"
            if ec.get("lora_r") is not None and "lora_r" in an.series_cols
            else ""
        )
        verdict = (f"{ec['best_epochs']} epoch(s) is the better spend" + ("" if ec["clear"] else
                   ", though the intervals overlap"))  # fmt: skip
        blocks.append(("p", f"At equal compute{rank}, {_d(ec['examples_seen'])} training examples seen (the largest "
                       f"budget every setting covers without extrapolating), the fitted laws predict test loss: {opts}: "
                       f"{verdict}. When fresh data is limited, `scaling plan RUN_DIR --budget FLOPS --max-data N` "
                       "weighs the two."))  # fmt: skip
    blocks.append(("figure", "loss_vs_compute", "Test loss against training compute, one line per epochs setting: "
                   "at equal compute, the lower line is the better way to spend it."))  # fmt: skip
    if N.get("rank_comparison"):
        rows = []
        for rc in N["rank_comparison"]:
            if rc.get("reason") or "better" not in rc:
                rows.append([str(rc["epochs"]), "n/a", "n/a", rc.get("reason", "a fit failed")])
                continue
            rows.append([str(rc["epochs"]), rc["better"], _g(rc["delta_aic"]),
                         ", ".join(f"{k}: {_g(v)}" for k, v in rc["weights"].items())])  # fmt: skip
        blocks.append(("p", "LoRA rank and data: the multiplicative law L = E + A·r^-alpha·D^-beta (Zhang et al. 2024) "
                       "against the additive L = E + A·r^-alpha + B·D^-beta (Chinchilla form), by AIC (lower is "
                       "better; a difference above 2 is worth noting, above 10 is strong)."))  # fmt: skip
        blocks.append(("table", ["epochs", "better law", "delta AIC", "Akaike weights"], rows))
    elif N.get("rank_comparison_reason"):
        blocks.append(("p", f"Rank comparison: {N['rank_comparison_reason']}."))
    return blocks


def _blocks_lr(an: Analysis) -> list[tuple]:
    N = an.numbers.get("lr", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    if N.get("cells"):
        with_n = "model_params_n" in an.by
        head = [*(["N"] if with_n else []), *(["D", "epochs", "r"] if "lora_r" in an.by else ["D", "epochs"]), "best LR", f"{an.level:.0%} interval",
                "val loss", "spread over LRs", "trials (failed)", "method", "at edge"]  # fmt: skip
        rows = []
        for c in N["cells"]:
            axes = ([n_text(c["model_params_n"])] if with_n else []) + [_d(c["dataset_size"]), _g(c["epochs"])] + (
                [_g(c["lora_r"])] if "lora_r" in an.by else []
            )
            rows.append([*axes, _g(c["lr_best"]), _ci(c["lr_low"], c["lr_high"]), _g(c["val_loss_best"], 4),
                         _g(c["val_loss_spread"]), f"{c['n_trials']} ({c['n_failed']})", c["method"],
                         c["edge"] or "-"])  # fmt: skip
        blocks.append(("p", f"Best LR per cell from the final {SELECT} of its trials: the vertex of a quadratic in "
                       "log LR around the best trial, with a bootstrap interval (or the neighbouring searched LRs). "
                       "'spread' is how much worse the worst searched LR was: how much the LR matters there."))  # fmt: skip
        blocks.append(("table", head, rows))
        blocks.append(("figure", "lr_sensitivity", "Validation loss against learning rate per cell: one panel per "
                       "epochs setting, one line per dataset size; star: the chosen trial."))  # fmt: skip
    for e in N.get("edges", []):
        blocks.append(("p", f"Warning: at D={_d(e['dataset_size'])}, epochs={e['epochs']} the best LR {_g(e['lr_best'])} is "
                       f"{e['advice']}."))  # fmt: skip
    rule = N.get("rule")
    if rule:
        p, ci = rule["params"], rule["ci"]
        text = (f"LR rule (least squares over {rule['n_cells']} cells, edge cells left out): log lr* = {_g(p['c'])} "
                f"+ {_g(p['p'])}·log D" + (f" + {_g(p['q'])}·log epochs" if "q" in rule["terms"] else "")
                + (f" + {_g(p['n'])}·log N" if "n" in rule["terms"] else "")
                + f", i.e. lr* ∝ {rule['lr_proportional_to']}; p {_ci(*ci['p'])}"
                + (f", q {_ci(*ci['q'])}" if "q" in rule["terms"] else "")
                + (f", n {_ci(*ci['n'])}" if "n" in rule["terms"] else "") + ".")  # fmt: skip
        blocks.append(("p", text))
        rows = [[str(int(x["epochs"])), f"{x['factor']:g}x", _d(x["dataset_size"]), _g(x["lr"]), _ci(x["lo"], x["hi"])]
                for x in N["predictions"]]  # fmt: skip
        blocks.append(("table", ["epochs", "D multiple", "D", "predicted best LR", f"{an.level:.0%} prediction interval"],
                       rows))  # fmt: skip
        blocks.append(("figure", "lr_rule", "Best LR per cell (bars: interval; hollow: at the searched edge) and the "
                       "fitted LR rule with its prediction band; diamonds: predictions for unseen sizes."))  # fmt: skip
    elif N.get("rule_reason"):
        blocks.append(("p", f"No LR rule: {N['rule_reason']}."))
    imp = N.get("importance") or {}
    if imp.get("importances"):
        parts = ", ".join(f"{k} {_pct(v)}" for k, v in imp["importances"].items())
        blocks.append(
            (
                "p",
                f"Parameter importances for {SELECT} ({imp['evaluator']}): {parts}. How: {imp['how']}.",
            )
        )
    elif imp:
        blocks.append(
            (
                "p",
                f"Parameter importances: not computed: {imp.get('reason', '')}. ({imp.get('how', '')})",
            )
        )
    return blocks


def build_report(source: Run | pd.DataFrame | Analysis, *, bootstrap: int = BOOTSTRAP, seed: int = 0,
                 level: float = LEVEL) -> Report:  # fmt: skip
    """Analyse (unless given an Analysis) and lay out the report: sections, figures, numbers.

    The Analysis is only read: the report's numbers are a copy of it, plus the figure names and
    any figure or layout error.
    """
    an = (
        source
        if isinstance(source, Analysis)
        else analyse(source, bootstrap=bootstrap, seed=seed, level=level)
    )
    errors = list(an.numbers["errors"])
    figs = _figures(an, errors)
    makers = {"study": _blocks_study, "data": _blocks_data, "epochs": _blocks_epochs, "lr": _blocks_lr,
              "pareto": _blocks_pareto, "emergence": _blocks_emergence, "models": _blocks_models,
              "recommendations": lambda a: [("list", [r["text"] for r in a.numbers.get("recommendations", [])])]}  # fmt: skip
    sections = []
    for sid in SECTIONS:
        if sid == "pareto" and not _shows_pareto(an):
            continue
        if sid == "models" and (an.numbers.get("models") or {}).get("single_model"):
            continue  # one base model: nothing to compare, and the report reads as before
        title, question = _TITLES[sid]
        try:
            blocks = makers[sid](an)
        except Exception as err:  # layout must not lose the report either
            errors.append({"section": f"layout {sid}", "error": f"{type(err).__name__}: {err}"})
            blocks = [("p", f"This section could not be laid out: {type(err).__name__}: {err}")]
        reason = (
            an.numbers.get(sid, {}).get("reason") if isinstance(an.numbers.get(sid), dict) else None
        )
        if (
            reason
            and reason.startswith("this section could not")
            and not any(reason in str(b) for b in blocks)
        ):
            blocks.insert(0, ("p", reason))
        warns = (
            an.numbers.get(sid, {}).get("warnings", [])
            if isinstance(an.numbers.get(sid), dict)
            else []
        )
        if warns:
            blocks.append(("list", [f"warning: {w}" for w in warns]))
        sections.append(
            (f"s-{sid}", title, question, [b for b in blocks if b[0] != "figure" or b[1] in figs])
        )
    if errors:
        sections[-1][3].append(("list", [f"error in {e['section']}: {e['error']}" for e in errors]))
    name = (an.numbers.get("study", {}).get("spec") or {}).get("name") or (
        an.run_dir.name if an.run_dir else "study"
    )
    numbers = {**an.numbers, "errors": errors, "figures": {k: f"{k}.png" for k in figs}}
    return Report(title=f"Scaling report: {name}", sections=sections, figures=figs, numbers=numbers)


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    json: Path
    figures: tuple[Path, ...]


def write_report(source: Run | Analysis, *, out: str | Path | None = None, bootstrap: int = BOOTSTRAP, seed: int = 0,
                 level: float = LEVEL) -> ReportPaths:  # fmt: skip
    """Write report.html, report.md (+ PNGs beside it) and report.json to ``out`` [run_dir/report].

    ``source``: a Run (`scaling.records.read_run`) or an `analyse` result. Without ``out`` the
    report goes to the run's folder, so a Run with no run_dir needs an ``out``.
    """
    run = source.run if isinstance(source, Analysis) else source
    if not isinstance(run, Run):
        raise ValueError(f"write_report takes a Run or an Analysis, got {type(source).__name__}")
    if out is None and run.run_dir is None:
        raise ValueError("write_report: out is required when the Run has no run_dir")
    rep = build_report(source, bootstrap=bootstrap, seed=seed, level=level)
    out_dir = Path(out) if out is not None else Path(run.run_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    for name, png in rep.figures.items():
        p = out_dir / f"{name}.png"
        p.write_bytes(png)
        figs.append(p)
    paths = ReportPaths(html=out_dir / "report.html", markdown=out_dir / "report.md", json=out_dir / "report.json",
                        figures=tuple(figs))  # fmt: skip
    for path, text in (
        (paths.json, rep.to_json()),
        (paths.markdown, rep.to_markdown()),
        (paths.html, rep.to_html()),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths
