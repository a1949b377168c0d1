"""Best learning rate per cell and the LR rule recover a known optimum."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.lr_cell import best_lr, selection_columns
from analysis.lr_edge import LREdgeWarning, search_range
from analysis.lr_trend import LRRule, LRRuleError, lr_rule

SIZES = (1000, 4000, 16000, 64000)
EPOCHS = (1, 3)
LRS = np.geomspace(1e-5, 1e-2, 8)
P_TRUE, Q_TRUE = -0.3, -0.2


def lr_opt(d, e, scale=3e-3):
    """The optimum the table is built around: scale * (D/1000)**-0.3 * E**-0.2."""
    return scale * (d / 1000) ** P_TRUE * e**Q_TRUE


def make_table(
    *, seed=0, scale=3e-3, noise=0.01, sizes=SIZES, epochs=EPOCHS, lrs=LRS
) -> pd.DataFrame:
    """One row per (trial, epoch): val/test loss a parabola in log10 LR around lr_opt, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in sizes:
        for e in epochs:
            opt = lr_opt(d, e, scale)
            for lr in lrs:
                tid = f"d{d}-e{e}-lr{lr:.2e}"
                for ep in range(1, e + 1):
                    loss = 1.0 + 0.3 * (np.log10(lr) - np.log10(opt)) ** 2 + 0.05 / ep
                    rows.append(
                        {
                            "study": "s",
                            "trial_id": tid,
                            "dataset_size": d,
                            "epochs": e,
                            "learning_rate": lr,
                            "epoch": ep,
                            "status": "ok",
                            "phase": "search",
                            "val_eval_loss": loss + rng.normal(0, noise),
                            "val_exact_match": 1.0 - loss + rng.normal(0, noise),
                            "test_eval_loss": loss + rng.normal(0, noise),
                            "test_exact_match": 1.0 - loss + rng.normal(0, noise),
                        }
                    )
    # the results table's own dtypes (nullable ints and strings)
    return pd.DataFrame(rows).astype(
        {
            "trial_id": "string",
            "status": "string",
            "dataset_size": "Int64",
            "epochs": "Int64",
            "epoch": "Int64",
        }
    )


def covered(best: pd.DataFrame, scale=3e-3) -> np.ndarray:
    truth = lr_opt(best["dataset_size"].astype(float), best["epochs"].astype(float), scale)
    return ((best["lr_low"] <= truth) & (truth <= best["lr_high"])).to_numpy()


# ---- best_lr recovers the optimum ------------------------------------------------


def test_best_lr_recovers_the_optimum_within_its_interval():
    hits = []
    for seed in range(3):
        best = best_lr(make_table(seed=seed))
        assert list(best.columns[:2]) == ["dataset_size", "epochs"] and len(best) == 8
        assert (best["method"] == "quadratic").all()
        assert not best["at_edge"].any()
        assert (best["n_trials"] == 8).all() and (best["n_failed"] == 0).all()
        assert ((best["lr_low"] <= best["lr_best"]) & (best["lr_best"] <= best["lr_high"])).all()
        truth = lr_opt(best["dataset_size"].astype(float), best["epochs"].astype(float))
        assert np.abs(np.log10(best["lr_best"] / truth)).max() < 0.15  # a third of a grid step
        hits.extend(covered(best))
    assert np.mean(hits) >= 0.75, f"90% intervals covered the truth in {np.mean(hits):.0%} of cells"


def test_trial_id_best_and_metric_best_are_the_best_observed_trial():
    table = make_table(seed=4)
    best = best_lr(table)
    final = table[table["epoch"] == table["epochs"]]
    for row in best.itertuples():
        cell = final[(final["dataset_size"] == row.dataset_size) & (final["epochs"] == row.epochs)]
        winner = cell.loc[cell["val_eval_loss"].idxmin()]
        assert row.trial_id_best == winner["trial_id"]
        assert row.metric_best == pytest.approx(winner["val_eval_loss"])


def test_lr_rule_recovers_the_exponent():
    rule = lr_rule(best_lr(make_table(seed=1)))
    assert isinstance(rule, LRRule)
    assert rule.params_["p"] == pytest.approx(P_TRUE, abs=0.05)
    lo, hi = rule.ci_["p"]
    assert lo < rule.params_["p"] < hi
    assert rule.terms_ == ("c", "p", "q") and rule.n_cells_ == 8
    assert rule.predict(dataset_size=8000, epochs=2) == pytest.approx(lr_opt(8000, 2), rel=0.15)
    lo, hi = rule.predict_interval(dataset_size=8000, epochs=2)
    assert lo < rule.predict(dataset_size=8000, epochs=2) < hi
    arr = rule.predict(dataset_size=np.array([1000, 64000]), epochs=1)
    assert arr.shape == (2,) and arr[0] > arr[1]
    d = rule.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d["params"]) == {"c", "p", "q"} and d["level"] == 0.9


