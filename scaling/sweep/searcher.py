"""CellSearcher: a Ray Tune Searcher that owns one Optuna study per cell.

Dataset size, epochs (and optionally LoRA rank) are the *axes* of a scaling study;
learning rate is the nuisance optimised inside every cell. Each cell is one Optuna
study named ``<study>/D=..,E=..,r=..`` in the run's Optuna storage, sampled by TPE with
``constant_liar=True`` so parallel trials of a cell do not pile on the same LR (open
them with ``optuna-dashboard URL``). The searcher asks the cell with the least work done
(largest first on ties: they take longest, so starting them early shortens the sweep)
and tells Optuna COMPLETE / FAIL / PRUNED when Ray reports the trial's end. Every Ray
trial is one Optuna trial (or, packed, one pack of them), and the Optuna trial number
travels in the trial config. Resuming re-runs any trial a killed driver left RUNNING
under its own number and parameters (Optuna's heartbeat does not cover ask/tell).

Read top to bottom:
  1. the Optuna storage, study names and samplers
  2. _CellState and CellSearcher: resume, suggest (leftovers, LR search, repeats), tell
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from analysis.table import SELECT_METRIC
from scaling.lr_sampler import BracketSampler, cell_attrs, summarise_trials
from scaling.records import _trial_status
from scaling.records_io import RecordsError
from scaling.spec import Cell, StudySpec
from scaling.sweep._retry import StorageDown
from scaling.sweep.identity import UID_ATTR, cell_study_name

__all__ = ["CellSearcher", "StorageBacked"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


# 1. Samplers ----------------------------------------------------------------------
def _sampler(spec: StudySpec, index: int) -> optuna.samplers.BaseSampler:
    seed = spec.sampler.seed * 1000 + index  # distinct, reproducible stream per cell
    if spec.sampler.kind == "bracket":
        # brackets each cell's optimum, refines it, and starts a cell at the LR its finished
        # sibling cells predict (scaling/lr_sampler.py); a pack's K asks form one bracket
        return BracketSampler(pack_size=spec.packing.adapters_per_worker, seed=seed)
    if spec.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # n_startup_trials=2: cells get few trials; TPE must start modelling early to matter
    startup = max(1, min(2, spec.trials_per_cell - 1))
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)


# 2. The searcher -----------------------------------------------------------------
_STATES = {"ok": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}


@dataclass
class _CellState:
    cell: Cell
    study: optuna.Study
    done_search: int = 0
    done_repeat: int = 0
    in_flight_search: int = 0
    in_flight_repeat: int = 0
    orphans: list[optuna.trial.FrozenTrial] = field(default_factory=list)


class StorageBacked:
    """A searcher whose state lives in the Optuna storage: Ray's experiment checkpoint need not
    pickle it (the storage holds an engine and locks); a resume rebuilds it from the storage."""

    spec: StudySpec
    max_trials: int | None
    # set by tune_trials: returns why the sweep is stopping (then suggest hands out nothing), else None
    halt: Callable[[], Exception | None] | None = None

    # set when the storage stayed unreachable past the retry bound (_retry.py): the sweep stops,
    # the finished trials' rows still recorded (Ray tells the searcher first, then the recorder)
    storage_down: str | None = None
    untold: int = 0  # trials that finished while the storage was down: rows recorded, Optuna not told

    started: int = 0  # Optuna trials this sweep has asked for (members of a pack count one each)

    def suggest(self, trial_id: str) -> dict | str | None:
        """Ray's ask: the next config (``_suggest``, per searcher), or FINISHED once the sweep
        must stop or max_trials is spent."""
        if self.halted() or (self.max_trials is not None and self.started >= self.max_trials):
            return Searcher.FINISHED
        try:
            return self._suggest(trial_id)
        except StorageDown as err:  # an ask half done leaves a RUNNING trial: a resume claims it
            self._down(err)
            return Searcher.FINISHED

    def _suggest(self, trial_id: str) -> dict | str | None:
        raise NotImplementedError

    def halted(self) -> bool:
        return self.storage_down is not None or (self.halt is not None and self.halt() is not None)

    def _down(self, err: StorageDown) -> None:
        self.storage_down = self.storage_down or str(err)

    def storage_halt_reason(self) -> RecordsError | None:
        """Why the sweep must stop (the Optuna storage stayed unreachable), else None."""
        if self.storage_down is None:
            return None
        untold = f" ({self.untold} of those trials not yet told to Optuna)" if self.untold else ""
        return RecordsError(
            f"{self.storage_down}; the sweep stopped. The rows of every finished trial are in the results "
            f"table{untold}. Run the same `scaling sweep` "
            "again once the storage is back: it tells Optuna what those rows say and re-runs only the "
            "trials without rows"
        )

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "max_trials": self.max_trials}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text("state is in the Optuna storage\n")

    def restore(self, checkpoint_path: str) -> None:
        pass


class CellSearcher(StorageBacked, Searcher):
    """Covers the study's cells; Optuna tunes the learning rate inside each."""

    def __init__(
        self,
        spec: StudySpec,
        storage: optuna.storages.BaseStorage,
        *,
        max_trials: int | None = None,
        recorded: set[str] | dict[str, dict[str, Any]] | None = None,
        study_uid: str | None = None,
        cells: list[Cell],
    ):
        """``cells``: the spec's cells (``spec.cells()``; the sweep's plan holds them). ``recorded``:
        the trial ids with rows in the table; a dict (records.open_table) also says how each
        ended, so a trial whose rows were recorded while the storage was down is told now."""
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
        for i, cell in enumerate(cells):
            study = optuna.create_study(
                study_name=cell_study_name(spec, cell),
                storage=storage,
                direction="minimize",
                sampler=_sampler(spec, i),
                load_if_exists=True,
            )
            for k, v in (("dataset_size", cell.dataset_size), ("epochs", cell.epochs), ("lora_r", cell.lora_r)):
                study.set_user_attr(k, v)
            if cell.model is not None:
                study.set_user_attr("model", cell.model)
            # the cell's place in the study, read by BracketSampler to transfer the LR across cells;
            # with a model axis each base model is its own group (its LR optimum is its own)
            axes = {"dataset_size": cell.dataset_size, "epochs": cell.epochs, "lora_r": cell.lora_r}
            group = spec.name if cell.model is None else f"{spec.name}@{cell.key.split(',', 1)[0]}"
            for k, v in cell_attrs(group=group, axes=axes).items():
                study.set_user_attr(k, v)
            study.set_user_attr("metric", SELECT_METRIC)
            if study_uid is not None:  # the run's identity (scaling/sweep/identity.py)
                study.set_user_attr(UID_ATTR, study_uid)
            st = _CellState(cell=cell, study=study)
            for t in study.get_trials(deepcopy=False):
                phase = t.user_attrs.get("phase", "search")
                key = f"{study.study_name}#{t.number}"
                in_table = recorded is None or key in recorded
                if in_table and not t.state.is_finished() and isinstance(recorded, dict) and "learning_rate" in t.params:
                    # its rows reached the table while the storage was down: tell Optuna what they say
                    t = self._tell_from_rows(study, t, recorded[key])
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
            # enqueued leftovers first: a rerun's own ask must not pop one of them
            st.orphans.sort(key=lambda t: t.state != optuna.trial.TrialState.WAITING)
            self.orphans_found += len(st.orphans)
            self.cells.append(st)

    @staticmethod
    def _tell_from_rows(study: optuna.Study, t: optuna.trial.FrozenTrial, row: dict[str, Any]) -> optuna.trial.FrozenTrial:
        """What _tell would have told, from the trial's last row (records.open_table)."""
        state = _STATES.get(str(row.get("status")), optuna.trial.TrialState.FAIL)
        value = row.get(SELECT_METRIC)
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL
        study.tell(t.number, value if state == optuna.trial.TrialState.COMPLETE else None, state=state,
                   skip_if_finished=True)  # fmt: skip
        return study._storage.get_trial(t._trial_id)

    # -- bookkeeping -------------------------------------------------------------
    def remaining(self) -> int:
        """Trials still to run at least: every cell's trials_per_cell and repeats, plus one for each
        cell whose told trials already ask for an extra (more may follow as trials are told)."""
        per = self.spec.trials_per_cell + self.spec.seeds.repeat_best
        left = sum(max(0, per - c.done_search - c.done_repeat) + self._extra_wanted(c) for c in self.cells)
        return left if self.max_trials is None else min(left, self.max_trials)

    def most_remaining(self) -> int:
        """Trials still to run at most: remaining() plus the extra LR trials cells may still take."""
        cap = self.spec.trials_per_cell + self.spec.sampler.extra_trials
        per = cap + self.spec.seeds.repeat_best
        left = sum(max(0, per - c.done_search - c.done_repeat) for c in self.cells)
        return left if self.max_trials is None else min(left, self.max_trials)

    def planned_trials(self) -> int:
        """The study's planned trials (what the progress bar shows): StudySpec.planned_trials."""
        return self.spec.planned_trials()

    def _extra_wanted(self, st: _CellState) -> bool:
        """True when a cell's LR trials are all told, its best is not bracketed (nor at the range's
        edge on its open side) and sampler.extra_trials allows one more."""
        tpc, extra = self.spec.trials_per_cell, self.spec.sampler.extra_trials
        if st.in_flight_search or st.orphans or not tpc <= st.done_search < tpc + extra:
            return False
        search = [t for t in st.study.get_trials(deepcopy=False)
                  if t.state.is_finished() and t.user_attrs.get("phase", "search") == "search"]  # fmt: skip
        lr = self.spec.learning_rate
        cell = summarise_trials(search, lo=lr.low, hi=lr.high)
        return not cell.done  # `scaling status` asks the same (lr_sampler.wants_extra)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def _config(self, st: _CellState, number: int, lr: float, seed: int, phase: str) -> dict[str, Any]:
        c = st.cell
        return {
            "dataset_size": c.dataset_size,
            "epochs": c.epochs,
            "lora_r": c.lora_r,
            **({"model": c.model} if c.model is not None else {}),
            "learning_rate": float(lr),
            "seed": int(seed),
            "cell": c.key,
            "phase": phase,
            "optuna_study": st.study.study_name,
            "optuna_trial": int(number),
        }

    def _suggest(self, trial_id: str) -> dict | str | None:
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
        # (b) LR search. TPE/random: the cell with least work, the most expensive first on ties.
        # bracket: finish cells in turn (a started cell first), the most expensive first, so
        # later cells start at the LR the finished ones predict
        open_cells = [
            st for st in self.cells if st.done_search + st.in_flight_search < self.spec.trials_per_cell
        ]
        # a cell whose LR trials left its optimum unbracketed: one more, on the open side
        # (asked alone, once its trials are told, so the sampler steps from what they said)
        extra = [] if open_cells else [st for st in self.cells if self._extra_wanted(st)]
        if extra and self._budget() > 0:
            st = min(extra, key=lambda s: -s.cell.dataset_size * s.cell.epochs)
            number, lr = self._ask_search(st)
            st.in_flight_search += 1
            if self.spec.packing.adapters_per_worker > 1:
                return self._start_pack(trial_id, st, [(number, lr, self.spec.seeds.base, "search")])
            return self._start(trial_id, st, number, lr, self.spec.seeds.base, "search")
        if open_cells:
            in_turn = self.spec.sampler.kind == "bracket"
            st = min(
                open_cells,
                key=lambda s: (
                    (s.done_search + s.in_flight_search == 0) if in_turn else s.done_search + s.in_flight_search,
                    -s.cell.dataset_size * s.cell.epochs,
                ),
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
        """A leftover trial, counted in flight again: (Optuna number, its LR, its seed, phase).

        RUNNING with an LR: re-run under its own number. RUNNING without one (the driver died
        between ask and suggest) or WAITING (enqueued, never asked): claimed and given its LR now
        (an enqueued LR is kept). FAIL/PRUNED in Optuna but without rows: Optuna cannot change a
        finished trial's state, so it is re-run under a new number (user attr rerun_of), and the
        state Optuna ends with is the one the new rows say (the old trial keeps no rows).
        """
        phase = t.user_attrs.get("phase", "search")
        seed = int(t.user_attrs.get("seed", self.spec.seeds.base))
        lr_spec = self.spec.learning_rate
        if phase == "repeat":
            st.in_flight_repeat += 1
        else:
            st.in_flight_search += 1
        if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
            lr = t.params.get("learning_rate")
            if lr is not None:
                st.study.enqueue_trial({"learning_rate": lr}, skip_if_exists=False,
                                       user_attrs={"phase": phase, "seed": seed, "rerun_of": t.number})  # fmt: skip
            ot = st.study.ask()
            if lr is None:
                ot.set_user_attr("phase", phase)
                ot.set_user_attr("seed", seed)
                ot.set_user_attr("rerun_of", t.number)
            lr = ot.suggest_float("learning_rate", lr_spec.low, lr_spec.high, log=lr_spec.log)
            return ot.number, lr, seed, phase
        if "learning_rate" in t.params:
            return t.number, t.params["learning_rate"], seed, phase
        storage = st.study._storage
        if t.state == optuna.trial.TrialState.WAITING:
            # what study.ask() does with an enqueued trial: take it (RUNNING), then suggest
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING)
        ot = optuna.trial.Trial(st.study, t._trial_id)
        if "phase" not in t.user_attrs:
            ot.set_user_attr("phase", phase)
            ot.set_user_attr("seed", seed)
        lr = ot.suggest_float("learning_rate", lr_spec.low, lr_spec.high, log=lr_spec.log)
        return t.number, lr, seed, phase

    def _ask_search(self, st: _CellState) -> tuple[int, float]:
        """Ask the cell's study for one LR-search trial: (Optuna number, learning rate)."""
        lr_spec = self.spec.learning_rate
        # the bracket sampler places a cell's first trial itself (the log-midpoint, or the LR
        # the finished cells predict)
        if self.spec.sampler.anchor and self.spec.sampler.kind != "bracket" and not st.study.get_trials(deepcopy=False):
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
        return self.spec.max_trials() if self.max_trials is None else self.max_trials - self.started

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
            # a pack is one cell's trials, so one base model: packs never mix models
            **({"model": c.model} if c.model is not None else {}),
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
        if self.storage_down is not None:
            return
        try:  # intermediate values: the dashboard's learning curves and Optuna pruners
            st.study._storage.set_trial_intermediate_value(
                st.study._storage.get_trial_id_from_study_id_trial_number(st.study._study_id, number),
                int(result.get("epoch", 0)),
                float(value),
            )
        except StorageDown as err:  # down past the bound: stop, rather than wait it out at every result
            self._down(err)
        except Exception:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._packs:  # a pack: tell Optuna each member's own end
            st, members = self._packs.pop(trial_id)
            last = self._pack_last.pop(trial_id, {})
            for i, (number, phase) in enumerate(members):
                self._tell_or_halt(st, number, phase, last.get(i), error)
            return
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        st, number, phase = live
        self._tell_or_halt(st, number, phase, result, error)

    def _tell_or_halt(self, st: _CellState, number: int, phase: str, result: dict | None, error: bool) -> None:
        """Tell Optuna; with the storage down past the retry bound, never raise here (Ray would then
        skip the recorder and lose the trial's rows): stop the sweep, the rows recorded, and leave
        the telling to the resume (it tells what the rows say)."""
        if self.storage_down is None:
            try:
                return self._tell(st, number, phase, result, error)
            except StorageDown as err:
                self._down(err)
        self.untold += 1

    def _tell(self, st: _CellState, number: int, phase: str, result: dict | None, error: bool) -> None:
        status = _trial_status(result, error)
        value = (result or {}).get(SELECT_METRIC)
        state = _STATES.get(status, optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL  # never hand Optuna a fake value
        st.study.tell(number, value if state == optuna.trial.TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        if phase == "repeat":
            st.in_flight_repeat -= 1
            st.done_repeat += 1
        else:
            st.in_flight_search -= 1
            st.done_search += 1

