"""An Optuna sampler that brackets the learning-rate optimum and learns across cells.

`BracketSampler` searches one float parameter (the learning rate, in log space)
of a study that is one *cell* of a scaling study, and reads the cell's sibling
studies in the same storage to place its first trial.  It is deterministic: the
LR it proposes is a pure function of the storage's trials (no random state), so
two runs that see the same trials propose the same LRs, bit for bit.

How a cell is searched (u = ln lr; every step below reads only the trials)
--------------------------------------------------------------------------
1. Prior.  The *sibling cells* are the other studies of the same group (see
   "Study attributes").  A sibling whose best trial is bracketed gives one
   point (its axes, its lr*).  With >= terms + 2 such points, a log-linear rule
   ``u* = c + sum_k p_k ln(axis_k)`` is fitted by OLS over the axes that vary
   (axes are dropped from the end of the list until the cells suffice; an
   intercept alone needs 3 cells).  Its prediction is the cell's centre u0 and
   the half-width of its 80% prediction interval is the step s (clipped to
   [MIN_STEP, W/2], W the range's width).  Without a rule: u0 is the range's
   log-midpoint and s = W/2, so three trials are low edge, middle, high edge.
2. Bracket.  Trial 1 is at u0.  While the best complete trial lacks a tried LR
   on a side (and is not at the range's edge on that side), the next trial
   steps out on that side: by s when the best has no neighbour at all (downward
   first: lower LRs do not diverge), else by GROW x the distance to its
   neighbour (a bracket that keeps missing grows geometrically).  A FAIL
   (diverged) above the best bounds it from above, as does any PRUNED trial
   (the early stopper judged it worse); a trial that failed with no complete
   trial yet sends the search below it.
3. Refine.  Once bracketed (or at a range edge), the estimate u* is the
   vertex of a least-squares parabola over the best and up to WINDOW complete
   trials on each side, clipped to the bracket.  The next LR is u* itself,
   then u* -+ REFINE_STEP (the side with less support first), then 2 steps
   out; each only if no tried LR lies within half a step of it; else the
   middle of the widest gap inside the bracket.  Steps stay >= x2: closer LRs
   differ by less than seed noise and the fit learns little from them.
4. Packs and parallel asks.  The trials asked before the earlier ones are told
   (RUNNING, with their LR set) are *pending*.  The sampler plans
   ``max(pack_size, pending + 1)`` LRs from the finished trials and returns the
   first planned LR no pending trial already holds.  A plan of n > 1 LRs is a
   log-spaced set, nearest the estimate first: for a fresh cell, n evenly
   spaced LRs over u0 +- PACK_SPREAD x s (the whole range without a rule);
   when not bracketed, n steps out on the missing side(s); when bracketed, n
   LRs around u*, (bracket / (n + 1)) or REFINE_STEP / 2 apart, whichever is
   wider, inside the bracket when they fit.  So a pack of K is a bracket around
   the prediction and the next pack refines it.

Study attributes (the sweep sets them; `cell_attrs` builds them)
----------------------------------------------------------------
``study.user_attrs["group"]``: the name shared by all cells of one scaling study
(default when absent: the study name up to its last "/", as the sweep names
cells ``<study>/<cell key>``).  ``study.user_attrs["axes"]``: {axis: positive
number}, e.g. {"dataset_size": 1200, "epochs": 2, "lora_r": 8}; when absent,
the plain user attrs named in `AXES` are read (what scaling/sweep/searcher.py stores
today).  Only siblings with the same direction are used.

Order of cells
--------------
Transfer helps the cells whose first trial comes after some siblings are
bracketed.  A driver that asks every cell's first trial before any cell's
second (least work first) starts every cell cold: each cell still brackets in
3 trials (low edge, middle, high edge), but nothing is learnt across cells.
Finishing a few cells' first 3 trials before opening the next cells lets the
rest start at the rule's prediction with a smaller step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from scipy.special import stdtrit  # Student t quantile (scipy.stats costs ~0.7 s to import)

__all__ = [
    "AXES",
    "AXES_ATTR",
    "GROUP_ATTR",
    "BracketSampler",
    "CellLR",
    "cell_attrs",
    "summarise_cell",
    "summarise_trials",
]

# ---- conventions and defaults ------------------------------------------------
GROUP_ATTR = "group"  # study user attr: the scaling study a cell belongs to
AXES_ATTR = "axes"  # study user attr: {axis name: value} of the cell
AXES = ("dataset_size", "epochs", "lora_r")  # read as plain user attrs when "axes" is absent
PARAM = "learning_rate"  # the one parameter this sampler searches
GROW = 2.0  # an open side steps out 2x further each time: a far optimum is found in log time
MIN_STEP = math.log(2.0)  # a x2 LR step: smaller ones drown in seed noise (bench: x1.5 misses 1.3x)
PACK_SPREAD = 1.5  # a fresh pack spans u0 +- 1.5 s: about the 3-trial bracket's reach (-2s, +s)
LEVEL = 0.8  # prediction interval used as the step: ~85% of normal errors fall in (-2s, +s)
PACK_REFINE = 0.5  # a refining pack's LRs are >= REFINE_STEP / 2 apart: K span a wide window
REFINE_STEP = math.log(2.0)  # refinement spacing: x2 keeps the curvature above noise
WINDOW = 2  # trials each side of the best in the final fit: a parabola in ln LR only locally


def cell_attrs(*, group: str, axes: Mapping[str, float]) -> dict[str, Any]:
    """The study user attrs a cell needs for transfer: ``{"group": ..., "axes": {...}}``."""
    bad = {k: v for k, v in axes.items() if not (isinstance(v, int | float) and v > 0)}
    if bad:
        raise ValueError(f"axes must be positive numbers, got {bad}")
    return {GROUP_ATTR: str(group), AXES_ATTR: {str(k): float(v) for k, v in axes.items()}}


# ---- one cell's trials, summarised ------------------------------------------------


@dataclass(frozen=True)
class CellLR:
    """What a cell's trials say about its LR optimum (all positions in u = ln lr).

    ``u``/``w``: complete trials' LRs and values as losses (sign-flipped for
    maximise), sorted by u; ``bounds``: LRs that bound the best without a value
    (FAILed above the best, PRUNED anywhere); ``lo``/``hi``: the range.
    ``best``: u of the best complete trial (None if none); ``left``/``right``:
    nearest tried LR below/above it (None if none); ``bracketed``: both exist;
    ``edge``: "low"/"high" when the best sits at the range's edge on an open
    side; ``u_star``: the estimate (parabola vertex through the best three, else
    the best); ``failed``: u of FAILed trials.
    """

    lo: float
    hi: float
    u: np.ndarray = field(repr=False)
    w: np.ndarray = field(repr=False)
    bounds: tuple[float, ...] = ()
    failed: tuple[float, ...] = ()
    best: float | None = None
    left: float | None = None
    right: float | None = None
    bracketed: bool = False
    edge: str = ""
    u_star: float | None = None

    @property
    def lr(self) -> float | None:
        """The estimated optimal LR (None without a complete trial)."""
        return None if self.u_star is None else math.exp(self.u_star)

    @property
    def done(self) -> bool:
        """Bracketed, or the best sits at the range's edge where no bracket is possible."""
        if self.best is None:
            return False
        low_ok = self.left is not None or self.edge in ("low", "both")
        high_ok = self.right is not None or self.edge in ("high", "both")
        return low_ok and high_ok

    def value_at(self, u: float) -> float | None:
        """The (loss-signed) value of the complete trial at u, if any."""
        hit = np.flatnonzero(np.abs(self.u - u) < 1e-12)
        return float(self.w[hit].min()) if hit.size else None