def test_lr_rule_drops_q_with_one_epochs_value():
    rule = LRRule().fit(best_lr(make_table(seed=2, epochs=(2,))))
    assert rule.terms_ == ("c", "p")
    assert rule.params_["q"] == 0.0 and np.isnan(rule.ci_["q"][0])
    assert rule.params_["p"] == pytest.approx(P_TRUE, abs=0.05)
    assert rule.predict(dataset_size=4000) == pytest.approx(lr_opt(4000, 2), rel=0.15)
    with pytest.warns(UserWarning, match="ignores epochs"):
        rule.predict(dataset_size=4000, epochs=5)
    json.dumps(rule.to_dict())


def test_use_best_epoch_and_mode_max():
    table = make_table(seed=3)
    by_epoch = best_lr(table, use="best_epoch")
    assert (by_epoch["method"] == "quadratic").all()
    em = best_lr(table, metric="exact_match", mode="max")  # 1 - loss: same optimum
    np.testing.assert_allclose(
        np.log10(em["lr_best"]), np.log10(best_lr(table)["lr_best"]), atol=0.15
    )


# ---- the validation split only ---------------------------------------------------


def test_scrambling_test_columns_leaves_best_lr_unchanged():
    table = make_table(seed=5)
    rng = np.random.default_rng(9)
    scrambled = table.copy()
    for col in [c for c in table.columns if c.startswith("test_")]:
        scrambled[col] = rng.permutation(table[col].to_numpy()) * 10 - 3
    pd.testing.assert_frame_equal(best_lr(table), best_lr(scrambled))
    cols = selection_columns(table)
    assert not any(c.startswith("test_") for c in cols)
    assert "val_eval_loss" in cols


def test_selection_on_the_test_split_is_refused():
    table = make_table()
    with pytest.raises(ValueError, match="split='test'"):
        best_lr(table, split="test")
    with pytest.raises(ValueError, match="test_ column"):
        best_lr(table, metric="test_eval_loss", split="")


def test_plain_eval_loss_column_works():
    table = make_table(seed=6)
    plain = table.drop(columns=[c for c in table.columns if c.startswith("test_")])
    plain = plain.rename(columns={"val_eval_loss": "eval_loss"})
    pd.testing.assert_frame_equal(best_lr(plain), best_lr(table))


# ---- edges, failures, pruning and degenerate cells ---------------------------------


def test_optimum_above_the_range_is_flagged_with_a_warning_to_widen_upward():
    table = make_table(scale=0.3, sizes=(1000, 4000))  # optimum 0.3, range tops out at 1e-2
    with pytest.warns(LREdgeWarning, match=r"widen the range upward, above 0\.01"):
        best = best_lr(table)
    assert best["at_edge"].all() and (best["edge"] == "high").all()
    assert np.allclose(best["lr_best"], 1e-2)  # no extrapolation beyond the searched range


