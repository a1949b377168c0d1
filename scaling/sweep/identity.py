"""Whose Optuna storage is this: a resume is refused when the storage is not the run's own.

A study's identity is a UUID made on its first run, kept in the run directory (spec.yaml's
``run.study_uid``, scaling/run_record.py) and on every cell study in the Optuna storage (user
attr ``scaling.study_uid``, set when CellSearcher creates or opens it). Optuna numbers trials
from 0 in every new study, so a run directory resumed against another storage (optuna.db
deleted, storage.optuna changed) would hand out trial ids the table already holds: its
evaluations would be dropped as replays while Optuna marks them COMPLETE. `check_storage`
refuses that before anything is written, naming the run's uid and what the storage holds.

A run directory from before identities (no run.study_uid) adopts the storage it resumes with
when that storage's cell studies carry no uid (the sweep then stamps them); one that carries
a uid belongs to another run and is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from analysis.redact import scrub
from scaling.records_io import RecordsError
from scaling.spec import Cell, SpecError, StudySpec, redact_url

__all__ = ["UID_ATTR", "cell_study_name", "check_storage", "open_checked", "open_storage",
           "optimize_study_name", "sqlite_missing", "study_names"]

UID_ATTR = "scaling.study_uid"


def cell_study_name(spec: StudySpec, cell: Cell) -> str:
    """The Optuna study of one cell: ``<study>/<cell key>``."""
    return f"{spec.name}/{cell.key}"


def optimize_study_name(spec: StudySpec) -> str:
    """sampler.mode optimize: the study's one Optuna study, ``<study>/optimize``."""
    return f"{spec.name}/optimize"


def study_names(study: str, cells: list[Cell], *, mode: str = "cells") -> list[str]:
    """Every Optuna study of the run: one per cell (as cell_study_name), or, sampler.mode
    optimize, the one study (as optimize_study_name)."""
    if mode == "optimize":
        return [f"{study}/optimize"]
    return [f"{study}/{c.key}" for c in cells]


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage; a clear error when it cannot be reached."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several readers (dashboard, report) may poll while the sweep writes
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as err:  # sqlalchemy raises many kinds
            # two processes opening a fresh database at once both create Optuna's tables; the
            # loser's CREATE fails on the winner's (a unique violation): the schema is there now
            racing = type(err).__name__ == "IntegrityError" or "already exists" in str(err)
            if racing and attempt < 3:
                time.sleep(0.5 * (attempt + 1))
                continue
            # the first line only (SQLAlchemy's "Background on this error" lines dropped), and no
            # trace of the password: a driver may quote the host part of a URL it split otherwise
            detail = scrub((str(err).strip().splitlines() or [""])[0], url)
            raise SpecError(f"storage.optuna: cannot open Optuna storage {redact_url(url)!r}: "
                            f"{type(err).__name__}: {detail}") from None
    raise AssertionError("unreachable")


def open_checked(names: list[str], run_dir: Path, url: str, *, uid: str | None, table_rows: int,
                 source: str | None) -> optuna.storages.BaseStorage:  # fmt: skip
    """The run's Optuna storage, opened once it is known to be the run's own (check_storage);
    a sqlite file that is gone while the table has rows is refused before opening would
    create an empty one. Reads only."""
    gone = sqlite_missing(url)
    if gone is not None and table_rows:
        raise RecordsError(
            f"{run_dir}: the Optuna storage {redact_url(url)!r} does not exist (no file {gone}) but "
            f"{run_dir / 'results.parquet'} has {table_rows} rows of study uid {uid or '(none yet)'}: resuming "
            "would restart the trial numbers and lose the new evaluations; restore the run's storage, "
            "or use another --out"
        )
    try:
        storage = open_storage(url)
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    check_storage(names, run_dir, storage, url, uid=uid, table_rows=table_rows)
    return storage


def sqlite_missing(url: str) -> Path | None:
    """The file of a sqlite URL when it does not exist (opening it would create an empty one)."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None if not str(path) or str(path) == ":memory:" or path.exists() else path


def _refuse(run_dir: Path, uid: str | None, url: str, what: str) -> RecordsError:
    mine = f"study uid {uid} (spec.yaml run.study_uid)" if uid else "no study uid yet (a run from before study uids)"
    return RecordsError(
        f"{run_dir}: the Optuna storage {redact_url(url)!r} is not this run's own: the run directory holds "
        f"{mine}; {what}. Resuming would reuse trial numbers the table already holds and lose the new "
        "evaluations: point storage.optuna at the run's own storage (restore optuna.db), or use another --out"
    )


def check_storage(names: list[str], run_dir: Path, storage: optuna.storages.BaseStorage, url: str, *,
                  uid: str | None, table_rows: int) -> None:  # fmt: skip
    """Raise RecordsError unless ``storage`` may hold this run's cell studies: none of them carries
    another uid, none with trials lacks the run's uid (unless the run has none yet: it adopts
    them), and, when the table has rows, at least one of them is there with trials. Reads only."""
    have = set(optuna.get_all_study_names(storage))
    found = 0
    for name in names:
        if name not in have:
            continue
        sid = storage.get_study_id_from_name(name)
        theirs = storage.get_study_user_attrs(sid).get(UID_ATTR)
        trials = len(storage.get_all_trials(sid, deepcopy=False))
        found += trials > 0
        if theirs is not None and theirs != uid:
            raise _refuse(run_dir, uid, url, f"its cell study {name!r} carries study uid {theirs} "
                                             f"(user attr {UID_ATTR}): another run's study")  # fmt: skip
        if theirs is None and uid is not None and trials > 0:
            raise _refuse(run_dir, uid, url, f"its cell study {name!r} has {trials} trials but no study uid "
                                             f"(user attr {UID_ATTR}): it was not made by this run")  # fmt: skip
    if table_rows and not found:
        raise _refuse(run_dir, uid, url, f"it holds none of the run's {len(names)} cell studies ({names[0]!r}, ...) "
                                         f"while {run_dir / 'results.parquet'} has {table_rows} rows")  # fmt: skip
