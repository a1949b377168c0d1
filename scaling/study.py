"""Study: the Python face of a study, for notebooks and scripts.

    from scaling import Study
    study = Study.from_yaml("search_spaces/demo.yaml")
    result = study.run(max_trials=4)      # blocks until those trials are recorded
    result.results()                      # the results table (a DataFrame)
    study.best_lr()                       # best LR per cell + the LR rule (or why none)
    study.report(out="report/")           # report.html, report.md, report.json

The same library calls the CLI makes: the spec is validated as `scaling validate` does,
`run` is `scaling sweep` (resumable, one lock per run directory), and the analysis selects
as the report does. Ray: a `ray.init` the caller already made is used as it is; otherwise
`ray_address` (or RAY_ADDRESS) is joined, or a local Ray is started. Nothing prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.spec import StudySpec, load_spec, parse_spec, redact_url

__all__ = ["BestLR", "Study", "StudyResult"]


@dataclass(frozen=True)
class StudyResult:
    """What a `Study.run` did: the run directory, the trials it ran by status, and the
    Optuna storage URL (password redacted)."""

    run_dir: Path
    trials_run: int
    counts: Mapping[str, int]
    optuna_url: str
    wall_seconds: float

    def results(self) -> pd.DataFrame:
        """The run's results table: one row per evaluation."""
        from scaling.records import read_results

        return read_results(self.run_dir)


@dataclass(frozen=True)
class BestLR:
    """Best LR per cell (``cells``: lr_best with its interval lr_low..lr_high, edge kind and
    advice), the fitted LR rule (``rule``, an analysis.lr_trend.LRRule) or, when none could be
    fitted with intervals, ``rule_reason``."""

    cells: pd.DataFrame
    rule: Any
    rule_reason: str | None


class Study:
    """One study spec, and the run directory it writes (``out``, default results_dir/name)."""

    def __init__(self, spec: StudySpec | Mapping[str, Any], *, out: str | Path | None = None):
        self.spec = spec if isinstance(spec, StudySpec) else parse_spec(dict(spec), source="<Study(dict)>")
        self.run_dir = self.spec.run_dir(out).resolve()

    @classmethod
    def from_yaml(cls, path: str | Path, *, out: str | Path | None = None) -> Study:
        """A study from a spec file (errors name the file, field, rule and value)."""
        return cls(load_spec(path), out=out)

    def run(self, *, max_trials: int | None = None, ray_address: str | None = None) -> StudyResult:
        """Run or resume the study (at most ``max_trials`` more trials); returns when done. The
        data's warnings (duplicates across splits, examples train.max_length truncates) are
        issued first, as UserWarnings."""
        import warnings

        from scaling.sweep import run_sweep
        from scaling.task_check import task_warnings

        for w in task_warnings(self.spec):
            warnings.warn(w, UserWarning, stacklevel=2)

        res = run_sweep(self.spec, out=self.run_dir, max_trials=max_trials, ray_address=ray_address)
        return StudyResult(run_dir=res.run_dir, trials_run=res.trials_run, counts=dict(res.counts),
                           optuna_url=redact_url(res.optuna_url),
                           wall_seconds=res.wall_seconds)  # fmt: skip

    def results(self) -> pd.DataFrame:
        """The results table recorded so far."""
        from scaling.records import read_results

        return read_results(self.run_dir)

    def best_lr(self, *, metric: str = "eval_loss") -> BestLR:
        """Best LR per cell, chosen on validation in the metric's direction, and the LR rule."""
        from analysis.lr_edge import search_range
        from analysis.lr_trend import lr_rule
        from analysis.selection import select

        sel = select(self.results(), metric=metric, bootstrap=200,
                     lr_range=search_range(self.spec))  # fmt: skip
        try:
            return BestLR(cells=sel.best, rule=lr_rule(sel.best), rule_reason=None)
        except ValueError as err:  # too few bracketed cells for a rule with intervals
            return BestLR(cells=sel.best, rule=None, rule_reason=str(err))

    def report(self, *, out: str | Path | None = None, bootstrap: int = 200, seed: int = 0) -> Any:
        """Write report.html, report.md (+ PNGs) and report.json; returns their paths."""
        from analysis.report import write_report
        from scaling.records import read_run

        return write_report(read_run(self.run_dir), out=out, bootstrap=bootstrap, seed=seed)
