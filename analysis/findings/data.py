"""Section 2, loss vs data: a power law per series, its exponent interval, a 10x extrapolation,
what doubling D buys against the noise, and a hold-out check."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.findings.common import (
    EXTRAPOLATE,
    MIN_SIZES_HOLDOUT,
    MIN_SIZES_LAW,
    Analysis,
    Finding,
    _band,
)
from analysis.fit import FitError, LawFit, fit_law, holdout
from analysis.table import LOSS, _py

__all__ = ["data_finding"]


def _seed_noise(pts: pd.DataFrame, y: str) -> tuple[float, int]:
    """Pooled within-size standard deviation of y (seeds of one config), and its dof."""
    ss, dof = 0.0, 0
    for _, g in pts.groupby("dataset_size"):
        v = g[y].to_numpy(float)
        v = v[np.isfinite(v)]
        if v.size >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += v.size - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)



def data_finding(an: Analysis) -> Finding:
    """Section 2: per series, the power law of test loss on D, its extrapolation, gain and hold-out."""
    loss: list[dict[str, Any]] = []
    loss_fits: dict[str, LawFit] = {}
    out: dict[str, Any] = {"y": LOSS, "law": "power: L(D) = E + A * D^-alpha", "series": []}
    if an.points.empty or LOSS not in an.points:
        out["reason"] = "no completed trial has a test loss, so no law can be fitted"
        return Finding(numbers=out, figures={"loss": loss}, loss_fits=loss_fits)
    for s in an.series():
        pts = an.series_points(s["key"])
        pts = pts[np.isfinite(pts[LOSS].astype(float)) & (pts[LOSS].astype(float) > 0)]
        sizes = sorted(pts["dataset_size"].unique())
        entry: dict[str, Any] = {
            "label": s["label"], **{c: _py(v) for c, v in s["key"].items()},
            "sizes": [int(v) for v in sizes], "n_points": int(len(pts)),
            "points": [{"dataset_size": int(r.dataset_size), "seed": _py(r.seed), "trial_id": r.trial_id,
                        "learning_rate": r.learning_rate, "test_eval_loss": float(getattr(r, LOSS))}
                       for r in pts.itertuples()],
        }  # fmt: skip
        out["series"].append(entry)
        fig = {
            "label": s["label"],
            "x": pts["dataset_size"].to_numpy(float),
            "y": pts[LOSS].to_numpy(float),
        }
        loss.append(fig)
        noise, dof = _seed_noise(pts, LOSS)
        entry["seed_noise"] = {"sd": noise, "dof": dof}
        if len(sizes) < MIN_SIZES_LAW:
            entry["reason"] = (
                f"{len(sizes)} dataset size(s) with a test loss; the power law E + A*D^-alpha has 3 "
                f"parameters and needs at least {MIN_SIZES_LAW} sizes"
            )
            continue
        data = {
            "dataset_size": pts["dataset_size"].to_numpy(float),
            LOSS: pts[LOSS].to_numpy(float),
        }
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_law(law="power", data=data, x="dataset_size", y=LOSS, bootstrap=an.bootstrap,
                              seed=an.seed, level=an.level)  # fmt: skip
        except FitError as err:
            entry["reason"] = f"the power-law fit failed: {err}"
            continue
        loss_fits[s["label"]] = fit
        entry["fit"] = fit.to_dict()
        entry["exponent"] = {
            "alpha": fit.params_["alpha"],
            "ci": list(fit.ci_.get("alpha", (math.nan, math.nan))),
        }
        entry["floor"] = {"E": fit.params_["E"], "ci": list(fit.ci_.get("E", (math.nan, math.nan)))}
        dmax = float(max(sizes))
        # extrapolation: 10x the largest size
        x10 = np.array([EXTRAPOLATE * dmax])
        m, lo, hi = _band(fit, x10, "dataset_size", an.level)
        entry["extrapolation"] = {"factor": EXTRAPOLATE, "dataset_size": float(x10[0]), "loss": float(m[0]),
                                  "lo": float(lo[0]), "hi": float(hi[0])}  # fmt: skip
        # what doubling the data buys, with its bootstrap interval, against the noise
        x12 = np.array([dmax, 2 * dmax])
        pred, _, _ = _band(fit, x12, "dataset_size", an.level)
        gain = float(pred[0] - pred[1])
        g_lo = g_hi = math.nan
        if fit.draws_.shape[0]:
            dl = np.exp(fit.law_.log_predict(fit.draw_thetas_, x12[:, None]))  # (B, 2)
            g = dl[:, 0] - dl[:, 1]
            g_lo, g_hi = np.quantile(g, [(1 - an.level) / 2, (1 + an.level) / 2])
        scatter = float(np.mean(pts[LOSS])) * fit.metrics_["rmsle"]
        ref = noise if math.isfinite(noise) else scatter
        entry["gain_2x"] = {
            "from": dmax, "to": 2 * dmax, "gain": gain, "lo": float(g_lo), "hi": float(g_hi),
            "noise": ref, "noise_kind": "seed SD" if math.isfinite(noise) else "scatter around the fit",
            "gain_over_noise": gain / ref if ref > 0 else math.nan,
        }  # fmt: skip
        grid = np.geomspace(float(min(sizes)), EXTRAPOLATE * dmax, 80)
        gm, glo, ghi = _band(fit, grid, "dataset_size", an.level)
        fig.update(grid=grid, fit=gm, lo=glo, hi=ghi, fitted_max=dmax,
                   extrapolation={"x": float(x10[0]), "y": float(m[0]), "lo": float(lo[0]), "hi": float(hi[0])})  # fmt: skip
        # hold-out: fit the smaller sizes, predict the largest
        if len(sizes) >= MIN_SIZES_HOLDOUT:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    h = holdout(law="power", data=data, x="dataset_size", y=LOSS, split_on="dataset_size",
                                threshold=dmax, bootstrap=0, seed=an.seed)  # fmt: skip
                entry["holdout"] = {
                    "train_sizes": [int(v) for v in sizes[:-1]], "test_size": int(dmax),
                    "mape": h.mape, "predicted": float(np.mean(h.predicted)), "observed": float(np.mean(h.observed)),
                    "alpha_train": h.fit.params_["alpha"],
                }  # fmt: skip
                fig["holdout"] = {"x": dmax, "y": float(np.mean(h.predicted))}
            except FitError as err:
                entry["holdout"] = {"reason": f"the hold-out fit failed: {err}"}
        else:
            entry["holdout"] = {
                "reason": f"{len(sizes)} sizes; the hold-out check needs {MIN_SIZES_HOLDOUT} "
                f"(fit on >= {MIN_SIZES_HOLDOUT - 1}, test on the largest)"
            }
    return Finding(numbers=out, figures={"loss": loss}, loss_fits=loss_fits)
