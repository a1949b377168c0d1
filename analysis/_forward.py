"""Fitting-space forward passes of the laws in analysis.laws (private).

fwd(theta, ctx) -> (logpred, vjp); theta: (S, p) fitting-space rows in the
law's parameter order, logpred: (S, n), vjp(h: (S, n)) -> (S, p) is
sum_i h[s, i] * d logpred[s, i] / d theta[s, :]. Vectorised over S parameter
rows at once (S starts or S bootstrap resamples), which is what makes a
4,500-start fit take seconds. ``_prep_*`` turn the natural x columns (n, q)
into the ``ctx`` a forward pass reads.

Fitting space: positive parameters (E, A, B, R*, BNSL a, b, d, f) are their
natural log, so that log L = LSE(a - alpha*log N, b - beta*log D, e) with
a = log A, b = log B, e = log E (Hoffmann et al. 2022, appendix D.2).
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []  # private: analysis.laws imports the names it needs


def _lse_rel(base, *terms):
    """log(exp(base) + sum_k exp(base + u_k)) and the softmax weight of each u_k.

    ``base`` (S, 1) is the constant term (log E); u_k (S, n) are the other terms
    minus base, overwritten in place: one exp per term and point. Bounds keep
    u_k far from overflow; an overflow only makes that trial point non-finite,
    which the line search rejects.
    """
    total = None
    for u in terms:
        np.exp(u, out=u)
        total = u.copy() if total is None else np.add(total, u, out=total)
    inv = np.add(total, 1.0)
    np.reciprocal(inv, out=inv)
    lp = np.log1p(total, out=total)
    lp += base
    for u in terms:
        u *= inv
    return (lp, *terms)


def _power_term(coef, expo, lx, base):
    """coef - expo * lx - base as a fresh (S, n) array, in two passes."""
    u = np.multiply(-expo, lx)
    u += coef - base
    return u


def _prep_logs(X: np.ndarray) -> dict:
    # X: (n, q) natural inputs -> log inputs; [1, log x] pairs let one matmul
    # give both the coefficient and the exponent gradient of a power term
    lx = [np.log(X[:, j]) for j in range(X.shape[1])]
    return {"lx": lx, "one_lx": [np.column_stack([np.ones_like(v), v]) for v in lx]}


def _fwd_power(th, ctx):
    e, a, al = th[:, 0:1], th[:, 1:2], th[:, 2:3]
    lx = ctx["lx"][0]
    lp, w = _lse_rel(e, _power_term(a, al, lx, e))  # (S, n)

    def vjp(h):
        s_a, g_al = ((h * w) @ ctx["one_lx"][0]).T
        return np.stack([h.sum(1) - s_a, s_a, -g_al], axis=1)

    return lp, vjp


def _fwd_power_nofloor(th, ctx):
    a, al = th[:, 0:1], th[:, 1:2]
    lx = ctx["lx"][0]
    lp = a - al * lx

    def vjp(h):
        return np.stack([h.sum(1), -(h @ lx)], axis=1)

    return lp, vjp


def _fwd_rectified(th, ctx):
    # log L = LSE(e, b - log(D_l + x^beta)), log(D_l + x^beta) = logaddexp(l, beta lx)
    e, b, ldl, be = (th[:, j : j + 1] for j in range(4))
    lx = ctx["lx"][0]
    bx = be * lx
    s = np.logaddexp(ldl, bx)
    q = np.exp(ldl - s)  # share of D_l in D_l + x^beta
    u = b - e - s
    lp, w = _lse_rel(e, u)

    def vjp(h):
        hw = h * w
        s1 = hw.sum(1)
        return np.stack([h.sum(1) - s1, s1, -(hw * q).sum(1), -((hw * (1.0 - q)) @ lx)], axis=1)

    return lp, vjp


def _fwd_chinchilla(th, ctx):
    e, a, b, al, be = (th[:, j : j + 1] for j in range(5))
    lN, lD = ctx["lx"][0], ctx["lx"][1]
    lp, w0, w1 = _lse_rel(e, _power_term(a, al, lN, e), _power_term(b, be, lD, e))

    def vjp(h):
        s_a, g_al = ((h * w0) @ ctx["one_lx"][0]).T
        s_b, g_be = ((h * w1) @ ctx["one_lx"][1]).T
        return np.stack([h.sum(1) - s_a - s_b, s_a, s_b, -g_al, -g_be], axis=1)

    return lp, vjp


def _prep_data_constrained(X: np.ndarray) -> dict:
    N, D, U_D = X[:, 0], X[:, 1], X[:, 2]
    U_N = X[:, 3] if X.shape[1] > 3 else N
    U_D, U_N = np.minimum(U_D, D), np.minimum(U_N, N)
    return {"U_D": U_D, "R_D": D / U_D - 1.0, "U_N": U_N, "R_N": N / U_N - 1.0}


def _eff_and_dlog(unique, reps, log_rstar):
    """log U' (S, n) with U' = U(1 + R*(1 - exp(-R/R*))), and d log U' / d log R*."""
    rs = np.exp(log_rstar)  # (S, 1)
    x = reps / rs  # (S, n)
    one_minus = -np.expm1(-x)  # 1 - exp(-x)
    eff = unique * (1.0 + rs * one_minus)
    # dU'/dR* = U(1 - e^-x - x e^-x); times R* for the log parametrisation
    deff = unique * rs * (one_minus - x * (1.0 - one_minus)) / eff
    return np.log(eff), deff


