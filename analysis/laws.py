"""Scaling-law forms: plain numpy functions, and a registry the fitter reads.

The file reads top to bottom:

1. the laws as plain numpy functions of natural-scale parameters
   (``power``, ``chinchilla``, ``data_constrained``, ``bnsl``, ``multiplicative``);
2. the registry: ``Param`` / ``Law`` specs (names, log-sum-exp coefficients,
   starting grids, bounds) and ``get_law(name, breaks=)``.

Each law's fitting-space forward pass (log-prediction plus a vector-Jacobian
product, vectorised over S parameter rows at once: S starts or S bootstrap
resamples, which is what makes a 4,500-start fit take seconds) lives in
analysis/_forward.py.

Fitting space: positive parameters (E, A, B, R*, BNSL a, b, d, f) are fitted as
their natural log, so that, as in Hoffmann et al. (2022, appendix D.2),
log L = LSE(a - alpha*log N, b - beta*log D, e) with a = log A, b = log B,
e = log E. Exponents are fitted as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis._forward import (
    _fwd_bnsl,
    _fwd_chinchilla,
    _fwd_data_constrained,
    _fwd_multiplicative,
    _fwd_power,
    _fwd_power_nofloor,
    _fwd_rectified,
    _prep_data_constrained,
    _prep_logs,
)

__all__ = [
    "Law",
    "Param",
    "LAW_NAMES",
    "get_law",
    "power",
    "chinchilla",
    "data_constrained",
    "bnsl",
    "multiplicative",
    "power_nofloor",
    "rectified",
    "optimal_params_for_tokens",
]


# ---------------------------------------------------------------------------
# 1. natural-scale functions
# ---------------------------------------------------------------------------


def power(x, *, E: float, A: float, alpha: float) -> np.ndarray:
    """L(x) = E + A * x^-alpha."""
    x = np.asarray(x, dtype=np.float64)
    return E + A * x ** (-alpha)


def power_nofloor(x, *, A: float, alpha: float) -> np.ndarray:
    """L(x) = A * x^-alpha: a pure power law, no irreducible floor."""
    x = np.asarray(x, dtype=np.float64)
    return A * x ** (-alpha)


def rectified(x, *, E: float, B: float, D_l: float, beta: float) -> np.ndarray:
    """L(D) = B / (D_l + D^beta) + E: the rectified scaling law of Lin et al.
    (2024, arXiv:2402.02314, Eq. 3), where D_l is the "pre-learned data size":
    fine-tuning first sits on a flat pre-power phase, then follows a power law."""
    x = np.asarray(x, dtype=np.float64)
    return B / (D_l + x**beta) + E


def chinchilla(N, D, *, E: float, A: float, B: float, alpha: float, beta: float) -> np.ndarray:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Eq. 2)."""
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    return E + A * N ** (-alpha) + B * D ** (-beta)


def _effective(total: np.ndarray, unique: np.ndarray, r_star: float) -> np.ndarray:
    """Muennighoff et al. (2023) Eq. 5: U + U*R*(1 - exp(-R/R*)), R = total/U - 1.

    U is clipped to ``total`` (the paper's U_D = min(D_C, D): one never sees more
    unique tokens than tokens), so R >= 0 and less than one epoch is plain data.
    """
    unique = np.minimum(unique, total)
    reps = total / unique - 1.0
    return unique * (1.0 - r_star * np.expm1(-reps / r_star))


def data_constrained(
    N,
    D,
    U_D,
    U_N=None,
    *,
    E: float,
    A: float,
    B: float,
    alpha: float,
    beta: float,
    R_D_star: float,
    R_N_star: float,
) -> np.ndarray:
    """Data-constrained law of Muennighoff et al. (2023), Eq. 5-7.

    D' = U_D + U_D*R*_D*(1 - exp(-R_D/R*_D)), R_D = D/U_D - 1 (same for N with
    U_N, R*_N); L = E + A/N'^alpha + B/D'^beta. ``U_N`` defaults to N (no excess
    parameters: right for fine-tunes of one base model). The paper's own
    convention is U_N = min(N, optimal_params_for_tokens(U_D, ...)).
    """
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    U_D = np.asarray(U_D, dtype=np.float64)
    U_N = N if U_N is None else np.asarray(U_N, dtype=np.float64)
    n_eff = _effective(N, U_N, R_N_star)
    d_eff = _effective(D, U_D, R_D_star)
    return E + A * n_eff ** (-alpha) + B * d_eff ** (-beta)


