"""The run directory on disk: its results table (one row per evaluation, one Parquet file),
appended atomically, and the lock a sweep holds on it. The names and dtypes of the
columns are analysis.table's (COLUMNS), shared with the analysis side.

Writes are append-only in meaning and atomic in fact: the new file is written
beside the old one and renamed over it, so a crash leaves either the old or the
new table, never a torn one, and no row already recorded is ever dropped.
A run directory is held by one sweep at a time (`RunLock`), and holds one study: a
resumed sweep must match its spec.yaml (`_check_same_study`). `_trial_rows` and
`_trial_status` turn what a trial reported into its rows, so the row schema lives
beside the table it is written to.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.table import COLUMNS, RESULTS_FILE, ROW_KEYS, Run
from scaling.spec import SpecError, StudySpec

__all__ = [
    "RecordsError",
    "RunLock",
    "RunLocked",
    "append_rows",
    "read_results",
    "empty_table",
    "read_run",
]

class RecordsError(ValueError):
    """A results table is missing, unreadable or has the wrong shape."""


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


def _trial_rows(spec: StudySpec, cfg: dict, results: list[dict], *, status: str,
                error: str) -> tuple[list[dict], dict]:  # fmt: skip
    """One trial's rows of the results table (one per evaluation; a failure before the
    first is still a row) from its config and what it reported, and their shared columns."""
    evals = [r for r in results if r.get("status") != "failed"]
    failed = [r for r in results if r.get("status") == "failed"]
    if failed and not error:
        error = failed[-1].get("error", "")
    base = {
        "study": spec.name,
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
        "model": spec.model,
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


def _check_same_study(spec: StudySpec, run_dir: Path) -> None:
    """A run directory holds one study: refuse to resume with different axes or LR range."""
    saved = run_dir / "spec.yaml"
    what = ("name", "model", "task", "axes", "learning_rate", "lora", "eval", "train", "sampler")
    mine = spec.model_dump(mode="json", include=set(what))
    if saved.exists():
        theirs = yaml.safe_load(saved.read_text()) or {}
        theirs = {k: theirs.get(k) for k in what}
        diff = [k for k in what if mine.get(k) != theirs.get(k)]
        if diff:
            raise SpecError(
                f"{spec.source}: {', '.join(diff)}: must match the study already in {run_dir} to resume it "
                f"(got a different value); use another --out for a new study"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        # packing is how the study runs, not what it is: off (the default), spec.yaml is as before
        exclude = {"source"} | ({"packing"} if spec.packing.adapters_per_worker == 1 else set())
        saved.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude=exclude), sort_keys=False))


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def _normalise(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col, dtype in COLUMNS.items():
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=dtype)
        else:
            df[col] = df[col].astype(dtype) if dtype != "Int64" else pd.to_numeric(df[col]).astype("Int64")
    return df[list(COLUMNS)]


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """Read a run's table (a directory or a .parquet/.csv file)."""
    p = Path(run_dir)
    path = p / RESULTS_FILE if p.is_dir() else p
    if not path.exists():
        raise RecordsError(f"{path}: no results table here (run `scaling sweep` first)")
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise RecordsError(f"{path}: cannot read the results table: {type(err).__name__}: {err}") from None
    if len(df) == 0:  # append_rows never writes a table without rows
        raise RecordsError(f"{path}: the results table is empty (0 rows): no trial has been recorded in it")
    missing = [c for c in ("trial_id", "status") if c not in df.columns]
    if missing:
        raise RecordsError(f"{path}: column(s) {missing} are required but missing (has {list(df.columns)})")
    return df


def append_rows(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows to run_dir/results.parquet atomically; returns the new row count.

    Rows already in the table for the same (trial_id, epoch, phase) are kept and the
    duplicates in `rows` dropped, so replaying a trial after a crash never
    duplicates a row.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    new = _normalise(rows)
    path = run_dir / RESULTS_FILE
    old = pd.read_parquet(path) if path.exists() else empty_table()
    if len(new) == 0:
        return len(old)
    key = ["trial_id", "epoch"]
    if len(old):
        seen = set(map(tuple, old[key].astype(str).to_numpy()))
        mask = [tuple(r) not in seen for r in new[key].astype(str).to_numpy()]
        new = new[mask]
    # reindex: a table written before a column was added gets it empty (resuming an older run)
    table = pd.concat([old.reindex(columns=list(COLUMNS)).astype(COLUMNS), new], ignore_index=True) if len(old) else new
    tmp = path.with_suffix(".parquet.tmp")
    table.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(table)


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
    """(raw spec dict, validated StudySpec or None) from run_dir/spec.yaml."""
    if run_dir is None or not (run_dir / "spec.yaml").exists():
        return {}, None
    import yaml

    try:
        raw = yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}
    except yaml.YAMLError:
        return {}, None
    if not isinstance(raw, dict):
        return {}, None
    try:
        from scaling.spec import parse_spec

        return raw, parse_spec(raw, source=str(run_dir / "spec.yaml"))
    except Exception:  # a moved task file or an older spec: the raw dict still describes it
        return raw, None


def read_run(path: str | Path) -> Run:
    """The results table plus the spec facts of a run, as analysis takes them (analysis.table.Run).

    ``path``: a run directory, or a results file (its folder is then the run directory). Raises
    RecordsError when there is no readable results table.
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