def _fwd_data_constrained(th, ctx):
    e, a, b, al, be, lrd, lrn = (th[:, j : j + 1] for j in range(7))
    lNp, dN = _eff_and_dlog(ctx["U_N"], ctx["R_N"], lrn)
    lDp, dD = _eff_and_dlog(ctx["U_D"], ctx["R_D"], lrd)
    lp, w0, w1 = _lse_rel(e, _power_term(a, al, lNp, e), _power_term(b, be, lDp, e))

    def vjp(h):
        h0, h1 = h * w0, h * w1
        s0, s1 = h0.sum(1), h1.sum(1)
        return np.stack(
            [
                h.sum(1) - s0 - s1,
                s0,
                s1,
                -(h0 * lNp).sum(1),
                -(h1 * lDp).sum(1),
                -be[:, 0] * (h1 * dD).sum(1),
                -al[:, 0] * (h0 * dN).sum(1),
            ],
            axis=1,
        )

    return lp, vjp


def _fwd_bnsl(th, ctx):
    # params: a, b, c0, then (c_i, d_i, f_i) per break; a, b, d, f fitted as logs
    k = (th.shape[1] - 3) // 3
    la, lb, c0 = th[:, 0:1], th[:, 1:2], th[:, 2:3]
    lx = ctx["lx"][0]
    t1 = lb - c0 * lx
    parts = []
    for i in range(k):
        c, ld, lf = (th[:, 3 + 3 * i + j : 4 + 3 * i + j] for j in range(3))
        f = np.exp(lf)
        z = (lx - ld) / f
        sp = np.logaddexp(0.0, z)  # softplus(z) = log(1 + (x/d)^(1/f))
        sig = np.exp(z - sp)  # sigmoid(z)
        t1 = t1 - c * f * sp
        parts.append((c, f, z, sp, sig))
    t1 -= la
    lp, w1 = _lse_rel(la, t1)

    def vjp(h):
        hw = h * w1
        s1 = hw.sum(1)
        cols = [h.sum(1) - s1, s1, -(hw @ lx)]
        for c, f, z, sp, sig in parts:
            cols.append(-(hw * f * sp).sum(1))
            cols.append(c[:, 0] * (hw * sig).sum(1))
            cols.append(-(c * f)[:, 0] * (hw * (sp - sig * z)).sum(1))
        return np.stack(cols, axis=1)

    return lp, vjp


def _fwd_multiplicative(th, ctx):
    e, a, al, be = (th[:, j : j + 1] for j in range(4))
    lX, lD = ctx["lx"][0], ctx["lx"][1]
    u = _power_term(a, al, lX, e)
    u -= be * lD
    lp, w = _lse_rel(e, u)

    def vjp(h):
        hw = h * w
        s_a, g_al = (hw @ ctx["one_lx"][0]).T
        return np.stack([h.sum(1) - s_a, s_a, -g_al, -(hw @ lD)], axis=1)

    return lp, vjp
