"""The run directory on disk: its results table (one row per evaluation), appended atomically
at O(new rows), and the lock a sweep holds on it. The table's files (the part-file layout,
merges, compaction, atomic writes) are records_io.py's; this module is the API on top.

Row key: (trial_id, epoch, phase) (records_io.ROW_KEY). A row whose key is already recorded
with the same config (ROW_CONFIG: learning_rate, dataset_size, epochs, lora_r, seed) and the
same study_uid is a replay and is dropped; with a different config or another study's uid it
is an error (RecordsError), never a silent drop. A run directory is held by one sweep at a
time (`RunLock`); only that sweep's process appends. It holds one study: a resumed sweep must
match its spec.yaml (`_check_same_study`, run_record.py) and its Optuna storage must be the
run's own (scaling/sweep/identity.py). `_trial_rows` and
`_trial_status` turn what a trial reported into its rows, so the row schema lives
beside the table it is written to.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from analysis.table import COLUMNS, RESULTS_FILE, ROW_KEYS, Run
from scaling.records_io import (
    PARTS_DIR,
    ROW_CONFIG,
    ROW_KEY,
    ROW_OWNER,
    RecordsError,
    _columns,
    _fsync_dir,
    _keys,
    _read_file,
    _read_run_table,
    _scan,
    _write_atomic,
    _writer,
)
from scaling.run_record import RUN_KEY, _spec_yaml, as_last_swept
from scaling.spec import StudySpec

__all__ = [
    "finish_table",
    "open_table",
    "TableState",
    "RunLock",
    "RunLocked",
    "append_rows",
    "read_results",
    "empty_table",
    "read_run",
    "compact",
    "check_run_dir",
    "PENDING_FILE",
    "spool_rows",
    "read_pending",
    "fold_pending",
]

PENDING_FILE = "pending-rows.parquet"  # rows of finished trials the table could not take (spool_rows)


class RunLocked(RuntimeError):
    """Another sweep holds this run directory."""


# A trial's rows and status, and the same-study check: what the sweep writes here


def _trial_status(result: dict | None, error: bool) -> str:
    """ok | failed | pruned, from a trial's last result (None: it never reported) and whether
    it errored; a trial that ended before its last epoch was stopped early: pruned."""
    if error:
        return "failed"
    if not result:
        return "pruned"
    if result.get("status") == "failed":
        return "failed"
    if int(result.get("epoch", 0) or 0) < int(result.get("epochs", 0) or 0):
        return "pruned"
    return "ok"


def _trial_rows(spec: StudySpec, cfg: dict, results: list[dict], *, status: str, error: str,
                study_uid: str | None = None) -> tuple[list[dict], dict]:  # fmt: skip
    """One trial's rows of the results table (one per evaluation; a failure before the
    first is still a row) from its config and what it reported, and their shared columns;
    ``study_uid``: the study's identity (spec.yaml's run.study_uid)."""
    model = cfg.get("model") or spec.model  # the cell's base model (axes.model), else the spec's
    evals = [r for r in results if r.get("status") != "failed"]
    failed = [r for r in results if r.get("status") == "failed"]
    if failed and not error:
        error = failed[-1].get("error", "")
    base = {
        "study": spec.name,
        "study_uid": study_uid,
        "trial_id": f"{cfg['optuna_study']}#{cfg['optuna_trial']}",
        "optuna_trial": cfg["optuna_trial"],
        "cell": cfg["cell"],
        "phase": cfg["phase"],
        "dataset_size": cfg["dataset_size"],
        "epochs": cfg["epochs"],
        "learning_rate": cfg["learning_rate"],
        "lora_r": cfg["lora_r"],
        "lora_alpha": spec.lora.alpha_for(cfg["lora_r"]),
        "seed": cfg["seed"],
        "model": model,
        "model_params_n": _params_n(model),
        "task": spec.task.kind if spec.task.kind != "addition" else f"addition{spec.task.digits}",
        "pack_size": cfg.get("pack_size", 1),
        "status": status,
        "error": error or None,
        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    rows = [{**base, **{k: r.get(k) for k in ROW_KEYS}, "node": r.get("node_ip")} for r in evals]
    if not rows:  # a failure before the first evaluation is still a row
        rows = [{**base, "epoch": 0, "node": (failed[-1].get("node_ip") if failed else None)}]
    return rows, base


def _params_n(model: str) -> int | None:
    """The base model's non-embedding parameter count N (models.model_params_n: from its config on
    the meta device, cached per model), None when its config is not on this machine."""
    from scaling.models import model_params_n  # torch: only once the sweep writes rows

    return model_params_n(model)


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


_SCHEMA = pa.Table.from_pandas(empty_table(), preserve_index=False).schema  # with pandas' dtypes


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """Read a run's table: a run directory (results.parquet + results/ parts, as one table), its
    results.parquet (the same), or any other .parquet/.csv file (that file alone)."""
    p = Path(run_dir)
    if p.is_dir() or p.name == RESULTS_FILE:
        run = p if p.is_dir() else p.parent
        df, where = _read_run_table(run), run / RESULTS_FILE
        if (run / "spec.yaml").exists():
            _spec_yaml(run / "spec.yaml")  # a run directory with a damaged spec copy is refused whole
    else:
        if not p.exists():
            raise RecordsError(f"{p}: no results table here (run `scaling sweep` first)")
        try:
            df = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise RecordsError(f"{p}: cannot read the results table: {type(err).__name__}: {err}") from None
        where = p
    if len(df) == 0:  # append_rows never writes a table without rows
        raise RecordsError(f"{where}: the results table is empty (0 rows): no trial has been recorded in it")
    missing = [c for c in ("trial_id", "status") if c not in df.columns]
    if missing:
        raise RecordsError(f"{where}: column(s) {missing} are required but missing (has {list(df.columns)})")
    return df


def append_rows(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows to run_dir's results table atomically, in O(len(rows)); returns the new row count.

    Rows are keyed by (trial_id, epoch, phase) (ROW_KEY). A row whose key is already recorded
    (or repeated in ``rows``) with the same config (ROW_CONFIG) and study_uid (ROW_OWNER; an
    old row without one matches any) is a replay and is dropped, so replaying a trial after a
    crash never duplicates a row; with a different config or study_uid it raises RecordsError
    and nothing is written. All kept rows land in one file, or none do.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecordsError(f"{run_dir}: cannot create the run directory: {type(err).__name__}: {err}") from None
    cols = _columns(list(rows), run_dir)
    w = _writer(run_dir)
    keys, configs = _keys(cols, ROW_KEY), _keys(cols, (*ROW_CONFIG, ROW_OWNER))
    if not keys:
        return w.rows
    keep = w.check(keys, configs)
    if not any(keep):
        return w.rows
    if not all(keep):
        cols = {c: [v for v, k in zip(vals, keep, strict=True) if k] for c, vals in cols.items()}
        keys, configs = _keys(cols, ROW_KEY), _keys(cols, (*ROW_CONFIG, ROW_OWNER))
    w.write(pa.Table.from_pydict(cols, schema=_SCHEMA), keys, configs)
    return w.rows


def spool_rows(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Keep rows the results table could not take (an append that kept failing: a disk error, a
    damaged results/ folder) in run_dir/PENDING_FILE, in the table's columns and types; all of
    them, the file rewritten whole and atomically (tmp, fsync, rename, directory fsync), so it
    holds either the old or the new set. The next sweep on the run directory folds them into the
    table (fold_pending) before it reads what is recorded. Returns the file's path."""
    run_dir = Path(run_dir)
    cols = _columns(list(rows), run_dir)
    path = run_dir / PENDING_FILE
    _write_atomic(pa.Table.from_pydict(cols, schema=_SCHEMA), path)
    return path