def _summarise(
    trials: Sequence[FrozenTrial], *, lo: float, hi: float, sign: float, param: str
) -> CellLR:
    """Summarise finished trials (COMPLETE / FAIL / PRUNED with `param` set)."""
    tol = 1e-9 * max(1.0, hi - lo)
    done = [
        (math.log(t.params[param]), sign * float(t.value))
        for t in trials
        if t.state == TrialState.COMPLETE
        and param in t.params
        and t.value is not None
        and math.isfinite(t.value)
    ]
    failed = sorted(
        math.log(t.params[param])
        for t in trials
        if t.state == TrialState.FAIL and param in t.params
    )
    pruned = sorted(
        math.log(t.params[param])
        for t in trials
        if t.state == TrialState.PRUNED and param in t.params
    )
    done.sort()
    u = np.array([p[0] for p in done], dtype=float)
    w = np.array([p[1] for p in done], dtype=float)
    if not done:
        return CellLR(lo=lo, hi=hi, u=u, w=w, bounds=tuple(pruned), failed=tuple(failed))
    ib = int(np.argmin(w))  # first best on ties: deterministic
    ub = float(u[ib])
    bounds = sorted({*pruned, *(f for f in failed if f > ub + tol)})
    tried = np.array(sorted({*u.tolist(), *bounds}), dtype=float)
    below, above = tried[tried < ub - tol], tried[tried > ub + tol]
    left = float(below.max()) if below.size else None
    right = float(above.min()) if above.size else None
    at_lo, at_hi = ub <= lo + 1e-6 * max(1.0, hi - lo), ub >= hi - 1e-6 * max(1.0, hi - lo)
    edge = (
        "both"
        if (at_lo and at_hi)
        else "low"
        if (at_lo and left is None)
        else "high"
        if (at_hi and right is None)
        else ""
    )
    u_star = ub
    if left is not None and right is not None:
        u_star = _local_vertex(u, w, ib=ib, left=left, right=right)
    return CellLR(lo=lo, hi=hi, u=u, w=w, bounds=tuple(bounds), failed=tuple(failed), best=ub, left=left,
                  right=right, bracketed=left is not None and right is not None, edge=edge, u_star=u_star)  # fmt: skip


