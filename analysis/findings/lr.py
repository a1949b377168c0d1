"""Section 4, the best learning rate: per-cell optimum, sensitivity, the LR rule and its
predictions, and Optuna parameter importances."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.findings.common import LR_PREDICT_AT, MIN_TRIALS_IMPORTANCE, Analysis, Finding
from analysis.lr_trend import LRRule, lr_rule
from analysis.selection import series_label
from analysis.table import SELECT, _py

__all__ = ["lr_finding"]


def _importances(an: Analysis) -> dict[str, Any]:
    """Optuna parameter importances over all complete trials, in one in-memory study."""
    t = an.trials
    done = (
        t[
            (t["status"] == "ok")
            & np.isfinite(pd.to_numeric(t.get(SELECT), errors="coerce").astype(float))
        ]
        if len(t) and SELECT in t
        else t.iloc[0:0]
    )
    out: dict[str, Any] = {
        "how": "one in-memory Optuna study built from every complete trial of every cell "
               "(params dataset_size, epochs, learning_rate, and lora_r when it varies; value = final "
               f"{SELECT}); each cell's own Optuna study has only learning_rate, whose importance is trivially 1",
        "n_trials": int(len(done)),
    }  # fmt: skip
    if len(done) < MIN_TRIALS_IMPORTANCE:
        out["reason"] = (
            f"{len(done)} complete trials; importances need at least {MIN_TRIALS_IMPORTANCE}"
        )
        return out
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    params = {}
    for c, log, integer in (("dataset_size", True, False), ("epochs", False, True), ("learning_rate", True, False),
                            ("lora_r", True, True)):  # fmt: skip
        v = pd.to_numeric(done[c], errors="coerce").astype(float)
        if v.isna().any() or v.nunique() < 2:
            continue
        lo, hi = float(v.min()), float(v.max())
        params[c] = (
            IntDistribution(int(lo), int(hi), log=log)
            if integer
            else FloatDistribution(lo, hi, log=log),
            integer,
        )
    out["params"] = list(params)
    if len(params) < 2:
        out["reason"] = (
            f"only {list(params)} vary across the complete trials; an importance needs two or more"
        )
        return out
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize")
        for r in done.itertuples():
            ps = {
                c: (int(getattr(r, c)) if integer else float(getattr(r, c)))
                for c, (_, integer) in params.items()
            }
            study.add_trial(create_trial(params=ps, distributions={c: d for c, (d, _) in params.items()},
                                         value=float(getattr(r, SELECT))))  # fmt: skip
        try:
            import sklearn  # noqa: F401  (fANOVA, Optuna's default evaluator, needs it)

            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=an.seed)
            out["evaluator"] = "fANOVA (Optuna's default)"
        except ImportError:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            out["evaluator"] = (
                "PED-ANOVA (Optuna's; fANOVA, the default, needs scikit-learn, which is not installed)"
            )
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    out["importances"] = {k: float(v) for k, v in imp.items()}
    return out


def lr_finding(an: Analysis) -> Finding:
    """Section 4: the chosen LR per cell, edges, the LR rule with its predictions, importances."""
    figs: dict[str, Any] = {}
    rule: LRRule | None = None
    out: dict[str, Any] = {"metric": SELECT, "cells": [], "edges": [], "predictions": []}
    lr_range = an.spec.get("learning_rate") or {}
    out["searched_range"] = [lr_range.get("low"), lr_range.get("high")] if lr_range else None
    best = an.best
    t = an.trials
    trials_fig = pd.DataFrame(columns=["series", "dataset_size", "learning_rate", "value", "best"])
    if best is None or best.empty:
        out["reason"] = "no trials to choose a learning rate from"
        figs["lr"] = {"trials": trials_fig, "best": None, "curves": [], "predictions": []}
        if "importance" in an.sections:
            out["importance"] = _importances(an)
        return Finding(numbers=out, figures=figs, rule=rule)
    labels = {s["label"]: i for i, s in enumerate(an.series())}
    chosen = set(best["trial_id_best"].dropna())
    if len(t):
        tf = t[t["status"] != "pruned"].copy()
        tf["value"] = (
            pd.to_numeric(tf.get(SELECT), errors="coerce").astype(float).where(tf["status"] == "ok")
        )
        tf["series"] = [
            series_label({c: float(getattr(r, c)) for c in an.series_cols})
            for r in tf.itertuples()
        ]
        tf["best"] = tf["trial_id"].isin(chosen)
        trials_fig = tf[["series", "dataset_size", "learning_rate", "value", "best"]].astype(
            {"dataset_size": float, "learning_rate": float}
        )
    for b in best.itertuples():
        key = {c: float(getattr(b, c)) for c in an.series_cols}
        cell_vals = trials_fig[
            (trials_fig["series"] == series_label(key))
            & (trials_fig["dataset_size"] == float(b.dataset_size))
        ]["value"]
        spread = (
            float(cell_vals.max() - cell_vals.min()) if cell_vals.notna().sum() >= 2 else math.nan
        )
        row = {c: _py(getattr(b, c)) for c in an.by}
        row.update({"lr_best": b.lr_best, "lr_low": b.lr_low, "lr_high": b.lr_high, "val_loss_best": b.metric_best,
                    "val_loss_spread": spread, "n_trials": int(b.n_trials), "n_failed": int(b.n_failed),
                    "trial_id_best": _py(b.trial_id_best), "at_edge": bool(b.at_edge), "edge": b.edge,
                    "edge_kind": b.edge_kind, "method": b.method})  # fmt: skip
        out["cells"].append(row)
        if b.at_edge:
            out["edges"].append(
                {
                    **{c: row[c] for c in an.by},
                    "edge": b.edge,
                    "edge_kind": b.edge_kind,
                    "lr_best": b.lr_best,
                    "advice": b.advice,
                }
            )
    # the LR rule
    bf = best.copy()
    bf["series"] = [
        series_label({c: float(getattr(r, c)) for c in an.series_cols}) for r in bf.itertuples()
    ]
    bf["colour"] = [labels.get(s, 0) for s in bf["series"]]
    curves, preds = [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rule = lr_rule(best, level=an.level)
        out["rule"] = rule.to_dict()
        out["rule"]["lr_proportional_to"] = f"D^{rule.params_['p']:.3g}" + (
            f" x epochs^{rule.params_['q']:.3g}" if "q" in rule.terms_ else ""
        ) + (f" x N^{rule.params_['n']:.3g}" if "n" in rule.terms_ else "")
    except ValueError as err:
        rule = None
        out["rule"] = None
        out["rule_reason"] = str(err)
    if rule is not None:
        dmax = float(best["dataset_size"].astype(float).max())
        dmin = float(best["dataset_size"].astype(float).min())
        grid = np.geomspace(dmin, max(LR_PREDICT_AT) * dmax, 50)
        for s in an.series():
            e = s["key"]["epochs"]
            # the series' other rule axes (the base model's N with a model axis)
            more = {a: s["key"][a] for a in rule.axes if a in s["key"] and a not in ("dataset_size", "epochs")}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = rule.predict(dataset_size=grid, epochs=e, **more)
                lo, hi = rule.predict_interval(dataset_size=grid, epochs=e, **more)
            curves.append(
                {
                    "label": s["label"],
                    "colour": labels[s["label"]],
                    "x": grid,
                    "y": y,
                    "lo": lo,
                    "hi": hi,
                }
            )
            for f in LR_PREDICT_AT:
                d = f * dmax
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lr = rule.predict(dataset_size=d, epochs=e, **more)
                    plo, phi = rule.predict_interval(dataset_size=d, epochs=e, **more)
                p = {
                    "series": s["label"],
                    "epochs": e,
                    **more,
                    "factor": f,
                    "dataset_size": d,
                    "lr": lr,
                    "lo": plo,
                    "hi": phi,
                }
                out["predictions"].append(p)
                preds.append({**p, "colour": labels[s["label"]]})
    figs["lr"] = {"trials": trials_fig, "best": bf, "curves": curves, "predictions": preds}
    if "importance" in an.sections:
        out["importance"] = _importances(an)
    return Finding(numbers=out, figures=figs, rule=rule)
