"""Section 3, data or epochs: the data-constrained law (what a repeated epoch is worth), loss
against compute, and multiplicative vs Chinchilla across LoRA ranks."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from analysis.findings.common import DC_FIXED, Analysis, Finding, _band
from analysis.fit import FitError, LawFit, compare, fit_law
from analysis.selection import series_label, series_points
from analysis.table import LOSS

__all__ = ["dc_multiplier", "epochs_finding"]


def dc_multiplier(epochs: Any, r_star: Any) -> np.ndarray:
    """Effective data per unique example after ``epochs`` passes, D'/U (Muennighoff et al. 2023, Eq. 5).

    1 + R*(1 - exp(-(epochs - 1)/R*)): 1 for one epoch, -> epochs as R* -> inf
    (repeats as good as fresh data), -> 1 + R* for many epochs.
    """
    e, r = np.asarray(epochs, float), np.asarray(r_star, float)
    return 1.0 + r * -np.expm1(-(np.maximum(e, 1.0) - 1.0) / r)


def epochs_finding(an: Analysis) -> Finding:
    """Section 3: the data-constrained law, loss against compute, and the rank comparison."""
    figs: dict[str, Any] = {"effective": None, "compute": []}
    dc_fits: dict[str, LawFit] = {}
    out: dict[str, Any] = {"data_constrained": [], "rank_comparison": []}
    pts = an.points
    if pts.empty or LOSS not in pts:
        out["reason"] = "no completed trial has a test loss"
        return Finding(numbers=out, figures=figs, dc_fits=dc_fits)
    pts = pts[np.isfinite(pts[LOSS].astype(float)) & (pts[LOSS].astype(float) > 0)]
    n_epochs = pts["epochs"].nunique()
    for s in an.series():
        sp = an.series_points(s["key"])
        x = (
            sp["train_flops"].to_numpy(float)
            if sp["train_flops"].notna().any()
            else sp["examples_seen"].to_numpy(float)
        )
        figs["compute"].append({"label": s["label"], "x": x, "y": sp[LOSS].to_numpy(float)})
    figs["compute_x"] = "flops" if pts["train_flops"].notna().any() else "examples"
    if n_epochs < 2:
        out["reason"] = (
            f"the study has {n_epochs} epochs setting(s) with results; comparing repeated epochs "
            "with fresh data needs at least 2"
        )
    else:
        # one fit per base model (with a model axis) and LoRA rank (with a rank axis): N is constant
        # within a group, so its term folds into E
        gcols = [c for c in an.series_cols if c != "epochs"]
        keys = pts[gcols].astype(float).drop_duplicates().sort_values(gcols).to_dict("records") if gcols else [{}]
        groups = [(series_label(k) if k else "all ranks", series_points(pts, k)) for k in keys]
        for label, g in groups:
            entry: dict[str, Any] = {"label": label, "law": "data_constrained", "x": ["N (constant)", "examples seen = D x epochs", "unique examples = D"],
                                     "fixed": DC_FIXED, "n_points": int(len(g))}  # fmt: skip
            out["data_constrained"].append(entry)
            if g["epochs"].nunique() < 2 or g["dataset_size"].nunique() < 2 or len(g) < 6:
                entry["reason"] = (
                    f"{g['epochs'].nunique()} epochs setting(s), {g['dataset_size'].nunique()} size(s), "
                    f"{len(g)} points: the law's 4 free parameters need >= 2 of each and >= 6 points"
                )
                continue
            data = {"N": np.ones(len(g)), "examples_seen": g["examples_seen"].to_numpy(float),
                    "dataset_size": g["dataset_size"].to_numpy(float), LOSS: g[LOSS].to_numpy(float)}  # fmt: skip
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = fit_law(law="data_constrained", data=data, x=["N", "examples_seen", "dataset_size"], y=LOSS,
                                  bootstrap=an.bootstrap, seed=an.seed, level=an.level, fixed=DC_FIXED)  # fmt: skip
            except FitError as err:
                entry["reason"] = f"the data-constrained fit failed: {err}"
                continue
            dc_fits[label] = fit
            entry["fit"] = fit.to_dict()
            r = fit.params_["R_D_star"]
            r_lo, r_hi = fit.ci_.get("R_D_star", (math.nan, math.nan))
            entry["R_D_star"] = {"value": r, "ci": [r_lo, r_hi]}
            entry["beta"] = {
                "value": fit.params_["beta"],
                "ci": list(fit.ci_.get("beta", (math.nan, math.nan))),
            }
            rows = []
            studied = sorted(int(e) for e in g["epochs"].unique())
            for e in sorted(set(studied) | {1}):
                m = float(dc_multiplier(e, r))
                lo, hi = (
                    (float(dc_multiplier(e, r_lo)), float(dc_multiplier(e, r_hi)))
                    if math.isfinite(r_lo)
                    else (math.nan, math.nan)
                )
                prev = float(dc_multiplier(e - 1, r)) if e > 1 else math.nan
                rows.append({
                    "epochs": e, "studied": e in studied, "multiplier": m, "lo": lo, "hi": hi,
                    "repeat_worth": (m - 1.0) / (e - 1.0) if e > 1 else None,
                    "last_epoch_worth": m - prev if e > 1 else None,
                })  # fmt: skip
            entry["effective_data"] = rows
            if figs["effective"] is None:
                ee = np.linspace(1.0, max(studied + [2]), 60)
                figs["effective"] = {
                    "rows": [rw for rw in rows if rw["studied"]],
                    "curve": {"epochs": ee, "multiplier": dc_multiplier(ee, r),
                              "lo": dc_multiplier(ee, r_lo) if math.isfinite(r_lo) else np.full_like(ee, np.nan),
                              "hi": dc_multiplier(ee, r_hi) if math.isfinite(r_hi) else np.full_like(ee, np.nan)},
                }  # fmt: skip
    _equal_compute(an, out)
    # several LoRA ranks: multiplicative (Zhang et al. 2024) vs additive (Chinchilla form) by AIC
    ranks = sorted(pts["lora_r"].dropna().unique())
    if len(ranks) < 2:
        out["rank_comparison_reason"] = (
            f"the study has {len(ranks)} LoRA rank(s); comparing laws across ranks needs 2"
        )
        return Finding(numbers=out, figures=figs, dc_fits=dc_fits)
    with_n = "model_params_n" in an.series_cols
    for n, e in [(n, e) for n in (sorted(pts["model_params_n"].unique()) if with_n else [None])
                 for e in sorted(pts["epochs"].unique())]:  # fmt: skip
        g = pts[(pts["epochs"] == e) & ((pts["model_params_n"] == n) if with_n else True)]
        entry = {"epochs": int(e), "x": ["lora_r", "dataset_size"], "n_points": int(len(g)),
                 **({"model_params_n": float(n)} if with_n else {})}  # fmt: skip
        out["rank_comparison"].append(entry)
        if g["lora_r"].nunique() < 2 or g["dataset_size"].nunique() < 2 or len(g) < 7:
            entry["reason"] = "needs >= 2 ranks, >= 2 sizes and >= 7 points at this epochs setting"
            continue
        data = {"lora_r": g["lora_r"].to_numpy(float), "dataset_size": g["dataset_size"].to_numpy(float),
                LOSS: g[LOSS].to_numpy(float)}  # fmt: skip
        fits = {}
        for law in ("multiplicative", "chinchilla"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fits[law] = fit_law(
                        law=law, data=data, x=["lora_r", "dataset_size"], y=LOSS, seed=an.seed
                    )
                entry[law] = fits[law].to_dict()
            except FitError as err:
                entry[law] = {"reason": str(err)}
        if len(fits) == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = compare(fits)
            entry["better"] = str(table["name"].iloc[0])
            entry["delta_aic"] = float(table["delta_aic"].iloc[1])
            entry["weights"] = {
                str(n): float(w) for n, w in zip(table["name"], table["weight"], strict=True)
            }
    return Finding(numbers=out, figures=figs, dc_fits=dc_fits)



def _equal_compute(an: Analysis, out: dict[str, Any]) -> None:
    """At one compute budget inside every setting's fitted range: which epochs setting wins?

    S example-passes buy D = S / epochs for each epochs setting; S is the
    largest value at which every setting's D lies within its fitted sizes
    (no extrapolation). Per LoRA rank when several.
    """
    out["equal_compute"] = []
    groups: dict[Any, list] = {}
    for s in an.series():
        if s["label"] in an.loss_fits:
            groups.setdefault((s["key"].get("model_params_n"), s["key"].get("lora_r")), []).append(s)
    for (n, rank), ss in groups.items():
        if len(ss) < 2:
            continue
        fits = [(float(s["key"]["epochs"]), an.loss_fits[s["label"]], s["label"]) for s in ss]
        lo = max(e * f.x_range_["dataset_size"][0] for e, f, _ in fits)
        hi = min(e * f.x_range_["dataset_size"][1] for e, f, _ in fits)
        entry: dict[str, Any] = {"lora_r": rank, "examples_seen": hi, **({"model_params_n": n} if n is not None else {})}
        out["equal_compute"].append(entry)
        if lo > hi:
            entry["reason"] = (
                "the epochs settings' fitted sizes do not overlap in examples seen (D x epochs)"
            )
            continue
        rows = []
        for e, f, label in fits:
            m, l_, h_ = _band(f, np.array([hi / e]), "dataset_size", an.level)
            rows.append({"series": label, "epochs": int(e), "dataset_size": hi / e, "loss": float(m[0]),
                         "lo": float(l_[0]), "hi": float(h_[0])})  # fmt: skip
        entry["options"] = rows
        best = min(rows, key=lambda r: r["loss"])
        entry["best_epochs"] = best["epochs"]
        rest = [r for r in rows if r is not best]
        entry["clear"] = bool(all(math.isfinite(r["lo"]) and r["lo"] > best["hi"] for r in rest))
