"""Resume edge cases (issue 17, section 3): what a dead driver can leave in a real Optuna
storage, and a resume that finishes it without a KeyError and with every Optuna state
equal to what the trial's rows say."""

from __future__ import annotations

import optuna
import pytest
from test_sweep import _storage_trials, ray_local, small_spec  # noqa: F401  (fixture)

from scaling.records import read_results

STATE_OF = {"ok": "COMPLETE", "failed": "FAIL", "pruned": "PRUNED"}


def _cell_study(spec, run):
    from scaling.sweep import cell_study_name

    return optuna.create_study(study_name=cell_study_name(spec, spec.cells()[0]),
                               storage=spec.optuna_url(run), direction="minimize")  # fmt: skip


def _states_match_rows(url: str, prefix: str, df) -> dict[int, str]:
    """Every Optuna trial that has rows ends in the state of its last row; returns number -> state."""
    (trials,) = _storage_trials(url, prefix).values()
    last = df.sort_values("epoch").groupby("optuna_trial").tail(1).set_index("optuna_trial")["status"]
    states = {t.number: t.state.name for t in trials}
    for number, status in last.items():
        assert states[int(number)] == STATE_OF[status], (number, status, states)
    return states


@pytest.mark.slow
def test_leftovers_without_params_and_waiting_trials_resume(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = small_spec("noparams", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=3)
    run = tmp_path / "run"
    run.mkdir()
    study = _cell_study(spec, run)
    study.ask()  # 0: the driver died between ask and suggest: RUNNING, no params, no attrs
    study.enqueue_trial({"learning_rate": 4e-3}, user_attrs={"phase": "search", "seed": 0})  # 1: WAITING
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "WAITING"]

    res = run_sweep(spec, out=run)  # raised KeyError: 'learning_rate' before

    assert res.orphans_resumed == 2 and res.counts == {"ok": 3, "failed": 0, "pruned": 0}
    df = read_results(run)
    assert sorted(df["optuna_trial"].unique()) == [0, 1, 2]  # both leftovers ran under their own numbers
    assert df[df.optuna_trial == 1]["learning_rate"].iloc[0] == pytest.approx(4e-3)  # the enqueued LR kept
    lr0 = df[df.optuna_trial == 0]["learning_rate"].iloc[0]
    assert spec.learning_rate.low <= lr0 <= spec.learning_rate.high  # given an LR on resume
    states = _states_match_rows(res.optuna_url, "noparams/", df)
    assert sorted(states.values()) == ["COMPLETE"] * 3
    (trials,) = _storage_trials(res.optuna_url, "noparams/").values()
    assert trials[0].params["learning_rate"] == pytest.approx(lr0)  # Optuna and the row agree


@pytest.mark.slow
def test_a_failed_trial_without_rows_reruns_and_ends_in_the_state_of_its_rows(ray_local, tmp_path):  # noqa: F811
    """A trial FAILed in Optuna (e.g. the worker died) whose rows never reached the table is
    re-run; Optuna cannot change a finished state, so the re-run is a new trial (rerun_of) and
    its state is the one its rows say, with the same LR and seed."""
    from scaling.sweep import run_sweep

    spec = small_spec("failrerun", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=2)
    run = tmp_path / "run"
    run.mkdir()
    study = _cell_study(spec, run)
    study.enqueue_trial({"learning_rate": 5e-3}, user_attrs={"phase": "search", "seed": 0})
    t = study.ask()
    t.suggest_float("learning_rate", spec.learning_rate.low, spec.learning_rate.high, log=True)
    study.tell(t, state=optuna.trial.TrialState.FAIL)

    res = run_sweep(spec, out=run)

    assert res.counts == {"ok": 2, "failed": 0, "pruned": 0}
    df = read_results(run)
    states = _states_match_rows(res.optuna_url, "failrerun/", df)
    assert 0 not in set(df["optuna_trial"]) and states[0] == "FAIL"  # the old trial: no rows
    (trials,) = _storage_trials(res.optuna_url, "failrerun/").values()
    rerun = [t for t in trials if t.user_attrs.get("rerun_of") == 0]
    assert len(rerun) == 1 and rerun[0].state.name == "COMPLETE"
    assert rerun[0].params["learning_rate"] == pytest.approx(5e-3) and rerun[0].user_attrs["seed"] == 0
    assert len(df["optuna_trial"].unique()) == 2  # the cell's budget: 2 trials with rows
