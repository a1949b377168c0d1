"""Law forms: published values, limits with known answers, and the fitting-space
forward passes checked against the natural functions and finite differences."""

import math

import numpy as np
import pytest

from analysis.laws import (
    LAW_NAMES,
    bnsl,
    chinchilla,
    data_constrained,
    get_law,
    multiplicative,
    optimal_params_for_tokens,
    power,
)

# Muennighoff et al. 2023 (arXiv:2305.16264), appendix A / Eq. 17: the C4 fit
# in log space, a = log A, b = log B, e = log E (A ~ 521, B ~ 1488, E ~ 1.87,
# alpha = beta ~ 0.353 when rounded), and the fitted decay constants.
C4 = {
    "E": math.exp(0.6254804),
    "A": math.exp(6.255414),
    "B": math.exp(7.3049974),
    "alpha": 0.3526596,
    "beta": 0.3526596,
    "R_D_star": 15.387756,
    "R_N_star": 5.309743,
}


@pytest.mark.parametrize(
    ("N", "D", "U_D", "expected"),
    [
        (6.34e9, 242e9, 25e9, 2.2256440889984477),
        (8.67e9, 178e9, 25e9, 2.2269634075087867),
    ],
)
def test_muennighoff_c4_published_fit(N, D, U_D, expected):
    # The paper's convention: U_N = min(N, compute-optimal params for U_D tokens).
    U_N = min(
        N,
        float(
            optimal_params_for_tokens(U_D, A=C4["A"], B=C4["B"], alpha=C4["alpha"], beta=C4["beta"])
        ),
    )
    got = float(data_constrained(N, D, U_D, U_N, **C4))
    assert got == pytest.approx(expected, rel=1e-9)
    # the registry's callable takes the same four columns
    law = get_law("data_constrained")
    assert float(law(np.array([[N, D, U_D, U_N]]), **C4)[0]) == pytest.approx(expected, rel=1e-9)


def test_muennighoff_optimal_params_is_chinchilla_optimum():
    # N_opt(D) must be the minimiser of L at fixed compute 6*N*D, found by brute force.
    p = {k: C4[k] for k in ("A", "B", "alpha", "beta")}
    D_opt = 25e9
    N_opt = float(optimal_params_for_tokens(D_opt, **p))
    C = 6 * N_opt * D_opt
    Ns = N_opt * np.exp(np.linspace(-0.5, 0.5, 20001))
    L = chinchilla(Ns, C / (6 * Ns), E=0.0, **p)
    assert Ns[np.argmin(L)] == pytest.approx(N_opt, rel=1e-4)


def test_data_constrained_limits():
    p = dict(C4)
    N = np.array([1e8, 1e9])
    # one epoch (D = U) or less: no repetition, the law is Chinchilla's
    for D, U in [(1e10, 1e10), (1e10, 5e10)]:
        np.testing.assert_allclose(
            data_constrained(N, D, U, **p),
            chinchilla(N, D, **{k: p[k] for k in ("E", "A", "B", "alpha", "beta")}),
            rtol=1e-14,
        )
    # at R_D = R*_D repeated tokens are worth 1 - 1/e of fresh ones (paper, sec. 3.1)
    U = 1e9
    D = U * (1 + p["R_D_star"])
    d_eff = U * (1 + p["R_D_star"] * (1 - math.exp(-1)))
    expected = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / d_eff ** p["beta"]
    np.testing.assert_allclose(data_constrained(N, D, U, **p), expected, rtol=1e-14)
    # infinitely many epochs: D' -> U (1 + R*_D)
    far = data_constrained(N, U * 1e9, U, **p)
    cap = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / (U * (1 + p["R_D_star"])) ** p["beta"]
    np.testing.assert_allclose(far, cap, rtol=1e-12)


def test_bnsl_slopes_before_and_after_break():
    # log-log slope of y - a is -c0 well before the break and -(c0 + c1) well after
    p = dict(a=0.1, b=3.0, c0=0.2, c1=0.5, d1=1e4, f1=0.2)
    lx = np.array([0.0, 0.01, 30.0, 30.01])  # x = 1 and x = 1e13 around d = 1e4
    y = bnsl(np.exp(lx), **p) - p["a"]
    slope_lo = (np.log(y[1]) - np.log(y[0])) / 0.01
    slope_hi = (np.log(y[3]) - np.log(y[2])) / 0.01
    assert slope_lo == pytest.approx(-p["c0"], abs=1e-6)
    assert slope_hi == pytest.approx(-(p["c0"] + p["c1"]), abs=1e-6)
    # no breaks given in a wrong shape
    with pytest.raises(ValueError, match="c1, d1, f1"):
        bnsl(np.ones(3), a=1, b=1, c0=1, c1=1, d1=1)


