"""The batched multi-start Huber L-BFGS behind analysis.fit (private).

Everything here works on one law's fitting space: ``_space`` maps the free
parameters z to the law's full theta, ``_Objective`` is the weighted Huber sum
on log residuals with its gradient, ``_lbfgs_batch`` minimises many starts (or
bootstrap resamples) at once, ``_whitener`` and ``_distinct_best`` serve the
multi-start and bootstrap stages of ``LawFit.fit`` (analysis/_fit_auto.py,
analysis/_fit_bootstrap.py). See analysis/fit.py's docstring for how a fit
runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analysis.laws import Law

__all__: list[str] = []  # private: analysis.fit and its _fit_* helpers import what they need

# LSE coefficients are bounded to +-40 nats around the median log y: a term
# below exp(-40) ~ 4e-18 of the loss has vanished, and hitting that bound is
# reported as a doubtful fit rather than wandering off to -inf.
_LSE_SPAN = 40.0
# Batched L-BFGS, two stages. Every start runs until its relative f decrease
# in one iteration is below _FTOL = 1e-10 (20x tighter than scipy's default
# factr, on an objective of order 1); then the _N_REFINE best distinct end
# points go on to _FTOL_FINE. On the Chinchilla data the first stage alone
# finds the optimum to 1e-14; 1e-12 for all 4,500 starts costs 1.6x the time
# for nothing.
_FTOL, _FTOL_FINE, _GTOL, _N_REFINE = 1e-10, 1e-13, 1e-9, 20
# A start whose f fell by less than 1e-6 (relative) over its last 20 iterations
# is crawling along a plateau (a term that has vanished, a flat direction):
# stop it rather than let it eat hundreds of iterations; a competitive one is
# taken further in the second stage, which has no such stop and a higher
# iteration limit. (Chinchilla: median 48 iterations per start, none near 500.)
_STALL, _STALL_WINDOW, _MAXITER, _MAXITER_FINE = 1e-6, 20, 500, 2000
# Second-stage and bootstrap candidates must be within 25% of the best f: a
# local optimum much worse than that is not a plausible alternative fit.
_COMPETITIVE = 1.25
# Bootstrap refits start at the best solution plus up to this many other
# competitive end points (a resample may prefer another basin).
_BOOT_EXTRA_STARTS = 2
# Resample refits need parameters to a small fraction of their spread, not to
# 1e-10: at 1e-8 the 90% intervals move by < 0.3% of their width (checked on
# the planted laws of tests/test_fit.py) and the bootstrap runs 2x faster.
_BOOT_FTOL, _BOOT_STALL, _BOOT_MAXITER = 1e-8, 1e-7, 500
# Rows x points per block in the vectorised objective: 2^15 values, 256 KB
# per temporary, which stays in cache. Measured on the Chinchilla grid here:
# ~2.5 s CPU at 2^15, ~4 s at 2^17, ~7 s at 2^20.
_BLOCK = 1 << 15


# ---------------------------------------------------------------------------
# 2. reparametrisation: free z (k,) <-> full fitting-space theta (p,)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Space:
    P: np.ndarray  # (k, p): theta = z @ P + t
    t: np.ndarray  # (p,)   fixed values and their shifts
    free: np.ndarray  # (k,) indices of free params in theta
    lo: np.ndarray  # (k,) bounds on z
    hi: np.ndarray

    def theta(self, z: np.ndarray) -> np.ndarray:
        return z @ self.P + self.t

    def z(self, theta: np.ndarray) -> np.ndarray:
        return (theta - self.t)[..., self.free] @ np.linalg.inv(self.P[:, self.free])


def _space(law: Law, X: np.ndarray, ly: np.ndarray, fixed_theta: Mapping[str, float]) -> _Space:
    names = law.param_names
    p = len(names)
    free = np.array([j for j, nm in enumerate(names) if nm not in fixed_theta], dtype=int)
    P = np.zeros((free.size, p))
    P[np.arange(free.size), free] = 1.0
    t = np.zeros(p)
    for nm, v in fixed_theta.items():
        t[names.index(nm)] = v
    row = {int(j): i for i, j in enumerate(free)}
    scale = np.ones(p)
    for j, prm in enumerate(law.params):
        jc = names.index(prm.centre) if prm.centre else None
        if jc is None or names[jc] in fixed_theta:
            continue  # a fixed coefficient stays exactly as given
        lx = np.log(X[:, prm.col])
        m, s = float(lx.mean()), float(lx.std()) or 1.0
        if j in row:  # theta_j = z_j / s, theta_jc = z_jc + theta_j * m
            scale[j] = s
            P[row[j], j] = 1.0 / s
            P[row[j], jc] += m / s
        else:
            t[jc] += t[j] * m
    lo, hi = np.empty(free.size), np.empty(free.size)
    med = float(np.median(ly))
    for i, j in enumerate(free):
        prm = law.params[j]
        if prm.lse:
            lo[i], hi[i] = med - _LSE_SPAN, med + _LSE_SPAN
        else:
            a, b = prm.bound_values(X)
            if prm.log:
                a, b = (np.log(a) if a > 0 else -np.inf), np.log(b)
            lo[i], hi[i] = a * scale[j], b * scale[j]
    return _Space(P=P, t=t, free=free, lo=lo, hi=hi)


# ---------------------------------------------------------------------------
# 3. objective: sum_i w_i * Huber(log pred - log y) / delta, vectorised over rows
# ---------------------------------------------------------------------------


class _Objective:
    def __init__(self, law: Law, X, ly, w, delta: float, space: _Space):
        self.law, self.ly, self.w, self.delta, self.space = law, ly, w, delta, space
        self.ctx = law.prepare(X)
        self.n = ly.size

    def block(self, z: np.ndarray, counts: np.ndarray | None):
        """f (S,), g (S, k) for z (S, k); counts (S, n) bootstrap multiplicities or None."""
        d = self.delta
        lp, vjp = self.law.fwd(self.space.theta(z), self.ctx)
        r = np.subtract(lp, self.ly, out=lp)  # (S, n) log residuals
        a = np.abs(r)
        c = np.minimum(a, d)
        # Huber/delta = c (|r| - c/2) / delta: r^2/(2 delta) inside, |r| - delta/2 outside
        a -= 0.5 * c
        a *= c
        ww = self.w / d if counts is None else counts * (self.w / d)
        f = (a @ ww) if counts is None else np.einsum("sn,sn->s", a, ww)
        np.clip(r, -d, d, out=r)  # d Huber / d r, times delta
        r *= ww
        g = vjp(r) @ self.space.P.T
        return f, g

    def __call__(self, z: np.ndarray, counts: np.ndarray | None = None):
        S = z.shape[0]
        step = max(1, _BLOCK // max(self.n, 1))
        if S <= step:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self.block(z, counts)
        f, g = np.empty(S), np.empty_like(z)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for i in range(0, S, step):
                c = None if counts is None else counts[i : i + step]
                f[i : i + step], g[i : i + step] = self.block(z[i : i + step], c)
        return f, g

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return self.law.fwd(theta[None, :], self.ctx)[0][0] - self.ly


# ---------------------------------------------------------------------------
# 4. batched projected L-BFGS
# ---------------------------------------------------------------------------


def _proj_grad(z, g, lo, hi):
    return np.abs(np.clip(z - g, lo, hi) - z).max(axis=1)


def _lbfgs_batch(
    fg, z0, lo, hi, *, ftol=_FTOL, gtol=_GTOL, stall=_STALL, maxiter=_MAXITER, m=5, max_ls=30
):
    """Minimise S independent problems at once; fg(z_rows, row_ids) -> (f, g).

    Per row: L-BFGS two-loop direction on the free variables (those not held at
    a bound by the gradient), projected backtracking Armijo line search. A row
    stops on relative decrease < ftol in one iteration, projected gradient
    < gtol, or a failed line search from steepest descent (status 0:
    converged); on relative decrease < stall over _STALL_WINDOW iterations
    (status 1: crawling along a plateau, typically a term that vanished); or at
    maxiter (status 2). Returns z (S, k), f (S,), iterations (S,), status (S,).
    Finished rows are dropped from the working arrays, so that late
    iterations over a few slow rows cost little. m = 5 pairs of memory: on
    this kinked (Huber, mostly L1) objective older pairs describe curvature
    the iterate has left; 5 ran no slower than 10 on the Chinchilla grid.
    """
    S, k = z0.shape
    z_out = np.clip(z0, lo, hi)
    f_out, g0 = fg(z_out, np.arange(S))
    finite = np.isfinite(f_out) & np.isfinite(g0).all(1)
    f_out = np.where(finite, f_out, np.inf)
    nit_out = np.zeros(S, dtype=int)
    status_out = np.full(S, 2)
    run = finite & (_proj_grad(z_out, np.where(finite[:, None], g0, 0.0), lo, hi) > gtol)
    status_out[finite & ~run] = 0
    # working arrays, active rows only: (m, Sa, k) history, ring of past f
    ids = np.flatnonzero(run)
    z, f, g = z_out[ids], f_out[ids], g0[ids]
    Sa = ids.size
    sh, yh, rho = np.zeros((m, Sa, k)), np.zeros((m, Sa, k)), np.zeros((m, Sa))
    gamma, paired = np.ones(Sa), np.zeros(Sa, dtype=bool)
    f_ring = np.full((_STALL_WINDOW, Sa), np.inf)
    for it in range(maxiter):
        if ids.size == 0:
            break
        free = ~(((z <= lo) & (g > 0)) | ((z >= hi) & (g < 0)))
        # 4a. two-loop recursion, newest pair first (rho = 0 marks a skipped pair)
        q = np.where(free, g, 0.0)
        slots = [(it - 1 - j) % m for j in range(min(it, m))]
        alphas = []
        for j in slots:
            al = rho[j] * np.einsum("sk,sk->s", sh[j], q)
            q -= al[:, None] * yh[j]
            alphas.append(al)
        d = gamma[:, None] * q
        for j, al in zip(reversed(slots), reversed(alphas), strict=True):
            be = rho[j] * np.einsum("sk,sk->s", yh[j], d)
            d += (al - be)[:, None] * sh[j]
        d = -np.where(free, d, 0.0)
        gd = np.einsum("sk,sk->s", g, d)
        sd = ~(gd < 0)  # not a descent direction: forget the history, go downhill
        if sd.any():
            d[sd] = -np.where(free[sd], g[sd], 0.0)
            rho[:, sd] = 0.0
            paired[sd] = False
            gamma[sd] = 1.0
            gd[sd] = np.einsum("sk,sk->s", g[sd], d[sd])
        # first step without curvature information: length 1 / |d| (as L-BFGS-B)
        t = np.where(paired, 1.0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1.0))
        # 4b. projected backtracking line search, all rows together
        zn, fn, gn = z.copy(), f.copy(), g.copy()
        accepted = np.zeros(ids.size, dtype=bool)
        pend = np.arange(ids.size)
        for _ in range(max_ls):
            zt = np.clip(z[pend] + t[pend, None] * d[pend], lo, hi)
            ft, gt = fg(zt, ids[pend])
            dec = np.einsum("sk,sk->s", g[pend], zt - z[pend])
            ok = np.isfinite(ft) & np.isfinite(gt).all(1) & (ft <= f[pend] + 1e-4 * dec)
            ok &= np.any(zt != z[pend], axis=1)
            acc = pend[ok]
            zn[acc], fn[acc], gn[acc] = zt[ok], ft[ok], gt[ok]
            accepted[acc] = True
            pend, ft = pend[~ok], ft[~ok]
            if pend.size == 0:
                break
            # safeguarded quadratic interpolation, halving when it is not usable
            tp, gdp = t[pend], gd[pend]
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                tq = -gdp * tp * tp / (2.0 * (ft - f[pend] - gdp * tp))
            tq = np.where(np.isfinite(tq), tq, 0.5 * tp)
            t[pend] = np.clip(tq, 0.1 * tp, 0.5 * tp)
        # 4c. curvature pair for this slot (rho = 0 where skipped)
        slot = it % m
        s_new, y_new = zn - z, gn - g
        sy = np.einsum("sk,sk->s", s_new, y_new)
        yy = np.einsum("sk,sk->s", y_new, y_new)
        good = accepted & (sy > 1e-12 * np.maximum(yy, 1e-300))
        sh[slot], yh[slot] = s_new, y_new
        rho[slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma = np.where(good, sy / np.where(good, yy, 1.0), gamma)
        paired |= good
        # 4d. convergence
        scale = np.maximum(np.maximum(np.abs(f), np.abs(fn)), 1.0)
        done = accepted & (((f - fn) <= ftol * scale) | (_proj_grad(zn, gn, lo, hi) <= gtol))
        # a failed line search after a real L-BFGS step: retry from steepest
        # descent; after a steepest-descent step: nothing more to gain
        failed = ~accepted
        done |= failed & ~paired
        retry = failed & paired
        rho[:, retry] = 0.0
        paired[retry] = False
        gamma[retry] = 1.0
        crawl = ~done & ((f_ring[it % _STALL_WINDOW] - fn) <= stall * np.maximum(np.abs(fn), 1.0))
        f_ring[it % _STALL_WINDOW] = fn
        z, f, g = zn, fn, gn
        nit_out[ids] += 1
        stop = done | crawl
        if stop.any():
            out = ids[stop]
            z_out[out], f_out[out] = z[stop], f[stop]
            status_out[out] = np.where(done[stop], 0, 1)
            keep = ~stop
            ids, z, f, g = ids[keep], z[keep], f[keep], g[keep]
            sh, yh, rho = sh[:, keep], yh[:, keep], rho[:, keep]
            gamma, paired, f_ring = gamma[keep], paired[keep], f_ring[:, keep]
    z_out[ids], f_out[ids] = z, f  # rows still running at maxiter (status 2)
    return z_out, f_out, nit_out, status_out


def _whitener(obj: _Objective, space: _Space, z: np.ndarray) -> np.ndarray | None:
    """Gauss-Newton preconditioner at the fit: L with L L^T = (J^T W J)^-1.

    J (n, k) is d log pred / dz by central differences. In u = L^-1 (z - z_fit)
    the resample objectives are about equally curved in every direction, and
    their refits take 2-4x fewer iterations (measured on the planted laws of
    tests/test_fit.py). u is unbounded, so this is used only when every bound
    is more than 4 bootstrap standard deviations (Gauss-Newton estimate) away
    (a resample beyond that, if any, is clipped back: it lies far outside the
    percentiles an interval uses);
    otherwise None: refit in z with the bounds.
    """
    k, eps = z.size, 1e-6
    Zp = z + eps * np.vstack([np.eye(k), -np.eye(k)])  # (2k, k)
    lp = obj.law.fwd(space.theta(Zp), obj.ctx)[0]  # (2k, n)
    J = ((lp[:k] - lp[k:]) / (2 * eps)).T  # (n, k)
    G = J.T @ (J * obj.w[:, None])
    if not np.isfinite(G).all():
        return None
    try:
        cov = np.linalg.inv(G + 1e-12 * np.trace(G) / k * np.eye(k))
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    sigma = math.sqrt(float(np.mean(obj.residuals(space.theta(z)) ** 2)))
    reach = 4.0 * sigma * np.sqrt(np.diag(cov)) + 1e-9
    if np.any(z - space.lo < reach) or np.any(space.hi - z < reach):
        return None
    return L


def _distinct_best(z: np.ndarray, f: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` rows, best f first, that are competitive (f within
    _COMPETITIVE of the best) and differ from each other in z."""
    order = np.argsort(f)
    if order.size == 0 or not np.isfinite(f[order[0]]):
        return []
    limit = f[order[0]] * _COMPETITIVE + 1e-12
    keep = [int(order[0])]
    for i in order[1:]:
        if len(keep) == count or not f[i] <= limit:
            break
        zk = z[keep]
        if np.all(np.max(np.abs(z[i] - zk) / (1.0 + np.abs(zk)), axis=1) > 1e-4):
            keep.append(int(i))
    return keep


