"""Section: loss against compute. Which trials does no other trial beat on both validation loss
and training FLOPs (the Pareto front, both minimised)?

This is what ``sampler.mode: optimize`` searches: with ``objective: multi`` the front is NSGA-II's
target; with ``objective: single`` it is the non-dominated set of the trials TPE ran. It reads the
table only (one row per trial from `analysis.table.trial_summary`): completed trials with a
finite final validation loss and train_flops. Pruned trials (stopped early, by the per-cell
rule) and failed ones are left out, as every law leaves them out: a loss after fewer epochs than
the config asks is not that config's result.

    pareto_front(frame, x="train_flops", y="val_eval_loss")   # bool mask: True = on the front
    pareto_finding(an)                                         # the section's numbers and figure
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.findings.common import Analysis, Finding
from analysis.table import SELECT, _py, trial_summary

__all__ = ["pareto_finding", "pareto_front"]

X, Y = "train_flops", SELECT  # both minimised


def pareto_front(frame: pd.DataFrame, *, x: str = X, y: str = Y) -> np.ndarray:
    """Boolean mask over ``frame``'s rows: True where no other row is at least as good on both ``x``
    and ``y`` and strictly better on one (both minimised). Two identical points are both on the
    front (neither beats the other). Rows with a missing or non-finite value are never on it."""
    for c in (x, y):
        if c not in frame.columns:
            raise ValueError(f"pareto_front: column {c!r} is required (the frame has {list(frame.columns)})")
    xs = pd.to_numeric(frame[x], errors="coerce").to_numpy(float)
    ys = pd.to_numeric(frame[y], errors="coerce").to_numpy(float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    on = np.zeros(len(frame), dtype=bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return on
    px, py = xs[idx], ys[idx]
    # dominated[i]: some j has x_j <= x_i and y_j <= y_i, one of them strictly  (n x n, n = trials)
    le = (px[None, :] <= px[:, None]) & (py[None, :] <= py[:, None])
    lt = (px[None, :] < px[:, None]) | (py[None, :] < py[:, None])
    on[idx] = ~(le & lt).any(axis=1)
    return on


def _spent(trials: pd.DataFrame) -> dict[str, float | None]:
    flops = pd.to_numeric(trials.get("train_flops"), errors="coerce") if len(trials) else pd.Series(dtype=float)
    wall = pd.to_numeric(trials.get("wall_seconds"), errors="coerce") if len(trials) else pd.Series(dtype=float)
    return {"flops": float(flops.sum(min_count=1)) if flops.notna().any() else None,
            "trial_hours": float(wall.sum(min_count=1)) / 3600 if wall.notna().any() else None}  # fmt: skip


def pareto_finding(an: Analysis) -> Finding:
    """The front of completed trials (val loss vs train FLOPs), the budget and what was spent."""
    sampler = an.spec.get("sampler") or {}
    out: dict[str, Any] = {
        "mode": sampler.get("mode", "cells"),
        "objective": sampler.get("objective", "single"),
        "x": X,
        "y": Y,
        "budget": an.spec.get("budget"),
        "uncertainty": "none: each point is one trial's single final evaluation (one seed, no repeats), "
                       "so it carries no interval; a config's seed noise is not measured in this mode",
        "front": [],
    }
    table = an.table
    if table.empty or Y not in table.columns or X not in table.columns:
        out["reason"] = "no trial recorded both a validation loss and train FLOPs"
        return Finding(numbers=out, figures={"pareto": None})
    t = trial_summary(table, value=Y)
    out["spent"] = _spent(t)
    done = t[(t["status"] == "ok")].copy()
    done[Y] = pd.to_numeric(done["value"], errors="coerce")
    done[X] = pd.to_numeric(done[X], errors="coerce")
    done = done[np.isfinite(done[X].to_numpy(float)) & np.isfinite(done[Y].to_numpy(float))]
    out["n_trials"] = int(len(done))
    out["n_left_out"] = {"pruned": int((t["status"] == "pruned").sum()), "failed": int((t["status"] == "failed").sum())}
    if done.empty:
        out["reason"] = "no completed trial has both a final validation loss and train FLOPs"
        return Finding(numbers=out, figures={"pareto": None})
    mask = pareto_front(done)
    test = {}
    if "test_eval_loss" in table.columns:
        test = trial_summary(table, value="test_eval_loss").set_index("trial_id")["value"].to_dict()
    front = done[mask].sort_values([X, Y])
    out["front"] = [
        {"trial_id": str(r["trial_id"]), "dataset_size": _py(r["dataset_size"]), "epochs": _py(r["epochs"]),
         "lora_r": _py(r["lora_r"]), "learning_rate": _py(r["learning_rate"]), X: float(r[X]), Y: float(r[Y]),
         "test_eval_loss": _py(test.get(r["trial_id"]))}
        for _, r in front.iterrows()
    ]  # fmt: skip
    figs = {"pareto": {"x": done[X].to_numpy(float), "y": done[Y].to_numpy(float), "front": mask}}
    return Finding(numbers=out, figures=figs)
