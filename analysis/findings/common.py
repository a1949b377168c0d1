"""What the report's sections share: the defaults, the Analysis result, each section's Finding,
and the small number formatters their sentences use. No rendering (no blocks, HTML or Markdown).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import LawFit
from analysis.lr_trend import LRRule
from analysis.selection import series, series_points
from analysis.table import Run, _py

__all__ = [
    "Analysis",
    "BOOTSTRAP",
    "CONTINUOUS",
    "DISCONTINUOUS",
    "Finding",
    "LEVEL",
    "PARTS",
    "SECTIONS",
]

# ---- defaults ----------------------------------------------------------------
BOOTSTRAP = 200  # law resamples: a 90% percentile interval from 200 draws has 10 in each tail
LEVEL = 0.9  # interval level everywhere (the fitter's and best_lr's default too)
EXTRAPOLATE = 10.0  # "10x more data is predicted to give ..."
LR_PREDICT_AT = (2.0, 10.0)  # LR rule predictions at these multiples of the largest D
MIN_SIZES_LAW = 3  # E + A D^-alpha has 3 parameters
MIN_SIZES_HOLDOUT = 4  # fit on >= 3 smaller sizes, test on the largest
MIN_TRIALS_IMPORTANCE = 8  # fewer complete trials: importances are noise
WIDE_CI = 0.5  # exponent interval wider than 50% of its value: "add seeds / sizes"
HOLDOUT_BAD = 0.05  # hold-out error above 5% of the loss: the law extrapolates poorly
LAW = "auto"  # the per-series L(D) law: chosen by leave-largest-out error (analysis.fit)
PAYS_Z = 2.0  # a predicted gain above 2 noise SDs is one the next run could measure
# Data-constrained law for fine-tunes of one base model: N is a constant, so its
# term A/N'^alpha is a constant too and folds into E; fixing A ~ 0 and alpha = 0
# leaves E, B, beta and R*_D free (R*_N is then irrelevant and fixed at 1).
DC_FIXED = {"A": 1e-12, "alpha": 0.0, "R_N_star": 1.0}

CONTINUOUS = ("eval_loss", "token_accuracy", "answer_logprob")
DISCONTINUOUS = ("exact_match",)

SECTIONS = ("study", "data", "epochs", "lr", "pareto", "emergence", "models", "recommendations")
# what `analyse` can compute: the sections, plus Optuna importances (part of section 4, but they
# import optuna and cost a second, so `plan` leaves them out)
PARTS = (*SECTIONS, "importance")


@dataclass(frozen=True)
class Finding:
    """What one section returns: its ``numbers`` (the JSON), the plain arrays its figures are drawn
    from (``figures``), and the fitted objects it made (``loss_fits``, ``dc_fits``, ``rule``)."""

    numbers: Any
    figures: Mapping[str, Any] = field(default_factory=dict)
    loss_fits: Mapping[str, LawFit] = field(default_factory=dict)
    dc_fits: Mapping[str, LawFit] = field(default_factory=dict)
    rule: LRRule | None = None


@dataclass
class Analysis:
    """Everything the report says, as numbers (``numbers``, the JSON) and fitted objects.

    Filled once by `analyse` from what each section returns (a Finding); renderers only read it.
    ``numbers`` has one key per section (see SECTIONS) plus "meta", "selection" and "errors".
    Fitted objects, for callers that want more: ``loss_fits`` {series label: LawFit},
    ``dc_fits`` {label: LawFit}, ``rule`` (LRRule or None), ``best`` (the best_lr frame),
    ``points`` (selected_points), ``trials`` (trial_summary).
    """

    run: Run
    bootstrap: int
    seed: int
    level: float
    sections: tuple[str, ...] = PARTS
    by: tuple[str, ...] = ()
    series_cols: tuple[str, ...] = ("epochs",)
    law: str = LAW
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: pd.DataFrame | None = None
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    loss_fits: dict[str, LawFit] = field(default_factory=dict)
    dc_fits: dict[str, LawFit] = field(default_factory=dict)
    rule: LRRule | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    figdata: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return self.run.table

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.run.spec

    @property
    def run_dir(self) -> Path | None:
        return self.run.run_dir

    # series = the non-D axes: epochs, plus lora_r when the study has several ranks
    def series(self) -> list[dict[str, Any]]:
        return series(self.points, self.series_cols, fallback=self.trials)

    def series_points(self, key: Mapping[str, float]) -> pd.DataFrame:
        return series_points(self.points, key)


def _f(v: Any) -> float:
    v = _py(v)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _g(v: Any, digits: int = 3) -> str:
    """A number for a person: 3 significant digits, 'n/a' for missing."""
    v = _py(v)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(lo: Any, hi: Any) -> str:
    return f"[{_g(lo)}, {_g(hi)}]"


def _pct(v: Any) -> str:
    v = _f(v)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _measured(row: Any) -> str:
    """A ranking row's measured test loss at the target D: mean ± standard error over the seeds of
    the chosen config, or, from one run, the value saying it has no interval."""
    if row.get("measured") is None:
        return "not run"
    if row.get("measured_se") is None:
        return f"{_g(row['measured'], 4)} (one run: no interval)"
    return f"{_g(row['measured'], 4)} ± {_g(row['measured_se'], 2)} ({row['measured_runs']} seeds)"


def _d(v: Any) -> str:
    """A dataset size: an integer with thousands separators."""
    v = _f(v)
    return "n/a" if not math.isfinite(v) else f"{round(v):,}"


def _band(
    fit: LawFit, xs: np.ndarray, col: str, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = {col: xs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mid = fit.predict(frame)
        if fit.draws_.shape[0]:
            lo, hi = fit.predict_interval(frame, level=level)
        else:
            lo = hi = np.full(xs.shape, np.nan)
    return np.asarray(mid, float), np.asarray(lo, float), np.asarray(hi, float)

