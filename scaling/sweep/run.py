"""run_sweep: the Tuner assembled from the parts beside it.

How a study maps onto Ray Tune and Optuna: CellSearcher (searcher.py) owns one Optuna
study per cell and asks Optuna for learning rates; the trainable (worker.py) runs each
Ray trial, solo or packed, in a reused worker; _Recorder (recorder.py) writes its rows;
_PerCellScheduler (schedule.py) stops trials early within their own cell. Resuming is
the default: a new `scaling sweep` on the same run directory reads the Optuna storage
and re-runs what a killed driver left unfinished.

Read top to bottom:
  1. SweepResult
  2. _init_ray: a cluster (RAY_ADDRESS) or a local Ray
  3. run_sweep
"""

from __future__ import annotations

import datetime as _dt
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

import ray  # noqa: E402
from ray import tune  # noqa: E402

from analysis.table import RESULTS_FILE  # noqa: E402
from scaling.records import RunLock, _check_same_study, compact, read_results  # noqa: E402
from scaling.records_io import RecordsError  # noqa: E402
from scaling.run_record import finish_sweep, new_uid, start_sweep, update_sweep  # noqa: E402
from scaling.spec import SpecError, StudySpec, redact_url  # noqa: E402
from scaling.sweep.identity import check_storage, sqlite_missing  # noqa: E402
from scaling.sweep.recorder import _Recorder  # noqa: E402
from scaling.sweep.schedule import _scheduler  # noqa: E402
from scaling.sweep.searcher import CellSearcher, open_storage  # noqa: E402
from scaling.sweep.worker import SINK_NAME, _make_trainable  # noqa: E402

__all__ = ["SweepResult", "run_sweep"]

# With Tune's per-trial loggers off (our table is the record), Tune's end-of-run
# analysis warns that it finds no result.json; that is expected, not a problem.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


# 1. The result -------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    results: Path
    optuna_url: str
    trials_run: int
    counts: dict[str, int]
    orphans_resumed: int
    wall_seconds: float
    adapters: list[Path] = field(default_factory=list)  # adapters/<cell>/ folders kept


# 2. Ray --------------------------------------------------------------------------
def _init_ray(spec: StudySpec, address: str | None = None) -> None:
    """Use the Ray the caller already started (a notebook's ray.init), else connect to
    ``address`` or RAY_ADDRESS (a cluster), else start a local one."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


@ray.remote(num_cpus=0)
class _AdapterSink:
    """On the driver's node: writes the adapters workers send into the run directory."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def put(self, trial_id: str, files: dict[str, bytes]) -> str:
        from scaling.adapters import store_files

        return str(store_files(self.run_dir, trial_id, files))


