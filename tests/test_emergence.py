"""Jump detection and the mirage check recover known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from analysis.emergence import (
    JumpResult,
    MirageResult,
    breakthroughness,
    check_mirage,
    detect_jumps,
)

# GPT-3 few-shot 3-digit addition, Brown et al. 2020 (params in billions, accuracy %)
GPT3_X = [0.125, 0.35, 0.76, 1.3, 2.7, 6.7, 13, 175]
GPT3_Y = [0.15, 0.45, 0.30, 0.55, 0.75, 0.90, 8.40, 80.4]
# Pythia LAMBADA accuracy, Biderman et al. 2023 (params in billions)
PYTHIA_X = [0.07, 0.16, 0.41, 1.4, 2.8, 6.9, 12]
PYTHIA_Y = [0.1846, 0.3284, 0.5162, 0.6161, 0.6472, 0.6728, 0.7046]

X10 = np.geomspace(1e2, 1e6, 10)  # four decades, 10 points


def sharp_sigmoid(x, *, mid, width=0.2, lo=0.02, hi=0.9):
    """A rise from lo to hi whose 10-90% width is `width` decades, centred at `mid`."""
    s = width / (2 * np.log(9))
    return lo + (hi - lo) * expit((np.log10(x) - np.log10(mid)) / s)


# ---- known curves -----------------------------------------------------------


def test_gpt3_addition_is_a_jump_between_13b_and_175b():
    r = detect_jumps(GPT3_X, GPT3_Y)
    assert isinstance(r, JumpResult)
    assert r.verdict == "jump", r.reason
    assert r.interval == (13.0, 175.0)
    assert 13 <= r.midpoint <= 175
    assert r.delta_bic >= 10 and r.width_decades <= 1.0
    # range 80.25 over the root-median-square step 0.25 (BIG-bench form)
    assert r.breakthroughness == pytest.approx(80.25 / 0.25)
    assert "13" in r.reason and "175" in r.reason


def test_pythia_lambada_is_smooth():
    r = detect_jumps(PYTHIA_X, PYTHIA_Y)
    assert r.verdict == "smooth", r.reason
    assert r.breakthroughness < 20  # vs 321 for GPT-3 addition
    assert "decades" in r.reason  # a gradual rise, not a jump


@pytest.mark.parametrize(
    ("mid", "seed"),
    [(10**3.3, 0), (10**4.0, 1), (10**2.9, 2), (X10[5], 3)],  # between samples and on a sample
)
def test_noisy_sharp_sigmoid_is_a_jump_at_the_right_place(mid, seed):
    rng = np.random.default_rng(seed)
    y = sharp_sigmoid(X10, mid=mid) + rng.normal(0, 0.02, X10.size)
    r = detect_jumps(X10, y)
    assert r.verdict == "jump", r.reason
    lo, hi = r.interval
    assert lo <= mid <= hi
    assert hi / lo == pytest.approx(X10[1] / X10[0])  # one consecutive pair
    assert abs(np.log10(r.midpoint) - np.log10(mid)) < 0.5


def test_sharp_drop_in_loss_is_a_jump_when_lower_is_better():
    loss = 3.0 - 2.0 * sharp_sigmoid(X10, mid=10**3.7, lo=0, hi=1)
    r = detect_jumps(X10, loss, higher_is_better=False)
    assert r.verdict == "jump", r.reason
    assert r.interval[0] <= 10**3.7 <= r.interval[1]
    assert r.breakthroughness > 0  # oriented: the loss improves
    assert detect_jumps(X10, loss, higher_is_better=True).verdict != "jump"


@pytest.mark.parametrize(
    ("y", "hib"),
    [
        (X10**0.5, True),  # hockey stick on a linear axis, still a power law
        (0.9 - 0.8 * X10**-0.3, True),  # saturating accuracy
        (1.5 + 4.0 * X10**-0.25, False),  # a loss falling as a power law
        (0.1 + 0.15 * np.log10(X10), True),  # straight line in log x
    ],
    ids=["power-0.5", "saturating", "loss-power-law", "log-linear"],
)
def test_power_laws_and_lines_are_smooth(y, hib):
    rng = np.random.default_rng(7)
    y = y * (1 + rng.normal(0, 0.01, y.size))
    r = detect_jumps(X10, y, higher_is_better=hib)
    assert r.verdict == "smooth", r.reason


@pytest.mark.parametrize("seed", range(6))
def test_noise_around_a_constant_is_not_a_jump(seed):
    rng = np.random.default_rng(100 + seed)
    r = detect_jumps(X10, 0.5 + rng.normal(0, 0.02, X10.size))
    assert r.verdict in {"flat", "smooth"}, r.reason


# ---- degenerate input ----------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_three_or_fewer_points_are_insufficient(n):
    r = detect_jumps(GPT3_X[-n:] if n else [], GPT3_Y[-n:] if n else [])
    assert r.verdict == "insufficient"
    assert str(n) in r.reason
    json.dumps(r.to_dict(), allow_nan=False)


def test_constant_y_is_flat():
    r = detect_jumps(X10, np.full(X10.size, 0.25))
    assert r.verdict == "flat"
    assert r.breakthroughness == 0.0
    assert r.interval is None


def test_breakthroughness_guards():
    assert np.isnan(breakthroughness([1.0], [0.3]))
    assert breakthroughness([1, 2], [0.0, 1.0]) == pytest.approx(1.0)  # one step: its own size
    assert breakthroughness([1, 2, 3], [5, 5, 5]) == 0.0
    assert breakthroughness([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]) == np.inf  # median step is zero
    assert breakthroughness([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(4.0)  # line: n - 1
    assert breakthroughness([1, 2, 3], [3, 2, 1]) < 0  # gets worse with scale
    assert breakthroughness([1, 2, 3], [3, 2, 1], higher_is_better=False) > 0


def test_unsorted_x_is_sorted_with_y():
    order = np.random.default_rng(0).permutation(len(GPT3_X))
    shuffled = detect_jumps(np.array(GPT3_X)[order], np.array(GPT3_Y)[order])
    assert shuffled == detect_jumps(GPT3_X, GPT3_Y)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        ([1, 2, 3, 4], [1, 2, 3], {}, r"len\(x\)=4 and len\(y\)=3"),
        ([1, 2, 3, 4], [1, np.nan, 3, 4], {}, r"y must be finite, got y\[1\]=nan"),
        ([1, np.inf, 3, 4], [1, 2, 3, 4], {}, r"x must be finite, got x\[1\]=inf"),
        ([1, 0, 3, 4], [1, 2, 3, 4], {}, r"x must be > 0 .* got x\[1\]=0\.0"),
        ([1, -2, 3, 4], [1, 2, 3, 4], {}, r"got x\[1\]=-2\.0"),
        ([1, 2, 2, 4], [1, 2, 3, 4], {}, r"x must not repeat .* x=2\.0"),
        ([1, 2, 3, 4], [1, 2, 3, 4], {"se": [0.1, 0.1]}, r"se must be a scalar or have len\(x\)=4"),
        (
            [1, 2, 3, 4],
            [1, 2, 3, 4],
            {"se": [0.1, 0, 0.1, 0.1]},
            r"se must be > 0, got se\[1\]=0\.0",
        ),
        ([1, 2, 3, 4], ["a", "b", "c", "d"], {}, r"y must be numbers"),
    ],
)
def test_bad_input_gives_a_clear_error(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_jumps(x, y, **kwargs)


def test_se_makes_a_jump_within_the_noise_not_count():
    rng = np.random.default_rng(3)
    y = sharp_sigmoid(X10, mid=10**3.5, lo=0.10, hi=0.16) + rng.normal(0, 0.004, X10.size)
    assert detect_jumps(X10, y, se=0.004).verdict == "jump"
    noisy = detect_jumps(X10, y, se=0.05)  # the step (0.06) is ~1 se: noise
    assert noisy.verdict in {"flat", "smooth"}, noisy.reason


def test_thresholds_are_arguments():
    strict = detect_jumps(GPT3_X, GPT3_Y, max_width_decades=0.1)
    assert strict.verdict == "smooth" and "0.1" in strict.reason
    assert detect_jumps(GPT3_X, GPT3_Y, min_delta_bic=1000).verdict == "smooth"
    assert detect_jumps(GPT3_X, GPT3_Y, min_before=8).verdict == "smooth"


def test_to_dict_is_json_safe():
    d = detect_jumps(GPT3_X, GPT3_Y).to_dict()
    assert d["verdict"] == "jump" and d["interval"] == [13.0, 175.0]
    json.dumps(d, allow_nan=False)
    d = detect_jumps([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]).to_dict()  # infinite breakthroughness
    assert d["breakthroughness"] is None
    json.dumps(d, allow_nan=False)


# ---- mirage check ---------------------------------------------------------------


def mirage_table(*, genuine: bool, seed: int = 0) -> pd.DataFrame:
    """Per dataset size: three LRs (one row each, final epoch) and one failed trial."""
    rng = np.random.default_rng(seed)
    rows = []
    mid = 10**3.5
    for d in X10:
        for k, pen in enumerate([0.0, 0.05, 0.2]):  # LR penalty on every metric
            step = sharp_sigmoid(d, mid=mid, lo=0, hi=1)
            em = 0.02 + 0.8 * step - pen
            if genuine:
                loss = 2.5 - 1.5 * step + pen
                tok = 0.3 + 0.6 * step - pen
            else:
                loss = 1.0 + 3.0 * d**-0.25 + pen
                tok = 0.95 - 0.8 * d**-0.2 - pen
            row = {"trial_id": f"{d:.0f}-{k}", "dataset_size": int(d), "status": "ok", "epoch": 1}
            for split in ("val", "test"):
                row[f"{split}_exact_match"] = em + rng.normal(0, 0.01)
                row[f"{split}_eval_loss"] = loss + rng.normal(0, 0.01)
                row[f"{split}_token_accuracy"] = tok + rng.normal(0, 0.005)
            rows.append(row)
        rows.append(
            {"trial_id": f"{d:.0f}-f", "dataset_size": int(d), "status": "failed", "epoch": 1}
        )
    return pd.DataFrame(rows)


def test_exact_match_jump_with_smooth_loss_is_a_metric_artefact():
    m = check_mirage(mirage_table(genuine=False), "dataset_size")
    assert isinstance(m, MirageResult)
    assert m.verdict == "metric artefact", m.reason
    assert m.results["exact_match"].verdict == "jump"
    assert m.results["eval_loss"].verdict == "smooth"
    assert m.results["eval_loss"].higher_is_better is False
    assert m.columns["exact_match"] == "test_exact_match"
    assert "Schaeffer" in m.reason
    json.dumps(m.to_dict(), allow_nan=False)


def test_exact_match_and_loss_jumping_together_is_genuine():
    m = check_mirage(mirage_table(genuine=True), "dataset_size")
    assert m.verdict == "genuine jump", m.reason
    assert m.results["eval_loss"].verdict == "jump"
    lo, hi = m.results["exact_match"].interval
    assert lo <= 10**3.5 <= hi


def test_no_jump_in_exact_match():
    t = mirage_table(genuine=False)
    for split in ("val", "test"):
        t[f"{split}_exact_match"] = 0.1 + 0.05 * np.log10(t["dataset_size"].astype(float))
    m = check_mirage(t, "dataset_size")
    assert m.verdict == "no jump", m.reason


def test_selected_aggregation_picks_rows_by_validation_only():
    t = mirage_table(genuine=False)
    m = check_mirage(t, "dataset_size", agg="selected")
    ok = t[t["status"] == "ok"]
    chosen = ok.loc[ok.groupby("dataset_size")["val_eval_loss"].idxmin()]
    assert m.series["exact_match"][1] == pytest.approx(tuple(chosen["test_exact_match"]))
    # scrambling test columns changes the reported curve but not which rows were chosen
    scrambled = t.copy()
    scrambled["test_eval_loss"] = np.random.default_rng(1).permutation(
        t["test_eval_loss"].to_numpy()
    )
    m2 = check_mirage(scrambled, "dataset_size", agg="selected")
    assert m2.series["exact_match"] == m.series["exact_match"]


def test_plain_columns_other_aggregations_and_missing_metrics():
    t = mirage_table(genuine=False)
    plain = t.drop(columns=[c for c in t.columns if c.startswith("val_")]).rename(
        columns=lambda c: c.removeprefix("test_")
    )
    assert check_mirage(plain, "dataset_size", agg="best").verdict == "metric artefact"
    assert check_mirage(plain, "dataset_size", agg="mean").verdict == "metric artefact"
    only_em = plain.drop(columns=["eval_loss", "token_accuracy"])
    m = check_mirage(only_em, "dataset_size", agg="mean")
    assert m.verdict == "inconclusive" and m.missing == ("eval_loss", "token_accuracy")
    few = plain[plain["dataset_size"] <= 1000]
    assert check_mirage(few, "dataset_size", agg="mean").verdict == "insufficient"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": "model_size"}, "x column 'model_size' is not in the table"),
        ({"x": "dataset_size", "discontinuous": "bleu"}, "discontinuous metric 'bleu'"),
        ({"x": "dataset_size", "agg": "max"}, "agg must be one of"),
        ({"x": "dataset_size", "select_split": "test"}, "must select rows on the validation split"),
    ],
)
def test_mirage_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_mirage(mirage_table(genuine=False), **kwargs)