def test_simple_forms_by_hand():
    assert power(100.0, E=1.0, A=2.0, alpha=0.5) == pytest.approx(1.2)
    assert chinchilla(1e4, 1e6, E=1, A=100, B=1000, alpha=0.5, beta=0.5) == pytest.approx(3.0)
    assert multiplicative(100.0, 1e4, E=0.5, A=8.0, alpha=0.5, beta=0.25) == pytest.approx(0.58)


def test_get_law_errors_and_registry():
    with pytest.raises(ValueError, match="known laws: bnsl, chinchilla"):
        get_law("kaplan")
    with pytest.raises(ValueError, match="got 0"):
        get_law("bnsl", breaks=0)
    assert get_law("bnsl", breaks=2).param_names == (
        "a",
        "b",
        "c0",
        "c1",
        "d1",
        "f1",
        "c2",
        "d2",
        "f2",
    )
    assert set(LAW_NAMES) == {
        "power",
        "power_nofloor",
        "rectified",
        "chinchilla",
        "data_constrained",
        "bnsl",
        "multiplicative",
    }
    # Besiroglu et al.'s grid: 5 * 6 * 6 * 5 * 5 = 4,500 starts
    law = get_law("chinchilla")
    sizes = [len(p.grid) for p in law.params]
    assert int(np.prod(sizes)) == 4500


def _cases():
    rng = np.random.default_rng(0)
    n = 25
    x = rng.uniform(1e2, 1e5, n)
    N, D = rng.uniform(1e7, 1e9, n), rng.uniform(1e8, 1e10, n)
    U = rng.uniform(1e8, 2e9, n)
    return [
        ("power", 1, np.c_[x], dict(E=0.5, A=30.0, alpha=0.4)),
        ("chinchilla", 1, np.c_[N, D], dict(E=1.7, A=400.0, B=2e3, alpha=0.34, beta=0.37)),
        (
            "data_constrained",
            1,
            np.c_[N, D, U],
            dict(E=1.7, A=400.0, B=2e3, alpha=0.34, beta=0.37, R_D_star=10.0, R_N_star=5.0),
        ),
        (
            "data_constrained",
            1,
            np.c_[N, D, U, N / 3],
            dict(E=1.7, A=400.0, B=2e3, alpha=0.34, beta=0.37, R_D_star=10.0, R_N_star=5.0),
        ),
        ("bnsl", 1, np.c_[x], dict(a=0.3, b=20.0, c0=0.1, c1=0.5, d1=3e3, f1=0.3)),
        (
            "bnsl",
            2,
            np.c_[x],
            dict(a=0.3, b=20.0, c0=0.1, c1=0.5, d1=1e3, f1=0.3, c2=-0.2, d2=3e4, f2=0.5),
        ),
        ("multiplicative", 1, np.c_[N / 1e5, D], dict(E=0.5, A=30.0, alpha=0.2, beta=0.3)),
        ("power_nofloor", 1, np.c_[x], dict(A=30.0, alpha=0.4)),
        ("rectified", 1, np.c_[x], dict(E=0.5, B=50.0, D_l=20.0, beta=0.5)),
    ]


@pytest.mark.parametrize(("name", "breaks", "X", "params"), _cases())
def test_forward_pass_matches_natural_function_and_finite_differences(name, breaks, X, params):
    law = get_law(name, breaks=breaks)
    theta = law.to_theta(params)
    np.testing.assert_allclose(np.exp(law.log_predict(theta, X)[0]), law(X, **params), rtol=1e-12)
    assert law.from_theta(theta) == pytest.approx(params, rel=1e-12)
    # vector-Jacobian product against central differences of sum(h * log pred)
    rng = np.random.default_rng(1)
    ctx = law.prepare(X)
    th = np.stack([theta, theta + rng.normal(0, 0.05, theta.size)])  # two rows at once
    h = rng.normal(size=(2, X.shape[0]))
    _, vjp = law.fwd(th.copy(), ctx)
    g = vjp(h)
    eps = 1e-6
    for j in range(theta.size):
        dp, dm = th.copy(), th.copy()
        dp[:, j] += eps
        dm[:, j] -= eps
        num = ((law.fwd(dp, ctx)[0] - law.fwd(dm, ctx)[0]) * h).sum(1) / (2 * eps)
        np.testing.assert_allclose(g[:, j], num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "breaks", "X", "params"), _cases())
def test_lse_basis_is_linear_in_the_coefficients(name, breaks, X, params):
    # variable projection (analysis/_fit_profile.py) rests on every law being
    # sum_k C_k g_k(x; other params) in its lse coefficients C_k
    from analysis._fit_profile import _lse_basis

    law = get_law(name, breaks=breaks)
    lse = [j for j, p in enumerate(law.params) if p.lse]
    theta = law.to_theta(params)[None, :]
    G = _lse_basis(law, theta, X, lse)
    assert G.shape == (1, X.shape[0], len(lse))
    coef = np.array([params[law.params[j].name] for j in lse])
    np.testing.assert_allclose(G[0] @ coef, law(X, **params), rtol=1e-12)
