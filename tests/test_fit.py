"""Fitting: a published replication, planted laws recovered, bootstrap intervals
that cover at their nominal rate, bad input, warnings, holdout and compare."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fit import AUTO_CANDIDATES, FitError, FitWarning, LawFit, compare, fit_law, holdout
from analysis.laws import get_law

DATA = Path(__file__).parent / "data" / "chinchilla_svg_extracted.csv"

# Besiroglu et al. 2024 (arXiv:2404.10102), "Chinchilla scaling: a replication
# attempt", Table 1 / Eq. 3: their refit of Hoffmann et al.'s approach 3.
BESIROGLU = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def huber_sum(params, df, delta=1e-3):
    """The objective, written independently of analysis.fit: sum of Huber losses
    of log residuals for the Chinchilla law (df: a DataFrame or (N, D, loss) arrays)."""
    N, D, loss = (
        (df["N"].to_numpy(), df["D"].to_numpy(), df["loss"].to_numpy())
        if hasattr(df, "columns")
        else df
    )
    pred = params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]
    r = np.log(pred) - np.log(loss)
    a = np.abs(r)
    return float(np.sum(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))


@pytest.fixture(scope="module")
def chinchilla_df():
    raw = pd.read_csv(DATA)
    df = pd.DataFrame({"N": raw["Model Size"], "C": raw["Training FLOP"], "loss": raw["loss"]})
    df["D"] = df["C"] / (6 * df["N"])
    # Besiroglu et al. drop the 5 highest-loss points (outliers of the extraction)
    return df.sort_values("loss").iloc[:-5].reset_index(drop=True)


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla_df):
    # the full 4,500-start grid of Besiroglu et al. (the law's default)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)  # a clean fit: no warnings at all
        return fit_law(law="chinchilla", data=chinchilla_df, x=["N", "D"], y="loss")


# ---------------------------------------------------------------------------
# 1. the Chinchilla replication, and proof that it is a real optimum
# ---------------------------------------------------------------------------


def test_chinchilla_replication_besiroglu(chinchilla_df, chinchilla_fit):
    assert len(chinchilla_df) == 240
    p = chinchilla_fit.params_
    assert set(p) == set(BESIROGLU)
    assert all(type(v) is float for v in p.values())
    for k in ("E", "alpha", "beta"):
        assert p[k] == pytest.approx(BESIROGLU[k], rel=0.02), k
    for k in ("A", "B"):
        assert p[k] == pytest.approx(BESIROGLU[k], rel=0.15), k
    assert chinchilla_fit.n_starts_ == 4500
    m = chinchilla_fit.metrics_
    assert m["n"] == 240 and m["k"] == 5
    assert m["huber"] == pytest.approx(huber_sum(p, chinchilla_df), rel=1e-10)
    assert m["rmsle"] < 0.01 and m["r2"] > 0.99


def test_chinchilla_solution_is_a_real_optimum(chinchilla_df, chinchilla_fit):
    from scipy.optimize import minimize

    p = chinchilla_fit.params_
    names = list(p)
    arrays = tuple(chinchilla_df[c].to_numpy() for c in ("N", "D", "loss"))
    f0 = huber_sum(p, arrays)
    # 1. no coordinate or random step in log-parameter space goes downhill
    rng = np.random.default_rng(0)
    steps = [s * np.eye(5)[j] for j in range(5) for s in (-1e-3, -1e-5, -1e-7, 1e-7, 1e-5, 1e-3)]
    steps += [rng.normal(size=5) * 10.0 ** rng.uniform(-7, -3) for _ in range(200)]
    for step in steps:
        q = {k: p[k] * math.exp(s) for k, s in zip(names, step, strict=True)}
        assert huber_sum(q, arrays) >= f0 * (1 - 1e-12)

    # 2. an independent scipy run from the solution, at machine-precision
    #    tolerances on a rescaled objective, finds nothing lower
    def obj(v):
        return huber_sum(dict(zip(names, np.exp(v), strict=True)), arrays) / 1e-3

    res = minimize(
        obj,
        np.log([p[k] for k in names]),
        method="Nelder-Mead",
        options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 4000},
    )
    assert res.fun * 1e-3 >= f0 * (1 - 1e-9)


# ---------------------------------------------------------------------------
# 2. planted laws: recovered, and intervals that cover the truth
# ---------------------------------------------------------------------------


def _design(name):
    """(columns, x names, true params, fixed, exponent to check) for each law."""
    x = np.geomspace(1e2, 1e5, 30)
    N, D = np.repeat(np.geomspace(1e7, 1e9, 5), 5), np.tile(np.geomspace(1e8, 1e11, 5), 5)
    # fine-tune style: unique data U, epochs D/U, three model sizes
    U = np.tile(np.repeat(np.geomspace(1e8, 1e9, 3), 3), 3)
    Nd = np.repeat(np.geomspace(1e7, 1e9, 3), 9)
    epochs = np.tile([1.0, 4.0, 16.0], 9)
    X, Dm = np.repeat(np.geomspace(1e2, 1e4, 5), 5), np.tile(np.geomspace(1e2, 1e5, 5), 5)
    return {
        "power": ({"x": x}, "x", dict(E=0.5, A=30.0, alpha=0.4), {}, "alpha"),
        "chinchilla": (
            {"N": N, "D": D},
            ["N", "D"],
            dict(E=1.7, A=400.0, B=2000.0, alpha=0.34, beta=0.37),
            {},
            "alpha",
        ),
        "data_constrained": (
            {"N": Nd, "D": U * epochs, "U": U},
            ["N", "D", "U"],
            dict(E=1.7, A=400.0, B=2000.0, alpha=0.34, beta=0.37, R_D_star=10.0, R_N_star=5.0),
            {"R_N_star": 5.0},
            "beta",
        ),
        "bnsl": (
            {"x": np.geomspace(1e1, 1e5, 40)},
            "x",
            dict(a=0.3, b=5.0, c0=0.05, c1=0.6, d1=1e3, f1=0.3),
            {},
            "c1",
        ),
        "multiplicative": (
            {"X": X, "D": Dm},
            ["X", "D"],
            dict(E=0.5, A=30.0, alpha=0.2, beta=0.3),
            {},
            "beta",
        ),
    }[name]


LAWS = ["power", "chinchilla", "data_constrained", "bnsl", "multiplicative"]


def _truth(name, cols, x, params):
    xs = [x] if isinstance(x, str) else x
    return get_law(name)(np.column_stack([cols[c] for c in xs]), **params)


@pytest.mark.parametrize("name", LAWS)
def test_planted_law_recovered_from_default_grid(name):
    cols, x, p, fixed, _ = _design(name)
    rng = np.random.default_rng(1)
    y = _truth(name, cols, x, p) * np.exp(rng.normal(0, 0.005, len(next(iter(cols.values())))))
    fit = fit_law(law=name, data={**cols, "y": y}, x=x, y="y", fixed=fixed)
    for k, v in p.items():
        if k in fixed:
            assert fit.params_[k] == v
        elif get_law(name).params[get_law(name).param_names.index(k)].log:
            assert fit.params_[k] == pytest.approx(v, rel=0.3), k  # coefficients: loose
        else:
            assert fit.params_[k] == pytest.approx(v, rel=0.1, abs=0.01), k
    assert fit.metrics_["rmsle"] < 0.01


@pytest.mark.parametrize("name", LAWS)
def test_bootstrap_intervals_cover_the_truth(name):
    """40 noisy draws; the 90% interval of an exponent must cover the true value
    70-100% of the time, and its width must match the actual spread of the
    estimates (90% width ~ 3.29 sd) within a factor 2 either way."""
    cols, x, p, fixed, key = _design(name)
    law = get_law(name)
    truth = _truth(name, cols, x, p)
    # one start near (not at) the truth: this test is about the bootstrap, the
    # grid search is tested above
    start = {
        k: [v * 1.1] if law.params[law.param_names.index(k)].log else [v + 0.05]
        for k, v in p.items()
        if k not in fixed
    }
    rng = np.random.default_rng(7)
    hits, widths, estimates = 0, [], []
    for draw in range(40):
        y = truth * np.exp(rng.normal(0, 0.02, truth.size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            fit = fit_law(
                law=name,
                data={**cols, "y": y},
                x=x,
                y="y",
                fixed=fixed,
                init_grid=start,
                bootstrap=100,
                seed=draw,
            )
        lo, hi = fit.ci_[key]
        hits += lo <= p[key] <= hi
        widths.append(hi - lo)
        estimates.append(fit.params_[key])
    assert 0.7 <= hits / 40 <= 1.0
    ratio = np.mean(widths) / (3.29 * np.std(estimates))
    assert 0.5 <= ratio <= 2.0, ratio


def test_bootstrap_is_seeded_and_gives_prediction_bands():
    cols, x, p, _, _ = _design("power")
    y = _truth("power", cols, x, p) * np.exp(np.random.default_rng(3).normal(0, 0.02, 30))
    data = pd.DataFrame({**cols, "y": y})
    a = fit_law(law="power", data=data, x="x", y="y", bootstrap=300, seed=5)
    b = fit_law(law="power", data=data, x="x", y="y", bootstrap=300, seed=5)
    c = fit_law(law="power", data=data, x="x", y="y", bootstrap=300, seed=6)
    assert a.ci_ == b.ci_ and a.ci_ != c.ci_
    assert set(a.ci_) == {"E", "A", "alpha"}
    assert a.draws_.shape == (300, 3)
    lo, hi = a.predict_interval(data, level=0.9)
    mid = a.predict(data)
    assert np.all(lo <= mid) and np.all(mid <= hi)
    # the band is meaningful: it contains the noise-free curve at most points
    inside = (lo <= _truth("power", cols, x, p)) & (_truth("power", cols, x, p) <= hi)
    assert inside.mean() > 0.7
    narrow_lo, narrow_hi = a.predict_interval(data, level=0.5)
    assert np.all(narrow_hi - narrow_lo <= hi - lo)
    with pytest.raises(FitError, match="bootstrap > 0"):
        fit_law(law="power", data=data, x="x", y="y").predict_interval(data)


def test_group_bootstrap_widens_intervals_under_cell_level_noise():
    # 8 cells x 5 seeds; each cell has its own offset shared by all its seeds,
    # so seeds are not independent points: resampling cells must give wider CIs
    rng = np.random.default_rng(11)
    x = np.repeat(np.geomspace(1e2, 1e5, 8), 5)
    cell = np.repeat(np.arange(8), 5)
    y = (0.5 + 30 * x**-0.4) * np.exp(
        np.repeat(rng.normal(0, 0.03, 8), 5) + rng.normal(0, 0.002, 40)
    )
    data = {"x": x, "y": y, "cell": cell}
    pts = fit_law(law="power", data=data, x="x", y="y", bootstrap=300, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        grp = fit_law(law="power", data=data, x="x", y="y", bootstrap=300, seed=0, groups="cell")
    w_pts = pts.ci_["alpha"][1] - pts.ci_["alpha"][0]
    w_grp = grp.ci_["alpha"][1] - grp.ci_["alpha"][0]
    assert w_grp > 2 * w_pts


def test_weights_zero_out_a_point_and_column_weights_work():
    cols, x, p, _, _ = _design("power")
    y = _truth("power", cols, x, p) * np.exp(np.random.default_rng(4).normal(0, 0.01, 30))
    y_bad = y.copy()
    y_bad[5] *= 3.0  # a broken run
    w = np.ones(30)
    w[5] = 0.0
    weighted = fit_law(law="power", data={**cols, "y": y_bad, "w": w}, x="x", y="y", weights="w")
    dropped = fit_law(
        law="power", data={"x": np.delete(cols["x"], 5), "y": np.delete(y, 5)}, x="x", y="y"
    )
    for k in p:
        assert weighted.params_[k] == pytest.approx(dropped.params_[k], rel=1e-6)
    assert weighted.metrics_["n"] == 29  # the zero-weight row does not count
    assert weighted.metrics_["rmsle"] == pytest.approx(dropped.metrics_["rmsle"], rel=1e-6)
    # per-row weights in a holdout follow their rows
    res = holdout(
        law="power", data={**cols, "y": y_bad}, x="x", y="y", split_on="x", threshold=3e4, weights=w
    )
    assert res.fit.params_["alpha"] == pytest.approx(p["alpha"], rel=0.05)


def test_fixed_parameter_is_held_exactly():
    cols, x, p, _, _ = _design("data_constrained")
    y = _truth("data_constrained", cols, x, p)
    fit = fit_law(
        law="data_constrained",
        data={**cols, "y": y},
        x=x,
        y="y",
        fixed={"R_D_star": 15.387756, "R_N_star": 5.309743},
    )
    assert fit.params_["R_D_star"] == 15.387756 and fit.params_["R_N_star"] == 5.309743
    assert fit.metrics_["k"] == 5
    assert fit.to_dict()["fixed"] == {"R_D_star": 15.387756, "R_N_star": 5.309743}


# ---------------------------------------------------------------------------
# 3. bad input
# ---------------------------------------------------------------------------


def _good():
    x = np.geomspace(1e2, 1e5, 12)
    return {"x": x, "y": 0.5 + 30 * x**-0.4}


def _with(col, i, v):
    d = {k: np.array(a, dtype=float) for k, a in _good().items()}
    d[col][i] = v
    return d


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"law": "kaplan"},
            r"unknown law 'kaplan'; known laws: bnsl, chinchilla, data_constrained",
        ),
        ({"x": "size"}, r"x column 'size' not in data; available columns: x, y"),
        ({"y": "acc"}, r"y column 'acc' not in data; available columns: x, y"),
        ({"data": _with("x", 3, np.nan)}, r"x column 'x' has a non-finite value nan at row 3"),
        ({"data": _with("y", 4, np.inf)}, r"y column 'y' has a non-finite value inf at row 4"),
        ({"data": _with("x", 2, -1.0)}, r"x column 'x' must be > 0 .* got -1.0 at row 2"),
        ({"data": _with("y", 7, 0.0)}, r"y column 'y' must be > 0 .* got 0.0 at row 7"),
        ({"law": "chinchilla", "x": ["x"]}, r"law 'chinchilla' needs 2 x column\(s\) \(N, D\)"),
        (
            {"law": "bnsl", "data": {k: v[:5] for k, v in _good().items()}},
            r"law 'bnsl' has 6 free parameters but data has only 5 rows",
        ),
        ({"fixed": {"beta": 0.3}}, r"fixed names unknown parameter 'beta' of law 'power'"),
        ({"fixed": {"A": -2.0}}, r"fixed A must be a finite number > 0, got -2.0"),
        ({"breaks": 2}, r"breaks=2 applies only to law 'bnsl'"),
        ({"delta": 0.0}, r"delta must be a finite number > 0, got 0.0"),
        ({"bootstrap": -1}, r"bootstrap must be an integer >= 0, got -1"),
        ({"weights": "w"}, r"weights column 'w' not in data"),
        ({"groups": "cell"}, r"groups column 'cell' not in data"),
        ({"init_grid": {"alpha": []}}, r"init_grid for alpha must be non-empty"),
        (
            {"data": {"x": np.ones(12), "y": np.ones(11)}},
            r"x column 'x' has 12 values but y column 'y' has 11",
        ),
    ],
)
def test_bad_input_raises_fit_error_naming_the_culprit(kwargs, message):
    args = {"law": "power", "data": _good(), "x": "x", "y": "y", **kwargs}
    with pytest.raises(FitError, match=message):
        fit_law(**args)


def test_fit_error_is_a_value_error_and_labels_rows_by_index():
    df = pd.DataFrame(_good(), index=[f"run{i}" for i in range(12)])
    df.loc["run6", "y"] = -0.1
    with pytest.raises(ValueError, match=r"got -0.1 at row 'run6'"):
        fit_law(law="power", data=df, x="x", y="y")


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_flat_curve_warns_and_still_returns_a_fit(noise):
    x = np.geomspace(1e2, 1e5, 20)
    y = 2.0 * np.exp(np.random.default_rng(0).normal(0, noise, 20))
    fit = _fit_recording(law="power", data={"x": x, "y": y}, x="x", y="y")
    assert any("flat curve" in w for w in fit.warnings_)
    np.testing.assert_allclose(fit.predict({"x": x}), np.median(y), rtol=0.02)
    json.dumps(fit.to_dict(), allow_nan=False)  # r2 is nan for exactly flat y: None in JSON


def _fit_recording(**kwargs):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit = fit_law(**kwargs)
    emitted = [str(w.message) for w in seen if issubclass(w.category, FitWarning)]
    assert emitted == fit.warnings_  # every warning is both emitted and kept
    return fit


def test_doubtful_fits_warn():
    x = np.geomspace(1e2, 1e5, 5)
    fit = _fit_recording(law="power", data={"x": x, "y": 0.5 + 30 * x**-0.4}, x="x", y="y")
    assert fit.warnings_ == [
        "doubtful fit: 5 points for 3 free parameters (fewer than 2 per parameter)"
    ]
    # a rising curve: the decay exponent can only sit at its bound of 0
    x = np.geomspace(1e2, 1e5, 20)
    fit = _fit_recording(law="power", data={"x": x, "y": 1.0 + 0.1 * np.log(x)}, x="x", y="y")
    assert any("alpha=0 is at its lower bound" in w for w in fit.warnings_)
    # very wide intervals: 6 noisy points, 3 parameters
    rng = np.random.default_rng(0)
    x = np.geomspace(1e2, 1e3, 6)
    y = (0.5 + 30 * x**-0.4) * np.exp(rng.normal(0, 0.05, 6))
    fit = _fit_recording(law="power", data={"x": x, "y": y}, x="x", y="y", bootstrap=200)
    assert any("90% interval of" in w for w in fit.warnings_)
    # a clean, well-covered law gives no warning at all
    x = np.geomspace(1e2, 1e5, 30)
    fit = _fit_recording(
        law="power", data={"x": x, "y": 0.5 + 30 * x**-0.4}, x="x", y="y", bootstrap=200
    )
    assert fit.warnings_ == []


def test_predict_warns_outside_fitted_range_only():
    d = _good()
    fit = LawFit("power").fit(d, "x", "y")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        np.testing.assert_allclose(
            fit.predict({"x": [1e3, 1e4]}), 0.5 + 30 * np.array([1e3, 1e4]) ** -0.4, rtol=1e-6
        )
    with pytest.warns(FitWarning, match=r"outside the fitted range .* x in \[1e\+06"):
        fit.predict({"x": [1e6]})
    with pytest.raises(FitError, match="x column 'x' not in data"):
        fit.predict({"size": [1e3]})
    with pytest.raises(FitError, match="not fitted yet"):
        LawFit("power").predict(d)


def test_estimator_contract_and_json():
    d = pd.DataFrame(_good())
    est = LawFit("power", bootstrap=50, seed=1)
    assert est.fit(d, "x", "y") is est
    out = est.to_dict()
    assert set(out) >= {"law", "x", "y", "params", "ci", "metrics", "warnings"}
    assert out["law"] == "power" and out["x"] == ["x"] and out["y"] == "y"
    assert set(out["metrics"]) == {"rmsle", "r2", "aic", "bic", "n", "k", "huber"}
    json.loads(json.dumps(out, allow_nan=False))


def test_import_is_light():
    code = (
        "import sys, analysis.fit; "
        "bad = [m for m in ('torch', 'ray', 'pandas', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------------------
# 4. holdout and compare
# ---------------------------------------------------------------------------


def test_holdout_extrapolates_a_clean_power_law():
    x = np.geomspace(1e2, 1e6, 40)
    y = (0.5 + 30 * x**-0.4) * np.exp(np.random.default_rng(2).normal(0, 0.001, 40))
    df = pd.DataFrame({"x": x, "y": y})
    res = holdout(law="power", data=df, x="x", y="y", split_on="x", threshold=1e5)
    assert res.n_train == 30 and res.n_test == 10
    assert res.errors.shape == (10,)
    assert res.mape < 0.005
    assert res.mape == pytest.approx(np.mean(np.abs(res.predicted / res.observed - 1)))
    # a law that cannot bend (no E) extrapolates badly: the MAPE tells them apart
    y_bent = 0.5 + 30 * x**-0.4
    y_bent[x >= 1e5] *= 1.1
    worse = holdout(
        law="power", data={"x": x, "y": y_bent}, x="x", y="y", split_on="x", threshold=1e5
    )
    assert worse.mape > 0.05
    with pytest.raises(FitError, match="leaves 40 training and 0 test rows"):
        holdout(law="power", data=df, x="x", y="y", split_on="x", threshold=1e9)


def test_compare_picks_the_generating_law():
    X = np.repeat(np.geomspace(1e2, 1e4, 6), 6)
    D = np.tile(np.geomspace(1e2, 1e5, 6), 6)
    noise = np.exp(np.random.default_rng(9).normal(0, 0.003, 36))
    small = {"E": [1.0], "A": [1.0, 1e4], "B": [1.0, 1e4], "alpha": [0.2, 1.0], "beta": [0.2, 1.0]}
    for truth_law, params in [
        ("multiplicative", dict(E=0.5, A=30.0, alpha=0.2, beta=0.3)),
        ("chinchilla", dict(E=0.5, A=20.0, B=40.0, alpha=0.3, beta=0.4)),
    ]:
        y = get_law(truth_law)(np.c_[X, D], **params) * noise
        data = {"X": X, "D": D, "y": y}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            fits = {
                "chinchilla": fit_law(
                    law="chinchilla", data=data, x=["X", "D"], y="y", init_grid=small
                ),
                "multiplicative": fit_law(
                    law="multiplicative",
                    data=data,
                    x=["X", "D"],
                    y="y",
                    init_grid={k: v for k, v in small.items() if k != "B"},
                ),
            }
        table = compare(fits)
        assert list(table["name"])[0] == truth_law
        assert table["aic"].is_monotonic_increasing
        assert table["delta_aic"].iloc[0] == 0 and table["delta_aic"].iloc[1] > 10
        assert table["weight"].sum() == pytest.approx(1.0)
    with pytest.warns(FitWarning, match="different data"):
        compare([fits["chinchilla"], fit_law(law="power", data=_good(), x="x", y="y")])


# ---------------------------------------------------------------------------
# law="auto" and per-parameter status (issue 16, section 1)
# ---------------------------------------------------------------------------

_PLANTED_FORMS = {
    "power_nofloor": lambda x: 30 * x**-0.4,
    "power": lambda x: 0.5 + 30 * x**-0.4,
    "rectified": lambda x: 0.3 + 50 / (300 + x**0.8),
    "bnsl": lambda x: 0.3 + 20 * x**-0.1 * (1 + (x / 3e3) ** (1 / 0.3)) ** (-0.8 * 0.3),
}


@pytest.mark.parametrize("form", list(_PLANTED_FORMS))
def test_auto_picks_the_planted_form(form):
    rng = np.random.default_rng(0)
    x = np.geomspace(1e2, 1e5, 24)
    y = _PLANTED_FORMS[form](x) * np.exp(rng.normal(0, 0.01, x.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law="auto", data={"x": x, "y": y}, x="x", y="y")
    assert fit.law_name_ == form
    sel = fit.selection_
    assert sel["chosen"] == form and sel["n_test"] == 5 and sel["n_train"] == 19
    assert set(sel["candidates"]) == {"power_nofloor", "power", "rectified", "bnsl"}
    err = sel["candidates"][form]["holdout_error"]
    assert err is not None and err < 0.2
    d = fit.to_dict()
    json.dumps(d)  # JSON-able
    assert d["law"] == form and d["selection"]["chosen"] == form


def test_auto_prefers_the_simpler_law_when_points_are_few():
    # 7 points of a curve with a floor: power (3 params) needs >= 6, bnsl (6) and
    # rectified (4) need 12 and 8: only the two power laws are eligible
    x = np.geomspace(1e2, 1e5, 7)
    y = _PLANTED_FORMS["rectified"](x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law="auto", data={"x": x, "y": y}, x="x", y="y")
    cands = fit.selection_["candidates"]
    assert not cands["bnsl"]["eligible"] and not cands["rectified"]["eligible"]
    assert fit.law_name_ in ("power_nofloor", "power")


def test_auto_splits_on_distinct_x_values_and_counts_them():
    # repeat seeds of the largest size: the split holds out that size (all 3 rows), not
    # the largest fifth of the rows (which trained on two of the 4,800 points)
    x = np.array([300.0, 600, 1200, 2400, 4800, 4800, 4800])
    y = 1.0 + 30 * x**-0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        sel = fit_law(law="auto", data={"x": x, "y": y}, x="x", y="y").selection_
    assert sel["split_at"] == 4800.0
    assert (sel["n_train"], sel["n_test"], sel["n_x_train"], sel["n_x_test"]) == (4, 3, 4, 1)
    # 5 distinct sizes: 2.5 per parameter for power_nofloor, 1.67 for power, 1.25 for rectified
    c = sel["candidates"]
    assert [c[k]["eligible"] for k in ("power_nofloor", "power", "rectified", "bnsl")] == [
        True, False, False, False
    ]  # fmt: skip
    assert c["power"]["note"] == "fewer than 2 distinct x values per parameter (5/3)"
    assert c["rectified"]["note"] == "4 distinct x values below the split for 4 parameters"
    # the demo's shape, 5 sizes x 2 seeds, 10 rows: rows would count 2.5 per parameter for
    # rectified, distinct sizes 1.25
    d = np.repeat([300.0, 600, 1200, 2400, 4800], 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        sel = fit_law(law="auto", data={"x": d, "y": 1.0 + 30 * d**-0.5}, x="x", y="y").selection_
    assert (sel["n_train"], sel["n_test"], sel["split_at"]) == (8, 2, 4800.0)
    assert not sel["candidates"]["rectified"]["eligible"]
    assert sel["chosen"] == "power_nofloor"
    # 10 distinct sizes: the largest 2 are held out
    x = np.geomspace(1e2, 1e5, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        sel = fit_law(law="auto", data={"x": x, "y": 1.0 + 30 * x**-0.5}, x="x", y="y").selection_
    assert sel["split_at"] == pytest.approx(x[8]) and sel["n_x_test"] == 2


def test_auto_refuses_a_rising_y():
    # accuracy-like: every candidate falls with x, so the no-floor law would sit at alpha = 0
    x = np.geomspace(1e2, 1e5, 12)
    acc = (0.2 + 0.05 * np.log(x)) * np.exp(np.random.default_rng(0).normal(0, 0.01, x.size))
    with pytest.raises(FitError, match=r"y column 'acc' rises with x column 'x' \(log-log slope \+0\.0836, "):
        fit_law(law="auto", data={"x": x, "acc": acc}, x="x", y="acc")
    # a named law still fits it (and says alpha sits on its bound); a flat noisy curve that
    # rises by less than its scatter is not refused
    fit = _fit_recording(law="power", data={"x": x, "y": acc}, x="x", y="y")
    assert any("alpha=0 is at its lower bound" in w for w in fit.warnings_)
    flat = 2.0 * np.exp(np.random.default_rng(3).normal(0, 0.02, x.size))
    assert np.polyfit(np.log(x), np.log(flat), 1)[0] > 0  # rises, within the noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit_law(law="auto", data={"x": x, "y": flat}, x="x", y="y")


def test_auto_rejects_arguments_of_one_law_and_several_x():
    x = np.geomspace(1e2, 1e5, 20)
    data = {"x": x, "z": x, "y": 1 + x**-0.3}
    with pytest.raises(FitError, match="exactly one x column"):
        fit_law(law="auto", data=data, x=["x", "z"], y="y")
    with pytest.raises(FitError, match="no fixed"):
        fit_law(law="auto", data=data, x="x", y="y", fixed={"E": 1.0})


def test_a_floor_on_its_bound_is_reported_as_a_bound():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e2, 1e5, 30)
    y = 30 * x**-0.4 * np.exp(rng.normal(0, 0.01, x.size))  # no floor at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law="power", data={"x": x, "y": y}, x="x", y="y", bootstrap=200)
    assert fit.param_status_["E"] == "lower_bound"
    assert fit.param_text_["E"].startswith("no floor resolved: E < ")
    hi = float(fit.param_text_["E"].split("<")[1])
    assert 0 < hi < 0.05  # the floor is below a few percent of the smallest loss (0.19)
    assert fit.param_status_["alpha"] == "estimated"
    assert fit.param_text_["alpha"].startswith("alpha = 0.4")
    assert fit.to_dict()["param_status"]["E"] == "lower_bound"


def test_a_resolved_floor_is_estimated_with_its_interval():
    rng = np.random.default_rng(4)
    x = np.geomspace(1e2, 1e5, 30)
    y = (0.5 + 30 * x**-0.4) * np.exp(rng.normal(0, 0.005, x.size))
    fit = fit_law(law="power", data={"x": x, "y": y}, x="x", y="y", bootstrap=200)
    assert fit.param_status_ == {"E": "estimated", "A": "estimated", "alpha": "estimated"}
    lo, hi = fit.ci_["E"]
    assert lo < 0.5 < hi
    assert fit.param_text_["E"] == f"E = {fit.params_['E']:.4g} [{lo:.4g}, {hi:.4g}]"


def _covers(args: tuple) -> bool:
    """One curve of _extrapolation_coverage: whether its 90% interval at 4x holds the truth."""
    i, x, y, truth, law, bootstrap = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law=law, data={"x": x, "y": y}, x="x", y="y", bootstrap=bootstrap, seed=i)
        lo, hi = fit.predict_interval({"x": [4e4]}, level=0.9)
    return bool(lo[0] <= truth <= hi[0])


def _extrapolation_coverage(
    n_curves: int, *, bootstrap: int, law: str = "power", noise: float = 0.01
) -> float:
    """Share of synthetic power-law curves (E in [0.3, 1.5], A in [e, e^4], alpha
    in [0.2, 0.6], 20 points over x in [1e2, 1e4], log-normal noise of SD
    ``noise``) whose 90% prediction interval at 4x the largest x, fitted with
    ``law``, contains the true curve. The curves are drawn in order from one seed, then
    fitted on every core (each fit is seeded by its curve's index: the same share on any
    number of cores)."""
    from concurrent.futures import ProcessPoolExecutor

    rng = np.random.default_rng(0)
    x = np.geomspace(1e2, 1e4, 20)
    curves = []
    for i in range(n_curves):
        E, A, al = rng.uniform(0.3, 1.5), np.exp(rng.uniform(1, 4)), rng.uniform(0.2, 0.6)
        y = (E + A * x**-al) * np.exp(rng.normal(0, noise, x.size))
        curves.append((i, x, y, E + A * 4e4**-al, law, bootstrap))
    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        hits = list(pool.map(_covers, curves, chunksize=max(1, n_curves // 16)))
    return sum(hits) / n_curves


@pytest.mark.slow
def test_prediction_interval_at_4x_covers_at_its_nominal_level():
    # issue 16: >= 200 curves, the 90% interval at 4x covers in 85-95% of cases
    assert 0.85 <= _extrapolation_coverage(200, bootstrap=200) <= 0.95


def test_prediction_interval_at_4x_covers_fast_variant():
    # 40 curves: a binomial 95% band around 0.9 is [0.80, 0.98] (sd 0.047)
    assert 0.80 <= _extrapolation_coverage(40, bootstrap=100) <= 0.98


@pytest.mark.slow
def test_auto_prediction_interval_at_4x_covers_at_its_nominal_level():
    # issue 16 under law="auto", the planted power laws of the test above: the interval of the
    # law chosen on the data alone covered 0.75 of 100 of them, as a fifth of the curves choose
    # another law; each resample choosing again carries that choice (0.92 of 100)
    assert 0.85 <= _extrapolation_coverage(200, bootstrap=100, law="auto") <= 0.95


def test_auto_prediction_interval_at_4x_covers_fast_variant():
    # at 5% noise the no-floor law wins the choice on most of these curves: the interval of
    # the law chosen on the data alone covered 6 of these 20 (0.30; now 0.95); a binomial 95%
    # band around 0.9 is [0.75, 1.0]
    assert 0.75 <= _extrapolation_coverage(20, bootstrap=100, law="auto", noise=0.05) <= 1.0


def test_auto_bootstrap_chooses_the_law_again_in_every_resample():
    rng = np.random.default_rng(2)
    x = np.geomspace(1e2, 1e4, 20)
    y = (0.8 + 20 * x**-0.4) * np.exp(rng.normal(0, 0.05, x.size))  # a floor, hard to see at 5%
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law="auto", data={"x": x, "y": y}, x="x", y="y", bootstrap=200, seed=0)
    boot = fit.selection_["bootstrap"]
    share = boot["chosen_share"]
    assert set(share) == set(AUTO_CANDIDATES) and sum(share.values()) == pytest.approx(1.0)
    assert fit.law_name_ == "power_nofloor"
    assert share["power_nofloor"] < 0.7 and share["power"] > 0.2  # the choice is not settled
    assert boot["n"] == sum(th.shape[0] for _, th in fit.mixture_) == 200
    assert {law.name for law, _ in fit.mixture_} == {k for k, v in share.items() if v > 0}
    # the chosen law's parameter intervals stay its own: every resample refitted with it, the
    # same resamples as a fit of that law alone; the prediction band holds each resample's
    # own law, so it is wider than that law's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        alone = fit_law(law=fit.law_name_, data={"x": x, "y": y}, x="x", y="y", bootstrap=200, seed=0)
    assert alone.ci_ == fit.ci_
    q = {"x": [4e4]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        lo, hi = fit.predict_interval(q)
        own = np.exp(fit.law_.log_predict(fit.draw_thetas_, np.array([[4e4]])))[:, 0]
        draws = fit.predict_draws(q)[:, 0]
    assert fit.draws_.shape == (200, len(fit.law_.params))
    assert (lo[0], hi[0]) == tuple(np.quantile(draws, [0.05, 0.95]))
    o_lo, o_hi = np.quantile(own, [0.05, 0.95])
    assert hi[0] - lo[0] > 1.2 * (o_hi - o_lo)


def test_every_interval_contains_its_own_estimate():
    """A bootstrap whose refits settle off the estimate (here: a rectified law on 10 noisy points,
    the demo's shape) must not report an interval that excludes the estimate."""
    rng = np.random.default_rng(3)
    d = np.repeat([300.0, 600, 1200, 2400, 4800], 2)
    y = 0.05 + 400.0 / (250.0 + d**0.7) * np.exp(rng.normal(0, 0.15, d.size))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_law(law="rectified", data=pd.DataFrame({"D": d, "L": y}), x="D", y="L", bootstrap=100, seed=0)
    for name, (lo, hi) in fit.ci_.items():
        assert lo <= fit.params_[name] <= hi, (name, fit.params_[name], lo, hi)


# ---------------------------------------------------------------------------
# variable-projection search (issue 16): the same optimum as the exhaustive grid
# ---------------------------------------------------------------------------


def _fit_search(search, law, data, x, **kw):
    est = LawFit(law, **kw)
    est._search = search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        return est.fit(data, x, "y")


def test_profile_search_finds_the_exhaustive_optimum_of_a_planted_chinchilla_law(monkeypatch):
    import analysis._fit_auto as fit_auto

    cols, x, p, _, _ = _design("chinchilla")
    y = _truth("chinchilla", cols, x, p) * np.exp(np.random.default_rng(5).normal(0, 0.01, 25))
    data = {**cols, "y": y}
    fast = _fit_search("profile", "chinchilla", data, x)
    assert fast.optimizer_["search"] == "profile"
    assert fast.n_starts_ == 4500 and fast.optimizer_["n_minimised"] == 16
    # the slow reference: every one of the 4,500 grid starts minimised, no screening
    monkeypatch.setattr(fit_auto, "_SCREEN_KEEP", 10**9)
    slow = _fit_search("grid", "chinchilla", data, x)
    assert slow.optimizer_["search"] == "all" and slow.optimizer_["n_minimised"] == 4500
    arrays = (cols["N"], cols["D"], y)
    f_fast, f_slow = huber_sum(fast.params_, arrays), huber_sum(slow.params_, arrays)
    assert f_fast <= f_slow * (1 + 1e-12)
    # the L-BFGS stopping rule leaves the parameters ~1e-7 from the bottom here
    for k in p:
        assert fast.params_[k] == pytest.approx(slow.params_[k], rel=1e-6), k


@pytest.mark.parametrize(
    ("name", "seed", "noise"),
    [
        ("chinchilla", 0, 0.005),
        ("chinchilla", 1, 0.02),
        ("chinchilla", 2, 0.05),
        ("data_constrained", 1, 0.005),
        ("data_constrained", 2, 0.02),
        ("bnsl", 4, 0.005),
    ],
)
def test_profile_search_is_never_worse_than_the_screened_grid(name, seed, noise):
    # bnsl seed 4 and data_constrained seed 1 are the planted curves where the
    # screened grid's end point was furthest from the bottom (1e-11 in f)
    cols, x, p, fixed, _ = _design(name)
    n = len(next(iter(cols.values())))
    y = _truth(name, cols, x, p) * np.exp(np.random.default_rng(seed).normal(0, noise, n))
    data = {**cols, "y": y}
    fast = _fit_search("profile", name, data, x, fixed=fixed or None)
    grid = _fit_search("grid", name, data, x, fixed=fixed or None)
    assert fast.optimizer_["search"] == "profile" and grid.optimizer_["search"] == "grid"
    f_fast, f_grid = fast.metrics_["huber"], grid.metrics_["huber"]
    assert f_fast <= f_grid * (1 + 1e-12), (f_fast, f_grid)


def test_profile_search_with_fixed_parameters_finds_the_full_grid_optimum():
    # the report's repeated-epochs fit: data_constrained with A = 1e-12, alpha = 0 and
    # R_N_star = 1 fixed, 135 starts. The starting grid carried fixed values on the natural
    # scale where the profile reads fitting space (log A, log R*): it took A = e^1e-12 = 1 as a
    # known offset; on the report's planted study it ended at objective 1.46 with E = 0,
    # against 0.10 from every grid start, and on this design above the grid's optimum
    cols, x, _, _, _ = _design("data_constrained")
    p = dict(E=0.8, A=1e-12, B=12.0, alpha=0.0, beta=0.35, R_D_star=5.0, R_N_star=1.0)
    y = _truth("data_constrained", cols, x, p) * np.exp(np.random.default_rng(0).normal(0, 0.01, 27))
    fixed = {"A": 1e-12, "alpha": 0.0, "R_N_star": 1.0}
    fast = _fit_search("profile", "data_constrained", {**cols, "y": y}, x, fixed=fixed)
    full = _fit_search("grid", "data_constrained", {**cols, "y": y}, x, fixed=fixed)
    assert fast.optimizer_["search"] == "profile" and full.optimizer_["search"] == "all"
    assert fast.optimizer_["n_starts"] == full.optimizer_["n_minimised"] == 135
    assert fast.metrics_["huber"] <= full.metrics_["huber"] * (1 + 1e-12)
    for k in ("E", "B", "beta", "R_D_star"):
        assert fast.params_[k] == pytest.approx(full.params_[k], rel=1e-5), k


def test_chinchilla_reference_data_profile_optimum_is_not_above_the_grid_one(chinchilla_df):
    # the bench's data: the profiled search ends at least as low as the
    # screened grid (the fitter before variable projection) on the 240 points
    data = chinchilla_df.rename(columns={"loss": "y"})
    fast = _fit_search("profile", "chinchilla", data, ["N", "D"])
    grid = _fit_search("grid", "chinchilla", data, ["N", "D"])
    assert fast.optimizer_["n_minimised"] == 16 and grid.optimizer_["n_minimised"] == 256
    assert huber_sum(fast.params_, chinchilla_df) <= huber_sum(grid.params_, chinchilla_df)


def test_nonnegative_least_squares_profile_known_answers():
    from analysis._fit_profile import _lse_basis, _nnls_relative

    law = get_law("chinchilla")
    cols, x, _, _, _ = _design("chinchilla")
    X = np.column_stack([cols["N"], cols["D"]])
    # at the true exponents, an exact law's coefficients come back exactly; a law
    # without the D term (B = 0) gets B = 0 from the bound, not a negative B
    theta = np.array([[0.0, 0.0, 0.0, 0.34, 0.37], [0.0, 0.0, 0.0, 0.34, 0.37]])
    y1 = law(X, E=1.7, A=400.0, B=2000.0, alpha=0.34, beta=0.37)
    y2 = law(X, E=1.7, A=400.0, B=0.0, alpha=0.34, beta=0.37)
    G = _lse_basis(law, theta, X, [0, 1, 2])
    c = _nnls_relative(G, np.stack([y1, y2]), y1, np.ones(25))
    np.testing.assert_allclose(c[0], [1.7, 400.0, 2000.0], rtol=1e-8)
    c2 = _nnls_relative(G[1:], y2[None, :], y2, np.ones(25))
    np.testing.assert_allclose(c2[0], [1.7, 400.0, 0.0], rtol=1e-8, atol=1e-12)
    # targets that need a negative coefficient: the bound holds, and the answer
    # is scipy's NNLS of the same weighted problem (an independent solver)
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    targets = [
        (law(X, E=0.2, A=400.0, B=2000.0, alpha=0.34, beta=0.37) - 0.5, True),  # E = -0.3
        (1.7 - law(X, E=0.0, A=40.0, B=0.0, alpha=0.34, beta=0.37), True),  # A = -40
        (y1 * rng.uniform(0.5, 1.5, 25), False),
    ]
    for t, on_bound in targets:
        w = rng.uniform(0.5, 2.0, 25)
        got = _nnls_relative(G[:1], t[None, :], y1, w)[0]
        sw = np.sqrt(w) / y1
        want, _ = nnls(G[0] * sw[:, None], t * sw)
        assert (got >= 0).all()
        assert (want == 0).any() == on_bound  # a coefficient on its bound, or none
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())


