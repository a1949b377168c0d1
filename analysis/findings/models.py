"""Section 6, the base model as an axis: test loss against N and D jointly, which base model to
fine-tune at the target D, and whether abilities jump with N.

With two or more base models (axes.model; each row's model_params_n is the base's non-embedding
parameter count N), per epochs setting (and LoRA rank when it varies):

1. two joint laws on the test loss of the configs chosen on validation, each with bootstrap
   intervals (analysis.fit), compared by AIC:
     multiplicative  L = E + A N^-alpha D^-beta  (Zhang et al. 2024, arXiv:2402.17193, Eq. 1: the
                     fine-tuning law, where model size and data multiply);
     additive        L = E + A N^-alpha + B D^-beta  (Hoffmann et al. 2022's form);
2. a hold-out check: each law fitted on the smaller dataset sizes predicts every model's loss at
   the largest; does it order the models as measured?
3. the ranking of the base models by the AIC-preferred law's predicted test loss at the target D
   (the study's ``target_dataset_size`` fact, else its largest D), each with its bootstrap
   interval and the share of bootstrap draws in which it is best;
4. jump verdicts against N (analysis.mirage over the models at each D: a sigmoid in log N against
   a line, checked against the continuous metrics; MIN_MODELS_JUMP (5) models are needed), and per
   model the smallest D whose test exact match reaches EM_LEVEL (measured, with its binomial SE).

No torch, ray or scaling here: numbers only.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.findings.common import CONTINUOUS, Analysis, Finding
from analysis.fit import FitError, LawFit, compare, fit_law, holdout
from analysis.mirage import check_mirage
from analysis.selection import MODEL_AXIS, n_text, series_label, series_points
from analysis.table import LOSS, _py

__all__ = ["JOINT_LAWS", "EM_LEVEL", "joint_fits", "models_finding", "rank_models"]

JOINT_LAWS = ("multiplicative", "chinchilla")  # laws.py's names of the two forms above
LAW_TEXT = {"multiplicative": "L = E + A·N^-alpha·D^-beta (multiplicative, Zhang et al. 2024)",
            "chinchilla": "L = E + A·N^-alpha + B·D^-beta (additive, Chinchilla form)"}  # fmt: skip
X = [MODEL_AXIS, "dataset_size"]
EM_LEVEL = 0.5  # "exact match appears": the smallest D where test exact match reaches this
MIN_MODELS_JUMP = 5  # analysis.jumps tells a jump from a trend with 5 x values or more


def _data(pts: pd.DataFrame) -> dict[str, np.ndarray]:
    return {MODEL_AXIS: pts[MODEL_AXIS].to_numpy(float), "dataset_size": pts["dataset_size"].to_numpy(float),
            LOSS: pts[LOSS].to_numpy(float)}  # fmt: skip


def _usable(pts: pd.DataFrame) -> pd.DataFrame:
    y = pd.to_numeric(pts[LOSS], errors="coerce").astype(float)
    n = pd.to_numeric(pts[MODEL_AXIS], errors="coerce").astype(float)
    return pts[np.isfinite(y) & (y > 0) & np.isfinite(n) & (n > 0)]


def _need(pts: pd.DataFrame, law: str) -> str | None:
    """Why ``law`` cannot be fitted to these points (None: it can)."""
    k = 4 if law == "multiplicative" else 5
    n_n, n_d = pts[MODEL_AXIS].nunique(), pts["dataset_size"].nunique()
    if n_n < 2 or n_d < 2 or len(pts) < k + 2:
        return (f"{n_n} model(s), {n_d} dataset size(s), {len(pts)} points: the {law} law's {k} parameters "
                f"need >= 2 models, >= 2 sizes and >= {k + 2} points")  # fmt: skip
    return None


def joint_fits(pts: pd.DataFrame, *, bootstrap: int, seed: int, level: float) -> tuple[dict[str, Any], dict[str, LawFit]]:
    """Both joint laws on ``pts`` (columns model_params_n, dataset_size, test_eval_loss): their
    numbers (params with intervals, fit metrics; or why not) and the fits, plus the AIC comparison."""
    out: dict[str, Any] = {"laws": {}}
    fits: dict[str, LawFit] = {}
    for law in JOINT_LAWS:
        why = _need(pts, law)
        if why:
            out["laws"][law] = {"reason": why}
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fit_law(law=law, data=_data(pts), x=X, y=LOSS, bootstrap=bootstrap, seed=seed, level=level)
        except FitError as err:
            out["laws"][law] = {"reason": f"the {law} fit failed: {err}"}
            continue
        fits[law] = f
        d = f.to_dict()
        out["laws"][law] = {"form": LAW_TEXT[law], "params": d["params"], "ci": d["ci"], "param_text": d["param_text"],
                            "param_status": d["param_status"], "metrics": d["metrics"], "warnings": d["warnings"],
                            "n_points": int(len(pts))}  # fmt: skip
    if len(fits) == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = compare(fits)
        out["better"] = str(table["name"].iloc[0])
        out["delta_aic"] = float(table["delta_aic"].iloc[1])
        out["weights"] = {str(n): float(w) for n, w in zip(table["name"], table["weight"], strict=True)}
    elif fits:
        out["better"] = next(iter(fits))
    return out, fits


def _names(pts: pd.DataFrame) -> dict[float, str]:
    """N -> the base model's name (the first name seen with that N)."""
    if "model" not in pts:
        return {}
    return {float(n): str(g["model"].dropna().iloc[0]) for n, g in pts.groupby(MODEL_AXIS) if g["model"].notna().any()}


