"""Early stopping inside a cell, unpacked: Ray Tune's ASHA (or median stopping), one per cell.

Packed sweeps run no Ray scheduler: every Ray trial is then a pack that stops its own
members (scaling/stopping.py), where a Ray scheduler could only stop all K at once.

Read top to bottom:
  1. _scheduler: which one a spec gets
  2. _PerCellScheduler
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from analysis.table import SELECT_METRIC
from scaling.spec import StudySpec

__all__: list[str] = []


# 1. Which scheduler ----------------------------------------------------------------
def _scheduler(spec: StudySpec) -> Any:
    if spec.early_stopping.method == "none" or spec.packing.adapters_per_worker > 1:
        # packed, every Ray trial is a pack (leftovers too), and a pack stops its own
        # members (scaling/stopping.py): Ray's schedulers could only stop all K at once
        return None
    return _PerCellScheduler(spec)


# 2. One scheduler per cell -----------------------------------------------------------
class _PerCellScheduler(FIFOScheduler):
    """Ray Tune's ASHA (or median stopping), one instance per cell.

    A single ASHA over the whole study would compare a D=300 trial with a D=4800
    one and stop the small cells for being small. Here each cell has its own
    rungs, so a trial is only stopped for being worse than its own cell's other
    LRs at the same epoch - the question the LR search asks. Stopping reads
    the validation loss only. (Chosen over Optuna pruners because Ray owns the
    trial processes and can stop them between epochs without the worker
    needing to reach the Optuna storage, which on a cluster with SQLite it cannot.)
    """

    def __init__(self, spec: StudySpec):
        super().__init__()
        self.spec = spec
        self._cells: dict[str, TrialScheduler] = {}
        self.stopped = 0

    def _for(self, trial: Any) -> TrialScheduler:
        key = trial.config["cell"]
        if key not in self._cells:
            es = self.spec.early_stopping
            max_t = int(trial.config["epochs"])
            if es.method == "asha":
                sched: TrialScheduler = ASHAScheduler(
                    time_attr="epoch", metric=SELECT_METRIC, mode="min", max_t=max_t,
                    grace_period=min(es.grace_epochs, max_t), reduction_factor=es.reduction_factor,
                )  # fmt: skip
            else:
                sched = MedianStoppingRule(
                    time_attr="epoch", metric=SELECT_METRIC, mode="min",
                    grace_period=es.grace_epochs, min_samples_required=2,
                )  # fmt: skip
            self._cells[key] = sched
        return self._cells[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        value = result.get(SELECT_METRIC)
        if result.get("status") == "failed" or value is None or not math.isfinite(value):
            return TrialScheduler.CONTINUE
        if int(result.get("epoch", 0)) >= int(trial.config["epochs"]):
            return TrialScheduler.CONTINUE  # finished anyway: never call the last epoch "pruned"
        action = self._for(trial).on_trial_result(tune_controller, trial, result)
        self.stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        value = (result or {}).get(SELECT_METRIC)
        if result and value is not None and math.isfinite(value):
            self._for(trial).on_trial_complete(tune_controller, trial, result)
        else:
            self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        try:
            self._for(trial).on_trial_remove(tune_controller, trial)
        except KeyError:  # already forgotten by the cell's scheduler
            pass

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_error(tune_controller, trial)

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "_cells": {}, "stopped": 0}