def test_bootstrap_draws_are_the_refits_of_their_resamples():
    """Each bootstrap draw is the fit of its resample: the same law fitted directly with the
    resample's multiplicities as weights. Where a bound is near (here alpha >= 0, 5 sizes x 2
    seeds at 15% noise) the refits run in z = z_fit + u with the bounds moved by z_fit; bounding
    u by the bounds of z kept every refit at alpha >= the estimate, so the 90% interval started
    exactly at it (issue 16: alpha = 0.2959 [0.2959, 0.398])."""
    rng = np.random.default_rng(3)
    d = np.repeat([300.0, 600, 1200, 2400, 4800], 2)
    y = 0.05 + 400.0 / (250.0 + d**0.7) * np.exp(rng.normal(0, 0.15, d.size))
    data = {"D": d, "L": y}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_law(law="power_nofloor", data=data, x="D", y="L", delta=0.3, bootstrap=40, seed=0)
        counts = np.random.default_rng(0).multinomial(d.size, np.full(d.size, 0.1), size=40)
        direct = np.array([
            [fit_law(law="power_nofloor", data=data, x="D", y="L", delta=0.3, weights=list(c)).params_[k]
             for k in ("A", "alpha")]
            for c in counts
        ])  # fmt: skip
    np.testing.assert_allclose(fit.draws_, direct, rtol=1e-4, atol=1e-6)
    lo, hi = fit.ci_["alpha"]
    assert lo < 0.8 * fit.params_["alpha"] < 1.2 * fit.params_["alpha"] < hi
