"""Jump detection and the mirage check recover known answers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit
from typer.testing import CliRunner

from analysis.findings import analyse
from analysis.jump_seeds import SeedJumpResult, _rescaled_mean, jumps_across_seeds
from analysis.jumps import JumpResult, binomial_se, breakthroughness, detect_jumps
from analysis.mirage import MirageResult, _seed_fractions, check_mirage
from scaling.cli import app
from scaling.records import append_rows, read_run

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
@pytest.mark.parametrize("se", [None, 0.02, 0.005], ids=["no-se", "se-true", "se-too-small"])
def test_noisy_sharp_sigmoid_is_a_jump_at_the_right_place(mid, seed, se):
    rng = np.random.default_rng(seed)
    y = sharp_sigmoid(X10, mid=mid) + rng.normal(0, 0.02, X10.size)
    r = detect_jumps(X10, y, se=se)
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
@pytest.mark.parametrize("se_rel", [None, 0.01, 0.001], ids=["no-se", "se-true", "se-too-small"])
def test_power_laws_and_lines_are_smooth(y, hib, se_rel):
    rng = np.random.default_rng(7)
    y = y * (1 + rng.normal(0, 0.01, y.size))
    se = None if se_rel is None else se_rel * np.abs(y)  # 0.001: errors 10x below the noise
    r = detect_jumps(X10, y, higher_is_better=hib, se=se)
    assert r.verdict == "smooth", r.reason


# smooth proportions measured on 500 or 5,000 problems: with binomial errors (the report's
# default path) these once read as jumps, "in the last interval", as the sigmoid misfit them
# least under chi-square with tiny errors (without errors they read smooth)
SMOOTH_PROPORTIONS = {
    "linear-in-x-2-decades": (np.geomspace(1, 100, 8), lambda x: 0.01 + 0.9 * x / 100),
    "linear-in-x-3-decades": (np.geomspace(1, 1000, 6), lambda x: 0.01 + 0.6 * x / 1000),
    "sqrt-4-decades": (X10, lambda x: 0.01 + 0.89 * np.sqrt(x / 1e6)),
    "sqrt-3-decades-5-points": (np.geomspace(1, 1000, 5), lambda x: 0.6 * np.sqrt(x / 1000)),
    # 0.0003 .. 0.3: the weighted fits all misfit it alike; a rise of ~45 errors is not "flat"
    "linear-in-x-from-0-5-points": (np.geomspace(1, 1000, 5), lambda x: 0.3 * x / 1000),
    "log-linear": (X10, lambda x: 0.1 + 0.15 * np.log10(x)),
    "saturating": (X10, lambda x: 0.9 - 0.8 * x**-0.3),
}


@pytest.mark.parametrize("n_problems", [500, 5000])
@pytest.mark.parametrize("name", list(SMOOTH_PROPORTIONS))
def test_smooth_proportions_stay_smooth_with_binomial_errors(name, n_problems):
    x, law = SMOOTH_PROPORTIONS[name]
    y = law(x)
    assert detect_jumps(x, y, bounds=(0, 1)).verdict == "smooth"
    r = detect_jumps(x, y, bounds=(0, 1), se=binomial_se(y, n_problems))
    assert r.verdict == "smooth", r.reason
    assert "last interval" not in r.reason


def test_a_jump_with_binomial_errors_stays_a_jump():
    y = np.asarray(GPT3_Y) / 100  # GPT-3 3-digit addition on 2,000 problems
    r = detect_jumps(GPT3_X, y, bounds=(0, 1), se=binomial_se(y, 2000))
    assert r.verdict == "jump", r.reason
    assert r.interval == (13.0, 175.0)


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


# ---- published ladders (tests/data/ladders, sources in its README) ----------------

LADDERS = Path(__file__).parent / "data" / "ladders"


def ladder(name: str) -> pd.DataFrame:
    return pd.read_csv(LADDERS / f"{name}.csv")


def ladder_verdict(name: str, metric: str = "acc", **kwargs) -> JumpResult:
    t = ladder(name)
    y = t[metric].to_numpy(float)
    hib = metric != "ppl"
    se = binomial_se(y, t["n_problems"].to_numpy(float)) if hib else None
    return detect_jumps(
        t["params_b"], y, higher_is_better=hib, se=se, bounds=(0, 1) if hib else None, **kwargs
    )


# (ladder, metric, verdict its paper gives, interval of a jump in billions of parameters)
PUBLISHED = [
    ("pythia_deduped_addition_16shot", "acc", "jump", (1.4, 2.8)),
    ("pythia_deduped_addition_2shot", "acc", "jump", (1.4, 2.8)),
    ("pythia_deduped_addition_0shot", "acc", "flat", None),
    ("pythia_lambada_openai", "acc", "smooth", None),
    ("pythia_lambada_openai", "ppl", "smooth", None),
    ("opt_lambada_openai", "acc", "smooth", None),
    ("opt_lambada_openai", "ppl", "smooth", None),
    ("pythia_sciq", "acc", "smooth", None),
    ("pythia_piqa", "acc", "smooth", None),
    ("pythia_arc_challenge", "acc", "smooth", None),
    ("pythia_logiqa", "acc", "flat", None),
]


@pytest.mark.parametrize(("name", "metric", "verdict", "interval"), PUBLISHED)
def test_published_ladders_get_their_papers_verdict(name, metric, verdict, interval):
    r = ladder_verdict(name, metric)
    assert r.verdict == verdict, r.reason
    if interval is not None:
        assert r.interval == interval


def test_every_ladder_file_is_tested_and_named_in_the_readme():
    readme = (LADDERS / "README.md").read_text()
    files = {p.stem for p in LADDERS.glob("*.csv")}
    assert files == {name for name, *_ in PUBLISHED}
    assert all(f"{f}.csv" in readme for f in files)


def test_a_jump_that_falls_back_after_it_is_still_a_jump():
    # Pythia 16-shot addition: 0.685 at 2.8B, 0.477 at 6.9B, 0.874 at 12B
    t = ladder("pythia_deduped_addition_16shot")
    r = detect_jumps(t["params_b"], t["acc"])  # without standard errors too
    assert r.verdict == "jump", r.reason
    assert r.interval == (1.4, 2.8)
    assert "not monotone" in r.reason and "6.9" in r.reason


def test_tiny_rise_of_a_bounded_metric_is_flat_whatever_its_shape():
    x = [0.07, 0.16, 0.41, 1.0, 1.4, 2.8, 6.9, 12]
    y = [0, 0, 0, 0, 0, 0, 0.001, 0.007]  # exact match 0 -> 0.007
    r = detect_jumps(x, y, bounds=(0, 1))
    assert r.verdict == "flat" and "0.007" in r.reason
    assert ladder_verdict("pythia_deduped_addition_0shot").verdict == "flat"  # max 0.041
    with pytest.raises(ValueError, match="bounds must be"):
        detect_jumps(x, y, bounds=(1, 0))


def test_whole_rise_in_the_last_interval_is_a_jump_there():
    t = ladder("pythia_deduped_addition_16shot")
    t = t[t["params_b"] <= 2.8]  # 0.018 0.035 0.032 0.051 | 0.685
    se = binomial_se(t["acc"], t["n_problems"])
    for kwargs in ({}, {"se": se}):
        r = detect_jumps(t["params_b"], t["acc"], **kwargs)
        assert r.verdict == "jump", r.reason
        assert r.interval == (1.4, 2.8) and 1.4 < r.midpoint < 2.8
        assert "last interval" in r.reason


def test_the_last_interval_text_needs_nearly_the_whole_rise_there():
    # the largest step is the last (0.34 -> 0.72) but 0.03 -> 0.34 before it is almost as big
    r = detect_jumps([300, 600, 1200, 2400, 4800], [0, 0.004, 0.03, 0.34, 0.72], bounds=(0, 1))
    assert r.verdict == "jump" and r.interval == (2400.0, 4800.0), r.reason
    assert "last interval" not in r.reason


SPIKE_X = [1, 2, 4, 8, 16, 32, 64, 128]
SPIKE_Y = [0.01, 0.02, 0.01, 0.02, 0.70, 0.72, 0.10, 0.12]  # up at 16-32, back near 0.1 after


@pytest.mark.parametrize("with_se", [False, True])
def test_a_rise_given_back_is_transient_and_its_reason_names_the_fall(with_se):
    se = binomial_se(SPIKE_Y, 500) if with_se else None
    r = detect_jumps(SPIKE_X, SPIKE_Y, bounds=(0, 1), se=se)
    assert r.verdict == "transient", r.reason
    assert r.interval == (8.0, 16.0)
    assert "falls back to 0.12 at x=128" in r.reason and "0.72" in r.reason
    json.dumps(r.to_dict(), allow_nan=False)


def test_a_fall_after_a_kept_jump_is_named():
    y = [0.01, 0.02, 0.01, 0.02, 0.70, 0.72, 0.50, 0.45]  # gives back 0.27 of 0.7: still a jump
    for se in (None, binomial_se(y, 500)):
        r = detect_jumps(SPIKE_X, y, bounds=(0, 1), se=se)
        assert r.verdict == "jump" and r.interval == (8.0, 16.0), r.reason
        assert "falls back to 0.45 at x=128" in r.reason


def test_one_high_point_is_transient_only_with_standard_errors():
    y = [0.01, 0.02, 0.01, 0.02, 0.70, 0.10, 0.12, 0.11]
    assert detect_jumps(SPIKE_X, y, bounds=(0, 1)).verdict == "flat"  # an outlier, for all we know
    r = detect_jumps(SPIKE_X, y, bounds=(0, 1), se=binomial_se(y, 500))  # 0.70 +- 0.02: no outlier
    assert r.verdict == "transient" and "seen at one x only" in r.reason, r.reason


def test_a_transient_exact_match_is_no_jump_for_the_mirage_check():
    t = pd.DataFrame({"x": SPIKE_X, "exact_match": SPIKE_Y,
                      "eval_loss": 1.0 + 2.0 * np.asarray(SPIKE_X, float) ** -0.3})  # fmt: skip
    m = check_mirage(t, "x", agg="mean", n_problems=500)
    assert m.results["exact_match"].verdict == "transient"
    assert m.verdict == "no jump" and "no lasting jump" in m.reason and "falls back" in m.reason


def test_no_overflow_warning_from_the_sigmoid_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered" once leaked from scipy
        r = detect_jumps(SPIKE_X, [1, 1, 1, 1, 3, 3, 3, 3], higher_is_better=False)
    assert r.verdict == "smooth", r.reason  # the loss gets worse with x: no improvement to jump


def test_four_points_are_too_few_for_the_sigmoid():
    t = ladder("pythia_deduped_addition_16shot")
    four = t[(t["params_b"] >= 0.41) & (t["params_b"] <= 2.8)]  # spans the jump
    assert len(four) == 4
    r = detect_jumps(four["params_b"], four["acc"])
    assert r.verdict == "insufficient" and "4 point" in r.reason


# ---- standard errors from the evaluation size ------------------------------------------


def test_binomial_se_of_the_demo_test_set():
    assert binomial_se(0.5, 500) == pytest.approx(0.0224, abs=1e-4)  # the demo's +-0.02
    assert 0 < binomial_se(0.0, 500) < 0.003  # a zero score still has an error
    with pytest.raises(ValueError, match="proportions"):
        binomial_se(1.5, 500)
    with pytest.raises(ValueError, match="count of problems"):
        binomial_se(0.5, 0)


def small_jump_table(n_problems=None, hi=0.16) -> pd.DataFrame:
    """Exact match steps 0.10 -> hi (0.16: 1.4 binomial se at 100 problems); loss smooth."""
    rng = np.random.default_rng(5)
    em = sharp_sigmoid(X10, mid=10**3.5, lo=0.10, hi=hi) + rng.normal(0, 0.002, X10.size)
    t = pd.DataFrame({"dataset_size": X10, "exact_match": em, "eval_loss": 1.0 + 3.0 * X10**-0.25})
    if n_problems is not None:
        t["n_problems"] = n_problems
    return t


def test_eval_size_turns_a_small_exact_match_step_into_noise():
    assert check_mirage(small_jump_table(), "dataset_size", agg="mean").verdict == "metric artefact"
    by_column = check_mirage(small_jump_table(100), "dataset_size", agg="mean")
    by_argument = check_mirage(small_jump_table(), "dataset_size", agg="mean", n_problems=100)
    for m in (by_column, by_argument):
        assert m.verdict == "no jump", m.reason
        assert m.results["exact_match"].verdict in {"smooth", "flat"}
    # the demo's 500 problems (+-0.014 at 0.1) do not make a 0.06 step very strong evidence
    # over 10 points, but they resolve a 0.15 step (~10 se)
    demo = check_mirage(small_jump_table(), "dataset_size", agg="mean", n_problems=500)
    assert demo.verdict == "no jump", demo.reason
    demo = check_mirage(small_jump_table(hi=0.25), "dataset_size", agg="mean", n_problems=500)
    assert demo.verdict == "metric artefact", demo.reason


def test_loss_standard_error_from_the_per_problem_spread():
    t = mirage_table(genuine=True)
    t["n_problems"] = 500
    t["test_eval_loss_std"] = 50.0  # huge per-problem spread: se 2.2 >> the 1.5 step
    m = check_mirage(t, "dataset_size")
    assert m.results["eval_loss"].verdict != "jump", m.results["eval_loss"].reason
    t["test_eval_loss_std"] = 0.5  # se 0.022: the loss jump stands
    assert check_mirage(t, "dataset_size").results["eval_loss"].verdict == "jump"


def test_mirage_on_a_published_ladder_with_stderr_columns():
    t = ladder("pythia_lambada_openai")
    m = check_mirage(t, "params_b", discontinuous="acc", continuous=("ppl",), agg="mean")
    assert m.verdict == "no jump", m.reason
    assert m.results["ppl"].higher_is_better is False


# ---- verdicts across seeds ------------------------------------------------------------


def seeded_curve(*, hi, sd, seeds=3, seed=0):
    rng = np.random.default_rng(seed)
    x = np.repeat(X10, seeds)
    return x, sharp_sigmoid(x, mid=10**3.5, lo=0.1, hi=hi) + rng.normal(0, sd, x.size)


def test_a_clear_jump_holds_across_seeds():
    r = jumps_across_seeds(*seeded_curve(hi=0.9, sd=0.02), n_boot=40)
    assert isinstance(r, SeedJumpResult)
    assert r.verdict == "jump" and r.fractions["jump"] >= 0.9, r.reason
    assert r.point.interval[0] <= 10**3.5 <= r.point.interval[1]
    assert set(r.n_seeds.values()) == {3}
    json.dumps(r.to_dict(), allow_nan=False)


def test_a_jump_within_seed_noise_is_uncertain_with_the_fraction_each_way():
    r = jumps_across_seeds(*seeded_curve(hi=0.25, sd=0.05), n_boot=40)
    assert r.verdict == "uncertain", r.reason
    assert sum(r.fractions.values()) == pytest.approx(1.0)
    assert 0.05 < r.fractions.get("jump", 0.0) < 0.9
    assert "uncertain" in r.reason and "%" in r.reason


def seeded_mirage_table(*, sd: float) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(11)
    for d in X10:
        for s in range(3):
            step = sharp_sigmoid(d, mid=10**3.5, lo=0, hi=1)
            rows.append(
                {"dataset_size": d, "seed": s, "status": "ok",
                 "exact_match": 0.1 + 0.15 * step + rng.normal(0, sd),
                 "eval_loss": 1.0 + 3.0 * d**-0.25 + rng.normal(0, 0.01)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_mirage_verdict_across_seeds():
    calm = check_mirage(seeded_mirage_table(sd=0.005), "dataset_size", agg="mean", seeds="seed",
                        n_boot=30)  # fmt: skip
    assert calm.verdict == "metric artefact", calm.reason
    assert calm.fractions["metric artefact"] >= 0.9 and calm.n_boot == 30
    # seed noise 0.04 on a 0.15 step (0.023 per 3-seed mean): about a quarter of the resamples
    # read the jump. (At 0.06 the means read "no jump" in ~93% of 100+ resamples: that case sat
    # on the 90% threshold, and 30 resamples called it either way.)
    noisy = check_mirage(seeded_mirage_table(sd=0.04), "dataset_size", agg="mean", seeds="seed",
                         n_boot=30)  # fmt: skip
    assert noisy.verdict == "uncertain", noisy.reason
    assert 0.1 < noisy.fractions.get("metric artefact", 0.0) < 0.5
    assert sum(noisy.fractions.values()) == pytest.approx(1.0)
    assert noisy.to_dict()["fractions"] == dict(noisy.fractions)
    # without seeds= the single verdict is reported as before
    assert check_mirage(seeded_mirage_table(sd=0.06), "dataset_size", agg="mean").n_boot == 0


@pytest.mark.parametrize("seed", [33, 44])
def test_noise_ending_on_a_high_point_is_not_a_jump(seed):
    # the running-best re-test applies only after the largest step (seeds 33 and 44 of
    # 1000+ once read as a last-interval jump when the whole curve was replaced by its best)
    rng = np.random.default_rng(1000 + seed)
    r = detect_jumps(X10, 0.5 + rng.normal(0, 0.02, X10.size))
    assert r.verdict in {"flat", "smooth"}, r.reason


def test_seed_arguments_are_checked():
    x, y = seeded_curve(hi=0.9, sd=0.02)
    with pytest.raises(ValueError, match="se cannot be combined with seeds"):
        jumps_across_seeds(x, y, se=0.01)
    with pytest.raises(ValueError, match="agree must be in"):
        jumps_across_seeds(x, y, agree=0.4)
    with pytest.raises(ValueError, match="seeds column 'run_seed'"):
        check_mirage(seeded_mirage_table(sd=0.01), "dataset_size", agg="mean", seeds="run_seed")


def test_one_seed_per_x_leaves_the_seed_noise_unmeasured():
    r = jumps_across_seeds([300, 600, 1200, 2400, 4800], [0, 0.004, 0.03, 0.34, 0.72], bounds=(0, 1))
    assert r.verdict == "jump"  # the single curve's verdict stands ...
    assert r.n_boot == 0 and dict(r.fractions) == {}  # ... but nothing was resampled
    assert "unmeasured" in r.reason and "holds in" not in r.reason
    assert set(r.n_seeds.values()) == {1}
    json.dumps(r.to_dict(), allow_nan=False)


def test_few_seeds_are_resampled_with_the_unbiased_spread():
    rng = np.random.default_rng(0)
    two = np.array([0.0, 1.0])  # seed variance s**2 = 0.5: the mean of 2 seeds has variance 0.25
    draws = np.array([_rescaled_mean(two, rng) for _ in range(20000)])
    assert draws.var() == pytest.approx(0.25, rel=0.05)  # a plain bootstrap gives 0.125
    three = np.array([0.0, 0.3, 1.2])  # s**2 = 0.39: the mean of 3 seeds has variance 0.13
    draws = np.array([_rescaled_mean(three, rng) for _ in range(20000)])
    assert draws.var() == pytest.approx(0.13, rel=0.05)
    assert _rescaled_mean(np.array([0.4]), rng) == 0.4  # one seed: nothing to resample


def test_the_mirage_seed_resamples_spread_as_the_seed_mean():
    # 2 seeds per x, exact match 0.2 and 0.4 everywhere: the mean of 2 seeds has variance 0.01
    t = pd.DataFrame({"dataset_size": np.repeat(X10, 2), "seed": np.tile([0, 1], X10.size),
                      "exact_match": np.tile([0.2, 0.4], X10.size)})  # fmt: skip
    means = []

    def record(table):
        means.append(table.groupby("dataset_size")["exact_match"].mean().to_numpy())
        return "no jump"

    fr, n = _seed_fractions(t.assign(_x=t["dataset_size"]), x="dataset_size", seeds="seed", n_boot=400,
                            random_state=0, call=record, scale={"exact_match": (0.0, 1.0)})  # fmt: skip
    assert n == 400 and fr == {"no jump": 1.0}
    assert np.var(np.concatenate(means)) == pytest.approx(0.01, rel=0.1)  # 0.005 unscaled


# ---- `scaling emergence` gives the report's verdicts ----------------------------------------------


def planted_run(run: Path) -> Path:
    """Two series of 5 sizes x 2 seeds, a spec with 500 test problems. epochs=1: exact match
    0 -> 0.002 (a tiny rise of a bounded metric); epochs=2: a step of 0.7 between 1,200 and 2,400
    with seed noise, while loss and token accuracy change smoothly."""
    rng = np.random.default_rng(2)
    rows = []
    for i, d in enumerate((300, 600, 1200, 2400, 4800)):
        for e in (1, 2):
            for seed in (0, 1):
                step = 0.7 * (d > 1700) + rng.normal(0, 0.01)
                em = [0, 0, 0, 0, 0.002][i] if e == 1 else float(np.clip(0.02 + step, 0, 1))
                loss = 1.0 + 2.0 * d**-0.3 + rng.normal(0, 0.003)
                rows.append({"study": "em", "trial_id": f"em/{d}-{e}#{seed}", "cell": f"D={d},E={e},r=8",
                             "phase": "search", "dataset_size": d, "epochs": e, "lora_r": 8, "learning_rate": 1e-3,
                             "seed": seed, "epoch": e, "status": "ok", "val_eval_loss": loss,
                             "test_eval_loss": loss, "test_token_accuracy": 0.9 - 0.5 * d**-0.2,
                             "test_exact_match": em})  # fmt: skip
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(yaml.safe_dump({"name": "em", "eval": {"test_size": 500}}))
    append_rows(run, rows)
    return run


def test_cli_emergence_on_a_run_agrees_with_the_report(tmp_path):
    run = planted_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["emergence", str(run), "--json"])
    assert res.exit_code == 0, res.output
    cli = {s["label"]: s for s in json.loads(res.output)["series"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = analyse(read_run(run), bootstrap=0, sections=("emergence",))
    rep = {e["label"]: e for e in an.numbers["emergence"]["series"]}
    assert set(cli) == set(rep) == {"epochs=1", "epochs=2"}
    for label, e in rep.items():
        c = cli[label]
        assert (c["jump"]["verdict"], c["jump"]["interval"]) == (e["verdict"], e["interval"])
        assert c["jump"]["reason"] == e["jump"]["reason"]
        m = c["mirage"]
        assert (m["verdict"], m["fractions"], m["n_boot"]) == (e["mirage"], e["fractions"], e["n_boot"])
        assert c["n_problems"] == e["n_problems"] == 500 and c["seeds"] is e["seeds"] is True
    # the known answers: a 0.002 rise of exact match is flat (the CLI once called it a jump) ...
    assert cli["epochs=1"]["jump"]["verdict"] == "flat" and cli["epochs=1"]["mirage"]["verdict"] == "no jump"
    # ... and the step is an artefact of the metric, in every seed resample
    assert cli["epochs=2"]["jump"]["interval"] == [1200.0, 2400.0]
    assert cli["epochs=2"]["mirage"]["verdict"] == "metric artefact"
    assert cli["epochs=2"]["mirage"]["n_boot"] == 40


def test_cli_emergence_on_a_plain_table_bounds_known_metrics(tmp_path):
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"dataset_size": [300, 600, 1200, 2400, 4800],
                  "test_exact_match": [0, 0, 0, 0, 0.002]}).to_csv(plain, index=False)  # fmt: skip
    res = CliRunner().invoke(app, ["emergence", str(plain), "--json"])
    assert res.exit_code == 0, res.output
    [s] = json.loads(res.output)["series"]
    assert s["jump"]["verdict"] == "flat" and s["bounds"] == [0.0, 1.0]  # was "jump" unbounded
    # with the evaluation size in the table, the points get binomial errors
    x, y = SPIKE_X, np.array(SPIKE_Y)
    pd.DataFrame({"dataset_size": x, "exact_match": y, "n_problems": 500}).to_csv(plain, index=False)
    res = CliRunner().invoke(app, ["emergence", str(plain), "--y", "exact_match", "--json"])
    assert res.exit_code == 0, res.output
    [s] = json.loads(res.output)["series"]
    assert s["binomial_se"] is True
    assert s["jump"] == detect_jumps(x, y, bounds=(0, 1), se=binomial_se(y, 500)).to_dict()
