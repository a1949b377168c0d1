"""Variable-projection screening of the multi-start (private): step 4 of ``LawFit.fit``.

Every law of analysis.laws is linear in its log-sum-exp coefficients on the
natural scale: L = sum_k C_k g_k(x; nonlinear params), C_k = exp(e), exp(a),
exp(b), ... (Chinchilla: L = E*1 + A*N^-alpha + B*D^-beta). So once the
nonlinear parameters (exponents, R*, break positions) are fixed, the best
coefficients are a small linear problem. The fitted objective is a Huber sum on
log residuals, not least squares, so the linear solve is not the optimum; it
only places a start: for every point of a grid over the nonlinear parameters
(finer than the law's starting grid, and containing it) the coefficients are
the non-negative least-squares fit of the relative residuals (pred - y) / y
(~ the log residual for small residuals), the full Huber objective ranks those
profiled starts, and only the ``_PROFILE_KEEP`` best distinct ones are
minimised by the batched L-BFGS on the full objective (analysis/_fit_auto.py).
On the Chinchilla data this replaces 256 L-BFGS runs from the screened
4,500-start grid by 16 that start next to the optimum (bench/fit_speed.py).
"""

from __future__ import annotations

import itertools

import numpy as np

from analysis.laws import Law

__all__: list[str] = []  # private: analysis._fit_auto imports what it needs

# Profiled grid size: each free nonlinear parameter gets about
# _PROFILE_BUDGET^(1/d) values spread evenly (in fitting space) over the range
# of its starting grid, plus the grid's own values. Chinchilla (d = 2): 26 x 26
# exponent pairs; data-constrained with both R* free (d = 4): 6 values each.
# With more than 4 (BNSL with 2 breaks: 7) the budget leaves 2-3 values per
# parameter, no finer than the law's grid: there the profiled starts found
# worse optima than the screened grid (5 of 6 planted 2-break curves at 0.5%
# noise, by up to 0.5% in f), so such a law keeps the screened grid.
_PROFILE_MIN_PER = 4
_PROFILE_BUDGET = 512
# L-BFGS polishes this many distinct profiled starts, best Huber value first.
# On the Chinchilla and data-constrained bench data every one of the 16 ends
# at the optimum; 16 keeps a margin for a second basin at little cost.
_PROFILE_KEEP = 16


def _lse_basis(law: Law, theta: np.ndarray, X: np.ndarray, cols: list[int]) -> np.ndarray:
    """(S, n, len(cols)) natural-scale terms g_k of the lse params ``cols`` at
    theta's (S, p) other params: the law evaluated with that coefficient 1 and
    every other lse coefficient 0 (theta's lse values are not read)."""
    nat = {}
    for j, prm in enumerate(law.params):
        if not prm.lse:
            v = theta[:, j : j + 1]
            nat[prm.name] = np.exp(v) if prm.log else v
    xs = [X[:, c] for c in range(X.shape[1])]
    lse = [j for j, prm in enumerate(law.params) if prm.lse]
    out = []
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for j in cols:
            kw = dict(nat)
            for i in lse:
                kw[law.params[i].name] = 1.0 if i == j else 0.0
            out.append(np.broadcast_to(law.func(*xs, **kw), (theta.shape[0], X.shape[0])))
    return np.stack(out, axis=2)


