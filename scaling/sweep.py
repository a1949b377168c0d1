"""Ray Tune + Optuna orchestration: the only module that imports ray.

How a study maps onto the two libraries
---------------------------------------
* Dataset size, epochs (and optionally LoRA rank) are the *axes* of a scaling
  study; learning rate is the nuisance optimised inside every cell.  Each cell
  is one Optuna study named ``<study>/D=..,E=..,r=..`` in the run's Optuna
  storage, sampled by TPE with ``constant_liar=True`` so parallel trials of a
  cell do not pile on the same LR.  Open them with ``optuna-dashboard URL``.
* `CellSearcher` is a Ray Tune `Searcher` that owns these studies: it asks the
  cell with the least work done (largest first on ties: they take longest, so
  starting them early shortens the sweep) and tells Optuna COMPLETE / FAIL /
  PRUNED when Ray reports the trial's end.  Every Ray trial is exactly one
  Optuna trial, and the Optuna trial number travels in the trial config.
* `_Recorder` is a Ray Tune callback in the driver: it buffers a trial's
  per-epoch results and appends them to ``results.parquet`` when the trial ends
  (ok, failed or pruned), so the table never holds half a trial.
* Resuming is the default: a new `scaling sweep` on the same run directory
  reads the Optuna storage, counts finished trials per cell, and re-runs any
  trial a killed driver left RUNNING *under its own Optuna trial number and
  parameters* (Optuna's heartbeat does not cover ask/tell, so we do it here).
* Trials run in Ray actors reused between trials (``reuse_actors=True``): the
  base model is loaded once per worker and kept in `_WORKER_CACHE`.
* Bad hyperparameters (a diverging LR) are caught in the trial and recorded as
  a failed row; anything else raised is treated as an infrastructure fault and
  retried by Ray (``FailureConfig.max_failures``) before being recorded.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.table import RESULTS_FILE, ROW_KEYS, SELECT_METRIC
from scaling.records import RunLock, append_rows, read_results
from scaling.spec import Cell, SpecError, StudySpec

# Ray Tune writes CSV/JSON/TensorBoard logs per trial by default; our table is the record.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

__all__ = ["run_sweep", "SweepResult", "CellSearcher", "open_storage", "cell_study_name"]

optuna.logging.set_verbosity(optuna.logging.WARNING)
# With Tune's per-trial loggers off (our table is the record), Tune's end-of-run
# analysis warns that it finds no result.json; that is expected, not a problem.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

# Kept alive in each Ray worker process between reused trials (base model, tokenised pools).
_WORKER_CACHE: dict[str, Any] = {}


# 1. Optuna storage ----------------------------------------------------------------
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage; a clear error when it cannot be reached."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several readers (dashboard, report) may poll while the sweep writes
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # sqlalchemy raises many kinds
        detail = (str(err).strip().splitlines() or [""])[0]  # drop SQLAlchemy's "Background on this error" lines
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except Exception:
            shown = url
        raise SpecError(f"storage.optuna: cannot open Optuna storage {shown!r}: {type(err).__name__}: {detail}") from None


def cell_study_name(spec: StudySpec, cell: Cell) -> str:
    return f"{spec.name}/{cell.key}"


def _sampler(spec: StudySpec, index: int) -> optuna.samplers.BaseSampler:
    seed = spec.sampler.seed * 1000 + index  # distinct, reproducible stream per cell
    if spec.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # n_startup_trials=2: cells get few trials; TPE must start modelling early to matter
    startup = max(1, min(2, spec.trials_per_cell - 1))
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)


# 2. The searcher -----------------------------------------------------------------
@dataclass
class _CellState:
    cell: Cell
    study: optuna.Study
    done_search: int = 0
    done_repeat: int = 0
    in_flight_search: int = 0
    in_flight_repeat: int = 0
    orphans: list[optuna.trial.FrozenTrial] = field(default_factory=list)


class CellSearcher(Searcher):
    """Covers the study's cells; Optuna tunes the learning rate inside each."""

    def __init__(
        self,
        spec: StudySpec,
        storage: optuna.storages.BaseStorage,
        *,
        max_trials: int | None = None,
        recorded: set[str] | None = None,
    ):
        super().__init__(metric=SELECT_METRIC, mode="min")
        self.spec = spec
        self.max_trials = max_trials
        self.started = 0
        self.cells: list[_CellState] = []
        self._live: dict[str, tuple[_CellState, int, str]] = {}  # ray id -> (cell, optuna number, phase)
        # packing (adapters_per_worker > 1): ray id -> (cell, [(optuna number, phase), ...]) and
        # each member's last result, by member index
        self._packs: dict[str, tuple[_CellState, list[tuple[int, str]]]] = {}
        self._pack_last: dict[str, dict[int, dict]] = {}
        self.orphans_found = 0
        for i, cell in enumerate(spec.cells()):
            study = optuna.create_study(
                study_name=cell_study_name(spec, cell),
                storage=storage,
                direction="minimize",
                sampler=_sampler(spec, i),
                load_if_exists=True,
            )
            for k, v in (("dataset_size", cell.dataset_size), ("epochs", cell.epochs), ("lora_r", cell.lora_r)):
                study.set_user_attr(k, v)
            study.set_user_attr("metric", SELECT_METRIC)
            st = _CellState(cell=cell, study=study)
            for t in study.get_trials(deepcopy=False):
                phase = t.user_attrs.get("phase", "search")
                in_table = recorded is None or f"{study.study_name}#{t.number}" in recorded
                if t.state.is_finished() and in_table:
                    if phase == "repeat":
                        st.done_repeat += 1
                    else:
                        st.done_search += 1
                else:
                    # RUNNING/WAITING: a previous driver died holding it; or finished in Optuna
                    # but killed before its rows reached the table. Re-run it under its own
                    # number (telling Optuna again is a no-op: skip_if_finished).
                    st.orphans.append(t)
            self.orphans_found += len(st.orphans)
            self.cells.append(st)

    # -- bookkeeping -------------------------------------------------------------
    def remaining(self) -> int:
        per = self.spec.trials_per_cell + self.spec.seeds.repeat_best
        left = sum(max(0, per - c.done_search - c.done_repeat) for c in self.cells)
        return left if self.max_trials is None else min(left, self.max_trials)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def _config(self, st: _CellState, number: int, lr: float, seed: int, phase: str) -> dict[str, Any]:
        c = st.cell
        return {
            "dataset_size": c.dataset_size,
            "epochs": c.epochs,
            "lora_r": c.lora_r,
            "learning_rate": float(lr),
            "seed": int(seed),
            "cell": c.key,
            "phase": phase,
            "optuna_study": st.study.study_name,
            "optuna_trial": int(number),
        }

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_trials is not None and self.started >= self.max_trials:
            return Searcher.FINISHED
        # (a) trials a dead driver left RUNNING: re-run them under their own number
        for st in self.cells:
            if not st.orphans:
                continue
            # packed: up to K of the cell's leftovers train together, each under its number
            n = min(self.spec.packing.adapters_per_worker, len(st.orphans), self._budget())
            members = [self._claim_orphan(st, t) for t in st.orphans[:n]]
            del st.orphans[:n]
            if self.spec.packing.adapters_per_worker > 1:
                return self._start_pack(trial_id, st, members)
            return self._start(trial_id, st, *members[0])
        # (b) LR search: the cell with least work, the most expensive first on ties
        open_cells = [
            st for st in self.cells if st.done_search + st.in_flight_search < self.spec.trials_per_cell
        ]
        if open_cells:
            st = min(
                open_cells,
                key=lambda s: (s.done_search + s.in_flight_search, -s.cell.dataset_size * s.cell.epochs),
            )
            if self.spec.packing.adapters_per_worker > 1:
                # one Ray trial = one pack of up to K Optuna trials of this cell, asked at once
                # (TPE's constant liar keeps the K pending asks apart)
                # with early stopping a pack also carries as many queued configs, which join as
                # members are stopped (the next config takes the freed slot)
                per_pack = self.spec.packing.adapters_per_worker * (
                    2 if self.spec.early_stopping.method != "none" else 1
                )
                n = min(per_pack, self.spec.trials_per_cell - st.done_search - st.in_flight_search, self._budget())
                members = [(*self._ask_search(st), self.spec.seeds.base, "search") for _ in range(n)]
                st.in_flight_search += n
                return self._start_pack(trial_id, st, members)
            number, lr = self._ask_search(st)
            st.in_flight_search += 1
            return self._start(trial_id, st, number, lr, self.spec.seeds.base, "search")
        # (c) extra seeds for the best config of every cell whose search is finished
        k = self.spec.seeds.repeat_best
        waiting = False
        for st in self.cells:
            if st.done_repeat + st.in_flight_repeat >= k:
                continue
            if st.in_flight_search:
                waiting = True
                continue
            best = self._best(st)
            if best is None:  # every search trial failed: nothing worth repeating
                continue
            i = st.done_repeat + st.in_flight_repeat
            lr = best.params["learning_rate"]
            if self.spec.packing.adapters_per_worker > 1:
                n = min(self.spec.packing.adapters_per_worker, k - i, self._budget())
                seeds = [self.spec.seeds.base + 1 + i + j for j in range(n)]
                members = [(self._ask_repeat(st, best, seed), lr, seed, "repeat") for seed in seeds]
                st.in_flight_repeat += n
                return self._start_pack(trial_id, st, members)
            seed = self.spec.seeds.base + 1 + i
            number = self._ask_repeat(st, best, seed)
            st.in_flight_repeat += 1
            return self._start(trial_id, st, number, lr, seed, "repeat")
        if waiting or self._live or self._packs:
            return None  # Ray asks again when a trial finishes
        return Searcher.FINISHED

    def _claim_orphan(self, st: _CellState, t: optuna.trial.FrozenTrial) -> tuple[int, float, int, str]:
        """A leftover trial, counted in flight again: (Optuna number, its LR, its seed, phase)."""
        phase = t.user_attrs.get("phase", "search")
        if phase == "repeat":
            st.in_flight_repeat += 1
        else:
            st.in_flight_search += 1
        seed = int(t.user_attrs.get("seed", self.spec.seeds.base))
        return t.number, t.params["learning_rate"], seed, phase

    def _ask_search(self, st: _CellState) -> tuple[int, float]:
        """Ask the cell's study for one LR-search trial: (Optuna number, learning rate)."""
        lr_spec = self.spec.learning_rate
        if self.spec.sampler.anchor and not st.study.get_trials(deepcopy=False):
            mid = math.sqrt(lr_spec.low * lr_spec.high) if lr_spec.log else (lr_spec.low + lr_spec.high) / 2
            st.study.enqueue_trial({"learning_rate": mid}, user_attrs={"anchor": True})
        ot = st.study.ask()
        lr = ot.suggest_float("learning_rate", lr_spec.low, lr_spec.high, log=lr_spec.log)
        ot.set_user_attr("phase", "search")
        ot.set_user_attr("seed", self.spec.seeds.base)
        return ot.number, lr

    def _ask_repeat(self, st: _CellState, best: optuna.trial.FrozenTrial, seed: int) -> int:
        """Ask the cell's study for a re-run of its best LR under a new seed: the Optuna number."""
        st.study.enqueue_trial(
            {"learning_rate": best.params["learning_rate"]},
            user_attrs={"phase": "repeat", "seed": seed, "repeat_of": best.number},
            skip_if_exists=False,
        )
        ot = st.study.ask()
        ot.suggest_float(
            "learning_rate", self.spec.learning_rate.low, self.spec.learning_rate.high, log=self.spec.learning_rate.log
        )
        return ot.number

    def _budget(self) -> int:
        """How many more Optuna trials max_trials allows (members of a pack count one each)."""
        return self.spec.planned_trials() if self.max_trials is None else self.max_trials - self.started

    def _best(self, st: _CellState) -> optuna.trial.FrozenTrial | None:
        done = [
            t
            for t in st.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("phase", "search") == "search" and t.value is not None
        ]
        return min(done, key=lambda t: t.value) if done else None

    def _start(self, trial_id: str, st: _CellState, number: int, lr: float, seed: int, phase: str) -> dict:
        self.started += 1
        self._live[trial_id] = (st, number, phase)
        return self._config(st, number, lr, seed, phase)

    def _start_pack(self, trial_id: str, st: _CellState, members: list[tuple[int, float, int, str]]) -> dict:
        self.started += len(members)
        self._packs[trial_id] = (st, [(number, phase) for number, _, _, phase in members])
        self._pack_last[trial_id] = {}
        c = st.cell
        extra: dict[str, Any] = {}
        if self.spec.early_stopping.method != "none":
            # the pack stops its own members (scaling/stopping.py) against the cell's other
            # LR-search trials: their validation losses per epoch, as the storage has them now
            mine = {number for number, *_ in members}
            history: dict[int, list[float]] = {}
            for t in st.study.get_trials(deepcopy=False):
                if t.number not in mine and t.user_attrs.get("phase", "search") == "search":
                    for epoch, v in t.intermediate_values.items():
                        history.setdefault(int(epoch), []).append(float(v))
            extra = {"stop_history": history}
        return {
            **extra,
            # how many members train at once; the rest (early stopping) wait for a free slot
            "active": min(self.spec.packing.adapters_per_worker, len(members)),
            "dataset_size": c.dataset_size,
            "epochs": c.epochs,
            "lora_r": c.lora_r,
            "cell": c.key,
            "optuna_study": st.study.study_name,
            "members": [
                {"optuna_trial": int(number), "learning_rate": float(lr), "seed": int(seed), "phase": phase}
                for number, lr, seed, phase in members
            ],
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        live = self._live.get(trial_id)
        if trial_id in self._packs:  # a pack: the result is one member's
            st, members = self._packs[trial_id]
            i = int(result.get("member", -1))
            if not 0 <= i < len(members):
                return
            self._pack_last[trial_id][i] = dict(result)
            live = (st, members[i][0], members[i][1])
        value = result.get(SELECT_METRIC)
        if live is None or value is None or not math.isfinite(value):
            return
        st, number, _ = live
        try:  # intermediate values: the dashboard's learning curves and Optuna pruners
            st.study._storage.set_trial_intermediate_value(
                st.study._storage.get_trial_id_from_study_id_trial_number(st.study._study_id, number),
                int(result.get("epoch", 0)),
                float(value),
            )
        except Exception:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._packs:  # a pack: tell Optuna each member's own end
            st, members = self._packs.pop(trial_id)
            last = self._pack_last.pop(trial_id, {})
            for i, (number, phase) in enumerate(members):
                self._tell(st, number, phase, last.get(i), error)
            return
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        st, number, phase = live
        self._tell(st, number, phase, result, error)

    def _tell(self, st: _CellState, number: int, phase: str, result: dict | None, error: bool) -> None:
        status = _trial_status(result, error)
        value = (result or {}).get(SELECT_METRIC)
        state = {
            "ok": optuna.trial.TrialState.COMPLETE,
            "pruned": optuna.trial.TrialState.PRUNED,
        }.get(status, optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL  # never hand Optuna a fake value
        st.study.tell(number, value if state == optuna.trial.TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        if phase == "repeat":
            st.in_flight_repeat -= 1
            st.done_repeat += 1
        else:
            st.in_flight_search -= 1
            st.done_search += 1

    # Our state lives in the Optuna storage; Ray's experiment checkpoint need not pickle it
    # (the Optuna storage holds an engine and locks). Resume rebuilds from the storage.
    def __getstate__(self) -> dict:
        return {"spec": self.spec, "max_trials": self.max_trials}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text("state is in the Optuna storage\n")

    def restore(self, checkpoint_path: str) -> None:
        pass


def _trial_status(result: dict | None, error: bool) -> str:
    if error:
        return "failed"
    if not result:
        return "pruned"
    if result.get("status") == "failed":
        return "failed"
    if int(result.get("epoch", 0) or 0) < int(result.get("epochs", 0) or 0):
        return "pruned"
    return "ok"


# 3. The trial, as Ray runs it in a worker ---------------------------------------
def _trial_config(spec: StudySpec, config: dict, *, learning_rate: float, seed: int) -> Any:
    """The trial.TrialConfig of one trial: the cell's axes from `config`, the rest from the spec."""
    from scaling.trial import TrialConfig

    return TrialConfig(
        model=spec.model,
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
        target_modules=tuple(spec.lora.target_modules),
        batch_size=spec.train.batch_size,
        seed=int(seed),
        validation_size=spec.eval.validation_size,
        test_size=spec.eval.test_size,
        warmup_fraction=spec.train.warmup_fraction,
        weight_decay=spec.train.weight_decay,
        threads=max(1, int(spec.resources.cpus)),
    )


def _make_trainable(spec_dict: dict) -> Callable[[dict], None]:
    def trainable(config: dict) -> None:
        from scaling import trial  # imported in the worker: torch stays out of the driver

        spec = StudySpec.model_validate(spec_dict)
        if "members" in config:
            return _run_pack(spec, config)
        cfg = _trial_config(spec, config, learning_rate=config["learning_rate"], seed=config["seed"])
        last: dict[str, Any] = {"epoch": 0}

        def report(metrics: dict) -> None:
            last.update(metrics)
            tune.report({**metrics, **_worker_stats(), "epochs": cfg.epochs, "status": "ok", "error": ""})

        try:
            trial.run_trial(cfg, report=report, cache=_WORKER_CACHE)
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
            _trim_heap()

    return trainable


def _run_pack(spec: StudySpec, config: dict) -> None:
    """One Ray trial = one pack: the members train together on one base (scaling/trial/pack.py);
    every result is one member's, tagged with its index and Optuna trial number."""
    from scaling.stopping import RungTable
    from scaling.trial import TrialDiverged, run_packed

    members = config["members"]
    cfgs = [_trial_config(spec, config, learning_rate=m["learning_rate"], seed=m["seed"]) for m in members]
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
                         threads=cfgs[0].threads, max_adapters=config["active"])  # fmt: skip
        for r in out:  # anything but bad hyperparameters is an infrastructure fault: Ray retries the pack
            if isinstance(r, BaseException) and not isinstance(r, TrialDiverged | ValueError):
                raise r
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
        _trim_heap()


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


# 4. Recording rows in the driver -------------------------------------------------


class _Recorder(Callback):
    def __init__(self, spec: StudySpec, run_dir: Path, on_done: Callable[[str, dict], None] | None = None):
        self.spec = spec
        self.run_dir = run_dir
        self.buffers: dict[str, list[dict]] = {}
        self.on_done = on_done
        self.counts = {"ok": 0, "failed": 0, "pruned": 0}

    def __getstate__(self) -> dict:  # Tuner pickles callbacks; ours is rebuilt on resume
        return {"spec": self.spec, "run_dir": self.run_dir, "buffers": {}, "on_done": None, "counts": {}}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.buffers.setdefault(trial.trial_id, []).append(dict(result))

    def _flush(self, trial: Any, status: str, error: str = "") -> None:
        rows, base = self._rows(trial.config, self.buffers.pop(trial.trial_id, []), status, error)
        append_rows(self.run_dir, rows)
        self.counts[status] += 1
        if self.on_done:
            self.on_done(status, base)

    def _flush_pack(self, trial: Any, error: str | None = None) -> None:
        """A pack's members become the rows a solo trial each would have written, in one append;
        error (the pack itself failed) fails every member."""
        cfg = trial.config
        results = self.buffers.pop(trial.trial_id, [])
        rows: list[dict] = []
        done: list[tuple[str, dict]] = []
        for i, m in enumerate(cfg["members"]):
            mine = [r for r in results if r.get("member") == i]
            status = "failed" if error is not None else _trial_status(mine[-1] if mine else None, False)
            solo = {**{k: cfg[k] for k in ("dataset_size", "epochs", "lora_r", "cell", "optuna_study")}, **m}
            solo["pack_size"] = cfg["active"]
            member_rows, base = self._rows(solo, mine, status, error or "")
            rows += member_rows
            done.append((status, base))
        append_rows(self.run_dir, rows)
        for status, base in done:
            self.counts[status] += 1
            if self.on_done:
                self.on_done(status, base)

    def _rows(self, cfg: dict, results: list[dict], status: str, error: str) -> tuple[list[dict], dict]:
        evals = [r for r in results if r.get("status") != "failed"]
        failed = [r for r in results if r.get("status") == "failed"]
        if failed and not error:
            error = failed[-1].get("error", "")
        base = {
            "study": self.spec.name,
            "trial_id": f"{cfg['optuna_study']}#{cfg['optuna_trial']}",
            "optuna_trial": cfg["optuna_trial"],
            "cell": cfg["cell"],
            "phase": cfg["phase"],
            "dataset_size": cfg["dataset_size"],
            "epochs": cfg["epochs"],
            "learning_rate": cfg["learning_rate"],
            "lora_r": cfg["lora_r"],
            "lora_alpha": self.spec.lora.alpha_for(cfg["lora_r"]),
            "seed": cfg["seed"],
            "model": self.spec.model,
            "task": self.spec.task.kind if self.spec.task.kind != "addition" else f"addition{self.spec.task.digits}",
            "pack_size": cfg.get("pack_size", 1),
            "status": status,
            "error": error or None,
            "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        rows = [{**base, **{k: r.get(k) for k in ROW_KEYS}, "node": r.get("node_ip")} for r in evals]
        if not rows:  # a failure before the first evaluation is still a row
            rows = [{**base, "epoch": 0, "node": (failed[-1].get("node_ip") if failed else None)}]
        return rows, base

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if "members" in trial.config:
            return self._flush_pack(trial)
        last = trial.last_result or {}
        self._flush(trial, _trial_status(last, False))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # an infrastructure fault (dead worker or node): Ray re-runs the trial from its first
        # epoch, so the failed attempt's evaluations must not become rows beside the retry's
        self.buffers.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = ""
        try:
            exc = trial.get_pickled_error()
            cause = getattr(exc, "cause", None)  # a RayTaskError wraps the trial's own exception
            exc = cause if isinstance(cause, BaseException) else exc
            err = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        except Exception:
            pass
        if not err and trial.error_file and os.path.exists(trial.error_file):
            err = Path(trial.error_file).read_text().strip().splitlines()[-1]
        err = (err or "trial errored")[:2000]
        if "members" in trial.config:
            return self._flush_pack(trial, err)
        self._flush(trial, "failed", err)


# 5. The sweep --------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    results: Path
    optuna_url: str
    trials_run: int
    counts: dict[str, int]
    orphans_resumed: int
    wall_seconds: float


def _check_same_study(spec: StudySpec, run_dir: Path) -> None:
    """A run directory holds one study: refuse to resume with different axes or LR range."""
    saved = run_dir / "spec.yaml"
    what = ("name", "model", "task", "axes", "learning_rate", "lora", "eval", "train", "sampler")
    mine = spec.model_dump(mode="json", include=set(what))
    if saved.exists():
        theirs = yaml.safe_load(saved.read_text()) or {}
        theirs = {k: theirs.get(k) for k in what}
        diff = [k for k in what if mine.get(k) != theirs.get(k)]
        if diff:
            raise SpecError(
                f"{spec.source}: {', '.join(diff)}: must match the study already in {run_dir} to resume it "
                f"(got a different value); use another --out for a new study"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        # packing is how the study runs, not what it is: off (the default), spec.yaml is as before
        exclude = {"source"} | ({"packing"} if spec.packing.adapters_per_worker == 1 else set())
        saved.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude=exclude), sort_keys=False))


def _init_ray(spec: StudySpec) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def run_sweep(
    spec: StudySpec,
    *,
    out: str | Path | None = None,
    max_trials: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_trial_done: Callable[[str, dict], None] | None = None,
) -> SweepResult:
    """Run (or resume) a study; returns where everything was written."""
    t0 = time.perf_counter()
    run_dir = spec.run_dir(out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        _check_same_study(spec, run_dir)
        url = spec.optuna_url(run_dir)
        try:
            storage = open_storage(url)
        except SpecError as err:
            raise SpecError(f"{spec.source}: {err}") from None
        recorded: set[str] = set()  # trials whose rows reached the table
        if (run_dir / RESULTS_FILE).exists():
            recorded = set(read_results(run_dir)["trial_id"].astype(str))
        searcher = CellSearcher(spec, storage, max_trials=max_trials, recorded=recorded)
        todo = searcher.remaining()
        if on_start:
            on_start(todo, spec.planned_trials())
        recorder = _Recorder(spec, run_dir, on_trial_done)
        if todo > 0:
            from scaling.models import ensure_base_model

            ensure_base_model(spec.model)  # build once here, not in every worker at once
            _init_ray(spec)
            res = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
            scheduler = _scheduler(spec)
            tuner = tune.Tuner(
                tune.with_resources(_make_trainable(spec.model_dump(mode="json")), res),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=todo,
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
            tuner.fit()
        results = run_dir / RESULTS_FILE
        if results.exists():
            read_results(run_dir)  # fail loudly now if what we wrote cannot be read back
        return SweepResult(
            run_dir=run_dir,
            results=results,
            optuna_url=url,
            trials_run=sum(recorder.counts.values()),
            counts=dict(recorder.counts),
            orphans_resumed=searcher.orphans_found,
            wall_seconds=time.perf_counter() - t0,
        )


def _scheduler(spec: StudySpec) -> Any:
    if spec.early_stopping.method == "none" or spec.packing.adapters_per_worker > 1:
        # packed, every Ray trial is a pack (leftovers too), and a pack stops its own
        # members (scaling/stopping.py): Ray's schedulers could only stop all K at once
        return None
    return _PerCellScheduler(spec)


# 6. Early stopping inside a cell -----------------------------------------------
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler  # noqa: E402


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