def optimal_params_for_tokens(tokens, *, A: float, B: float, alpha: float, beta: float):
    """Compute-optimal parameter count whose optimal token count is ``tokens``.

    From minimising E + A/N^alpha + B/D^beta under C = 6ND: N_opt = G (C/6)^(b/(a+b)),
    D_opt = (C/6)^(a/(a+b)) / G with G = (alpha A / (beta B))^(1/(alpha+beta))
    (Hoffmann et al. 2022, Eq. 4), hence N = G (G D)^(beta/alpha). Muennighoff
    et al. (2023) use it as U_N for U_D unique tokens.
    """
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return G * (G * np.asarray(tokens, dtype=np.float64)) ** (beta / alpha)


def bnsl(x, *, a: float, b: float, c0: float, **breaks: float) -> np.ndarray:
    """Broken neural scaling law (Caballero et al. 2022, Eq. 1).

    y = a + b x^-c0 prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i), breaks given as
    c1, d1, f1, c2, d2, f2, ... Evaluated in log space so that large x or sharp
    breaks (small f) do not overflow.
    """
    x = np.asarray(x, dtype=np.float64)
    lx = np.log(x)
    k = len(breaks) // 3
    expected = {f"{p}{i}" for i in range(1, k + 1) for p in "cdf"}
    if len(breaks) % 3 or set(breaks) != expected:
        raise ValueError(f"bnsl breaks must be c1, d1, f1, c2, ...; got {sorted(breaks)}")
    log_term = np.log(b) - c0 * lx
    for i in range(1, k + 1):
        c, d, f = breaks[f"c{i}"], breaks[f"d{i}"], breaks[f"f{i}"]
        log_term = log_term - c * f * np.logaddexp(0.0, (lx - np.log(d)) / f)
    return a + np.exp(log_term)


def multiplicative(X, D, *, E: float, A: float, alpha: float, beta: float) -> np.ndarray:
    """L(X, D) = E + A * X^-alpha * D^-beta (Zhang et al. 2024, "When Scaling Meets
    LLM Finetuning", Eq. 1; X is the scaled factor, D the fine-tuning data size)."""
    X, D = np.asarray(X, dtype=np.float64), np.asarray(D, dtype=np.float64)
    return E + A * X ** (-alpha) * D ** (-beta)


# ---------------------------------------------------------------------------
# 2. registry
# ---------------------------------------------------------------------------

GridSpec = Sequence[float] | Callable[[np.ndarray], Sequence[float]]
BoundSpec = tuple[float, float] | Callable[[np.ndarray], tuple[float, float]]


@dataclass(frozen=True)
class Param:
    """One law parameter.

    grid and bounds are natural-scale values; either constants or functions of
    the natural x column ``col`` (for break positions, which live in the data's
    range). ``lse``: a log-sum-exp coefficient (E, A, B, BNSL a, b); the fitter
    bounds these relative to the data's log y rather than by fixed numbers.
    ``centre``: for an exponent, the coefficient whose term it multiplies with
    log x[col]; the fitter centres log x[col] in that term (a reparametrisation
    that decorrelates a and alpha, and cuts L-BFGS iterations about in half).
    """

    name: str
    log: bool
    grid: GridSpec
    bounds: BoundSpec = (-np.inf, np.inf)
    lse: bool = False
    centre: str | None = None
    col: int | None = None

    def grid_values(self, X: np.ndarray) -> np.ndarray:
        g = self.grid(X[:, self.col]) if callable(self.grid) else self.grid
        return np.asarray(g, dtype=np.float64)

    def bound_values(self, X: np.ndarray) -> tuple[float, float]:
        lo, hi = self.bounds(X[:, self.col]) if callable(self.bounds) else self.bounds
        return float(lo), float(hi)


@dataclass(frozen=True)
class Law:
    """A law form: natural function, fitting-space forward pass and parameter specs."""

    name: str
    x_roles: tuple[str, ...]  # meaning of each x column, e.g. ("N", "D")
    n_optional: int  # trailing x columns that may be left out (data_constrained's U_N)
    params: tuple[Param, ...]
    func: Callable[..., np.ndarray]
    fwd: Callable
    prepare: Callable[[np.ndarray], dict]
    reference: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def n_x(self) -> tuple[int, int]:
        """(fewest, most) x columns the law accepts."""
        return len(self.x_roles) - self.n_optional, len(self.x_roles)

    def __call__(self, X, **params: float) -> np.ndarray:
        """Evaluate on X (n, q) natural inputs with natural-scale params."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return self.func(*(X[:, j] for j in range(X.shape[1])), **params)

    def to_theta(self, params: dict[str, float]) -> np.ndarray:
        """Natural params -> fitting-space vector (p,)."""
        return np.array(
            [np.log(params[p.name]) if p.log else params[p.name] for p in self.params],
            dtype=np.float64,
        )

    def from_theta(self, theta: np.ndarray) -> dict[str, float]:
        """Fitting-space vector (p,) -> natural params as plain floats."""
        return {
            p.name: float(np.exp(t)) if p.log else float(t)
            for p, t in zip(self.params, theta, strict=True)
        }

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Vectorised log-prediction: theta (S, p), X (n, q) -> (S, n)."""
        return self.fwd(np.atleast_2d(theta), self.prepare(np.asarray(X, dtype=np.float64)))[0]


