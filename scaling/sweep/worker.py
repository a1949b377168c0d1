"""The trial, as Ray runs it in a worker: config -> trial/ -> tune.report.

Trials run in Ray actors reused between trials (``reuse_actors=True``): the base model
is loaded once per worker and kept in `_WORKER_CACHE`. torch and scaling.trial are
imported inside the worker only, so the driver never loads them. Bad hyperparameters
(a diverging LR, a bad config) are caught here and reported as a failed result;
anything else raised is an infrastructure fault that Ray retries
(``FailureConfig.max_failures``) before the recorder writes it.

Read top to bottom:
  1. _trial_config: the spec and the Ray config -> one TrialConfig
  2. _make_trainable: one Ray trial = one solo trial, or one pack (_run_pack); each trial
     that ends well sends its adapter to the driver's sink (storage.keep_adapters)
  3. the worker's memory: _trim_heap, _worker_stats
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from analysis.table import SELECT_METRIC
from scaling.spec import StudySpec

__all__ = ["SINK_NAME"]

SINK_NAME = "scaling-adapter-sink"  # the driver's actor that writes adapters into the run dir

# Kept alive in each Ray worker process between reused trials (base model, tokenised pools).
_WORKER_CACHE: dict[str, Any] = {}


# 1. The trial's config -----------------------------------------------------------------
def _trial_config(spec: StudySpec, config: dict, *, learning_rate: float, seed: int) -> Any:
    """The trial.TrialConfig of one trial: the cell's axes from `config` (its base model too, with a
    model axis), the rest from the spec."""
    from scaling.trial import TrialConfig

    return TrialConfig(
        model=config.get("model") or spec.model,
        task_kind=spec.task.kind,
        task_digits=spec.task.digits,
        task_path=spec.task.path,
        task_seed=spec.task.seed,
        dataset_size=int(config["dataset_size"]),
        epochs=int(config["epochs"]),
        learning_rate=float(learning_rate),
        lora_r=int(config["lora_r"]),
        lora_alpha=spec.lora.alpha_for(int(config["lora_r"])),
        lora_dropout=spec.lora.dropout,
        target_modules=(spec.lora.target_modules if isinstance(spec.lora.target_modules, str)
                        else tuple(spec.lora.target_modules)),
        batch_size=spec.train.batch_size,
        seed=int(seed),
        validation_size=spec.eval.validation_size,
        test_size=spec.eval.test_size,
        warmup_fraction=spec.train.warmup_fraction,
        weight_decay=spec.train.weight_decay,
        threads=max(1, int(spec.resources.cpus)),
        task_split=spec.task.split,
        max_length=spec.train.max_length,
        precision=spec.train.precision,
        gradient_checkpointing=spec.train.gradient_checkpointing,
        quantize=spec.lora.quantize,
    )


# 2. The trainable ------------------------------------------------------------------
def _make_trainable(spec_dict: dict) -> Callable[[dict], None]:
    def trainable(config: dict) -> None:
        from scaling import trial  # imported in the worker: torch stays out of the driver

        spec = StudySpec.model_validate(spec_dict)
        if "members" in config:
            return _run_pack(spec, config)
        cfg = _trial_config(spec, config, learning_rate=config["learning_rate"], seed=config["seed"])
        last: dict[str, Any] = {"epoch": 0}
        stage = _stage(spec)
        save_to = None if stage is None else str(Path(stage) / "a")

        def report(metrics: dict) -> None:
            last.update(metrics)
            tune.report({**metrics, **_worker_stats(), "epochs": cfg.epochs, "status": "ok", "error": ""})

        try:
            trial.run_trial(cfg, report=report, cache=_WORKER_CACHE, save_to=save_to)
            _send_adapter(spec, f"{config['optuna_study']}#{config['optuna_trial']}", save_to)
        except (trial.TrialDiverged, ValueError) as err:
            # a property of the hyperparameters: retrying cannot help, record it and move on
            tune.report(
                {
                    "epoch": int(last.get("epoch", 0)) + 1,
                    "epochs": cfg.epochs,
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                    SELECT_METRIC: float("nan"),  # Tune requires the metric key; the searcher tells FAIL
                }
            )
        finally:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            _trim_heap()

    return trainable


def _stage(spec: StudySpec) -> str | None:
    """A worker-local folder for the adapters of one Ray trial (None: adapters are not kept)."""
    return None if spec.storage.keep_adapters == "none" else tempfile.mkdtemp(prefix="scaling-adapter-")


def _send_adapter(spec: StudySpec, trial_id: str, folder: str | None) -> None:
    """Send a saved adapter's files to the driver's sink (scaling/sweep/run.py), which writes them
    under <run dir>/adapters/: workers share no filesystem with the driver on a cluster.
    The trial's rows stand either way: a lost adapter is a warning here and, if the trial is
    selected, one from keep_selected when the sweep ends."""
    if folder is None or not os.path.isdir(folder):
        return
    try:
        files = {f.name: f.read_bytes() for f in Path(folder).iterdir() if f.is_file()}
        ray.get(ray.get_actor(SINK_NAME).put.remote(trial_id, files))
    except Exception as err:  # never fail a trial that trained: its rows are what matters
        import warnings

        warnings.warn(f"adapter of {trial_id} not kept: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)


def _run_pack(spec: StudySpec, config: dict) -> None:
    """One Ray trial = one pack: the members train together on one base (scaling/trial/pack.py);
    every result is one member's, tagged with its index and Optuna trial number."""
    from scaling.stopping import RungTable
    from scaling.trial import TrialDiverged, run_packed

    members = config["members"]
    cfgs = [_trial_config(spec, config, learning_rate=m["learning_rate"], seed=m["seed"]) for m in members]
    stage = _stage(spec)
    save_to = None if stage is None else [str(Path(stage) / str(i)) for i in range(len(members))]
    last_epoch = [0] * len(members)
    es = spec.early_stopping
    table = None
    if es.method != "none":
        table = RungTable(es.method, max_epochs=cfgs[0].epochs, grace_epochs=es.grace_epochs,
                          reduction_factor=es.reduction_factor, history=config.get("stop_history"))  # fmt: skip

    judged = [table is not None and m["phase"] == "search" for m in members]  # repeats always finish

    def stopper(i: int) -> Callable[[dict], bool] | None:
        if not judged[i]:
            return None
        return lambda metrics: table.should_stop(i, metrics["epoch"], metrics[SELECT_METRIC])

    def tag(i: int) -> dict[str, Any]:
        return {"epochs": cfgs[i].epochs, "member": i, "optuna_trial": int(members[i]["optuna_trial"])}

    def reporter(i: int) -> Callable[[dict], None]:
        def report(metrics: dict) -> None:
            last_epoch[i] = int(metrics.get("epoch", 0))
            if judged[i]:
                table.record(i, last_epoch[i], metrics[SELECT_METRIC])
            tune.report({**metrics, **_worker_stats(), **tag(i), "status": "ok", "error": ""})

        return report

    try:
        out = run_packed(cfgs, reports=[reporter(i) for i in range(len(cfgs))],
                         should_stops=[stopper(i) for i in range(len(cfgs))], cache=_WORKER_CACHE,
                         threads=cfgs[0].threads, max_adapters=config["active"], save_to=save_to)  # fmt: skip
        for r in out:  # anything but bad hyperparameters is an infrastructure fault: Ray retries the pack
            if isinstance(r, BaseException) and not isinstance(r, TrialDiverged | ValueError):
                raise r
        for i, r in enumerate(out):
            if not isinstance(r, BaseException) and save_to is not None:
                _send_adapter(spec, f"{config['optuna_study']}#{members[i]['optuna_trial']}", save_to[i])
        for i, r in enumerate(out):
            if isinstance(r, BaseException):  # this member's hyperparameters failed: the others stand
                tune.report(
                    {
                        "epoch": last_epoch[i] + 1,
                        **tag(i),
                        "status": "failed",
                        "error": f"{type(r).__name__}: {r}",
                        SELECT_METRIC: float("nan"),
                    }
                )
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _trim_heap()


# 3. The worker's memory -------------------------------------------------------------
def _trim_heap() -> None:
    """Hand the trial's freed memory back to the OS before the worker is reused.

    Tune runs each trial of a reused worker in a new thread, and glibc gives new threads
    new malloc arenas: without this a worker's RSS grew ~15 MiB per trial (607 -> 776 MiB
    over 12 tiny trials, tests/test_reliability.py), up to 8 x cores arenas' worth."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


def _worker_stats() -> dict[str, Any]:
    """The worker process's id and resident memory (MiB): a reused worker that leaks shows here."""
    import psutil  # a dependency of peft; only imported in workers

    return {"worker_pid": os.getpid(), "worker_rss_mb": psutil.Process().memory_info().rss / 2**20}