def test_optimum_below_the_range_warns_downward_and_can_be_silenced():
    table = make_table(scale=1e-7, sizes=(1000,), epochs=(1,))
    with pytest.warns(LREdgeWarning, match="widen the range downward, below 1e-05"):
        best_lr(table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        best = best_lr(table, edge_warn=False)
    assert best["edge"].tolist() == ["low"]


def test_lr_rule_drops_edge_cells_with_a_warning():
    inside = make_table(seed=7)
    outside = make_table(scale=0.3, sizes=(256000,), epochs=(1,))
    with pytest.warns(LREdgeWarning):
        best = best_lr(pd.concat([inside, outside], ignore_index=True))
    assert best["at_edge"].sum() == 1
    with pytest.warns(LREdgeWarning, match="dropped 1 cell"):
        rule = lr_rule(best)
    assert rule.n_cells_ == 8
    assert rule.params_["p"] == pytest.approx(P_TRUE, abs=0.05)


def test_failed_and_pruned_trials():
    table = make_table(seed=8, sizes=(1000,), epochs=(3,))
    lrs = sorted(table["learning_rate"].unique())
    # the largest LR diverged: failed rows with NaN metrics
    top = table["learning_rate"] == lrs[-1]
    table.loc[top, "status"] = "failed"
    table.loc[top, ["val_eval_loss", "test_eval_loss"]] = np.nan
    # the two smallest LRs were pruned after epoch 1 (and look great there)
    low = table["learning_rate"].isin(lrs[:2])
    table = table[~low | (table["epoch"] == 1)].copy()
    table.loc[low, "status"] = "pruned"
    table.loc[low, "val_eval_loss"] = 0.0
    best = best_lr(table)
    row = best.iloc[0]
    assert row["n_trials"] == 7 and row["n_failed"] == 1
    assert row["metric_best"] > 0.5  # a pruned trial may not be best
    assert not row["at_edge"]  # the failed larger LR bounds the search


def test_degenerate_cells_never_crash():
    base = make_table(seed=9, sizes=(1000,), epochs=(1,))
    lrs = sorted(base["learning_rate"].unique())
    one = base[base["learning_rate"] == lrs[3]].assign(dataset_size=2000)
    two = base[base["learning_rate"].isin(lrs[3:5])].assign(dataset_size=3000)
    down = base.copy().assign(dataset_size=4000)  # a hill, not a valley: quadratic opens downward
    down["val_eval_loss"] = 2.0 - 0.3 * (np.log10(down["learning_rate"]) + 3.5) ** 2
    dead = base.assign(dataset_size=5000, status="failed", val_eval_loss=np.nan)
    dead.loc[dead.index[0], "learning_rate"] = np.nan  # a failed row may lack its LR
    table = pd.concat([one, two, down, dead], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        best = best_lr(table).set_index("dataset_size")
    assert any("no complete trial" in str(w.message) for w in caught)

    assert best.loc[2000, "method"] == "best_observed" and best.loc[2000, "lr_best"] == lrs[3]
    assert np.isnan(best.loc[2000, "lr_low"]) and best.loc[2000, "at_edge"]
    assert best.loc[3000, "method"] == "best_observed"
    assert {best.loc[3000, "lr_low"], best.loc[3000, "lr_high"]} <= set(lrs[3:5])
    assert best.loc[4000, "method"] == "best_observed"  # the minimum is at an end of the hill
    assert best.loc[4000, "at_edge"]
    assert np.isnan(best.loc[5000, "lr_best"]) and best.loc[5000, "n_failed"] == 8
    assert best.loc[5000, "method"] == "none"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
        ({"use": "last"}, "use must be 'final' or 'best_epoch', got 'last'"),
        ({"metric": "bleu"}, "metric column 'val_bleu'"),
        ({"by": ("dataset_size", "lora_r")}, r"column\(s\) \['lora_r'\] are required"),
        ({"bootstrap": -1}, "bootstrap must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        best_lr(make_table(sizes=(1000,), epochs=(1,)), **kwargs)


def test_bad_learning_rate_is_quoted():
    table = make_table(sizes=(1000,), epochs=(1,))
    table.loc[0, "learning_rate"] = -1e-3
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0, got -0\.001"):
        best_lr(table)


def test_lr_rule_needs_two_dataset_sizes():
    best = best_lr(make_table(sizes=(1000,)))
    with pytest.raises(ValueError, match=r"distinct dataset_size values, got \[1000\.0\]"):
        lr_rule(best)
    with pytest.raises(ValueError, match="not fitted"):
        LRRule().predict(dataset_size=1000)


# ---- two kinds of edge: beyond the range vs not bracketed ------------------------------


def test_an_edge_at_the_ranges_top_is_beyond_the_range():
    table = make_table(scale=0.3, sizes=(1000,), epochs=(1,))  # optimum 0.3; tried 1e-5..1e-2
    with pytest.warns(
        LREdgeWarning, match=r"beyond the range: .*widen the range upward, above 0\.01"
    ):
        best = best_lr(table, lr_range=(1e-5, 1e-2))
    row = best.iloc[0]
    assert row["at_edge"] and row["edge"] == "high" and row["edge_kind"] == "beyond_range"
    assert row["lr_best"] == pytest.approx(1e-2)


def test_an_edge_inside_the_range_is_not_bracketed_and_names_the_cell():
    table = make_table(scale=0.3, sizes=(4000,), epochs=(3,))  # tried up to 1e-2 of a range to 1
    with pytest.warns(LREdgeWarning, match=r"not bracketed") as caught:
        best = best_lr(table, lr_range=(1e-5, 1.0))
    msg = str(caught[0].message)
    assert "run more trials in cell (dataset_size=4000, epochs=3) above 0.01 (up to 1)" in msg
    assert "widen" not in msg
    row = best.iloc[0]
    assert row["at_edge"] and row["edge"] == "high" and row["edge_kind"] == "not_bracketed"
    assert row["advice"] in msg
    # the low side, per cell ranges keyed by the cell
    low = make_table(scale=1e-7, sizes=(1000,), epochs=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = best_lr(low, lr_range={(1000, 1): (1e-6, 1e-2)}).iloc[0]
        c = best_lr(low, lr_range={(1000, 1): (1e-5, 1e-2)}).iloc[0]
    assert b["edge_kind"] == "not_bracketed" and "below 1e-05 (down to 1e-06)" in b["advice"]
    assert (
        c["edge_kind"] == "beyond_range" and "widen the range downward, below 1e-05" in c["advice"]
    )


def test_without_a_range_the_edge_kind_is_unknown_and_the_advice_says_both():
    table = make_table(scale=0.3, sizes=(1000,), epochs=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = best_lr(table).iloc[0]
    assert row["edge_kind"] == "unknown"
    assert "widen the range upward" in row["advice"] and "run more trials" in row["advice"]
    inside = best_lr(make_table(seed=1), lr_range=(1e-5, 1e-2))
    assert (inside["edge_kind"] == "").all() and (inside["advice"] == "").all()


def test_search_range_reads_a_spec_or_optunas_stored_distributions():
    optuna = pytest.importorskip("optuna")
    spec = {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}
    assert search_range(spec) == (1e-3, 1e-2)
    dist = optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)
    trials = [
        optuna.trial.create_trial(
            params={"learning_rate": lr}, distributions={"learning_rate": dist}, value=1.0
        )
        for lr in (1e-3, 5e-3)
    ]
    assert search_range(trials) == (1e-4, 3e-2)
    with pytest.raises(ValueError, match="no 'learning_rate' range found"):
        search_range([])
    with pytest.raises(ValueError, match=r"0 < low <= high, got \(0\.01, 0\.001\)"):
        best_lr(make_table(sizes=(1000,), epochs=(1,)), lr_range=(1e-2, 1e-3))


# ---- the rule over any axes; it refuses with fewer cells than terms + 2 --------------------


def test_lr_rule_refuses_fewer_cells_than_terms_plus_two():
    best = best_lr(make_table(seed=1, sizes=(1000, 4000)))  # 4 cells for c, p, q: needs 5
    with pytest.raises(
        LRRuleError,
        match=r"refuses to fit 3 terms \['c', 'p', 'q'\] from 4 usable cell\(s\): it needs at least 5",
    ):
        lr_rule(best)
    assert issubclass(LRRuleError, ValueError)
    three = best_lr(make_table(seed=1, sizes=(1000, 4000, 16000), epochs=(2,)))  # c, p: needs 4
    with pytest.raises(LRRuleError, match="from 3 usable"):
        lr_rule(three)
    five = best_lr(make_table(seed=1, sizes=(1000, 4000, 16000)))[:5]
    rule = lr_rule(five)
    assert rule.dof_ == 2 and all(np.isfinite(rule.ci_[t]).all() for t in rule.terms_)
    lo, hi = rule.predict_interval(dataset_size=8000, epochs=2)
    assert 0 < lo < rule.predict(dataset_size=8000, epochs=2) < hi < np.inf


def test_lr_rule_over_lora_rank_recovers_its_exponent():
    r_true = -0.5
    parts = []
    for r in (4, 8, 16, 32):
        part = make_table(seed=r, scale=3e-3 * (r / 8) ** r_true, sizes=(1000, 4000, 16000))
        parts.append(part.assign(lora_r=r))
    table = pd.concat(parts, ignore_index=True)
    best = best_lr(table, by=("dataset_size", "epochs", "lora_r"))
    rule = lr_rule(best, axes=["dataset_size", "epochs", "lora_r"])
    assert rule.terms_ == ("c", "p", "q", "lora_r") and rule.n_cells_ == 24
    assert rule.exponents_ == {
        "dataset_size": rule.params_["p"],
        "epochs": rule.params_["q"],
        "lora_r": rule.params_["lora_r"],
    }
    assert rule.params_["p"] == pytest.approx(P_TRUE, abs=0.05)
    assert rule.params_["q"] == pytest.approx(Q_TRUE, abs=0.05)
    assert rule.params_["lora_r"] == pytest.approx(r_true, abs=0.05)
    lo, hi = rule.ci_["lora_r"]
    assert lo < r_true < hi
    want = lr_opt(8000, 2) * (16 / 8) ** r_true
    assert rule.predict(dataset_size=8000, epochs=2, lora_r=16) == pytest.approx(want, rel=0.15)
    assert "lora_r*log(lora_r)" in rule.to_dict()["form"]
    with pytest.raises(ValueError, match="pass lora_r="):
        rule.predict(dataset_size=8000, epochs=2)
    with pytest.raises(ValueError, match=r"runs over axes .* got \['model_size'\]"):
        rule.predict(dataset_size=8000, epochs=2, lora_r=8, model_size=1e6)
    # an axis with one value in the study is dropped, as epochs is
    one_r = lr_rule(
        best_lr(parts[1], by=("dataset_size", "epochs", "lora_r")),
        axes=["dataset_size", "epochs", "lora_r"],
    )
    assert one_r.terms_ == ("c", "p", "q") and np.isnan(one_r.ci_["lora_r"][0])