# Starting grids. Chinchilla's is the one of Besiroglu et al. (2024, Epoch AI,
# "Chinchilla scaling: a replication attempt", section 2): e in arange(-1, 1.5, .5),
# a, b in arange(0, 30, 5), alpha, beta in arange(0, 2.5, .5) -> 5*6*6*5*5 = 4,500
# starts. Values here are natural scale, so log-parameters carry exp().
_E_GRID = tuple(np.exp(np.arange(-1.0, 1.5, 0.5)))  # E in [0.37, 2.7]: typical loss floors
_COEF_GRID = tuple(np.exp(np.arange(0.0, 30.0, 5.0)))  # A, B over 13 decades
_EXP_GRID = tuple(np.arange(0.0, 2.5, 0.5))  # exponents 0 .. 2
# exponents above 10 mean a step, not a power law; 0 means the term is flat
_EXP_BOUNDS = (0.0, 10.0)
# R*: repetitions at which repeated data is worth 1 - 1/e of fresh data; the
# published C4 fits are 15.4 (data) and 5.3 (params). Below 0.01 repeats are
# worthless, above 1e4 repeats are as good as fresh data: both ends unidentifiable.
_RSTAR_GRID = (2.0, 15.0, 100.0)
_RSTAR_BOUNDS = (1e-2, 1e4)


def _break_grid(i: int, k: int) -> Callable[[np.ndarray], tuple[float, ...]]:
    """Starting positions of break i of k, in the data's range of log x.

    One break: the quartiles. Several: break i starts in the i-th of k equal
    slices of the quantiles (at its thirds), so breaks start in order and the
    grid does not hold each layout k! times.
    """
    qs = [0.25, 0.5, 0.75] if k == 1 else [(i - 1 + 1 / 3) / k, (i - 1 + 2 / 3) / k]

    def grid(x: np.ndarray) -> tuple[float, ...]:
        return tuple(np.exp(np.quantile(np.log(x), qs)))

    return grid


def _break_bounds(x: np.ndarray) -> tuple[float, float]:
    # a break far outside the data is not identified; allow one e-fold beyond
    lx = np.log(x)
    return float(np.exp(lx.min() - 1.0)), float(np.exp(lx.max() + 1.0))


def _power() -> Law:
    return Law(
        name="power",
        x_roles=("x",),
        n_optional=0,
        params=(
            Param("E", log=True, grid=_E_GRID, lse=True),
            Param("A", log=True, grid=_COEF_GRID, lse=True),
            Param("alpha", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="A", col=0),
        ),
        func=power,
        fwd=_fwd_power,
        prepare=_prep_logs,
        reference="L = E + A x^-alpha",
    )


def _power_nofloor() -> Law:
    return Law(
        name="power_nofloor",
        x_roles=("x",),
        n_optional=0,
        params=(
            Param("A", log=True, grid=_COEF_GRID, lse=True),
            Param("alpha", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="A", col=0),
        ),
        func=power_nofloor,
        fwd=_fwd_power_nofloor,
        prepare=_prep_logs,
        reference="L = A x^-alpha",
    )


def _rectified() -> Law:
    # D_l is on the scale of x^beta; from e^-5 (no pre-power phase) to e^25.
    return Law(
        name="rectified",
        x_roles=("x",),
        n_optional=0,
        params=(
            Param("E", log=True, grid=_E_GRID, lse=True),
            Param("B", log=True, grid=_COEF_GRID, lse=True),
            Param("D_l", log=True, grid=tuple(np.exp([0.0, 5.0, 10.0])), bounds=(1e-6, 1e15)),
            Param("beta", log=False, grid=(0.25, 0.5, 1.0), bounds=(1e-3, 10.0)),
        ),
        func=rectified,
        fwd=_fwd_rectified,
        prepare=_prep_logs,
        reference="Lin et al. 2024, arXiv:2402.02314, Eq. 3 (rectified scaling law)",
    )


def _chinchilla() -> Law:
    return Law(
        name="chinchilla",
        x_roles=("N", "D"),
        n_optional=0,
        params=(
            Param("E", log=True, grid=_E_GRID, lse=True),
            Param("A", log=True, grid=_COEF_GRID, lse=True),
            Param("B", log=True, grid=_COEF_GRID, lse=True),
            Param("alpha", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="A", col=0),
            Param("beta", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="B", col=1),
        ),
        func=chinchilla,
        fwd=_fwd_chinchilla,
        prepare=_prep_logs,
        reference="Hoffmann et al. 2022, arXiv:2203.15556, Eq. 2",
    )


