"""OptimizeSearcher: ``sampler.mode: optimize``, ONE Optuna study over (D, epochs, LR[, rank]) under
a compute budget; `make_searcher` picks it or CellSearcher from the spec.

The cells mode treats dataset size and epochs as the axes of a scaling study and tunes the LR in
every cell. Optimize asks a different question: with this much compute, which (D, epochs, LR)
fine-tune is best? One Optuna study, ``<study>/optimize``, samples D and epochs from the spec's
axes values (categorical), the LoRA rank from ``axes.lora_r`` when it is an axis, and the LR
log-uniform over ``learning_rate``, all on the spec's one base ``model`` (``axes.model`` is refused
at spec time: spec.py):

- ``objective: single``: minimise the final validation loss, TPE (multivariate, constant liar for
  parallel trials). ``objective: multi``: minimise (final validation loss, train FLOPs), NSGA-II.
  Both seeded from ``seeds.base`` (+ 1000 x ``sampler.seed``); a fresh sampler seeded with the
  trial's number makes every proposal a function of what the storage holds, so a resumed
  driver asks what the dead one would have asked.
- The budget (``budget: {flops: X}`` or ``{trial_hours: X}``) is spent by trials' measured cost:
  train_flops (6 x forward-pass parameters x training tokens, the table's own column), or
  wall_seconds / 3600. A new trial starts only while spent + the estimated cost of the trials in
  flight is below the budget, so the study ends within one trial of it.
- A trial's cost is estimated before it runs as cost per example seen (D x epochs) x D x epochs,
  the median of that ratio over the finished trials of the same LoRA rank (of any rank when
  none). The first trial is the cheapest config (smallest D, epochs and rank, log-midpoint LR)
  and runs alone, to measure it. A config estimated above ``budget.max_trial_share`` x the budget
  is infeasible: it is never run and has no rows; Optuna is told it PRUNED with the constraint
  ``cost_over_cap`` = (estimate - cap) / cap > 0, so TPE and NSGA-II steer away from it (a run
  trial's constraint is its measured cost against the cap).
- Early stopping is the cells mode's: ``early_stopping`` runs Ray's ASHA / median rule per
  (D, epochs, rank) cell (scaling/sweep/schedule.py), judged against the study's other trials of
  that cell. A stopped trial is ``pruned`` in the table and PRUNED in Optuna, in both objectives;
  its FLOPs count against the budget. Optuna does not prune multi-objective studies itself and
  NSGA-II builds its generations from COMPLETE trials only, so there a stopped trial steers
  nothing and is not on the Pareto front (a loss after fewer epochs than the config asks, under
  a schedule cut short, is not that config's result).
- Resume is the cells mode's: trials finished in Optuna and in the table are done, a trial a
  killed driver left RUNNING is re-run under its own number and parameters.

Read top to bottom:
  1. make_searcher
  2. samplers and the constraint
  3. OptimizeSearcher: resume, suggest (leftovers, the first trial, asks under the budget), tell
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import optuna
from ray.tune.search import Searcher

from analysis.table import SELECT_METRIC
from scaling.records import _trial_status
from scaling.records_io import RecordsError
from scaling.spec import Cell, StudySpec
from scaling.sweep._retry import RetryingStorage, StorageDown
from scaling.sweep.identity import UID_ATTR, optimize_study_name
from scaling.sweep.searcher import CellSearcher, StorageBacked

__all__ = ["OptimizeSearcher", "make_searcher"]

CONSTRAINT = "cost_over_cap"  # Optuna constraint key: > 0 means over the per-trial cap
MAX_INFEASIBLE_IN_A_ROW = 50  # proposals over the cap in one ask before the study is declared stuck
MAX_UNMEASURED = 3  # trials that failed before any evaluation while no cost is known yet
MULTI_POPULATION = 8  # NSGA-II generation size: budgets buy tens of trials, not the default 50s
TPE_STARTUP = 5  # random trials before TPE models: a budget buys tens of trials


# 1. Which searcher ------------------------------------------------------------------
def make_searcher(spec: StudySpec, storage: optuna.storages.BaseStorage, *, cells: list[Cell],
                  **kwargs: Any) -> Searcher:  # fmt: skip
    """The spec's searcher: OptimizeSearcher for ``sampler.mode: optimize``, else CellSearcher over
    ``cells`` (spec.cells()); the same keyword arguments: max_trials, recorded, study_uid."""
    # every storage call of the searchers rides out a brief outage (_retry.py); the lease keeps the raw one
    storage = storage if isinstance(storage, RetryingStorage) else RetryingStorage(storage, getattr(storage, "url", ""))
    try:
        if spec.sampler.mode == "optimize":
            return OptimizeSearcher(spec, storage, **kwargs)
        return CellSearcher(spec, storage, cells=cells, **kwargs)
    except StorageDown as err:
        raise RecordsError(f"{err}; nothing was run: run the same `scaling sweep` again once it is back") from None


# 2. Samplers and the constraint -----------------------------------------------------
def _sampler(spec: StudySpec, number: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler for the ask of trial ``number`` (see the module docstring: resumable)."""
    seed = spec.seeds.base + 1000 * spec.sampler.seed + number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is "experimental"
        if spec.sampler.objective == "multi":
            return optuna.samplers.NSGAIISampler(population_size=MULTI_POPULATION, seed=seed)
        # multivariate: the best LR moves with D and epochs, a joint model sees that
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=TPE_STARTUP)  # fmt: skip


