"""analyse(run): select, then run each section and collect what it returns; no HTML, no Markdown.

1. validate the arguments;
2. trials: `analysis.table.trial_summary`, one row per trial;
3. selection: `analysis.selection.select`, validation picks, test reports;
4. the sections, one module each (study, data, epochs, lr, pareto, emergence, recommend): each returns
   a Finding, which is stored here; a section that raises becomes an entry in ``errors``.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Callable, Collection
from typing import Any

import pandas as pd

from analysis.findings.common import BOOTSTRAP, LEVEL, PARTS, SECTIONS, Analysis, Finding
from analysis.findings.data import data_finding
from analysis.findings.emergence import emergence_finding
from analysis.findings.epochs import epochs_finding
from analysis.findings.lr import lr_finding
from analysis.findings.models import models_finding
from analysis.findings.pareto import pareto_finding
from analysis.findings.recommend import recommend_finding
from analysis.findings.study import study_finding
from analysis.lr_edge import search_range
from analysis.selection import axes_of, select, selected_points
from analysis.table import SELECT, Run, trial_summary

__all__ = ["analyse"]

_STEPS: dict[str, Callable[[Analysis], Finding]] = {
    "study": study_finding, "data": data_finding, "epochs": epochs_finding, "lr": lr_finding, "pareto": pareto_finding,
    "emergence": emergence_finding, "models": models_finding, "recommendations": recommend_finding,
}  # fmt: skip


def _run_section(an: Analysis, name: str, fn: Callable[[Analysis], Finding]) -> None:
    """Run one section and keep what it returns; a failure becomes an entry in errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = fn(an)
        except Exception as err:  # the report must survive any one section; the error is shown
            an.numbers["errors"].append({"section": name, "error": f"{type(err).__name__}: {err}"})
            an.numbers.setdefault(name, {})["reason"] = (
                f"this section could not be computed: {type(err).__name__}: {err}"
            )
            found = None
    if found is not None:
        an.numbers[name] = found.numbers
        an.figdata.update(found.figures)
        an.loss_fits.update(found.loss_fits)
        an.dc_fits.update(found.dc_fits)
        if name == "lr":
            an.rule = found.rule
    msgs = []
    for w in caught:
        msg = str(w.message)
        if "outside the fitted range" in msg or msg in msgs:
            continue  # extrapolating is what the predictions are for; they say so
        msgs.append(msg)
    if msgs and isinstance(an.numbers.setdefault(name, {}), dict):
        an.numbers[name].setdefault("warnings", []).extend(msgs)


def _select(an: Analysis) -> Finding:
    out: dict[str, Any] = {"metric": SELECT, "by": list(an.by)}
    if an.trials.empty or SELECT not in an.table.columns:
        out["reason"] = (
            "no trials in the table" if an.trials.empty else f"the table has no {SELECT} column"
        )
        an.best = None
        an.points = selected_points(an.table, pd.DataFrame(), by=an.by)
        return Finding(numbers=out)
    try:  # the searched range tells "beyond the range" from "not bracketed" (analysis.lr_edge)
        lr_range = search_range(an.spec)
    except ValueError:
        lr_range = None
    chosen = select(an.table, metric="eval_loss", bootstrap=an.bootstrap, seed=an.seed, level=an.level,
                    lr_range=lr_range)  # fmt: skip
    an.best, an.points = chosen.best, chosen.points
    out["cells"] = int(len(an.best))
    out["cells_with_choice"] = int(an.best["trial_id_best"].notna().sum())
    out["points"] = int(len(an.points))
    return Finding(numbers=out)


def analyse(source: Run | pd.DataFrame, *, bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL,
            sections: Collection[str] = PARTS) -> Analysis:  # fmt: skip
    """Compute every number of the report (no figures); never raises on degenerate data.

    ``source``: a Run (the results table plus the spec facts the caller read, see
    `scaling.records.read_run`) or a bare results DataFrame. ``sections``: a subset of PARTS to
    compute ("plan" needs only study, data, epochs, lr).
    """
    # 1. validate
    run = source if isinstance(source, Run) else Run(table=source)
    if not isinstance(run.table, pd.DataFrame):
        raise ValueError(f"source must be a Run or a pandas DataFrame, got {type(source).__name__}")
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    unknown = set(sections) - set(PARTS)
    if unknown:
        raise ValueError(f"sections must be among {PARTS}, got {sorted(unknown)}")
    an = Analysis(run=run, bootstrap=bootstrap, seed=seed, level=level, sections=tuple(sections))
    an.numbers = {
        "schema": "scaling-report/1",
        "meta": {
            "run_dir": str(run.run_dir) if run.run_dir else None,
            "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "bootstrap": bootstrap,
            "seed": seed,
            "level": level,
            "selection": f"configs chosen on {SELECT} (validation split); laws and headline numbers use test_ metrics",
        },
        "errors": [],
    }

    # 2. trials; 3. selection
    an.trials = trial_summary(run.table)
    an.by, an.series_cols = axes_of(an.trials)
    _run_section(an, "selection", _select)

    # 4. the sections
    for name in SECTIONS:
        if name in sections:
            _run_section(an, name, _STEPS[name])
    return an
