"""sampler.mode optimize (scaling/sweep/optimize.py) and the Pareto front (analysis/findings/pareto.py).

Known answers, real Optuna and Ray, no mocks:
  1. the spec: the shipped example validates; bad budgets are refused naming file, field, rule
     and value; a spec.yaml from before sampler.mode resumes as cells;
  2. the front of a hand-made table;
  3. OptimizeSearcher driven as Ray drives it (one slot) on a real Optuna storage: the cheapest
     config first, configs over the per-trial cap never run, a stopped trial PRUNED, the budget
     ends the study within one trial, and the front equals Optuna's own best_trials;
  4. a real sweep on the embedded tiny model: the driver SIGKILLed and resumed gives the trial
     count (and the configs) of an uninterrupted run; the budget stops it; the report's front is
     non-dominated and equals a brute-force one over the table; best-lr, status and the report.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
import yaml
from conftest import live_trials

from analysis.findings.pareto import pareto_front
from analysis.table import SELECT_METRIC
from scaling.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

# -- 1. the spec -----------------------------------------------------------------------
LR = {"low": 1e-3, "high": 3e-2}
OPT = {"name": "o", "axes": {"dataset_size": [100, 200, 400], "epochs": [1, 2]}, "learning_rate": LR,
       "sampler": {"mode": "optimize"}, "budget": {"flops": 1e12}}  # fmt: skip


def _with(**over) -> dict:
    data = copy.deepcopy(OPT)
    for k, v in over.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return data


def test_the_shipped_example_validates():
    spec = load_spec(ROOT / "search_spaces" / "optimize.yaml")
    assert (spec.sampler.mode, spec.sampler.objective) == ("optimize", "multi")
    assert spec.budget.flops == 3e12 and spec.budget.trial_hours is None and spec.budget.total() == 3e12
    assert spec.packing.adapters_per_worker == 1 and spec.seeds.repeat_best == 0


@pytest.mark.parametrize("over, expect", [
    ({"budget": None}, "(top level): budget: is required when sampler.mode is 'optimize'"),
    ({"budget": {}}, "budget: must give exactly one of flops and trial_hours (got flops=None, trial_hours=None)"),
    ({"budget": {"flops": 1e12, "trial_hours": 2}},
     "budget: must give exactly one of flops and trial_hours (got flops=1000000000000.0, trial_hours=2.0)"),
    ({"budget": {"flops": -5}}, "budget.flops: Input should be greater than 0 (got -5)"),
    ({"budget": {"trial_hours": 0}}, "budget.trial_hours: Input should be greater than 0 (got 0)"),
    ({"budget": {"flops": 1e12, "max_trial_share": 1.5}}, "budget.max_trial_share: Input should be less than or equal to 1 (got 1.5)"),
    ({"budget": {"flop": 1e12}}, "budget.flop: unknown key (check the spelling) (got 1000000000000.0)"),
    ({"sampler": {"mode": "cells"}}, "budget: applies to sampler.mode 'optimize' only (got mode 'cells' and budget"),
    ({"sampler": {"mode": "cells", "objective": "multi"}, "budget": None},
     "sampler.objective: 'multi' needs sampler.mode 'optimize' (got mode 'cells')"),
    ({"sampler": {"mode": "optimise"}}, "sampler.mode: Input should be 'cells' or 'optimize' (got 'optimise')"),
    ({"packing": {"adapters_per_worker": 4}}, "packing.adapters_per_worker: must be 1 with sampler.mode 'optimize'"),
    ({"seeds": {"repeat_best": 1}}, "seeds.repeat_best: must be 0 with sampler.mode 'optimize' (got 1)"),
    # it used to train the axis's first model only, silently
    ({"axes": {**OPT["axes"], "model": ["tiny-llama-w64", "tiny-llama"]}},
     "axes.model: must be unset with sampler.mode 'optimize', which searches D, epochs, LoRA rank and "
     "LR for one base model: give it as the top-level model and run one optimize study per model, or use "
     "sampler.mode 'cells' to compare models (got ['tiny-llama-w64', 'tiny-llama'])"),
])  # fmt: skip
def test_bad_budgets_are_refused_naming_file_field_rule_and_value(over, expect):
    with pytest.raises(SpecError) as err:
        parse_spec(_with(**over), source="search_spaces/x.yaml")
    assert str(err.value).startswith("search_spaces/x.yaml: "), str(err.value)
    assert expect in str(err.value), str(err.value)


def test_a_spec_copy_from_before_sampler_mode_resumes_as_cells(tmp_path):
    from scaling.run_record import _check_same_study

    data = {"name": "old", "axes": {"dataset_size": [64]}, "learning_rate": LR}
    saved = parse_spec(data).to_record(exclude={"packing", "tracking", "budget"})
    del saved["sampler"]["mode"], saved["sampler"]["objective"]  # written before the fields existed
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(saved))
    assert _check_same_study(parse_spec(data), tmp_path) == {}
    with pytest.raises(SpecError, match=r"sampler.mode: the run has 'cells', got 'optimize'"):
        _check_same_study(parse_spec({**data, "sampler": {"mode": "optimize"}, "budget": {"flops": 1e12}}), tmp_path)


def test_a_resume_may_raise_the_budget_but_not_change_the_objective(tmp_path):
    from scaling.run_record import _check_same_study, write_run

    write_run(parse_spec(OPT), tmp_path, {"study_uid": "u"})
    assert _check_same_study(parse_spec(_with(budget={"flops": 2e12})), tmp_path) == {"study_uid": "u"}
    with pytest.raises(SpecError, match=r"sampler.objective: the run has 'single', got 'multi'"):
        _check_same_study(parse_spec(_with(sampler={"mode": "optimize", "objective": "multi"})), tmp_path)


# -- 2. the front of a hand-made table -------------------------------------------------
def test_pareto_front_of_a_hand_made_table():
    t = pd.DataFrame({
        "train_flops":   [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, np.nan, 0.5],
        "val_eval_loss": [3.0, 2.0, 2.5, 2.0, 1.0, 1.0, 0.9, 0.1,    np.inf],
    })  # fmt: skip
    # 0 cheapest; 1 beats 2 (same FLOPs, lower loss) and 3 (same loss, fewer FLOPs); 4 and 5 are the
    # same point (neither beats the other); 6 lowest loss; 7 and 8 have no finite value
    assert pareto_front(t).tolist() == [True, True, False, False, True, True, True, False, False]
    assert pareto_front(t.iloc[:0]).tolist() == []
    with pytest.raises(ValueError, match="column 'train_flops' is required"):
        pareto_front(t[["val_eval_loss"]])


def test_the_pareto_section_reads_completed_trials_only():
    from analysis.findings import analyse

    rows = []
    for tid, (flops, loss, status) in enumerate([(1e9, 2.0, "ok"), (2e9, 1.5, "ok"), (3e9, 1.6, "ok"),
                                                 (1e9, 1.0, "pruned"), (4e9, 0.5, "failed")]):  # fmt: skip
        rows.append({"trial_id": f"o/optimize#{tid}", "cell": "D=100,E=1,r=8", "phase": "search", "dataset_size": 100,
                     "epochs": 1, "lora_r": 8, "learning_rate": 1e-3 * (tid + 1), "epoch": 1, "status": status,
                     "train_flops": flops, SELECT_METRIC: loss, "test_eval_loss": loss + 0.1})  # fmt: skip
    p = analyse(pd.DataFrame(rows), bootstrap=0, sections=("pareto",)).numbers["pareto"]
    assert [f["trial_id"] for f in p["front"]] == ["o/optimize#0", "o/optimize#1"]
    assert p["n_trials"] == 3 and p["n_left_out"] == {"pruned": 1, "failed": 1}
    assert p["front"][1]["test_eval_loss"] == pytest.approx(1.6) and p["uncertainty"].startswith("none:")
    assert p["spent"]["flops"] == pytest.approx(11e9)


# -- 3. the searcher as Ray drives it, on a real Optuna storage ------------------------
PER_EXAMPLE = 10.0  # synthetic train_flops per example seen


def _loss(cfg: dict, epoch: int) -> float:
    return 1 + 300 / (cfg["dataset_size"] * epoch) + (math.log(cfg["learning_rate"]) - math.log(4e-3)) ** 2 / 10


def _result(cfg: dict, epoch: int) -> dict:
    return {"epoch": epoch, "epochs": cfg["epochs"], "status": "ok", SELECT_METRIC: _loss(cfg, epoch),
            "train_flops": PER_EXAMPLE * cfg["dataset_size"] * epoch, "wall_seconds": 0.01 * epoch}  # fmt: skip


def test_the_searcher_under_a_budget_multi_objective():
    from scaling.sweep.optimize import OptimizeSearcher

    # cap = 0.25 x 20,000 = 5,000 FLOPs: D x epochs <= 500 runs; 400 x 2 (8,000) is infeasible
    spec = parse_spec(_with(sampler={"mode": "optimize", "objective": "multi"},
                            budget={"flops": 20_000, "max_trial_share": 0.25}))  # fmt: skip
    storage = optuna.storages.InMemoryStorage()
    s = OptimizeSearcher(spec, storage)
    first = s.suggest("t0")
    assert (first["dataset_size"], first["epochs"]) == (100, 1)
    assert first["learning_rate"] == pytest.approx(math.sqrt(LR["low"] * LR["high"]))
    assert first["cell"] == "D=100,E=1,r=8" and first["optuna_trial"] == 0 and first["phase"] == "search"
    assert s.suggest("t1") is None  # nothing measured yet: the first trial runs alone
    ran, pruned = [first], None
    s.on_trial_result("t0", _result(first, 1))
    s.on_trial_complete("t0", _result(first, 1))
    for i in range(1, 100):
        cfg = s.suggest(f"t{i}")
        if cfg == OptimizeSearcher.FINISHED:
            break
        assert isinstance(cfg, dict), cfg
        ran.append(cfg)
        last = cfg["epochs"]
        if last == 2 and pruned is None:
            last, pruned = 1, cfg["optuna_trial"]  # stopped early by the per-cell rule after epoch 1
        for e in range(1, last + 1):
            s.on_trial_result(f"t{i}", _result(cfg, e))
        s.on_trial_complete(f"t{i}", _result(cfg, last))
    else:
        raise AssertionError("the study never finished")
    study = optuna.load_study(study_name="o/optimize", storage=storage)
    assert len(study.directions) == 2
    trials = {t.number: t for t in study.get_trials()}
    # configs over the cap never ran; Optuna was told they are infeasible
    assert all(c["dataset_size"] * c["epochs"] * PER_EXAMPLE <= 5000 for c in ran)
    infeasible = [t for t in trials.values() if t.user_attrs.get("infeasible")]
    for t in infeasible:
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints["cost_over_cap"] > 0
        assert t.params["dataset_size"] * t.params["epochs"] * PER_EXAMPLE > 5000
    assert {c["optuna_trial"] for c in ran}.isdisjoint(t.number for t in infeasible)
    # the stopped trial: PRUNED (multi-objective), its FLOPs spent
    assert pruned is not None and trials[pruned].state == optuna.trial.TrialState.PRUNED
    assert trials[pruned].user_attrs["cost"] == PER_EXAMPLE * trials[pruned].params["dataset_size"]
    # the budget: spent reaches it, and overshoots by less than the last trial
    costs = [trials[c["optuna_trial"]].user_attrs["cost"] for c in ran]
    assert sum(costs) == pytest.approx(s.spent())
    assert 20_000 <= s.spent() < 20_000 + costs[-1]
    assert sum(costs[:-1]) < 20_000  # the last trial started while the budget was not spent
    # the front: completed trials' (FLOPs, val loss); Optuna's own Pareto front agrees
    done = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.values == [pytest.approx(_result(t.params, t.params["epochs"])[SELECT_METRIC]),
                            t.params["dataset_size"] * t.params["epochs"] * PER_EXAMPLE] for t in done)  # fmt: skip
    frame = pd.DataFrame({"train_flops": [t.values[1] for t in done], SELECT_METRIC: [t.values[0] for t in done]})
    mine = {t.number for t, on in zip(done, pareto_front(frame), strict=True) if on}
    assert mine == {t.number for t in study.best_trials}
    # resume: a new searcher on the storage counts every trial done and asks nothing
    again = OptimizeSearcher(spec, storage)
    assert again.orphans_found == 0 and again.remaining() == 0 and again.suggest("x") == OptimizeSearcher.FINISHED


def test_a_trial_left_running_is_rerun_under_its_own_number_single_objective():
    from scaling.sweep.optimize import OptimizeSearcher

    spec = parse_spec(_with(budget={"flops": 20_000, "max_trial_share": 0.25}))
    storage = optuna.storages.InMemoryStorage()
    s = OptimizeSearcher(spec, storage)
    first = s.suggest("t0")
    s.on_trial_result("t0", _result(first, 1))
    s.on_trial_complete("t0", _result(first, 1))
    second = s.suggest("t1")  # then the driver dies
    study = optuna.load_study(study_name="o/optimize", storage=storage)
    assert study.trials[0].value == pytest.approx(_loss(first, 1))  # single objective: val loss
    resumed = OptimizeSearcher(spec, storage, recorded={"o/optimize#0"})
    assert resumed.orphans_found == 1 and resumed.done == 1
    again = resumed.suggest("r1")
    assert again == second  # its own number, its own config
    # a trial that failed before its first evaluation costs its estimate (a full run)
    resumed.on_trial_complete("r1", {"epoch": 1, "epochs": again["epochs"], "status": "failed",
                                     SELECT_METRIC: float("nan")})  # fmt: skip
    t = optuna.load_study(study_name="o/optimize", storage=storage).trials[again["optuna_trial"]]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["measured"] is False
    assert t.user_attrs["cost"] == pytest.approx(PER_EXAMPLE * again["dataset_size"] * again["epochs"])


def _drive(s, n: int = 100) -> list[dict]:
    """Run the searcher's trials one at a time, each to its last epoch, until FINISHED."""
    ran = []
    for i in range(n):
        cfg = s.suggest(f"d{i}")
        if cfg == s.FINISHED:
            return ran
        assert isinstance(cfg, dict), cfg  # one at a time: nothing is in flight when it is asked
        ran.append(cfg)
        for e in range(1, cfg["epochs"] + 1):
            s.on_trial_result(f"d{i}", _result(cfg, e))
        s.on_trial_complete(f"d{i}", _result(cfg, cfg["epochs"]))
    raise AssertionError("the searcher never finished")