def read_pending(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows spool_rows kept ([] when there are none); RecordsError naming the file when unreadable."""
    path = Path(run_dir) / PENDING_FILE
    if not path.exists():
        return []
    return _read_file(path).to_pylist()


def fold_pending(run_dir: str | Path, rows: list[dict[str, Any]] | None = None) -> int:
    """Append the rows spool_rows kept to the table (a row already there is a replay and dropped),
    then remove the spool; returns how many rows it held. When the table still cannot take them,
    RecordsError names the spool and the cause, and the spool stays. ``rows``: the spool's rows
    when the caller has read them already (read_pending)."""
    run_dir = Path(run_dir)
    path = run_dir / PENDING_FILE
    if not path.exists():
        return 0
    rows = read_pending(run_dir) if rows is None else rows
    try:
        append_rows(run_dir, rows)
    except (RecordsError, OSError) as err:
        raise RecordsError(
            f"{path}: holds {len(rows)} rows of finished trials that a stopped sweep could not append; the "
            f"results table still cannot take them ({type(err).__name__}: {err}). Fix that, then run the sweep "
            "again: it adds them first (they stay in this file until then)"
        ) from None
    path.unlink()
    _fsync_dir(run_dir)
    return len(rows)


class RunLock:
    """An exclusive, process-held lock on a run directory (released if the process dies)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".sweep.lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLocked(
                f"{self.path.parent}: another sweep ({holder}) is running on this run directory; "
                "wait for it to finish or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# ---- the run directory handed to analysis -------------------------------------------------


def _load_spec(run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """(raw spec dict, validated StudySpec or None) from run_dir/spec.yaml, its trial budget
    (trials_per_cell, sampler.extra_trials, budget) the last sweep's (run_record.as_last_swept)."""
    if run_dir is None or not (run_dir / "spec.yaml").exists():
        return {}, None
    raw = _spec_yaml(run_dir / "spec.yaml")
    study = as_last_swept(raw)  # the run's own section is no spec field
    if RUN_KEY in raw:
        raw = {**study, RUN_KEY: raw[RUN_KEY]}
    try:
        from scaling.spec import parse_spec

        return raw, parse_spec(study, source=str(run_dir / "spec.yaml"))
    except Exception:  # a moved task file or an older spec: the raw dict still describes it
        return raw, None


def read_run(path: str | Path) -> Run:
    """The results table plus the spec facts of a run, as analysis takes them (analysis.table.Run).

    ``path``: a run directory, or a results file (its folder is then the run directory). Raises
    RecordsError when there is no readable results table or the spec copy is unreadable / not YAML
    (a spec that no longer validates, e.g. a moved task file, still hands over its raw dict).
    """
    p = Path(path)
    run_dir = p if p.is_dir() else p.parent
    table = read_results(p)
    raw, spec = _load_spec(run_dir)
    storage = raw.get("storage")
    if isinstance(storage, dict) and storage.get("optuna"):
        url = str(storage["optuna"])
    else:
        url = f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    return Run(
        table=table,
        spec=raw,
        facts=spec.facts() if spec is not None else {},
        run_dir=run_dir,
        spec_file=str(run_dir / "spec.yaml") if (run_dir / "spec.yaml").exists() else None,
        optuna_url=url,
        optuna_exists=(run_dir / "optuna.db").exists() if url.startswith("sqlite") else None,
    )


@dataclass(frozen=True)
class TableState:
    """What a run directory's table holds when a sweep starts (open_table)."""

    rows: int  # the table's row count
    outcomes: dict[str, dict[str, Any]]  # trial_id -> its last row (status, epoch, validation loss, ...; NaN as None)
    folded: int = 0  # rows a stopped sweep had spooled, appended to the table now

    @property
    def recorded(self) -> set[str]:
        """The trial ids that have rows."""
        return set(self.outcomes)


def open_table(run_dir: str | Path) -> TableState:
    """At a sweep's start, under its RunLock: the table read once, with the rows a stopped sweep
    spooled (spool_rows) counted in and then appended to it (fold_pending: a row already there
    is a replay and dropped). A resume tells Optuna each trial's end from its last row
    (sweep/searcher.py) when its rows reached the table while the storage was down, instead of
    running it again. RecordsError names the spool when the table still cannot take its rows."""
    run_dir = Path(run_dir)
    table = read_results(run_dir) if (run_dir / RESULTS_FILE).exists() else empty_table()
    pending = read_pending(run_dir)
    if pending:  # a replay of a row the table holds is dropped, as append_rows drops it
        spooled = pd.DataFrame(pending)
        keys = pd.MultiIndex.from_frame(spooled[list(ROW_KEY)])
        fresh = ~(keys.isin(pd.MultiIndex.from_frame(table[list(ROW_KEY)])) | keys.duplicated())
        if fresh.any():
            table = pd.concat([table, spooled[fresh]], ignore_index=True) if len(table) else spooled[fresh]
    last = table.sort_values("epoch", kind="stable").groupby("trial_id", sort=False).tail(1)
    outcomes = {str(row["trial_id"]): {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}
                for row in last.to_dict("records")}  # fmt: skip
    folded = fold_pending(run_dir, pending)  # last: the table's files are written only now
    return TableState(len(table), outcomes, folded)


def compact(run_dir: str | Path) -> int:
    """Fold run_dir's part files into results.parquet (one file, as old runs had); returns the row count.

    The sweep calls it at its end, in the process that holds the RunLock. Safe to kill at any
    point: results.parquet is replaced atomically and records the last part it holds, so parts
    left behind are skipped by readers and deleted by the next writer.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).exists() and not (run_dir / PARTS_DIR).exists():
        return 0
    return _writer(run_dir).compact()


def finish_table(run_dir: str | Path, *, keep: str, model: str) -> list[Path]:
    """At a sweep's end: the table read whole (failing loudly now if what was written cannot be
    read), its appends compacted into one results.parquet (the same rows), and the adapters
    ``keep`` asks for kept (scaling/adapters.py); returns the adapter folders kept."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).exists():
        return []
    table = read_results(run_dir)
    if compact(run_dir) != len(table):
        raise RecordsError(f"{run_dir / RESULTS_FILE}: compacting changed the row count from {len(table)}")
    from scaling.adapters import keep_selected

    return keep_selected(run_dir, table, keep=keep, model=model)


def check_run_dir(run_dir: str | Path) -> None:
    """Raise RecordsError (one line naming the file and the problem) unless run_dir can hold a run:
    a directory or nothing yet, its spec.yaml (if any) readable YAML, its results table and its
    spool of unappended rows (PENDING_FILE; if any) readable. Reads only; a sweep calls it before it writes anything."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RecordsError(f"{run_dir}: the run directory is a file, not a directory; choose another --out")
    if not run_dir.exists() or _held(run_dir):
        return  # nothing there yet, or a sweep is writing it (that sweep refuses this one: RunLocked)
    if (run_dir / "spec.yaml").exists():
        _spec_yaml(run_dir / "spec.yaml")
    base, _, live, _ = _scan(run_dir)
    if base is not None or live:
        read_results(run_dir)
    read_pending(run_dir)  # a stopped sweep's unappended rows: the resume folds them in first


def _held(run_dir: Path) -> bool:
    """Whether a sweep holds run_dir's RunLock now (asked without writing anything)."""
    try:
        fh = open(run_dir / ".sweep.lock")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False
