"""`scaling status RUN_DIR`: where a study stands, safe while its sweep runs.

Read-only: it reads the run's spec.yaml, its Optuna storage (opened without creating tables;
an SQLite file read-only, `mode=ro`) and its results table, never the driver's memory; it
takes no RunLock (that is the sweep's) and writes nothing.

  - cells done (finished trials >= planned, none running) / running (a RUNNING trial) / waiting;
    sampler.mode optimize: a cell is done once one of its trials finished (the budget, not a count
    per cell, decides how many), and the budget spent is shown
  - trials ok / failed / pruned (the table: a trial is counted once its rows are recorded)
  - the best validation loss per cell so far (ok trials, final epoch, as the searcher tells Optuna)
  - the running trials with their current epoch (the Optuna intermediate values the searcher
    records per epoch)
  - a rough ETA: the median wall-clock time of finished trials x the trials left, / the number
    running (a packed trial's time is its pack's: its members ran at once)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analysis.redact import scrub
from scaling.spec import SpecError, StudySpec, redact_url

__all__ = ["run_status", "StatusError"]


class StatusError(ValueError):
    """The run directory cannot be read; the message names the file and what is wrong."""


def _readonly(url: str) -> str:
    """An SQLite URL opened read-only (sqlite3's URI mode=ro): a status can never write."""
    if not url.startswith("sqlite:///"):
        return url
    path = url.removeprefix("sqlite:///")
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def _open(url: str):
    import optuna

    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {
        "pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}  # fmt: skip
    try:
        return optuna.storages.RDBStorage(_readonly(url), engine_kwargs=kwargs, skip_table_creation=True,
                                          skip_compatibility_check=True)  # fmt: skip
    except Exception as err:
        detail = scrub((str(err).strip().splitlines() or [""])[0], url)
        raise StatusError(f"storage.optuna: cannot open Optuna storage {redact_url(url)!r} read-only: "
                          f"{type(err).__name__}: {detail}") from None


def _spec(run_dir: Path) -> StudySpec:
    from scaling.run_record import _spec_yaml, as_last_swept
    from scaling.spec import parse_spec

    path = run_dir / "spec.yaml"
    if not run_dir.is_dir():
        raise StatusError(f"{run_dir}: must be a run directory (got {'a file' if run_dir.exists() else 'nothing'})")
    if not path.exists():
        raise StatusError(f"{path}: file does not exist: {run_dir} holds no study yet")
    try:
        study = as_last_swept(_spec_yaml(path))  # the trial budget its last sweep ran with
        return parse_spec(study, source=str(path))
    except SpecError as err:
        raise StatusError(str(err)) from None
    except Exception as err:  # RecordsError: a damaged copy
        raise StatusError(str(err)) from None


def _url(spec: StudySpec, run_dir: Path, optuna_url: str | None) -> str | None:
    """The storage URL, or None when the run's SQLite storage does not exist yet."""
    if optuna_url:
        return optuna_url
    if not spec.storage.optuna:
        db = (run_dir / "optuna.db").resolve()
        return f"sqlite:///{db}" if db.exists() else None
    if "***" in spec.storage.optuna:
        raise StatusError(f"{run_dir / 'spec.yaml'}: storage.optuna: holds a redacted password "
                          f"({spec.storage.optuna!r}); pass the storage URL with --optuna (or ${{VAR}})")  # fmt: skip
    try:
        return spec.optuna_url(run_dir)
    except SpecError as err:
        raise StatusError(str(err)) from None


def _finite(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def run_status(run_dir: str | Path, *, optuna_url: str | None = None) -> dict[str, Any]:
    """Where the study in ``run_dir`` stands, as plain data (what `scaling status --json` prints)."""
    import optuna

    from analysis.table import SELECT_METRIC, trial_summary
    from scaling.lr_sampler import wants_extra
    from scaling.records import PENDING_FILE, read_pending, read_results
    from scaling.records_io import RecordsError
    from scaling.sweep.identity import cell_study_name

    run_dir = Path(run_dir)
    spec = _spec(run_dir)
    url = _url(spec, run_dir, optuna_url)
    from analysis.table import RESULTS_FILE
    from scaling.records_io import PARTS_DIR

    table = None
    if (run_dir / RESULTS_FILE).exists() or (run_dir / PARTS_DIR).is_dir():  # else no trial recorded yet
        try:
            table = read_results(run_dir)
        except RecordsError as err:
            raise StatusError(str(err)) from None
    try:  # rows a stopped sweep could not append: the next sweep appends them first (records.open_table)
        spooled = len(read_pending(run_dir))
    except RecordsError as err:
        raise StatusError(str(err)) from None
    summary = trial_summary(table, value=SELECT_METRIC) if table is not None and len(table) else None
    storage = _open(url) if url else None
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.FAIL)  # fmt: skip
    base_planned = spec.trials_per_cell + spec.seeds.repeat_best
    cells: list[dict[str, Any]] = []
    running: list[dict[str, Any]] = []
    optimize = spec.sampler.mode == "optimize"
    shared: list = []  # sampler.mode optimize: the one study's trials, split by cell below
    if optimize and storage is not None:
        from scaling.sweep.identity import optimize_study_name

        try:
            shared = [t for t in storage.get_all_trials(storage.get_study_id_from_name(optimize_study_name(spec)),
                                                        deepcopy=False) if not t.user_attrs.get("infeasible")]  # fmt: skip
        except KeyError:  # no study yet
            shared = []
        planned = None  # the budget decides, not a count per cell
    for cell in spec.cells():
        name = cell_study_name(spec, cell)
        trials = []
        if optimize:
            from scaling.sweep.identity import optimize_study_name

            name = optimize_study_name(spec)
            trials = [t for t in shared if (t.params.get("dataset_size"), t.params.get("epochs"),
                                            t.params.get("lora_r", spec.lora.r)) == (cell.dataset_size, cell.epochs, cell.lora_r)]  # fmt: skip
        elif storage is not None:
            try:
                sid = storage.get_study_id_from_name(name)
                trials = storage.get_all_trials(sid, deepcopy=False)
            except KeyError:  # no study yet: the cell has not started
                trials = []
        live = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        finished = sum(t.state in finished_states for t in trials)
        # a cell whose LR trials did not bracket its best takes extra ones (sampler.extra_trials),
        # as the searcher decides: those it took, and the one it still wants, are planned too
        search = [t for t in trials if t.state in finished_states and t.user_attrs.get("phase", "search") == "search"]
        extra = max(0, len(search) - spec.trials_per_cell)
        extra += not live and wants_extra(search, trials_per_cell=spec.trials_per_cell,
                                          extra_trials=spec.sampler.extra_trials, lo=spec.learning_rate.low,
                                          hi=spec.learning_rate.high)  # fmt: skip
        planned = base_planned + extra
        mine = summary[summary["cell"] == cell.key] if summary is not None else None
        best = None
        if mine is not None and len(mine):
            ok = mine[(mine["status"] == "ok") & mine["value"].notna()]
            if len(ok):
                row = ok.loc[ok["value"].idxmin()]
                best = {"val_eval_loss": float(row["value"]), "learning_rate": float(row["learning_rate"]),
                        "trial_id": str(row["trial_id"])}  # fmt: skip
        state = "running" if live else ("done" if finished >= (planned or 1) else "waiting")
        cells.append({"cell": cell.key, "state": state, "finished": finished, "planned": planned,
                      "running": len(live), "best": best})  # fmt: skip
        for t in live:
            steps = sorted(t.intermediate_values)
            epoch = steps[-1] if steps else 0
            running.append({
                "cell": cell.key, "trial_id": f"{name}#{t.number}", "optuna_trial": t.number,
                "learning_rate": _finite(t.params.get("learning_rate")), "epoch": epoch, "epochs": cell.epochs,
                "val_eval_loss": _finite(t.intermediate_values.get(epoch)) if steps else None,
                "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            })  # fmt: skip
    counts = {"ok": 0, "failed": 0, "pruned": 0}
    if summary is not None:
        for status, n in summary["status"].value_counts().items():
            counts[str(status)] = counts.get(str(status), 0) + int(n)
    # wall-clock per finished trial: a pack's own time (its members trained at once)
    walls = [] if summary is None else [w for w in (_finite(x) for x in summary["pack_wall_seconds"]) if w]
    left = sum(max(0, c["planned"] - c["finished"]) for c in cells) if not optimize else None  # running included
    budget = _budget(spec, shared) if optimize else None
    if budget is not None and budget["median_trial_cost"]:
        left = math.ceil(max(0.0, budget["total"] - budget["spent"]) / budget["median_trial_cost"])
    eta = None
    if walls and left:
        import statistics

        eta = statistics.median(walls) * left / max(len(running), 1)
    return {
        "run_dir": str(run_dir),
        "study": spec.name,
        "optuna": redact_url(url) if url else None,
        "cells": {s: sum(c["state"] == s for c in cells) for s in ("done", "running", "waiting")},
        "trials": counts,
        "spooled_rows": spooled,  # rows in PENDING_FILE, not in the table yet
        **({"spool": str(run_dir / PENDING_FILE)} if spooled else {}),
        "trials_left": left,  # optimize: budget left / median trial cost (None before one is measured)
        **({"budget": budget} if budget is not None else {}),
        "per_cell": cells,
        "running": running,
        "eta_seconds": eta,
        "eta_note": "rough: median wall time of finished trials x trials left / trials running"
                    + ("" if running else " (none running now: as if one ran at a time)"),
    }


def _budget(spec: StudySpec, trials: list) -> dict[str, Any]:
    """sampler.mode optimize: the budget, what the told trials spent of it (their user attr ``cost``,
    measured train_flops or wall hours; no uncertainty) and the median cost of a trial."""
    import statistics

    b = spec.budget
    costs = [float(t.user_attrs["cost"]) for t in trials if t.state.is_finished() and "cost" in t.user_attrs]
    return {"unit": "flops" if b.flops is not None else "trial_hours", "total": b.total(), "spent": sum(costs),
            "median_trial_cost": statistics.median([c for c in costs if c > 0] or [0.0]) or None,
            "max_trial_share": b.max_trial_share}  # fmt: skip