def test_a_trial_hours_budget_is_spent_in_wall_time_and_the_rank_is_sampled():
    from scaling.sweep.optimize import OptimizeSearcher

    # wall_seconds = 0.01 x epochs: a trial of 2 epochs costs 2 x 0.01 / 3600 h; budget 10 of those
    hours = 0.01 / 3600
    spec = parse_spec(_with(axes={"dataset_size": [100, 200], "epochs": [1, 2], "lora_r": [4, 8]},
                            budget={"trial_hours": 20 * hours, "max_trial_share": 1.0}))  # fmt: skip
    s = OptimizeSearcher(spec, optuna.storages.InMemoryStorage())
    ran = _drive(s)
    assert (ran[0]["dataset_size"], ran[0]["epochs"], ran[0]["lora_r"]) == (100, 1, 4)
    assert {c["lora_r"] for c in ran} <= {4, 8} and all(c["cell"].endswith(f"r={c['lora_r']}") for c in ran)
    costs = [c["epochs"] * hours for c in ran]
    assert s.spent() == pytest.approx(sum(costs))
    assert sum(costs[:-1]) < 20 * hours <= sum(costs) + 1e-15


def test_trials_failing_before_any_evaluation_stop_the_study_when_nothing_is_measured():
    from scaling.sweep.optimize import MAX_UNMEASURED, OptimizeSearcher

    s = OptimizeSearcher(parse_spec(_with(budget={"flops": 1e6})), optuna.storages.InMemoryStorage())
    for i in range(MAX_UNMEASURED):
        cfg = s.suggest(f"f{i}")
        assert isinstance(cfg, dict) and cfg["optuna_trial"] == i
        s.on_trial_complete(f"f{i}", {"epoch": 1, "epochs": cfg["epochs"], "status": "failed",
                                      SELECT_METRIC: float("nan")})  # fmt: skip
    with pytest.warns(RuntimeWarning, match=f"{MAX_UNMEASURED} trials failed before their first evaluation"):
        assert s.suggest("f9") == s.FINISHED
    assert s.spent() == 0.0  # nothing measured, no estimate: they cost nothing that is known


