"""Plan the next run for a compute budget: the dataset size, epochs and learning rate predicted best.

    from analysis.plan import plan_budget
    p = plan_budget(read_run("runs/demo"), budget_flops=1e15)   # or budget_hours=2.0
    p["choice"]   # {"dataset_size", "epochs", "learning_rate", "predicted_loss", "lo", "hi", ...}

The rule, top to bottom:

1. budget: FLOPs, or hours x the study's measured training throughput
   (FLOPs per second of one trial, from its completed trials).
2. examples: the budget buys S = budget / (FLOPs per training example seen,
   measured) example-passes.
3. candidates: every epochs setting whose loss law was fitted (report
   section 2, L(D) = E + A D^-alpha on the test loss of the configs chosen on
   validation) spends them as D = S / epochs, capped at ``max_dataset_size``
   when given (then part of the budget stays unspent). Each gets its predicted
   test loss and bootstrap interval.
4. choice: the lowest predicted loss. Its learning rate comes from the LR
   rule at (D, epochs) with a prediction interval; without a rule, the best
   LR of the nearest studied cell.
5. cross-check: with a data-constrained fit (report section 3), its own best
   integer epochs in 1..the largest studied, spent the same way.

Predictions outside the studied sizes are extrapolations and are flagged.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.findings import BOOTSTRAP, LEVEL, Analysis, analyse
from analysis.table import Run, clean

__all__ = ["PlanError", "plan_budget"]

_SECTIONS = ("study", "data", "epochs", "lr")
EXTRAPOLATE_FLAG = 4.0  # a D beyond 4x the largest measured one is an extrapolation the headline names  # what a plan needs from the analysis


class PlanError(ValueError):
    """A budget the plan cannot use, or a study with nothing to plan from."""


def _predict(fit: Any, frame: dict[str, np.ndarray], level: float) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # extrapolation is flagged per candidate
        y = float(fit.predict(frame)[0])
        if fit.draws_.shape[0]:
            lo, hi = fit.predict_interval(frame, level=level)
            return y, float(lo[0]), float(hi[0])
    return y, math.nan, math.nan


def _f(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _learning_rate(an: Analysis, d: float, e: float) -> dict[str, Any]:
    if an.rule is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = an.rule.predict(dataset_size=d, epochs=e)
            lo, hi = an.rule.predict_interval(dataset_size=d, epochs=e)
        return {"learning_rate": lr, "lr_lo": lo, "lr_hi": hi, "lr_source": "LR rule"}
    best = an.best
    if best is None or best["lr_best"].notna().sum() == 0:
        return {
            "learning_rate": math.nan,
            "lr_lo": math.nan,
            "lr_hi": math.nan,
            "lr_source": "none",
        }
    b = best[best["lr_best"].notna()].copy()
    dist = np.abs(np.log(b["dataset_size"].astype(float) / d)) + np.abs(
        np.log(b["epochs"].astype(float) / e)
    )
    r = b.iloc[int(np.argmin(dist.to_numpy()))]
    return {"learning_rate": float(r["lr_best"]), "lr_lo": float(r["lr_low"]), "lr_hi": float(r["lr_high"]),
            "lr_source": f"best LR of the nearest cell (D={int(r['dataset_size'])}, epochs={int(r['epochs'])}); no LR rule"}  # fmt: skip


def plan_budget(source: Run | pd.DataFrame | Analysis, *, budget_flops: float | None = None,
                budget_hours: float | None = None, max_dataset_size: float | None = None,
                bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:  # fmt: skip
    """The (dataset size, epochs, LR) predicted best for a budget; see the module docstring.

    ``source``: a Run (`scaling.records.read_run`), a results table, or an
    `analyse` result (reused as is). Exactly one of ``budget_flops`` and ``budget_hours``. Returns a
    JSON-safe dict: budget_flops, budget_hours, flops_per_example,
    flops_per_second, examples, max_dataset_size, candidates (one per epochs
    setting), choice, close_call, data_constrained (or None), notes.
    Raises PlanError for a bad budget or a study with no fitted law.
    """
    # 1. validate the budget
    if (budget_flops is None) == (budget_hours is None):
        raise PlanError(
            "give exactly one of budget_flops (--budget) and budget_hours (--budget-hours)"
        )
    which, value = (
        ("budget_flops", budget_flops)
        if budget_flops is not None
        else ("budget_hours", budget_hours)
    )
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise PlanError(f"{which} must be a finite number > 0, got {value!r}")
    if max_dataset_size is not None and not (
        math.isfinite(max_dataset_size) and max_dataset_size >= 1
    ):
        raise PlanError(f"max_dataset_size must be >= 1, got {max_dataset_size!r}")
    an = source if isinstance(source, Analysis) else analyse(source, bootstrap=bootstrap, seed=seed, level=level,
                                                             sections=_SECTIONS)  # fmt: skip
    level = an.level
    comp = an.numbers.get("study", {}).get("compute", {})
    fpe, fps = comp.get("flops_per_example"), comp.get("flops_per_second")
    notes: list[str] = []
    if budget_hours is not None:
        if not fps:
            raise PlanError("the study recorded no train_flops / wall_seconds of a completed trial, so hours "
                            "cannot be turned into FLOPs; give --budget in FLOPs")  # fmt: skip
        budget_flops = budget_hours * 3600.0 * fps
        notes.append(
            f"{budget_hours:g} h x {fps:.3g} FLOPs/s measured per trial = {budget_flops:.3g} FLOPs"
        )
    if not fpe:
        raise PlanError("the study recorded no train_flops of a completed trial, so a FLOPs budget cannot be "
                        "turned into training examples")  # fmt: skip
    if not an.loss_fits:
        reasons = [
            f"{s['label']}: {s.get('reason')}" for s in an.numbers.get("data", {}).get("series", [])
        ]
        why = "; ".join(reasons) or an.numbers.get("data", {}).get("reason", "no completed trials")
        raise PlanError(
            f"no loss-vs-data law could be fitted, so there is nothing to plan from ({why})"
        )
    examples = budget_flops / fpe

    # 2-3. one candidate per fitted epochs setting
    cands = []
    for s in an.series():
        fit = an.loss_fits.get(s["label"])
        if fit is None:
            continue
        e = float(s["key"]["epochs"])
        d = examples / e
        capped = max_dataset_size is not None and d > max_dataset_size
        if capped:
            d = float(max_dataset_size)
        if d < 1:
            notes.append(f"{s['label']}: the budget buys {examples:.3g} example-passes, less than one example "
                         f"per epoch at {int(e)} epochs")  # fmt: skip
            continue
        y, lo, hi = _predict(fit, {"dataset_size": np.array([d])}, level)
        dlo, dhi = fit.x_range_["dataset_size"]
        cands.append({
            "series": s["label"], **{c: float(v) for c, v in s["key"].items()}, "epochs": int(e),
            "dataset_size": d, "examples_seen": d * e, "flops": d * e * fpe, "capped": capped,
            "predicted_loss": y, "lo": lo, "hi": hi, "law": fit.law_name_,
            "extrapolation": bool(d > dhi * (1 + 1e-9) or d < dlo * (1 - 1e-9)), "fitted_sizes": [dlo, dhi],
        })  # fmt: skip
    if not cands:
        raise PlanError(
            "the budget is too small for any studied epochs setting; " + "; ".join(notes)
        )

    # 4. the choice and its learning rate
    order = sorted(cands, key=lambda c: c["predicted_loss"])
    choice = dict(order[0])
    choice.update(_learning_rate(an, choice["dataset_size"], choice["epochs"]))
    close = False
    if len(order) > 1:
        runner = order[1]
        close = bool(math.isfinite(choice["hi"]) and runner["predicted_loss"] <= choice["hi"])
        if close:
            notes.append(f"close call: {runner['series']} is predicted {runner['predicted_loss']:.4g}, inside the "
                         f"choice's {level:.0%} interval")  # fmt: skip
    if choice["extrapolation"]:
        lo_, hi_ = choice["fitted_sizes"]
        notes.append(f"D={choice['dataset_size']:.0f} is outside the studied sizes [{lo_:.0f}, {hi_:.0f}]: "
                     "the prediction is an extrapolation")  # fmt: skip

    # 4b. keep the LR inside what was searched, and say where it came from
    rng = an.numbers.get("lr", {}).get("searched_range") or [None, None]
    lr = choice.get("learning_rate", math.nan)
    choice["lr_clipped"] = None
    if math.isfinite(lr) and rng[0] is not None and rng[1] is not None:
        lo_r, hi_r = float(rng[0]), float(rng[1])
        if lr > hi_r or lr < lo_r:
            edge = hi_r if lr > hi_r else lo_r
            choice["lr_clipped"] = {"predicted": lr, "to": edge, "range": [lo_r, hi_r]}
            notes.append(f"the {choice['lr_source']} predicts learning rate {lr:.3g}, outside the searched range "
                         f"[{lo_r:.3g}, {hi_r:.3g}]: clipped to {edge:.3g}; nothing was measured beyond it")  # fmt: skip
            choice["learning_rate"] = edge
            choice["lr_lo"] = max(lo_r, min(_f(choice.get("lr_lo")), hi_r)) if math.isfinite(_f(choice.get("lr_lo"))) else math.nan
            choice["lr_hi"] = max(lo_r, min(_f(choice.get("lr_hi")), hi_r)) if math.isfinite(_f(choice.get("lr_hi"))) else math.nan
    choice["lr_has_interval"] = bool(math.isfinite(_f(choice.get("lr_lo"))) and math.isfinite(_f(choice.get("lr_hi"))))
    if choice["lr_source"] != "none" and not choice["lr_has_interval"]:
        notes.append(f"the learning rate comes from the {choice['lr_source']}, which has no interval: treat it as a "
                     "guess, not a measurement")  # fmt: skip
    dmax = float(choice["fitted_sizes"][1])
    factor = choice["dataset_size"] / dmax if dmax > 0 else math.nan
    choice["extrapolation_factor"] = factor
    choice["far_extrapolation"] = bool(math.isfinite(factor) and factor > EXTRAPOLATE_FLAG)
    head = (f"D={choice['dataset_size']:.0f}, epochs={choice['epochs']}: predicted test loss "
            f"{choice['predicted_loss']:.4g} [{choice['lo']:.4g}, {choice['hi']:.4g}]")
    if choice["far_extrapolation"]:
        head = f"EXTRAPOLATED {factor:.0f}x beyond the largest measured D ({dmax:.0f}): " + head
    if math.isfinite(_f(choice.get("learning_rate"))):
        head += f"; learning rate {choice['learning_rate']:.3g}"
        if choice["lr_clipped"]:
            head += f" (CLIPPED to the searched range; the {choice['lr_source']} says {lr:.3g})"
        if not choice["lr_has_interval"]:
            head += " (NO INTERVAL: a guess)"
    headline = head

    # 5. the data-constrained cross-check
    dc = None
    if an.dc_fits:
        label, fit = next(iter(an.dc_fits.items()))
        emax = int(max(c["epochs"] for c in cands))
        best = None
        for e in range(1, max(emax, 1) + 1):
            d = examples / e
            if max_dataset_size is not None:
                d = min(d, float(max_dataset_size))
            if d < 1:
                continue
            frame = {
                "N": np.ones(1),
                "examples_seen": np.array([d * e]),
                "dataset_size": np.array([d]),
            }
            y, lo, hi = _predict(fit, frame, level)
            if best is None or y < best["predicted_loss"]:
                best = {
                    "epochs": e,
                    "dataset_size": d,
                    "examples_seen": d * e,
                    "predicted_loss": y,
                    "lo": lo,
                    "hi": hi,
                }
        if best is not None:
            dc = {"group": label, "law": "data_constrained", **best,
                  "agrees": best["epochs"] == choice["epochs"]}  # fmt: skip

    return clean({
        "budget_flops": budget_flops, "budget_hours": budget_hours, "flops_per_example": fpe,
        "flops_per_second": fps, "examples": examples, "max_dataset_size": max_dataset_size, "level": level,
        "candidates": cands, "choice": choice, "close_call": close, "data_constrained": dc, "notes": notes,
        "headline": headline,
    })  # fmt: skip