def _newton_polish(obj: _Objective, space: _Space, z: np.ndarray, f: float, *, iters: int = 10):
    """A few Newton steps from the L-BFGS end point z (k,), f its objective.

    Near the optimum the Huber sum is smooth between the points' crossings of
    |r| = delta, and its gradient is exact; a Hessian by central differences of
    the gradient (2k rows, one batched call) and a step along -H^-1 g on the
    free variables (not held at a bound by the gradient; directions of zero
    curvature left alone), with a batched backtracking search of 12 step
    lengths, converge to the bottom that the L-BFGS stopping rule (relative
    decrease per iteration) approaches only to ~1e-6 in the parameters
    (Chinchilla: |g| from 7e-5 to 2e-10 in two steps). Stops when no step
    length lowers f, or the Hessian has a negative eigenvalue. Returns (z, f),
    never worse than given.
    """
    k = z.size
    ts = 0.5 ** np.arange(12)
    for _ in range(iters):
        eps = 1e-6 * (1.0 + np.abs(z))
        E = np.diag(eps)
        Zp = np.clip(np.vstack([z + E, z - E, z[None, :]]), space.lo, space.hi)
        _, G = obj(Zp)
        g = G[-1]
        H = (G[:k] - G[k : 2 * k]) / ((Zp[:k] - Zp[k : 2 * k]).diagonal())[:, None]
        H = 0.5 * (H + H.T)
        free = ~(((z <= space.lo) & (g > 0)) | ((z >= space.hi) & (g < 0)))
        if not free.any() or not np.isfinite(H).all() or not np.isfinite(g).all():
            break
        lam, V = np.linalg.eigh(H[np.ix_(free, free)])
        if lam[0] < -1e-9 * lam[-1] or not lam[-1] > 0:
            break  # not a convex bottom here: leave it to the L-BFGS result
        # a direction the data do not reach (R*_N when U_N = N) has a zero
        # eigenvalue: no step along it
        inv = np.where(lam > 1e-9 * lam[-1], 1.0 / np.where(lam > 0, lam, 1.0), 0.0)
        d = np.zeros(k)
        d[free] = -(V @ (inv * (V.T @ g[free])))
        Zt = np.clip(z + ts[:, None] * d, space.lo, space.hi)
        ft = obj(Zt)[0]
        ft = np.where(np.isfinite(ft), ft, np.inf)
        i = int(np.argmin(ft))
        if not ft[i] < f:
            break
        z, f = Zt[i], float(ft[i])
    return z, f
