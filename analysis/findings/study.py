"""Section 1, the study: what ran, what failed and why, what it cost, where its Optuna storage is.

Compute is counted once per pack: the per-trial summary's wall_seconds is a packed trial's
share of its pack's time (analysis.table.trial_summary), so trial_seconds_total and
flops_per_second are right under packing too.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.findings.common import Analysis, Finding, _f
from analysis.redact import redact_url
from analysis.table import _py

__all__ = ["study_finding"]



def study_finding(an: Analysis) -> Finding:
    """Section 1: the spec, trial counts, failures by kind, compute, and the Optuna storage."""
    s, t, facts = an.spec, an.trials, an.run.facts
    out: dict[str, Any] = {}

    def first(frame: pd.DataFrame, c: str) -> Any:
        return _py(frame[c].dropna().iloc[0]) if c in frame and frame[c].notna().any() else None

    def distinct(c: str) -> list[int]:
        if c not in t or t.empty:
            return []
        return sorted(pd.to_numeric(t[c], errors="coerce").dropna().astype(int).unique().tolist())

    axes = s.get("axes") or {}
    lr = s.get("learning_rate") or {}
    out["spec"] = {
        "name": s.get("name") or first(an.table, "study"),
        # a model axis (axes.model) lists every base model; else the one model
        "model": ", ".join(map(str, axes["model"])) if isinstance(axes.get("model"), list)
                 else s.get("model") or first(t, "model"),  # fmt: skip
        "task": s.get("task") or first(t, "task"),
        "dataset_sizes": list(facts["dataset_sizes"]) if "dataset_sizes" in facts else distinct("dataset_size"),
        "epochs": list(facts["epochs"]) if "epochs" in facts else distinct("epochs"),
        "lora_r": axes.get("lora_r") or (s.get("lora") or {}).get("r") or distinct("lora_r") or None,
        "learning_rate_range": [lr.get("low"), lr.get("high")] if lr else None,
        "trials_per_cell": s.get("trials_per_cell"),
        "repeat_seeds": (s.get("seeds") or {}).get("repeat_best"),
        "sampler": s.get("sampler"),
        "early_stopping": (s.get("early_stopping") or {}).get("method"),
        "eval": s.get("eval"),
        "planned_trials": facts.get("planned_trials"),
        "spec_file": an.run.spec_file,
    }  # fmt: skip
    counts = t["status"].value_counts().to_dict() if len(t) else {}
    out["trials"] = {
        "total": int(len(t)),
        "ok": int(counts.get("ok", 0)),
        "failed": int(counts.get("failed", 0)),
        "pruned": int(counts.get("pruned", 0)),
        "rows": int(len(an.table)),
        "by_phase": {str(k): int(v) for k, v in t["phase"].fillna("n/a").value_counts().items()}
        if len(t)
        else {},
    }
    failed = (
        t[t["status"] == "failed"].sort_values(["dataset_size", "epochs", "trial_id"])
        if len(t)
        else t
    )
    out["failed_trials"] = [
        {"trial_id": r.trial_id, "cell": _py(r.cell), "learning_rate": _f(r.learning_rate), "error": r.error or "(no message)"}
        for r in failed.itertuples()
    ]  # fmt: skip
    errs = (
        failed["error"].fillna("(no message)").value_counts()
        if len(failed)
        else pd.Series(dtype=int)
    )
    out["failure_kinds"] = [{"error": str(k), "trials": int(v)} for k, v in errs.items()]

    # compute: the final (cumulative) FLOPs and wall time of every trial, failed ones included
    flops = (
        pd.to_numeric(t.get("train_flops"), errors="coerce") if len(t) else pd.Series(dtype=float)
    )
    wall = (
        pd.to_numeric(t.get("wall_seconds"), errors="coerce") if len(t) else pd.Series(dtype=float)
    )
    ok = t["status"] == "ok" if len(t) else pd.Series(dtype=bool)
    good = ok & (flops > 0) & (wall > 0) if len(t) else ok
    seen = (
        (
            pd.to_numeric(t["dataset_size"], errors="coerce")
            * pd.to_numeric(t["last_epoch"], errors="coerce")
        )
        if len(t)
        else flops
    )
    fpe = (flops / seen)[ok & (flops > 0) & (seen > 0)] if len(t) else flops
    elapsed = math.nan
    if "recorded_at" in an.table and an.table["recorded_at"].notna().any():
        ts = pd.to_datetime(an.table["recorded_at"], errors="coerce", utc=True).dropna()
        if len(ts) >= 2:
            elapsed = float((ts.max() - ts.min()).total_seconds())
    out["compute"] = {
        "train_flops_total": float(flops.sum(min_count=1)) if len(flops) else None,
        "trial_seconds_total": float(wall.sum(min_count=1)) if len(wall) else None,
        "elapsed_seconds": elapsed,
        "flops_per_second": float(flops[good].sum() / wall[good].sum()) if good.any() else None,
        "flops_per_example": float(fpe.median()) if len(fpe) else None,
        "note": "train_flops = 6 x (parameters in the forward pass) x training tokens, summed over trials; "
                "flops_per_second is per trial (one trial's resources), from completed trials; a packed trial's "
                "seconds are its share of the pack's (wall_seconds / pack_size), so a pack's time counts once; "
                "elapsed_seconds spans the first to the last recorded trial end",
    }  # fmt: skip

    # Optuna storage: where the caller said it is (scaling.records.read_run)
    url = an.run.optuna_url
    shown = redact_url(url) if url else None
    out["optuna"] = {
        "url": shown,
        "dashboard_command": f"optuna-dashboard {shown}" if shown else None,
        "exists": an.run.optuna_exists if url and url.startswith("sqlite") else None,
        "study_names": f"{out['spec']['name']}/{'M=..,' if isinstance(axes.get('model'), list) else ''}D=..,E=..,r=..",
        "lr_param": "learning_rate",
    }
    return Finding(numbers=out)
