"""BracketSampler on synthetic cells with a planted optimum: brackets, refines, transfers, packs."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from scaling.lr_sampler import BracketSampler, cell_attrs, summarise_cell

optuna.logging.set_verbosity(optuna.logging.WARNING)

LOW, HIGH = 1e-5, 1e-1  # 4 decades: the optimum is unknown to within 2 decades either way
SIZES = (500, 1000, 2000, 4000, 8000, 16000, 32000)
EPOCHS = (1, 2, 4)
P_TRUE, Q_TRUE = -0.4, -0.3  # the planted rule: lr* = 3e-3 (D/1000)^-0.4 E^-0.3
# loss = 1 + CURV (ln lr - ln lr*)^2 + N(0, NOISE): the noise equals the loss of a x1.22 LR error
CURV, NOISE = 0.05, 0.002


def truth(d: float, e: float) -> float:
    return 3e-3 * (d / 1000) ** P_TRUE * e**Q_TRUE


def loss(lr: float, *, d: float, e: float, noise: float = NOISE) -> float:
    """The planted loss curve; its noise is a fixed function of (d, e, lr): reruns are identical."""
    bits = int(np.float64(lr).view(np.int64)) & 0x7FFFFFFF
    z = math.log(lr) - math.log(truth(d, e))
    return (
        1.0 + CURV * z * z + noise * float(np.random.default_rng([int(d), int(e), bits]).normal())
    )


def objective(d: float, e: float, *, noise: float = NOISE, diverge_above: float = math.inf):
    def f(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", LOW, HIGH, log=True)
        if lr > diverge_above:
            raise FloatingPointError(f"loss is NaN at lr={lr:.3g}")  # a diverged trial: FAIL
        return loss(lr, d=d, e=e, noise=noise)

    return f


def new_cell(storage, d: float, e: float, *, group: str = "g", sampler=None, **kw) -> optuna.Study:
    study = optuna.create_study(
        study_name=f"{group}/D={d},E={e}", storage=storage, sampler=sampler or BracketSampler(**kw)
    )
    for k, v in cell_attrs(group=group, axes={"dataset_size": d, "epochs": e}).items():
        study.set_user_attr(k, v)
    return study


def lrs(study: optuna.Study) -> list[float]:
    return [t.params["learning_rate"] for t in study.trials]


def run_study(*, budget: int = 6, storage=None, noise: float = NOISE):
    """Every cell of SIZES x EPOCHS, one after another, `budget` trials each (3 recorded first)."""
    storage = storage or optuna.storages.InMemoryStorage()
    out = []
    for d in SIZES:
        for e in EPOCHS:
            study = new_cell(storage, d, e)
            study.optimize(objective(d, e, noise=noise), n_trials=3)
            after3 = summarise_cell(study)
            study.optimize(objective(d, e, noise=noise), n_trials=budget - 3)
            out.append(
                {
                    "d": d,
                    "e": e,
                    "after3": after3,
                    "final": summarise_cell(study),
                    "lrs": lrs(study),
                }
            )
    return out


@pytest.fixture(scope="module")
def study_run():
    return run_study()


# ---- brackets, refines ----------------------------------------------------------------


def test_brackets_within_three_trials_in_at_least_80_percent_of_cells(study_run):
    bracketed = [c["after3"].bracketed for c in study_run]
    assert np.mean(bracketed) >= 0.8, f"bracketed after 3 trials: {np.mean(bracketed):.0%}"
    assert all(c["final"].bracketed for c in study_run)  # and every cell within the budget


def test_lr_star_within_1_3x_of_the_truth_after_the_budget(study_run):
    ratios = np.array([c["final"].lr / truth(c["d"], c["e"]) for c in study_run])
    assert np.all(np.abs(np.log(ratios)) < math.log(1.3)), ratios.round(3)


def test_a_cold_cell_tries_the_middle_then_the_range_edges():
    study = new_cell(optuna.storages.InMemoryStorage(), 1000, 1)
    study.optimize(objective(1000, 1), n_trials=3)
    np.testing.assert_allclose(lrs(study), [1e-3, 1e-5, 1e-1], rtol=1e-12)  # mid, down first, up
    c = summarise_cell(study)
    assert c.bracketed and c.best == pytest.approx(math.log(1e-3))


def test_refinement_stays_inside_the_bracket(study_run):
    for c in study_run:
        first3 = np.log(c["lrs"][:3])
        if not c["after3"].bracketed:
            continue
        a, b = c["after3"].left, c["after3"].right
        later = np.log(c["lrs"][3:])
        assert np.all((later > a) & (later < b)), (c["d"], c["e"], first3, later)


# ---- transfer across cells ----------------------------------------------------------


def test_later_cells_start_near_the_planted_rule(study_run):
    # the first cells are cold; from the 6th on, >= 5 bracketed siblings fit c + p log D + q log E
    firsts = np.array([c["lrs"][0] / truth(c["d"], c["e"]) for c in study_run[5:]])
    assert np.all(np.abs(np.log(firsts)) < math.log(1.3)), firsts.round(3)
    assert study_run[0]["lrs"][0] == pytest.approx(math.sqrt(LOW * HIGH), rel=1e-12)


def test_transfer_predicts_the_planted_rule_exactly_without_noise():
    storage = optuna.storages.InMemoryStorage()
    for d, e in ((500, 1), (2000, 1), (8000, 2), (1000, 4), (32000, 4)):
        study = new_cell(storage, d, e)
        study.optimize(objective(d, e, noise=0.0), n_trials=8)
        assert summarise_cell(study).lr == pytest.approx(truth(d, e), rel=1e-6)
    study = new_cell(storage, 4000, 2)
    prior = study.sampler.prior(study, lo=math.log(LOW), hi=math.log(HIGH))
    assert prior.terms == ("c", "dataset_size", "epochs") and prior.n_cells == 5
    study.optimize(objective(4000, 2, noise=0.0), n_trials=1)
    assert lrs(study)[0] == pytest.approx(truth(4000, 2), rel=1e-5)


def test_too_few_siblings_or_another_group_give_no_rule():
    storage = optuna.storages.InMemoryStorage()
    for d in (500, 2000):  # two bracketed cells: an intercept needs 3
        new_cell(storage, d, 1).optimize(objective(d, 1), n_trials=6)
    for d in (1000, 4000, 8000):  # bracketed, but another study's cells
        new_cell(storage, d, 1, group="other").optimize(objective(d, 1), n_trials=6)
    study = new_cell(storage, 16000, 1)
    study.optimize(objective(16000, 1), n_trials=1)
    assert lrs(study) == [pytest.approx(math.sqrt(LOW * HIGH), rel=1e-12)]
    off = new_cell(storage, 16000, 2, group="other", transfer=False)
    off.optimize(objective(16000, 2), n_trials=1)
    assert lrs(off) == [pytest.approx(math.sqrt(LOW * HIGH), rel=1e-12)]


def test_sweep_style_attrs_are_read_too():
    # what scaling/sweep/searcher.py stores: plain dataset_size/epochs attrs, study "<name>/<cell>"
    storage = optuna.storages.InMemoryStorage()
    for d, e in ((500, 1), (2000, 1), (8000, 2), (1000, 4), (32000, 4)):
        s = optuna.create_study(
            study_name=f"demo/D={d},E={e}", storage=storage, sampler=BracketSampler()
        )
        s.set_user_attr("dataset_size", d)
        s.set_user_attr("epochs", e)
        s.optimize(objective(d, e, noise=0.0), n_trials=8)
    s = optuna.create_study(study_name="demo/D=4000,E=2", storage=storage, sampler=BracketSampler())
    s.set_user_attr("dataset_size", 4000)
    s.set_user_attr("epochs", 2)
    s.optimize(objective(4000, 2, noise=0.0), n_trials=1)
    assert lrs(s)[0] == pytest.approx(truth(4000, 2), rel=1e-5)


# ---- packs: K asks before any tell ---------------------------------------------------


def suggest_pack(study: optuna.Study, k: int) -> list[optuna.Trial]:
    out = []
    for _ in range(k):
        t = study.ask()
        t.suggest_float("learning_rate", LOW, HIGH, log=True)
        out.append(t)
    return out


def test_a_cold_pack_is_a_log_spaced_grid_over_the_range_and_the_next_pack_refines():
    d, e, k = 1000, 1, 8
    study = new_cell(optuna.storages.InMemoryStorage(), d, e, pack_size=k)
    pack = suggest_pack(study, k)
    got = sorted(t.params["learning_rate"] for t in pack)
    np.testing.assert_allclose(got, np.geomspace(LOW, HIGH, k), rtol=1e-9)
    # nearest the log-midpoint first
    assert abs(math.log(pack[0].params["learning_rate"] / 1e-3)) < math.log(10) * 4 / 7 / 2 + 1e-9
    for t in pack:
        study.tell(t, loss(t.params["learning_rate"], d=d, e=e))
    c = summarise_cell(study)
    assert c.bracketed
    second = suggest_pack(study, k)
    u2 = np.log([t.params["learning_rate"] for t in second])
    # k LRs around the first pack's estimate, x2^(1/2) apart (wider than 1/(k+1) of this bracket),
    # inside the bracket, nearest the estimate first
    assert (c.right - c.left) / (k + 1) < math.log(2) / 2
    np.testing.assert_allclose(np.diff(np.sort(u2)), math.log(2) / 2, rtol=1e-9)
    assert np.all((u2 >= c.left) & (u2 <= c.right))
    assert u2.min() < c.u_star < u2.max()
    assert abs(u2[0] - c.u_star) <= math.log(2) / 2
    for t in second:
        study.tell(t, loss(t.params["learning_rate"], d=d, e=e))
    assert summarise_cell(study).lr == pytest.approx(truth(d, e), rel=0.3)


def test_a_pack_after_siblings_brackets_the_predicted_optimum():
    storage = optuna.storages.InMemoryStorage()
    for d, e in ((500, 1), (2000, 1), (8000, 2), (1000, 4), (32000, 4), (16000, 1)):
        new_cell(storage, d, e).optimize(objective(d, e), n_trials=6)
    study = new_cell(storage, 4000, 2, pack_size=5)
    pack = suggest_pack(study, 5)
    u = np.log([t.params["learning_rate"] for t in pack])
    du = np.diff(np.sort(u))
    np.testing.assert_allclose(du, du[0], rtol=1e-9)  # log-spaced
    assert u.min() < math.log(truth(4000, 2)) < u.max()  # a bracket around the truth
    # the first member sits at the prediction
    assert abs(u[0] - math.log(truth(4000, 2))) < math.log(1.3)
    for t in pack:
        study.tell(t, loss(t.params["learning_rate"], d=4000, e=2))
    assert summarise_cell(study).bracketed


def test_parallel_asks_without_packs_do_not_collide():
    study = new_cell(optuna.storages.InMemoryStorage(), 1000, 1)
    three = suggest_pack(study, 3)  # pack_size=1, three workers ask at once
    np.testing.assert_allclose(
        sorted(t.params["learning_rate"] for t in three), [1e-5, 1e-3, 1e-1], rtol=1e-12
    )


# ---- the two interfaces, determinism, direction, failures ---------------------------


def test_ask_tell_gives_the_same_lrs_as_optimize():
    storage = optuna.storages.InMemoryStorage()
    a = new_cell(storage, 2000, 2, group="a")
    a.optimize(objective(2000, 2), n_trials=7)
    b = new_cell(storage, 2000, 2, group="b")
    for _ in range(7):
        t = b.ask()
        b.tell(t, objective(2000, 2)(t))
    assert lrs(a) == lrs(b)


def test_runs_are_bit_identical_and_storage_independent(study_run, tmp_path):
    again = run_study()
    assert [c["lrs"] for c in again] == [c["lrs"] for c in study_run]
    sql = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    storage = optuna.storages.InMemoryStorage()
    for st in (storage, sql):
        for d, e in ((500, 1), (2000, 1), (8000, 2), (1000, 4)):
            new_cell(st, d, e).optimize(objective(d, e), n_trials=4)
    pick = [[t.params["learning_rate"] for t in s.trials] for s in (optuna.load_study(study_name=n, storage=sql)
            for n in sorted(x.study_name for x in sql.get_all_studies()))]  # fmt: skip
    ref = [[t.params["learning_rate"] for t in s.trials] for s in (optuna.load_study(study_name=n, storage=storage)
           for n in sorted(x.study_name for x in storage.get_all_studies()))]  # fmt: skip
    assert pick == ref


def test_maximise_mirrors_minimise():
    storage = optuna.storages.InMemoryStorage()
    lo = new_cell(storage, 4000, 1, group="min")
    lo.optimize(objective(4000, 1), n_trials=6)
    hi = optuna.create_study(
        study_name="max/x", storage=storage, sampler=BracketSampler(), direction="maximize"
    )
    hi.optimize(lambda t: -objective(4000, 1)(t), n_trials=6)
    assert lrs(hi) == lrs(lo)


def test_a_diverged_high_lr_bounds_the_search():
    d, e = 1000, 1  # optimum 3e-3; everything above 2e-2 diverges
    study = new_cell(optuna.storages.InMemoryStorage(), d, e)
    study.optimize(objective(d, e, diverge_above=2e-2), n_trials=6, catch=(FloatingPointError,))
    states = [t.state for t in study.trials]
    assert states[2] == optuna.trial.TrialState.FAIL and lrs(study)[2] == pytest.approx(HIGH)
    c = summarise_cell(study)
    assert c.bracketed and c.right is not None
    assert max(lrs(study)[3:]) < 2e-2  # never back above the divergence
    assert c.lr == pytest.approx(truth(d, e), rel=0.3)


def test_a_first_trial_that_diverges_sends_the_search_lower():
    d, e = 1000, 1
    study = new_cell(optuna.storages.InMemoryStorage(), d, e)
    study.optimize(objective(d, e, diverge_above=5e-4), n_trials=4, catch=(FloatingPointError,))
    got = lrs(study)
    assert got[0] == pytest.approx(1e-3) and study.trials[0].state == optuna.trial.TrialState.FAIL
    assert got[1] < 5e-4 and got[1] < got[0]
    assert summarise_cell(study).best is not None


def test_other_parameters_and_bad_distributions():
    study = new_cell(optuna.storages.InMemoryStorage(), 1000, 1)

    def f(t):
        r = t.suggest_int("lora_r", 4, 16)  # not the LR: a seeded random draw
        return loss(t.suggest_float("learning_rate", LOW, HIGH, log=True), d=1000, e=1) + 0 * r

    study.optimize(f, n_trials=3)
    assert lrs(study) == pytest.approx([1e-3, 1e-5, 1e-1], rel=1e-12)
    with pytest.raises(ValueError, match="FloatDistribution with low > 0"):
        new_cell(optuna.storages.InMemoryStorage(), 1000, 1).optimize(
            lambda t: t.suggest_float("learning_rate", 0.0, 1.0), n_trials=1
        )
    with pytest.raises(ValueError, match="pack_size must be an int >= 1, got 0"):
        BracketSampler(pack_size=0)
    with pytest.raises(ValueError, match="axes must be positive numbers"):
        cell_attrs(group="g", axes={"dataset_size": -1})


def test_more_asks_than_the_pack_never_duplicate_a_pending_lr():
    # early stopping queues 2K members per pack: the extra asks must not repeat a pending LR
    study = new_cell(optuna.storages.InMemoryStorage(), 1000, 1, pack_size=4)
    u = np.log([t.params["learning_rate"] for t in suggest_pack(study, 8)])
    assert np.min(np.diff(np.sort(u))) > 0.25  # > x1.28 apart
    np.testing.assert_allclose(np.sort(u[:4]), np.log(np.geomspace(LOW, HIGH, 4)), rtol=1e-12)


def test_pruned_trials_bound_the_best_on_either_side():
    study = new_cell(optuna.storages.InMemoryStorage(), 1000, 1)
    dist = {"learning_rate": optuna.distributions.FloatDistribution(LOW, HIGH, log=True)}
    for lr, state, value in (
        (1e-3, "COMPLETE", 1.0),
        (1e-2, "PRUNED", None),
        (1e-4, "PRUNED", None),
    ):
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": lr},
                distributions=dist,
                state=getattr(optuna.trial.TrialState, state),
                value=value,
            )
        )
    c = summarise_cell(study)
    assert (
        c.bracketed
        and c.left == pytest.approx(math.log(1e-4))
        and c.right == pytest.approx(math.log(1e-2))
    )
    assert c.lr == pytest.approx(1e-3)  # no value on either side: the best itself