# -- 4. a real sweep: SIGKILL and resume, the budget, the front, the CLI --------------------
# D=128 x 1 epoch costs 7.338e9 train FLOPs on the tiny model (measured, deterministic, on the pairs split of the addition task; 7.349e9 on the old ordered split), D=256 x 1
# and D=128 x 2 about 1.47e10: estimated from D=128 x 1 at 1.4699e10, under the cap of 0.5 x 3e10.
# D=256 x 2 (2.94e10) and D=1024 (5.9e10 and up) are over it: never run. 3e10 buys 3 or 4 trials.
BUDGET, SHARE = 3e10, 0.5
REAL = {"name": "opt", "task": {"kind": "addition", "digits": 2},
        "axes": {"dataset_size": [128, 256, 1024], "epochs": [1, 2]}, "learning_rate": LR,
        "eval": {"validation_size": 32, "test_size": 32}, "train": {"batch_size": 32},
        # one trial at a time: the proposals are then a function of the storage, as the resume test needs
        "resources": {"cpus": 1, "max_concurrent": 1, "max_failures": 1},
        "sampler": {"mode": "optimize", "objective": "single"},
        "budget": {"flops": BUDGET, "max_trial_share": SHARE}, "storage": {"keep_adapters": "none"}}  # fmt: skip