def _set_constraint(study: optuna.Study, number: int, value: float) -> None:
    trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already set (a re-run): the first one stands
        trial.set_constraint(CONSTRAINT, float(value))


# 3. The searcher ------------------------------------------------------------------
class OptimizeSearcher(StorageBacked, Searcher):
    """One Optuna study over (D, epochs, LR[, rank]) under the spec's compute budget."""

    def __init__(
        self,
        spec: StudySpec,
        storage: optuna.storages.BaseStorage,
        *,
        max_trials: int | None = None,
        recorded: set[str] | dict[str, dict[str, Any]] | None = None,
        study_uid: str | None = None,
    ):
        super().__init__(metric=SELECT_METRIC, mode="min")
        assert spec.budget is not None  # the spec requires it in optimize mode
        self.spec = spec
        self.max_trials = max_trials
        self.started = 0
        self.budget = spec.budget.total()
        self.cap = spec.budget.max_trial_share * self.budget
        self.unit = "flops" if spec.budget.flops is not None else "trial_hours"
        multi = spec.sampler.objective == "multi"
        self.study = optuna.create_study(
            study_name=optimize_study_name(spec), storage=storage, load_if_exists=True,
            directions=["minimize", "minimize"] if multi else ["minimize"], sampler=_sampler(spec, 0),
        )  # fmt: skip
        for k, v in (("mode", "optimize"), ("objective", spec.sampler.objective), ("metric", SELECT_METRIC),
                     ("budget", spec.budget.model_dump(exclude_none=True))):  # fmt: skip
            self.study.set_user_attr(k, v)
        if study_uid is not None:  # the run's identity (scaling/sweep/identity.py)
            self.study.set_user_attr(UID_ATTR, study_uid)
        self._live: dict[str, tuple[int, float]] = {}  # ray id -> (optuna number, estimated cost)
        self._last: dict[str, dict] = {}  # ray id -> its last evaluation
        self.orphans: list[optuna.trial.FrozenTrial] = []
        self.done = 0
        self.infeasible = 0
        self.unmeasured = 0
        name = self.study.study_name
        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.user_attrs.get("infeasible"):
                self.infeasible += 1  # never run, no rows: done
            elif t.state.is_finished() and (recorded is None or f"{name}#{t.number}" in recorded):
                self.done += 1
            elif isinstance(recorded, dict) and f"{name}#{t.number}" in recorded and "dataset_size" in t.params:
                # its rows reached the table while the storage was down: tell Optuna what they say
                row = recorded[f"{name}#{t.number}"]
                self._tell(row, row, row.get("status") == "failed", t.number, 0.0)
            else:
                # RUNNING/WAITING: a previous driver died holding it; or finished in Optuna but
                # killed before its rows reached the table: re-run it (its own number if it can)
                self.orphans.append(t)
        self.orphans.sort(key=lambda t: (t.state != optuna.trial.TrialState.WAITING, t.number))
        self.orphans_found = len(self.orphans)

    # -- what the storage says: spent, estimates ----------------------------------
    def _told(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state.is_finished() and "cost" in t.user_attrs and not t.user_attrs.get("infeasible")]  # fmt: skip

    def spent(self) -> float:
        """The budget spent by told trials (their measured cost, in the budget's unit)."""
        return float(sum(t.user_attrs["cost"] for t in self._told()))

    def _rate(self, lora_r: int) -> float | None:
        """Measured cost per example seen, median over told trials of this rank (any rank if none)."""
        per = [(t.params.get("lora_r", self.spec.lora.r), t.user_attrs["cost"] / t.user_attrs["examples_seen"])
               for t in self._told() if t.user_attrs.get("measured") and t.user_attrs.get("examples_seen")]  # fmt: skip
        same = [x for r, x in per if r == lora_r]
        pick = same or [x for _, x in per]
        return statistics.median(pick) if pick else None

    def estimate(self, params: dict[str, Any]) -> float | None:
        """A config's estimated cost (None while nothing is measured)."""
        rate = self._rate(int(params.get("lora_r", self.spec.lora.r)))
        return None if rate is None else rate * int(params["dataset_size"]) * int(params["epochs"])

    def _in_flight(self) -> float:
        return sum(est for _, est in self._live.values())

    # -- bookkeeping (run_sweep's questions) -----------------------------------------
    def remaining(self) -> int:
        """Trials still to run, as the budget left and the median trial's cost suggest (at least the
        leftovers, and one while the budget is not spent)."""
        left = self.budget - self.spent()
        costs = [t.user_attrs["cost"] for t in self._told() if t.user_attrs["cost"] > 0]
        if left <= 0:
            n = 0
        elif costs:
            n = math.ceil(left / statistics.median(costs))
        else:
            n = 1
        n = max(n, 1 if left > 0 else 0) + len(self.orphans)
        return n if self.max_trials is None else min(n, self.max_trials)

    def most_remaining(self) -> int:
        """Ray Tune's num_samples: the searcher says FINISHED when the budget is spent."""
        return self.max_trials if self.max_trials is not None else 100_000

    def planned_trials(self) -> int:
        """Trials done plus those remaining() expects (what the progress bar shows)."""
        return self.done + self.remaining()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    # -- asking -----------------------------------------------------------------------
    def _suggest_params(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        ax, lr = self.spec.axes, self.spec.learning_rate
        params = {
            "dataset_size": int(trial.suggest_categorical("dataset_size", list(ax.dataset_sizes()))),
            "epochs": int(trial.suggest_categorical("epochs", list(ax.epoch_values()))),
            "lora_r": int(trial.suggest_categorical("lora_r", sorted(ax.lora_r))) if ax.lora_r else self.spec.lora.r,
            "learning_rate": float(trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)),
        }
        trial.set_user_attr("phase", "search")
        trial.set_user_attr("seed", self.spec.seeds.base)
        return params

    def _ask(self) -> tuple[int, dict[str, Any]]:
        self.study.sampler = _sampler(self.spec, len(self.study.get_trials(deepcopy=False)))
        ot = self.study.ask()
        return ot.number, self._suggest_params(ot)

    def _enqueue_first(self) -> None:
        """The first trial: the cheapest config at the log-midpoint LR, to measure the cost per example."""
        ax, lr = self.spec.axes, self.spec.learning_rate
        params: dict[str, Any] = {"dataset_size": min(ax.dataset_sizes()), "epochs": min(ax.epoch_values()),
                                  "learning_rate": math.sqrt(lr.low * lr.high) if lr.log else (lr.low + lr.high) / 2}  # fmt: skip
        if ax.lora_r:
            params["lora_r"] = min(ax.lora_r)
        self.study.enqueue_trial(params, user_attrs={"first": True})

    def _claim_orphan(self, t: optuna.trial.FrozenTrial) -> tuple[int, dict[str, Any]]:
        """A leftover trial: (Optuna number, its config). RUNNING with its parameters: re-run under its
        own number; RUNNING without them, or WAITING (enqueued, never asked): claimed and sampled now;
        FAIL/PRUNED in Optuna without rows: re-run under a new number (user attr rerun_of) with the
        same parameters, since Optuna cannot change a finished trial's state."""
        st = optuna.trial.TrialState
        keys = {"dataset_size", "epochs", "learning_rate"} | ({"lora_r"} if self.spec.axes.lora_r else set())
        if t.state in (st.FAIL, st.PRUNED):
            fixed = {k: t.params[k] for k in keys if k in t.params}
            self.study.enqueue_trial(fixed, skip_if_exists=False, user_attrs={"rerun_of": t.number})
            return self._ask()
        if t.state == st.COMPLETE or keys <= set(t.params):
            params = {k: t.params[k] for k in keys}
            params.setdefault("lora_r", self.spec.lora.r)
            return t.number, params
        if t.state == st.WAITING:  # what study.ask() does with an enqueued trial: take it, then suggest
            self.study._storage.set_trial_state_values(t._trial_id, st.RUNNING)
        self.study.sampler = _sampler(self.spec, t.number)
        return t.number, self._suggest_params(optuna.trial.Trial(self.study, t._trial_id))

    def _feasible(self, number: int, params: dict[str, Any]) -> float | None:
        """The config's estimated cost when it may run (0 while nothing is measured), else None: then
        it is told to Optuna as infeasible and never run."""
        est = self.estimate(params)
        if est is None or est <= self.cap:
            return est or 0.0
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        self.study._storage.set_trial_user_attr(trial_id, "infeasible", True)
        self.study._storage.set_trial_user_attr(trial_id, "estimated_cost", est)
        _set_constraint(self.study, number, (est - self.cap) / self.cap)
        self.study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        self.infeasible += 1
        return None

    def _suggest(self, trial_id: str) -> dict | str | None:
        # (a) trials a dead driver left: re-run them (a leftover now over the cap is told so)
        while self.orphans:
            number, params = self._claim_orphan(self.orphans.pop(0))
            est = self._feasible(number, params)
            if est is not None:
                return self._start(trial_id, number, params, est)
        measured = self._rate(self.spec.lora.r) is not None
        if not measured:
            # (b) nothing measured yet: one trial at a time, the first one the cheapest config
            if self._live:
                return None
            if self.unmeasured >= MAX_UNMEASURED:
                warnings.warn(f"{self.study.study_name}: {self.unmeasured} trials failed before their first "
                              "evaluation and no cost is measured: the study stops (see the table's errors)",
                              RuntimeWarning, stacklevel=2)  # fmt: skip
                return Searcher.FINISHED
            if not self.study.get_trials(deepcopy=False):
                self._enqueue_first()
            number, params = self._ask()
            return self._start(trial_id, number, params, 0.0)
        # (c) the budget: a new trial only while spent + what is in flight is below it
        if self.spent() + self._in_flight() >= self.budget:
            return None if self._live else Searcher.FINISHED
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            number, params = self._ask()
            est = self._feasible(number, params)
            if est is not None:
                return self._start(trial_id, number, params, est)
        warnings.warn(f"{self.study.study_name}: {MAX_INFEASIBLE_IN_A_ROW} proposals in a row were estimated "
                      f"above the per-trial cap ({self.cap:.3g} {self.unit}, budget.max_trial_share of the "
                      "budget): the study stops; raise the budget or max_trial_share, or shrink the axes",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return None if self._live else Searcher.FINISHED

    def _start(self, trial_id: str, number: int, params: dict[str, Any], est: float) -> dict:
        self.started += 1
        self._live[trial_id] = (number, est)
        cell = Cell(dataset_size=params["dataset_size"], epochs=params["epochs"], lora_r=params["lora_r"])
        return {
            **params,
            "seed": int(self.spec.seeds.base),
            "cell": cell.key,  # the per-cell early stopping (schedule.py) and the table's cell column
            "phase": "search",
            "optuna_study": self.study.study_name,
            "optuna_trial": int(number),
        }

    # -- telling ------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        live = self._live.get(trial_id)
        if live is None or result.get("status") == "failed":
            return
        self._last[trial_id] = dict(result)
        value = result.get(SELECT_METRIC)
        if value is None or not math.isfinite(value) or self.storage_down is not None:
            return
        try:  # intermediate values: the dashboard's learning curves, TPE's view of pruned trials
            self.study._storage.set_trial_intermediate_value(
                self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, live[0]),
                int(result.get("epoch", 0)), float(value))  # fmt: skip
        except StorageDown as err:  # down past the bound: stop, rather than wait it out at every result
            self._down(err)
        except Exception:
            pass

    def _cost(self, last: dict | None) -> float | None:
        if not last:
            return None
        x = last.get("train_flops") if self.unit == "flops" else last.get("wall_seconds")
        if x is None or not math.isfinite(float(x)):
            return None
        return float(x) if self.unit == "flops" else float(x) / 3600.0

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna; with the storage down past the retry bound, never raise (Ray would then skip
        the recorder and lose the trial's rows): the sweep stops with the rows recorded."""
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        last = self._last.pop(trial_id, None)
        if self.storage_down is None:
            try:
                return self._tell(result, last, error, *live)
            except StorageDown as err:
                self._down(err)
        self.untold += 1

    def _tell(self, result: dict | None, last: dict | None, error: bool, number: int, est: float) -> None:
        """Tell Optuna a trial's end: result (the last one Ray saw), last (its last evaluation)."""
        status = _trial_status(result, error)
        cost = self._cost(last)
        measured = cost is not None
        if cost is None:  # failed before any evaluation: counted at its estimate (0 when none)
            cost = est
            self.unmeasured += 1
        cfg_epochs = int((result or last or {}).get("epochs") or 0)
        seen_epochs = int((last or {}).get("epoch") or 0)
        t = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        try:  # a trial finished in Optuna before (re-run for its rows) keeps what it was told
            d = self.study._storage.get_trial(t).params.get("dataset_size", 0)
            for k, v in (("cost", cost), ("measured", measured), ("examples_seen", int(d) * seen_epochs),
                         ("status", status), ("epochs_run", seen_epochs), ("epochs_planned", cfg_epochs)):  # fmt: skip
                self.study._storage.set_trial_user_attr(t, k, v)
            _set_constraint(self.study, number, (cost - self.cap) / self.cap)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        loss = (result or {}).get(SELECT_METRIC)
        flops = (last or {}).get("train_flops")
        state = {"ok": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}.get(
            status, optuna.trial.TrialState.FAIL)  # fmt: skip
        values: Any = None
        if state == optuna.trial.TrialState.COMPLETE:
            ok = loss is not None and math.isfinite(loss)
            if self.spec.sampler.objective == "multi":
                ok = ok and flops is not None and math.isfinite(float(flops))
                values = [float(loss), float(flops)] if ok else None
            else:
                values = float(loss) if ok else None
            if not ok:
                state = optuna.trial.TrialState.FAIL  # never hand Optuna a fake value
        self.study.tell(number, values, state=state, skip_if_finished=True)
        self.done += 1