def _local_vertex(u: np.ndarray, w: np.ndarray, *, ib: int, left: float, right: float) -> float:
    """Least-squares parabola over the best and up to WINDOW complete trials each side.

    Its vertex, clipped to the bracket (left, right), when it opens upward;
    else the best trial's u.  More trials than three average the noise out.
    """
    ub = float(u[ib])
    distinct = np.unique(u)
    k = int(np.searchsorted(distinct, ub))
    sel = distinct[max(0, k - WINDOW) : k + WINDOW + 1]
    m = (u >= sel[0]) & (u <= sel[-1])
    if np.unique(u[m]).size < 3:
        return ub
    du = u[m] - ub  # centred for conditioning
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(du.size), du, du**2]), w[m], rcond=None)
    if not coef[2] > 0:
        return ub
    return float(np.clip(ub - coef[1] / (2.0 * coef[2]), left, right))


def _range_of(trials: Sequence[FrozenTrial], param: str) -> tuple[float, float] | None:
    for t in trials:
        d = t.distributions.get(param)
        if isinstance(d, FloatDistribution) and d.low > 0:
            return math.log(d.low), math.log(d.high)
    return None


def summarise_trials(
    trials: Sequence[FrozenTrial], *, lo: float, hi: float, minimize: bool = True, param: str = PARAM
) -> CellLR:
    """`CellLR` of finished trials searched over the LR range [lo, hi] (in LR units, not log)."""
    if not 0 < lo < hi:
        raise ValueError(f"the LR range must satisfy 0 < lo < hi, got lo={lo!r} hi={hi!r}")
    return _summarise(trials, lo=math.log(lo), hi=math.log(hi), sign=1.0 if minimize else -1.0, param=param)


def wants_extra(search: Sequence[FrozenTrial], *, trials_per_cell: int, extra_trials: int, lo: float,
                hi: float) -> bool:  # fmt: skip
    """Whether a cell whose finished LR-search trials are ``search`` takes one more LR trial
    (sampler.extra_trials): its planned ones are done, its best is not bracketed (nor at the
    range's edge on its open side), and the extras are not used up. The searcher and
    `scaling status` both ask this."""
    if not trials_per_cell <= len(search) < trials_per_cell + extra_trials:
        return False
    return not summarise_trials(search, lo=lo, hi=hi).done


