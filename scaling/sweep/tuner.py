"""Ray Tune runs a sweep's trials: Ray started or joined, the adapter sink, the Tuner.

The Tuner is assembled from the parts beside this module: CellSearcher (searcher.py) hands
out trials, the trainable (worker.py) runs them solo or packed in reused workers, _Recorder
(recorder.py) writes their rows and _PerCellScheduler (schedule.py) stops trials early
within their own cell.

A sweep that must not go on (the table would not take a trial's rows, recorder.py; the lease on
the study was lost, lease.py; the Optuna storage stayed unreachable past the retry bound,
_retry.py and searcher.py) stops at once: _Halt, a Tune Stopper asked after every event, ends
the experiment (the trials in flight are stopped without being told to Optuna, so they stay
RUNNING there and a resume runs them again) and the searcher suggests nothing more; tune_trials
then raises the reason.

Read top to bottom: _init_ray, the adapter sink, _Halt, tune_trials.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Stopper

from scaling.spec import SweepPlan
from scaling.sweep.recorder import _Recorder
from scaling.sweep.schedule import _scheduler
from scaling.sweep.searcher import CellSearcher
from scaling.sweep.worker import SINK_NAME, _make_trainable

__all__ = ["tune_trials"]


def _init_ray(address: str | None = None) -> None:
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


class _Halt(Stopper):
    """Stops the whole experiment once one of ``checks`` returns a reason (an exception) to."""

    def __init__(self, *checks: Callable[[], Exception | None]):
        self.checks = checks

    def reason(self) -> Exception | None:
        for check in self.checks:
            why = check()
            if why is not None:
                return why
        return None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # the trials' own stopping is the scheduler's (schedule.py)

    def stop_all(self) -> bool:
        return self.reason() is not None

    def __getstate__(self) -> dict:  # Ray Tune pickles the run config (tuner.pkl); the checks stay here
        return {"checks": ()}


def tune_trials(plan: SweepPlan, searcher: CellSearcher, *, todo: int, samples: int, uid: str,
          on_trial_done: Callable[[str, dict], None] | None, on_epoch: Callable[[dict], None] | None,
          ray_address: str | None, halt: Callable[[], Exception | None] | None = None) -> dict[str, int]:  # fmt: skip
    """Ray Tune runs the ``todo`` trials the searcher hands out; returns the counts by status.
    ``halt``: asked after every event; a reason it returns stops the sweep and is raised (besides
    the recorder's own: the table would not take a trial's rows). Everything here gets the spec
    without secrets: Ray Tune pickles it to disk (tuner.pkl)."""
    safe = plan.safe
    if todo <= 0:
        return {"ok": 0, "failed": 0, "pruned": 0}
    _init_ray(ray_address)
    sink = _start_sink(plan.run_dir) if safe.storage.keep_adapters != "none" else None
    trackers = None
    if safe.tracking.any():
        from scaling.tracking import Trackers

        trackers = Trackers(safe, plan.run_dir, mlflow_uri=plan.mlflow_uri)
    recorder = _Recorder(safe, plan.run_dir, on_trial_done, study_uid=uid, trackers=trackers, on_epoch=on_epoch)
    # the storage stayed down (the searcher's): the finished trial's rows are recorded, then it stops
    stop = _Halt(recorder.halt_reason, searcher.storage_halt_reason, *([halt] if halt is not None else []))
    searcher.halt = stop.reason  # no new trial once the sweep is stopping
    tuner = tune.Tuner(
        tune.with_resources(_make_trainable(plan.worker_spec),
                            {"cpu": safe.resources.cpus, "gpu": safe.resources.gpus}),  # fmt: skip
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(safe),
            num_samples=samples,  # the searcher says when it is done
            max_concurrent_trials=safe.resources.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{_dt.datetime.now():%Y%m%d-%H%M%S}",
            storage_path=str(plan.run_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=safe.resources.max_failures),
            callbacks=[recorder],
            stop=stop,
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
        searcher.halt = None
    why = stop.reason()
    if why is not None:
        raise why
    return dict(recorder.counts)