def _start_sink(run_dir: Path):
    """The adapter sink, pinned to this (the driver's) node; killed when the sweep ends."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    try:  # a sink left by a driver that died in this Ray session
        ray.kill(ray.get_actor(SINK_NAME))
    except ValueError:
        pass
    return _AdapterSink.options(
        name=SINK_NAME, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(str(run_dir))


def _check_targets(spec: StudySpec) -> None:
    """lora.target_modules against the base model's modules (built on the meta device: no
    weights), as a SpecError; a hub model not on this machine yet is left to its trials."""
    from scaling.models import TargetModulesError, check_target_modules

    try:
        for model in spec.models():  # every base model of the study (axes.model)
            check_target_modules(model, spec.lora.target_modules, source=spec.source or "<spec>")
    except TargetModulesError as err:
        raise SpecError(str(err)) from None


# 3. The sweep ---------------------------------------------------------------------
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
    its cell, optuna_trial, learning_rate, epoch and epochs."""
    t0 = time.perf_counter()
    _check_targets(spec)  # a LoRA target that matches no module: refused before anything is written
    run_dir = spec.run_dir(out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        # every refusal comes before anything is written: the spec copy, then the storage's identity
        record = _check_same_study(spec, run_dir)  # None: a new run directory
        url = spec.optuna_url(run_dir)
        recorded: set[str] = set()  # trials whose rows reached the table
        rows = 0
        if (run_dir / RESULTS_FILE).exists():
            table = read_results(run_dir)
            rows, recorded = len(table), set(table["trial_id"].astype(str))
        record = dict(record or {})
        uid = record.get("study_uid") or None
        gone = sqlite_missing(url)
        if gone is not None and rows:  # opening it would create an empty storage: refuse first
            raise RecordsError(
                f"{run_dir}: the Optuna storage {redact_url(url)!r} does not exist (no file {gone}) but "
                f"{run_dir / RESULTS_FILE} has {rows} rows of study uid {uid or '(none yet)'}: resuming would "
                "restart the trial numbers and lose the new evaluations; restore the run's storage, "
                "or use another --out"
            )
        try:
            storage = open_storage(url)
        except SpecError as err:
            raise SpecError(f"{spec.source}: {err}") from None
        check_storage(spec, run_dir, storage, url, uid=uid, table_rows=rows)
        uid = uid or new_uid()  # the first run (or one from before study uids): the run gets one now
        # written before any cell study carries it, so a crash between leaves no stranger's uid
        record = start_sweep(spec, run_dir, record, uid=uid, optuna=redact_url(url) or "",
                             max_trials=max_trials, trials_recorded=len(recorded))  # fmt: skip
        # what Ray Tune pickles to disk (tuner.pkl: searcher, callbacks) gets no password
        safe = spec.without_secrets()
        searcher = CellSearcher(safe, storage, max_trials=max_trials, recorded=recorded, study_uid=uid)
        todo = searcher.remaining()
        record = update_sweep(spec, run_dir, record, trials_to_run=todo)
        if on_start:
            on_start(todo, spec.planned_trials())
        mlflow_uri = spec.mlflow_uri()  # a ${VAR} in tracking.mlflow.tracking_uri must be set
        trackers = None
        if todo > 0 and spec.tracking.any():
            from scaling.tracking import Trackers

            trackers = Trackers(safe, run_dir, mlflow_uri=mlflow_uri)
        recorder = _Recorder(safe, run_dir, on_trial_done, study_uid=uid, trackers=trackers, on_epoch=on_epoch)
        if todo > 0:
            from scaling.models import ensure_base_model

            for model in spec.models():
                ensure_base_model(model)  # build once here, not in every worker at once
            _init_ray(spec, ray_address)
            sink = _start_sink(run_dir) if spec.storage.keep_adapters != "none" else None
            res = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
            scheduler = _scheduler(spec)
            tuner = tune.Tuner(
                # workers never open Optuna: they get the spec with its password redacted
                tune.with_resources(_make_trainable(spec.to_record()), res),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=searcher.most_remaining(),  # the searcher says when it is done
                    max_concurrent_trials=spec.resources.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"tune-{_dt.datetime.now():%Y%m%d-%H%M%S}",
                    storage_path=str(run_dir / "ray"),
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                    callbacks=[recorder],
                    verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                ),
            )
            try:
                tuner.fit()
            finally:
                if sink is not None:
                    ray.kill(sink)
                if trackers is not None:
                    trackers.close()
        finish_sweep(spec, run_dir, record, counts=recorder.counts)
        results = run_dir / RESULTS_FILE
        adapters: list[Path] = []
        if results.exists():
            compact(run_dir)  # the part files of this run's appends -> one results.parquet
            table = read_results(run_dir)  # fail loudly now if what we wrote cannot be read back
            from scaling.adapters import keep_selected

            adapters = keep_selected(run_dir, table, keep=spec.storage.keep_adapters, model=spec.model)
        return SweepResult(
            run_dir=run_dir,
            results=results,
            optuna_url=url,
            trials_run=sum(recorder.counts.values()),
            counts=dict(recorder.counts),
            orphans_resumed=searcher.orphans_found,
            wall_seconds=time.perf_counter() - t0,
            adapters=adapters,
        )