def summarise_cell(study: Study, *, param: str = PARAM) -> CellLR:
    """`CellLR` of a study (its finished trials), e.g. to read its lr* and whether it is bracketed."""
    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    )
    rng = _range_of(trials, param)
    if rng is None:
        raise ValueError(
            f"study {study.study_name!r} has no finished trial with a log-able {param!r}"
        )
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    return _summarise(trials, lo=rng[0], hi=rng[1], sign=sign, param=param)


# ---- the prior from sibling cells ---------------------------------------------------


def _group_and_axes(name: str, attrs: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    group = attrs.get(GROUP_ATTR)
    if group is None and "/" in name:
        group = name.rsplit("/", 1)[0]
    raw = attrs.get(AXES_ATTR)
    if not isinstance(raw, Mapping):
        raw = {k: attrs[k] for k in AXES if k in attrs}
    axes = {}
    for k, v in raw.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            axes[str(k)] = float(v)
    return (None if group is None else str(group)), axes


@dataclass(frozen=True)
class _Prior:
    u0: float | None  # predicted ln lr*, None without a rule
    half: float | None  # half-width of the LEVEL prediction interval (ln units)
    terms: tuple[str, ...] = ()
    n_cells: int = 0


def _fit_prior(rows: list[tuple[dict[str, float], float]], target: dict[str, float]) -> _Prior:
    """OLS of u* on ln(axes) over the usable siblings; needs n >= terms + 2."""
    n = len(rows)
    names = [k for k in AXES if k in target] + sorted(k for k in target if k not in AXES)
    names = [k for k in names if all(k in r for r, _ in rows) and len({r[k] for r, _ in rows}) >= 2]
    while names and n < len(names) + 1 + 2:
        names.pop()
    if n < 3:
        return _Prior(None, None, n_cells=n)
    x = np.array([[1.0, *(math.log(r[k]) for k in names)] for r, _ in rows])
    y = np.array([u for _, u in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = n - x.shape[1]
    resid = y - x @ coef
    s2 = float(resid @ resid) / dof
    row = np.array([1.0, *(math.log(target[k]) for k in names)])
    var = s2 * (1.0 + float(row @ np.linalg.pinv(x.T @ x) @ row))
    half = float(stdtrit(dof, 0.5 + LEVEL / 2.0)) * math.sqrt(max(var, 0.0))
    return _Prior(float(row @ coef), half, terms=("c", *names), n_cells=n)


# ---- the sampler ------------------------------------------------------------------------


class BracketSampler(BaseSampler):
    """Brackets a cell's LR optimum in log space, then refines it; transfers across cells.

    Parameters (keyword-only)
    -------------------------
    pack_size: how many LRs are asked at once before any is told [1]; a pack
        of K gets a log-spaced bracket of K LRs (see the module docstring).
    param: the parameter searched ["learning_rate"]; it must be a
        FloatDistribution with low > 0 (searched in log space either way).
    transfer: read sibling cells for the first trial's LR [True].
    seed: for parameters other than `param` only (a RandomSampler) [0].
    """

    def __init__(
        self, *, pack_size: int = 1, param: str = PARAM, transfer: bool = True, seed: int = 0
    ) -> None:
        if not (isinstance(pack_size, int) and pack_size >= 1):
            raise ValueError(f"pack_size must be an int >= 1, got {pack_size!r}")
        self.pack_size = pack_size
        self.param = param
        self.transfer = transfer
        self._other = RandomSampler(seed=seed)

    # -- Optuna's protocol: everything is independent sampling of one parameter --
    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name != self.param:
            return self._other.sample_independent(study, trial, param_name, param_distribution)
        d = param_distribution
        if not (isinstance(d, FloatDistribution) and d.low > 0 and d.step is None):
            raise ValueError(
                f"BracketSampler searches {self.param!r} in log space and needs a FloatDistribution with "
                f"low > 0 and no step, got {d!r}"
            )
        self._raise_error_if_multi_objective(study)
        u = self.next_u(study, exclude=trial.number, lo=math.log(d.low), hi=math.log(d.high))
        return float(min(max(math.exp(u), d.low), d.high))

    # -- the plan ----------------------------------------------------------------
    def prior(self, study: Study, *, lo: float, hi: float) -> _Prior:
        """The rule's prediction for this cell from its bracketed siblings (u0=None without one)."""
        if not self.transfer:
            return _Prior(None, None)
        storage = study._storage
        me = storage.get_study_id_from_name(study.study_name)
        group, axes = _group_and_axes(study.study_name, storage.get_study_user_attrs(me))
        if group is None or not axes:
            return _Prior(None, None)
        rows: list[tuple[dict[str, float], float]] = []
        for fs in sorted(storage.get_all_studies(), key=lambda s: s._study_id):
            if fs._study_id == me or len(fs.directions) != 1 or fs.directions[0] != study.direction:
                continue
            g, ax = _group_and_axes(fs.study_name, fs.user_attrs)
            if g != group or not ax:
                continue
            trials = storage.get_all_trials(fs._study_id, deepcopy=False,
                                            states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))  # fmt: skip
            rng = _range_of(trials, self.param)
            if rng is None:
                continue
            sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
            c = _summarise(trials, lo=rng[0], hi=rng[1], sign=sign, param=self.param)
            if c.bracketed and c.u_star is not None:
                rows.append((ax, c.u_star))
        return _fit_prior(rows, axes)

    def next_u(self, study: Study, *, exclude: int | None, lo: float, hi: float) -> float:
        """The next ln LR for `study` given its trials (the trial numbered `exclude` is the one asking)."""
        all_trials = study.get_trials(deepcopy=False)
        finished = [t for t in all_trials if t.state.is_finished()]
        pending = sorted(
            math.log(t.params[self.param])
            for t in all_trials
            if t.number != exclude
            and t.state in (TrialState.RUNNING, TrialState.WAITING)
            and self.param in t.params
        )
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        cell = _summarise(finished, lo=lo, hi=hi, sign=sign, param=self.param)
        n = max(self.pack_size, len(pending) + 1)
        plan = self._plan(study, cell, n=n)
        return _first_free(plan, pending, cell=cell)

    def _plan(self, study: Study, cell: CellLR, *, n: int) -> list[float]:
        lo, hi = cell.lo, cell.hi
        width = hi - lo
        if width <= 0:
            return [lo]
        if cell.best is None:
            if cell.failed:  # every trial so far diverged (or died): go below the lowest
                step = max(MIN_STEP, width / 4.0)
                start = min(cell.failed) - step
                return _clip_steps(
                    [start - step * j for j in range(n)], lo, hi, toward=lo, origin=min(cell.failed)
                )
            prior = self.prior(study, lo=lo, hi=hi)
            if prior.u0 is None:
                u0, step = 0.5 * (lo + hi), width / 2.0
            else:
                u0 = min(max(prior.u0, lo), hi)
                step = min(max(prior.half or 0.0, MIN_STEP), width / 2.0)
            if n == 1:
                return [u0]
            half = min(PACK_SPREAD * step, width / 2.0)
            a = min(max(u0 - half, lo), hi - 2.0 * half)
            pts = np.linspace(a, a + 2.0 * half, n)
            return sorted(pts.tolist(), key=lambda p: (abs(p - u0), p))
        ub = cell.best
        if not cell.done:
            step = self._step(study, cell)
            need_low = cell.left is None and cell.edge not in ("low", "both")
            need_high = cell.right is None and cell.edge not in ("high", "both")
            if need_low and need_high:  # one point: out on both sides, downward first
                out: list[float] = []
                for j in range(1, n + 1):
                    out += [ub - step * j, ub + step * j]
                out = [min(max(p, lo), hi) for p in out]
                return list(dict.fromkeys(p for p in out if abs(p - ub) > 1e-12))[:n] or [
                    0.5 * (lo + hi)
                ]
            other = cell.right if need_low else cell.left
            d = max(step, GROW * abs(ub - other)) if other is not None else step
            sgn = -1.0 if need_low else 1.0
            edge = lo if need_low else hi
            return _clip_steps(
                [ub + sgn * d * j for j in range(1, n + 1)], lo, hi, toward=edge, origin=ub
            )
        # refine inside the bracket (or between the range edge and the best's neighbour)
        a = cell.left if cell.left is not None else ub
        b = cell.right if cell.right is not None else ub
        if n > 1:  # n LRs around the estimate, inside the bracket when they fit in it
            v = float(cell.u_star if cell.u_star is not None else ub)
            gap = max((b - a) / (n + 1), PACK_REFINE * REFINE_STEP)
            span = gap * (n - 1)
            in_lo, in_hi = (a, b) if span < b - a else (lo, hi)
            start = min(max(v - span / 2.0, in_lo), max(in_lo, in_hi - span))
            pts = [min(start + gap * j, hi) for j in range(n)]
            return sorted(pts, key=lambda p: (abs(p - v), p))
        return [self._refine_one(cell, a, b)]

    def _step(self, study: Study, cell: CellLR) -> float:
        """The cell's bracketing step: the prior's interval half-width, else half the range."""
        width = cell.hi - cell.lo
        prior = self.prior(study, lo=cell.lo, hi=cell.hi)
        if prior.u0 is None:
            return width / 2.0
        return min(max(prior.half or 0.0, MIN_STEP), width / 2.0)

    @staticmethod
    def _refine_one(cell: CellLR, a: float, b: float) -> float:
        """One refinement LR inside [a, b]: the estimate, then its +-REFINE_STEP neighbours."""
        v = float(cell.u_star if cell.u_star is not None else cell.best)  # type: ignore[arg-type]
        tried = np.array(sorted({*cell.u.tolist(), *cell.bounds}))
        h = REFINE_STEP

        def room(t: float) -> float:
            return float(np.min(np.abs(tried - min(max(t, a), b))))

        # the vertex first; then the side of it with less support; then one step further out
        sides = sorted((v - h, v + h), key=lambda t: (-room(t), t))
        for target in (v, *sides, v - 2 * h, v + 2 * h):
            if room(target) >= h / 2:
                return min(max(target, a), b)
        # all of them tried: split the widest gap between tried LRs inside the bracket
        pts = np.unique(np.clip(np.concatenate([[a, b], tried]), a, b))
        i = int(np.argmax(np.diff(pts))) if pts.size > 1 else 0
        return float(0.5 * (pts[i] + pts[min(i + 1, pts.size - 1)]))


def _clip_steps(
    pts: list[float], lo: float, hi: float, *, toward: float, origin: float
) -> list[float]:
    """Steps out from `origin`; those past the range edge become evenly spaced up to the edge."""
    inside = [p for p in pts if lo <= p <= hi]
    missing = len(pts) - len(inside)
    if missing:
        last = inside[-1] if inside else origin
        inside += [last + (toward - last) * j / missing for j in range(1, missing + 1)]
    return list(dict.fromkeys(inside))


def _first_free(plan: list[float], pending: list[float], *, cell: CellLR) -> float:
    """The first planned LR at least half a plan step from every pending one.

    A pack's members come from one plan, so each pending LR sits exactly on a
    planned one and the next member is the next planned LR.  Pending LRs from
    another plan (more asks than pack_size, or asks across a tell) get the
    planned LR farthest from all of them; with none left, the middle of the
    widest gap between the tried and pending LRs.
    """
    if not pending:
        return plan[0]
    gaps = np.diff(np.sort(np.array(plan))) if len(plan) > 1 else np.array([cell.hi - cell.lo])
    tol = 0.5 * float(gaps.min()) if gaps.size and gaps.min() > 0 else 1e-9
    pend = np.array(pending)
    room = [float(np.min(np.abs(pend - p))) for p in plan]
    for p, r in zip(plan, room, strict=True):
        if r >= tol:
            return p
    i = int(np.argmax(room))  # first of the farthest on ties
    if room[i] > 1e-9:
        return plan[i]
    pts = np.unique(
        np.concatenate([[cell.lo, cell.hi], cell.u, pend, np.array(cell.bounds, dtype=float)])
    )
    j = int(np.argmax(np.diff(pts)))
    return float(0.5 * (pts[j] + pts[j + 1]))