def rank_models(fit: LawFit, models: dict[float, str], dataset_size: float, level: float) -> list[dict[str, Any]]:
    """The base models ordered by ``fit``'s predicted test loss at ``dataset_size``, best first, each
    with its bootstrap interval and the share of bootstrap draws in which it predicts the lowest
    loss (NaN without draws); ``clear`` says its interval lies wholly below the next model's."""
    ns = np.array(sorted(models), dtype=float)
    frame = {MODEL_AXIS: ns, "dataset_size": np.full(ns.shape, float(dataset_size))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target D may lie beyond the fitted sizes: said in the text
        mid = fit.predict(frame)
        if fit.draws_.shape[0]:
            lo, hi = fit.predict_interval(frame, level=level)
            draws = np.exp(fit.law_.log_predict(fit.draw_thetas_, np.column_stack([frame[c] for c in X])))
            p_best = np.bincount(np.argmin(draws, axis=1), minlength=ns.size) / draws.shape[0]
        else:
            lo = hi = p_best = np.full(ns.shape, np.nan)
    order = np.argsort(mid, kind="stable")
    rows = []
    for rank, i in enumerate(order, start=1):
        nxt = order[rank] if rank < len(order) else None
        rows.append({"rank": rank, "model": models[ns[i]], MODEL_AXIS: float(ns[i]), "dataset_size": float(dataset_size),
                     "loss": float(mid[i]), "lo": float(lo[i]), "hi": float(hi[i]), "p_best": float(p_best[i]),
                     "clear": bool(nxt is not None and math.isfinite(hi[i]) and hi[i] < lo[nxt])})  # fmt: skip
    return rows


def _holdout(pts: pd.DataFrame, law: str, models: dict[float, str], seed: int) -> dict[str, Any]:
    """``law`` fitted on the sizes below the largest predicts every model at the largest: the error and
    whether it orders the models as measured (mean over seeds per model)."""
    sizes = sorted(pts["dataset_size"].unique())
    dmax = float(sizes[-1])
    train = pts[pts["dataset_size"] < dmax]
    why = _need(train, law) if len(sizes) >= 3 else f"{len(sizes)} sizes; the hold-out check needs >= 3"
    if why:
        return {"reason": f"fit on D < {dmax:,.0f}: {why}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = holdout(law=law, data=_data(pts), x=X, y=LOSS, split_on="dataset_size", threshold=dmax,
                        bootstrap=0, seed=seed)  # fmt: skip
    except FitError as err:
        return {"reason": f"the hold-out fit failed: {err}"}
    test = pts[pts["dataset_size"] >= dmax]
    got = pd.DataFrame({"n": test[MODEL_AXIS].to_numpy(float), "pred": h.predicted, "obs": h.observed})
    per = got.groupby("n").mean().sort_index()
    pred_order = [models.get(n, n_text(n)) for n in per["pred"].sort_values(kind="stable").index]
    obs_order = [models.get(n, n_text(n)) for n in per["obs"].sort_values(kind="stable").index]
    return {"law": law, "train_sizes": [int(v) for v in sizes[:-1]], "test_size": int(dmax), "mape": h.mape,
            "predicted_order": pred_order, "observed_order": obs_order, "order_agrees": pred_order == obs_order,
            "per_model": [{"model": models.get(n, n_text(n)), MODEL_AXIS: n, "predicted": float(r.pred),
                           "observed": float(r.obs)} for n, r in per.iterrows()]}  # fmt: skip


def _target_size(an: Analysis, pts: pd.DataFrame) -> tuple[float, str]:
    t = (an.run.facts or {}).get("target_dataset_size")
    if isinstance(t, int | float) and t > 0:
        return float(t), "the study's target dataset size"
    return float(pts["dataset_size"].max()), "the largest dataset size studied (no target_dataset_size was given)"


def _first_d(pts: pd.DataFrame, n_test: int | None) -> list[dict[str, Any]]:
    """Per model: the smallest D whose test exact match (mean over seeds) reaches EM_LEVEL."""
    col = "test_exact_match"
    if col not in pts or not pts[col].notna().any():
        return []
    out = []
    for n, g in pts.groupby(MODEL_AXIS):
        em = g.groupby("dataset_size")[col].mean().dropna().sort_index()
        hit = em[em >= EM_LEVEL]
        d = float(hit.index[0]) if len(hit) else None
        p = float(hit.iloc[0]) if len(hit) else float(em.iloc[-1])
        se = math.sqrt(p * (1 - p) / n_test) if n_test else None
        out.append({MODEL_AXIS: float(n), "model": str(g["model"].iloc[0]) if "model" in g else n_text(n),
                    "first_d": d, "exact_match": p, "se": se, "largest_d": float(em.index[-1]),
                    "exact_match_by_d": {str(int(k)): float(v) for k, v in em.items()}})  # fmt: skip
    return out


def _jumps_vs_n(an: Analysis, pts: pd.DataFrame, n_test: int | None) -> list[dict[str, Any]]:
    """Jump verdicts of exact match against N, at every D (analysis.mirage over the models)."""
    out = []
    if "test_exact_match" not in pts or not pts["test_exact_match"].notna().any():
        return out
    cont = [m for m in CONTINUOUS if f"test_{m}" in pts and pts[f"test_{m}"].notna().any()]
    for d, g in pts.groupby("dataset_size"):
        entry: dict[str, Any] = {"dataset_size": float(d), "models": int(g[MODEL_AXIS].nunique())}
        out.append(entry)
        if g[MODEL_AXIS].nunique() < MIN_MODELS_JUMP:
            entry.update(verdict="insufficient", mirage="insufficient",
                         reason=f"{g[MODEL_AXIS].nunique()} models at this D; a jump against N needs {MIN_MODELS_JUMP}")  # fmt: skip
            continue
        res = check_mirage(g, MODEL_AXIS, discontinuous="exact_match", continuous=cont, split="test", agg="mean",
                           n_problems=n_test, bounds={"exact_match": (0.0, 1.0), "token_accuracy": (0.0, 1.0)},
                           random_state=an.seed)  # fmt: skip
        jump = res.results["exact_match"]
        entry.update(verdict=jump.verdict, interval=list(jump.interval) if jump.interval else None,
                     mirage=res.verdict, reason=res.reason,
                     continuous={k: r.verdict for k, r in res.results.items() if k != "exact_match"})  # fmt: skip
    return out


def models_finding(an: Analysis) -> Finding:
    """Section 6: joint L(N, D) laws, the hold-out ranking check, the ranking at the target D, jumps in N."""
    out: dict[str, Any] = {"x": X, "y": LOSS, "series": []}
    pts = an.points
    if MODEL_AXIS not in an.by:
        ns = (pd.to_numeric(an.trials[MODEL_AXIS], errors="coerce").dropna().unique()
              if MODEL_AXIS in an.trials else [])  # fmt: skip
        out["single_model"] = True  # the report leaves the section out: it has nothing to compare
        out["reason"] = ("the study has one base model" + (f" (N = {n_text(ns[0])})" if len(ns) else "")
                         + "; comparing base models needs two or more (axes.model) with N recorded")  # fmt: skip
        return Finding(numbers=out)
    if pts.empty or LOSS not in pts:
        out["reason"] = "no completed trial has a test loss"
        return Finding(numbers=out)
    pts = _usable(pts)
    ev = (an.spec or {}).get("eval") or {}
    n_test = int(ev["test_size"]) if isinstance(ev, dict) and isinstance(ev.get("test_size"), int | float) else None
    others = [c for c in an.series_cols if c != MODEL_AXIS]
    keys = pts[others].astype(float).drop_duplicates().sort_values(others).to_dict("records") if others else [{}]
    models = _names(pts)
    out["models"] = [{"model": models.get(n, n_text(n)), MODEL_AXIS: n, "n_text": n_text(n)} for n in sorted(models)]
    target, target_why = _target_size(an, pts)
    out["target"] = {"dataset_size": target, "why": target_why}
    fig: list[dict[str, Any]] = []  # the first series': per model, points and the preferred law's curve
    for key in keys:
        sp = series_points(pts, key) if key else pts
        entry: dict[str, Any] = {"label": series_label(key) if key else "all", **{c: _py(v) for c, v in key.items()},
                                 "n_points": int(len(sp))}  # fmt: skip
        out["series"].append(entry)
        laws, fits = joint_fits(sp, bootstrap=an.bootstrap, seed=an.seed, level=an.level)
        entry.update(laws)
        entry["holdout"] = {law: _holdout(sp, law, models, an.seed) for law in fits}
        better = laws.get("better")
        if better in fits:
            beyond = target > float(sp["dataset_size"].max()) * (1 + 1e-9)
            rows = rank_models(fits[better], models, target, an.level)
            at = sp[np.isclose(sp["dataset_size"].astype(float), target)]
            by_model = at.groupby(MODEL_AXIS)[LOSS]
            measured, spread, runs = by_model.mean(), by_model.std(ddof=1), by_model.count()
            for r in rows:  # the measured loss beside the prediction where the target D was run
                n = r[MODEL_AXIS]
                r["measured"] = float(measured[n]) if n in measured.index else None
                r["measured_runs"] = int(runs[n]) if n in runs.index else 0  # seeds of the chosen config
                # its standard error over those seeds; None from one run (no interval)
                r["measured_se"] = (float(spread[n] / np.sqrt(runs[n])) if n in runs.index and runs[n] >= 2
                                    and np.isfinite(spread[n]) else None)  # fmt: skip
            entry["ranking"] = {"law": better, "dataset_size": target, "extrapolated": bool(beyond), "rows": rows,
                                "measured_order": [models[n] for n in measured.sort_values(kind="stable").index]}  # fmt: skip
            if not fig:
                fig = _curves(fits[better], sp, models, an.level)
        else:
            entry["ranking"] = {"reason": "no joint law could be fitted"}
        entry["first_exact_match"] = _first_d(sp, n_test)
        entry["jumps_vs_n"] = _jumps_vs_n(an, sp, n_test)
    return Finding(numbers=out, figures={"models": fig})


def _curves(fit: LawFit, pts: pd.DataFrame, models: dict[float, str], level: float) -> list[dict[str, Any]]:
    """Per base model: its measured points and the joint law at its N over D, with the bootstrap band
    (plots.plot_loss_vs_data's series)."""
    d_lo, d_hi = float(pts["dataset_size"].min()), float(pts["dataset_size"].max())
    grid = np.geomspace(d_lo, d_hi, 60)
    out = []
    for n in sorted(models):
        g = pts[pts[MODEL_AXIS] == n]
        frame = {MODEL_AXIS: np.full(grid.shape, n), "dataset_size": grid}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mid = fit.predict(frame)
            lo, hi = fit.predict_interval(frame, level=level) if fit.draws_.shape[0] else (mid * np.nan, mid * np.nan)
        out.append({"label": f"{models[n]} (N={n_text(n)})", "x": g["dataset_size"].to_numpy(float),
                    "y": g[LOSS].to_numpy(float), "grid": grid, "fit": mid, "lo": lo, "hi": hi, "fitted_max": d_hi})  # fmt: skip
    return out