FEASIBLE = {(128, 1), (128, 2), (256, 1)}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this checkout
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _trials(run: Path) -> int:
    from scaling.records import read_results

    try:
        return read_results(run)["trial_id"].nunique()
    except Exception:
        return 0


def _configs(table: pd.DataFrame) -> list[tuple]:
    last = table.sort_values("epoch").groupby("trial_id").tail(1).sort_values("optuna_trial")
    return [(int(r.optuna_trial), int(r.dataset_size), int(r.epochs), round(float(r.learning_rate), 12), r.status)
            for r in last.itertuples()]  # fmt: skip


@pytest.fixture(scope="module")
def killed(tiny_model_dir, tmp_path_factory):
    """`scaling sweep` SIGKILLed once a trial is recorded and another is running. First: its Ray
    (in the subprocess) must come and go before this module's own Ray starts."""
    tmp = tmp_path_factory.mktemp("killed")
    spec_file, run = tmp / "opt.yaml", tmp / "run"
    spec_file.write_text(yaml.safe_dump(REAL))
    cmd = [sys.executable, "-c", "from scaling.cli import app; app()", "sweep", str(spec_file), "--out", str(run)]
    log = open(tmp / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # a recorded trial, and the same trial RUNNING on two looks 0.5 s apart: training, not a
        # proposal over the cap (asked and told at once)
        t0, seen = time.monotonic(), set()
        while True:
            assert proc.poll() is None, f"the driver exited (rc={proc.returncode}) before the kill"
            assert time.monotonic() - t0 < 240, "no recorded trial and running one within 240 s"
            now = {n for _, n, _ in live_trials(run / "optuna.db")} if _trials(run) >= 1 else set()
            if now & seen:
                break
            seen = now
            time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    for p in family:  # Ray's workers sit in process groups of their own
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(family, timeout=10)
    assert proc.returncode == -signal.SIGKILL
    print(f"\nkilled {time.monotonic() - t0:.0f} s after the start")
    return {"run": run, "before": _trials(run), "orphans": live_trials(run / "optuna.db")}


@pytest.fixture(scope="module")
def ray_here(killed):
    """This module's local Ray, started after the killed driver's is gone; its workers import this
    checkout (PYTHONPATH), as the sweep's driver does."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"\nray.init {time.perf_counter() - t0:.0f} s")
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def resumed(killed, ray_here):
    """The killed study resumed by a new driver (this process)."""
    from scaling.records import read_results
    from scaling.sweep import run_sweep

    t0 = time.perf_counter()
    res = run_sweep(parse_spec(REAL), out=killed["run"])
    print(f"\nresumed in {time.perf_counter() - t0:.0f} s")
    return {**killed, "res": res, "table": read_results(killed["run"])}


@pytest.fixture(scope="module")
def optimized(ray_here, tmp_path_factory):
    """The same study, uninterrupted."""
    from scaling.records import read_results
    from scaling.sweep import run_sweep

    run = tmp_path_factory.mktemp("optimized") / "run"
    t0 = time.perf_counter()
    res = run_sweep(parse_spec(REAL), out=run)
    wall = time.perf_counter() - t0
    again = run_sweep(parse_spec(REAL), out=run)  # the budget is spent: nothing more to run
    return {"run": run, "res": res, "again": again, "table": read_results(run), "wall": wall}


def _spent(table: pd.DataFrame) -> tuple[float, list[float]]:
    per = table.sort_values("epoch").groupby("trial_id")["train_flops"].last().fillna(0.0)
    return float(per.sum()), per.tolist()


def test_a_sigkilled_driver_resumed_runs_the_uninterrupted_trials(resumed, optimized):
    k, u = resumed, optimized
    assert 1 <= k["before"] < u["table"]["trial_id"].nunique(), "the kill must land mid-study"
    assert k["orphans"], "the dead driver left no RUNNING Optuna trial: nothing to resume"
    assert k["res"].orphans_resumed >= 1
    storage = optuna.storages.RDBStorage(f"sqlite:///{k['run'] / 'optuna.db'}")
    trials = {t.number: t for t in optuna.load_study(study_name="opt/optimize", storage=storage).trials}
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in trials.values()}
    for _, number, _ in k["orphans"]:  # re-run under its own number (or, over the cap, told so)
        assert f"opt/optimize#{number}" in set(k["table"]["trial_id"]) or trials[number].user_attrs.get("infeasible")
    assert not k["table"].duplicated(["trial_id", "epoch"]).any()
    assert k["table"]["trial_id"].nunique() == u["table"]["trial_id"].nunique()  # the same trial count
    assert _configs(k["table"]) == _configs(u["table"])  # and the same trials: numbers, configs, statuses
    print(f"\nkilled after {k['before']} trials ({len(k['orphans'])} running); resumed to "
          f"{k['table']['trial_id'].nunique()} trials, as uninterrupted")  # fmt: skip


def test_the_budget_stops_the_study_within_one_trial(optimized):
    table = optimized["table"]
    spent, per = _spent(table)
    assert BUDGET <= spent <= BUDGET + max(per), (spent, per)
    by_number = table.sort_values("epoch").groupby("optuna_trial")["train_flops"].last().sort_index()
    assert by_number.iloc[:-1].sum() < BUDGET  # the last trial started while the budget was not spent
    assert optimized["again"].trials_run == 0
    print(f"\n{len(per)} trials spent {spent:.4g} FLOPs of {BUDGET:.4g} in {optimized['wall']:.0f} s")


def test_configs_over_the_cap_never_run_and_the_first_is_the_cheapest(optimized):
    table = optimized["table"]
    ran = set(zip(table["dataset_size"], table["epochs"], strict=True))
    assert ran <= FEASIBLE, ran
    first = table[table["optuna_trial"] == table["optuna_trial"].min()].iloc[0]
    assert (first["dataset_size"], first["epochs"]) == (128, 1)
    assert first["learning_rate"] == pytest.approx(math.sqrt(LR["low"] * LR["high"]))
    assert table.loc[table.epoch == 1, "train_flops"].groupby(table["dataset_size"]).first()[128] == pytest.approx(7.338e9, rel=1e-3)
    storage = optuna.storages.RDBStorage(f"sqlite:///{optimized['run'] / 'optuna.db'}")
    for t in optuna.load_study(study_name="opt/optimize", storage=storage).trials:
        if t.user_attrs.get("infeasible"):
            assert (t.params["dataset_size"], t.params["epochs"]) not in FEASIBLE
            assert t.user_attrs["estimated_cost"] > SHARE * BUDGET and t.constraints["cost_over_cap"] > 0
            assert f"opt/optimize#{t.number}" not in set(table["trial_id"])


def test_the_reported_front_is_non_dominated_and_equals_brute_force(optimized):
    from analysis.findings import analyse
    from scaling.records import read_run

    table = optimized["table"]
    p = analyse(read_run(optimized["run"]), bootstrap=0, sections=("pareto",)).numbers["pareto"]
    last = table.sort_values("epoch").groupby("trial_id").tail(1)
    pts = [(r.trial_id, float(r.train_flops), float(r.val_eval_loss)) for r in last.itertuples() if r.status == "ok"]
    brute = {a for a, fa, la in pts
             if not any(fb <= fa and lb <= la and (fb < fa or lb < la) for _, fb, lb in pts)}  # fmt: skip
    front = [(f["trial_id"], f["train_flops"], f["val_eval_loss"]) for f in p["front"]]
    assert {f[0] for f in front} == brute and len(front) == len(brute) >= 1
    for _, fa, la in front:  # non-dominated: no completed trial is as good on both and better on one
        assert not any(fb <= fa and lb <= la and (fb < fa or lb < la) for _, fb, lb in pts)
    assert [f[1] for f in front] == sorted(f[1] for f in front)
    assert p["mode"] == "optimize" and p["n_trials"] == len(pts)


def test_best_lr_status_and_the_report_on_an_optimize_run(optimized):
    import json

    from typer.testing import CliRunner

    from analysis.report import write_report
    from scaling.cli import app
    from scaling.records import read_run

    run, table = optimized["run"], optimized["table"]
    r = CliRunner().invoke(app, ["best-lr", str(run), "--json"])
    assert r.exit_code == 0, r.output
    cells = {(c["dataset_size"], c["epochs"]) for c in json.loads(r.stdout[r.stdout.index("{"):])["cells"]}
    assert cells == set(zip(table["dataset_size"], table["epochs"], strict=True))  # a best LR per cell that ran
    r = CliRunner().invoke(app, ["status", str(run), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["budget"]["total"] == BUDGET and st["budget"]["spent"] == pytest.approx(_spent(table)[0])
    assert st["trials_left"] == 0 and st["trials"]["ok"] + st["trials"]["pruned"] + st["trials"]["failed"] == table["trial_id"].nunique()
    assert sum(c["finished"] for c in st["per_cell"]) == table["trial_id"].nunique()
    assert CliRunner().invoke(app, ["status", str(run)]).exit_code == 0
    paths = write_report(read_run(run), out=run / "report", bootstrap=0)
    md = paths.markdown.read_text()
    assert "Loss against compute" in md and (run / "report" / "pareto.png").exists()