def _data_constrained() -> Law:
    # 7 parameters: a coarser grid than Chinchilla's (5*3*3*3*3*3*3 = 3,645
    # starts with both R* free, 405 with both fixed)
    coef = tuple(np.exp([0.0, 10.0, 20.0]))
    expo = (0.25, 0.75, 1.5)
    return Law(
        name="data_constrained",
        x_roles=("N", "D", "U_D", "U_N"),
        n_optional=1,
        params=(
            Param("E", log=True, grid=_E_GRID, lse=True),
            Param("A", log=True, grid=coef, lse=True),
            Param("B", log=True, grid=coef, lse=True),
            Param("alpha", log=False, grid=expo, bounds=_EXP_BOUNDS, centre="A", col=0),
            Param("beta", log=False, grid=expo, bounds=_EXP_BOUNDS, centre="B", col=1),
            Param("R_D_star", log=True, grid=_RSTAR_GRID, bounds=_RSTAR_BOUNDS),
            Param("R_N_star", log=True, grid=_RSTAR_GRID, bounds=_RSTAR_BOUNDS),
        ),
        func=data_constrained,
        fwd=_fwd_data_constrained,
        prepare=_prep_data_constrained,
        reference="Muennighoff et al. 2023, arXiv:2305.16264, Eq. 5-7",
    )


def _bnsl(breaks: int) -> Law:
    params = [
        Param("a", log=True, grid=tuple(np.exp([-1.0, 0.0, 1.0])), lse=True),
        Param("b", log=True, grid=tuple(np.exp([0.0, 5.0, 10.0])), lse=True),
        # c0 may be slightly negative (a rising first segment, e.g. double descent)
        Param("c0", log=False, grid=(0.0, 0.5, 1.0), bounds=(-2.0, 10.0), centre="b", col=0),
    ]
    # c_i changes the slope after break i; either sign is a valid BNSL. With
    # several breaks, each starts as a steepening or a flattening (2*2*2 = 8
    # starts per break: 1,728 for two breaks, against 324 for one).
    c_grid = (0.25, 1.0) if breaks == 1 else (-0.5, 0.5)
    for i in range(1, breaks + 1):
        params += [
            Param(f"c{i}", log=False, grid=c_grid, bounds=(-10.0, 10.0)),
            Param(f"d{i}", log=True, grid=_break_grid(i, breaks), bounds=_break_bounds, col=0),
            # f: sharpness of the break; below 1e-3 it is a kink, above 100 it is
            # spread over more than the data's range
            Param(f"f{i}", log=True, grid=(0.1, 1.0), bounds=(1e-3, 1e2)),
        ]
    return Law(
        name="bnsl",
        x_roles=("x",),
        n_optional=0,
        params=tuple(params),
        func=bnsl,
        fwd=_fwd_bnsl,
        prepare=_prep_logs,
        reference="Caballero et al. 2022, arXiv:2210.14891, Eq. 1",
    )


def _multiplicative() -> Law:
    return Law(
        name="multiplicative",
        x_roles=("X", "D"),
        n_optional=0,
        params=(
            Param("E", log=True, grid=_E_GRID, lse=True),
            Param("A", log=True, grid=_COEF_GRID, lse=True),
            Param("alpha", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="A", col=0),
            Param("beta", log=False, grid=_EXP_GRID, bounds=_EXP_BOUNDS, centre="A", col=1),
        ),
        func=multiplicative,
        fwd=_fwd_multiplicative,
        prepare=_prep_logs,
        reference="Zhang et al. 2024, arXiv:2402.17193, Eq. 1",
    )


_FACTORIES: dict[str, Callable[..., Law]] = {
    "power": _power,
    "chinchilla": _chinchilla,
    "data_constrained": _data_constrained,
    "bnsl": _bnsl,
    "multiplicative": _multiplicative,
    "power_nofloor": _power_nofloor,
    "rectified": _rectified,
}
LAW_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))


def get_law(name: str, *, breaks: int = 1) -> Law:
    """The registered law ``name``; ``breaks`` is the number of BNSL breaks."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown law {name!r}; known laws: {', '.join(LAW_NAMES)}")
    if name == "bnsl":
        if isinstance(breaks, bool) or not isinstance(breaks, int | np.integer) or breaks < 1:
            raise ValueError(f"bnsl breaks must be an integer >= 1, got {breaks!r}")
        return _bnsl(int(breaks))
    return _FACTORIES[name]()