def _nnls_relative(G: np.ndarray, target: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row s: argmin_{c >= 0} sum_i w_i ((G[s] c)_i - target[s, i])^2 / y_i^2.

    G (S, n, m), target (S, n). m is small (at most a law's lse count, 3), so
    every active set (2^m - 1 of them) is solved in closed form for all rows at
    once and the best feasible one kept; c = 0 where none is feasible or finite.
    """
    S, n, m = G.shape
    sw = np.sqrt(w) / y
    Gw = G * sw[None, :, None]
    tw = target * sw[None, :]
    # equilibrate the columns (a power term can be 1e-4 of the constant one):
    # the normal equations below square the condition number
    with np.errstate(invalid="ignore", over="ignore"):
        cn = np.sqrt(np.einsum("snk,snk->sk", Gw, Gw))
    cn = np.where(np.isfinite(cn) & (cn > 0), cn, 1.0)
    Gw = Gw / cn[:, None, :]
    GwT = Gw.transpose(0, 2, 1)
    H = GwT @ Gw  # (S, m, m), batched matmul (BLAS; einsum here is 5x slower)
    h = (GwT @ tw[:, :, None])[:, :, 0]
    best_c = np.zeros((S, m))
    best_r = np.einsum("sn,sn->s", tw, tw)  # c = 0
    best_r = np.where(np.isfinite(best_r), best_r, np.inf)
    for size in range(1, m + 1):
        for sub in itertools.combinations(range(m), size):
            idx = np.array(sub)
            Hs = H[:, idx[:, None], idx[None, :]]
            hs = h[:, idx]
            # a tiny ridge keeps collinear terms (an exponent of 0 makes a power
            # term a second constant) solvable
            ridge = 1e-12 * np.trace(Hs, axis1=1, axis2=2) + 1e-300
            Hs = Hs + ridge[:, None, None] * np.eye(size)
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                ok = np.isfinite(Hs).all(axis=(1, 2)) & np.isfinite(hs).all(1)
                cs = np.zeros((S, size))
                if ok.any():
                    cs[ok] = np.linalg.solve(Hs[ok], hs[ok][..., None])[..., 0]
                # residual sum of squares: |t|^2 - 2 c.h + c' H c = |t|^2 - c.h at the solution
                res = np.einsum("sn,sn->s", tw, tw) - np.einsum("sk,sk->s", cs, hs)
            better = ok & np.all(cs > 0, axis=1) & np.isfinite(res) & (res < best_r)
            if better.any():
                c = np.zeros((better.sum(), m))
                c[:, idx] = cs[better]
                best_c[better], best_r[better] = c, res[better]
    return best_c / cn


def _profile_grid(law: Law, T0: np.ndarray, free: set[int]) -> np.ndarray | None:
    """Full-theta rows (S, p): a grid over the free nonlinear params spanning
    the range of their values in the starting grid T0 (S0, p), finer than it
    and containing its values; fixed params keep their one value, lse columns
    are 0 (they are solved for). None when the budget would give fewer than
    _PROFILE_MIN_PER values per parameter (too many nonlinear parameters)."""
    nonlin = [j for j, prm in enumerate(law.params) if not prm.lse and j in free]
    multi = [j for j in nonlin if np.unique(T0[:, j]).size > 1]
    per = int(round(_PROFILE_BUDGET ** (1.0 / max(len(multi), 1))))
    if per < _PROFILE_MIN_PER:
        return None
    axes = []
    for j, prm in enumerate(law.params):
        v = np.unique(T0[:, j])
        if prm.lse and j in free:
            axes.append(np.zeros(1))
        elif j in multi:
            axes.append(np.unique(np.concatenate([np.linspace(v.min(), v.max(), per), v])))
        else:
            axes.append(v)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.reshape(-1) for a in mesh], axis=1)


def _profiled_starts(
    law: Law, X: np.ndarray, yv: np.ndarray, w: np.ndarray, T0: np.ndarray, free: set[int]
) -> np.ndarray | None:
    """Full-theta rows: the profile grid of T0 with every row's free lse
    coefficients set to their non-negative least-squares values (a zero one at
    log 1e-300: the caller clips it to its bound). Fixed lse params enter as
    a known offset. None when no lse coefficient is free (nothing to profile)
    or the nonlinear parameters are too many for the budget."""
    lse = [j for j, prm in enumerate(law.params) if prm.lse]
    solved = [j for j in lse if j in free]
    if not solved:
        return None
    TH = _profile_grid(law, T0, free)
    if TH is None:
        return None
    known = [j for j in lse if j not in free]
    target = np.broadcast_to(yv, (TH.shape[0], yv.size))
    if known:
        target = target - _lse_basis(law, TH, X, known) @ np.exp(T0[0, known])
    c = _nnls_relative(_lse_basis(law, TH, X, solved), target, yv, w)
    TH[:, solved] = np.log(np.maximum(c, 1e-300))  # a vanished term: far below its bound
    return TH
