"""run_sweep: the Tuner assembled from the parts beside it.

How a study maps onto Ray Tune and Optuna: CellSearcher (searcher.py) owns one Optuna
study per cell and asks Optuna for learning rates; the trainable (worker.py) runs each
Ray trial, solo or packed, in a reused worker; _Recorder (recorder.py) writes its rows;
_PerCellScheduler (schedule.py) stops trials early within their own cell. Resuming is
the default: a new `scaling sweep` on the same run directory reads the Optuna storage
and re-runs what a killed driver left unfinished.

run_sweep reads as the list of its steps; each step lives with what it works on (the plan
in spec.py, the run directory in records.py, the storage's identity in identity.py, the
lease in lease.py, Ray Tune in tuner.py), so the spec passes through each module once.

Read top to bottom:
  1. SweepResult
  2. run_sweep
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Ray Tune writes CSV/JSON/TensorBoard logs per trial by default; our table is the record.
# Set before ray is first imported: the package's __init__ imports this module first.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


from analysis.table import RESULTS_FILE  # noqa: E402
from scaling.records import RunLock, finish_table, open_table  # noqa: E402
from scaling.run_record import _check_same_study, finish_sweep, new_uid, start_sweep  # noqa: E402
from scaling.spec import SpecError, StudySpec  # noqa: E402
from scaling.sweep.identity import open_checked, study_names  # noqa: E402
from scaling.sweep.lease import Lease  # noqa: E402
from scaling.sweep.optimize import make_searcher  # noqa: E402
from scaling.sweep.tuner import tune_trials  # noqa: E402

__all__ = ["SweepResult", "run_sweep"]

# With Tune's per-trial loggers off (our table is the record), Tune's end-of-run
# analysis warns that it finds no result.json; that is expected, not a problem.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


# 1. The result -------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    results: Path
    optuna_url: str = field(repr=False)  # may hold a password: never in a printed result
    trials_run: int
    counts: dict[str, int]
    orphans_resumed: int
    wall_seconds: float
    adapters: list[Path] = field(default_factory=list)  # adapters/<cell>/ folders kept
    lease_taken_over: str | None = None  # a dead driver's stale lease this sweep took over, described
    first_error: str | None = None  # the error of this sweep's first failed trial, as its row records it

    @property
    def all_failed(self) -> bool:
        """Every trial this sweep ran failed (none ok, none pruned): the study learned nothing."""
        return self.trials_run > 0 and self.counts.get("failed", 0) == self.trials_run


# 2. The sweep ---------------------------------------------------------------------
def run_sweep(
    spec: StudySpec,
    *,
    out: str | Path | None = None,
    max_trials: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_trial_done: Callable[[str, dict], None] | None = None,
    ray_address: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> SweepResult:
    """Run (or resume) a study; returns where everything was written. ``ray_address``: a
    cluster to join when Ray is not running yet (a ray.init the caller made is kept).
    ``on_epoch``: called in the driver after each epoch of a trial (a pack's members each) with
    its cell, optuna_trial, learning_rate, epoch and epochs.

    In order: what the spec implies (one plan), the base model, the run directory (its lock, its
    table with the rows a stopped sweep kept aside folded in (records.open_table), its
    spec.yaml), the storage (the run's own?), the lease on the study, this sweep's entry in
    spec.yaml, the searcher, Ray Tune, and the table compacted. Every refusal comes before this
    sweep writes anything of its own (folding a stopped sweep's spool only completes its appends). A sweep that has to stop (the table would not take a trial's rows, the
    lease was lost) raises RecordsError, its rows recorded so far kept."""
    t0 = time.perf_counter()
    plan = spec.sweep_plan(out)  # an unset ${VAR} fails here
    from scaling.models import (  # torch: imported when a sweep runs
        ModelUnavailableError,
        TargetModulesError,
        prepare_base_models,
    )

    try:  # a model no worker could load, a LoRA target that matches no module: refused before anything is written
        prepare_base_models(plan.models, plan.safe.lora.target_modules, source=plan.source,
                            field="axes.model" if spec.axes.model is not None else "model")  # fmt: skip
    except (ModelUnavailableError, TargetModulesError) as err:
        raise SpecError(str(err)) from None
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        # rows a stopped sweep could not append (recorder.py) folded in first: they are this run
        # directory's own, under its lock; then the table read once
        table = open_table(run_dir)
        record = dict(_check_same_study(spec, run_dir) or {})  # {}: a new run directory
        uid = record.get("study_uid") or None
        names = study_names(spec.name, plan.cells, mode=plan.safe.sampler.mode)
        storage = open_checked(names, run_dir, plan.url, uid=uid, table_rows=table.rows, source=spec.source)
        # one driver per study, across run directories and machines (lease.py): before any
        # leftover trial is claimed (CellSearcher) and before this sweep writes anything of its own
        with Lease(names, storage, url_shown=plan.url_shown, run_dir=run_dir, study=spec.name,
                   settle=not plan.own_storage, objectives=plan.objectives, url=plan.url) as lease:  # fmt: skip
            uid = uid or new_uid()  # the first run (or one from before study uids): the run gets one now
            # written before any cell study carries it, so a crash between leaves no stranger's uid
            record = start_sweep(spec, run_dir, record, uid=uid, optuna=plan.url_shown,
                                 max_trials=max_trials, trials_recorded=len(table.outcomes))  # fmt: skip
            # how each recorded trial ended: one recorded while the storage was down is told to Optuna now
            searcher = make_searcher(plan.safe, storage, max_trials=max_trials, recorded=table.outcomes, study_uid=uid,
                                     cells=plan.cells)  # fmt: skip
            samples, todo = searcher.most_remaining(), searcher.remaining()
            if on_start:
                on_start(todo, searcher.planned_trials())
            errors: list[str] = []

            def done(status: str, row: dict) -> None:
                if status == "failed" and not errors:
                    errors.append(str(row.get("error") or "trial failed (no error recorded)"))
                if on_trial_done:
                    on_trial_done(status, row)

            counts = tune_trials(plan, searcher, todo=todo, samples=samples, uid=uid, on_trial_done=done,
                                 on_epoch=on_epoch, ray_address=ray_address, halt=lease.halt_reason)  # fmt: skip
            finish_sweep(spec, run_dir, record, counts=counts, trials_to_run=todo)
            adapters = finish_table(run_dir, keep=spec.storage.keep_adapters, model=spec.model)
            return SweepResult(
                run_dir=run_dir,
                results=run_dir / RESULTS_FILE,
                optuna_url=plan.url,
                trials_run=sum(counts.values()),
                counts=counts,
                orphans_resumed=searcher.orphans_found,
                wall_seconds=time.perf_counter() - t0,
                adapters=adapters,
                lease_taken_over=lease.taken_over,
                first_error=errors[0] if errors else None,
            )
