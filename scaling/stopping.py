"""Early stopping inside a pack: the cell's rule, decided in the worker.

A pack is one Ray trial, so Ray's schedulers can only stop all of its adapters at
once. Packed trials are stopped here instead, one adapter at a time, by the rule the
spec names, applied per cell exactly where ``sweep._PerCellScheduler`` applies Ray's:

* ``median``: after ``grace_epochs``, stop a trial whose validation loss at epoch e is
  worse than the median of the other trials' losses at epoch e (at least 2 others);
  the median stopping rule of Google Vizier (Golovin et al., KDD 2017).
* ``asha``: rungs at epochs ceil(grace * eta^k) below the cell's epochs; at a rung, stop
  a trial whose loss is worse than the (100/eta)-th percentile of the other trials'
  losses recorded at that rung, i.e. keep about the best 1/eta (successive halving,
  Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"). As in Ray's
  ASHA, a rung with nobody else recorded yet lets the trial through.

"The other trials" are the cell's earlier trials (the searcher hands their per-epoch
validation losses, read from the Optuna storage, to the pack when it starts, so the
rule also survives a driver restart) plus the pack's own members. Members of one cell
end an epoch at the same step, so a pack records all of them first and then decides
(packed.Pack calls every report before any should_stop): nobody is judged only
against the members that happened to come first. Only LR-search trials are judged;
re-runs of the best LR with new seeds (phase "repeat") always finish.

Pure Python; no Ray, no torch: tests/test_stopping.py holds the rules to known answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["RungTable", "asha_rungs"]


def asha_rungs(max_epochs: int, grace_epochs: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA judges, below max_epochs: ceil(grace * eta^k), k = 0, 1, ..."""
    if grace_epochs < 1 or reduction_factor <= 1:
        raise ValueError(f"grace_epochs must be >= 1 and reduction_factor > 1, got {grace_epochs}, {reduction_factor}")
    rungs: list[int] = []
    k = 0
    while True:
        e = math.ceil(grace_epochs * reduction_factor**k - 1e-9)
        if e >= max_epochs:
            return rungs
        if not rungs or e > rungs[-1]:
            rungs.append(e)
        k += 1


class RungTable:
    """The validation losses of a cell's trials by epoch, and the stopping rule over them.

    history: {epoch: [loss of each earlier trial at that epoch]} (from the storage).
    record(key, epoch, loss) adds one of this pack's results; should_stop(key, epoch, loss)
    judges it against everyone else recorded at that epoch (history included)."""

    def __init__(self, method: str, *, max_epochs: int, grace_epochs: int = 1,
                 reduction_factor: float = 3.0, history: Mapping[int, Iterable[float]] | None = None):  # fmt: skip
        if method not in ("asha", "median"):
            raise ValueError(f"method must be 'asha' or 'median', got {method!r}")
        self.method = method
        self.max_epochs = int(max_epochs)
        self.grace = int(grace_epochs)
        self.eta = float(reduction_factor)
        self.rungs = set(asha_rungs(self.max_epochs, self.grace, self.eta)) if method == "asha" else set()
        self._history = {int(e): [float(v) for v in vs if math.isfinite(v)] for e, vs in (history or {}).items()}
        self._pack: dict[int, dict[object, float]] = {}  # epoch -> {member key: loss}

    def record(self, key: object, epoch: int, loss: float) -> None:
        if math.isfinite(loss):
            self._pack.setdefault(int(epoch), {})[key] = float(loss)

    def others(self, key: object, epoch: int) -> list[float]:
        mine = self._pack.get(int(epoch), {})
        return self._history.get(int(epoch), []) + [v for k, v in mine.items() if k != key]

    def should_stop(self, key: object, epoch: int, loss: float) -> bool:
        epoch = int(epoch)
        if epoch >= self.max_epochs or not math.isfinite(loss):
            return False  # finished anyway; a failed evaluation is the trainer's business
        others = self.others(key, epoch)
        if self.method == "median":
            return epoch >= self.grace and len(others) >= 2 and loss > float(np.median(others))
        if epoch not in self.rungs or not others:
            return False
        return loss > float(np.percentile(others, 100.0 / self.eta))
