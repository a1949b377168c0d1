"""The results table's files in a run directory: Parquet parts, merges, compaction, atomic
writes, and the in-memory key index of the process that appends (records.py is the run
directory's API on top of this). The names and dtypes of the columns are analysis.table's
(COLUMNS), shared with the analysis side.

Layout: ``results.parquet`` holds the rows up to the last compaction (the first append of a
run creates it); every later append is one part file ``results/<lo>-<hi>.parquet`` (append
sequence numbers lo..hi; an append is one number). Every file is written to a ``.tmp`` name,
fsynced, renamed into place and its directory fsynced, so a killed writer leaves each append
wholly there or wholly absent, never torn. Parts are merged 16 at a time into a bigger part
(``<lo>-<hi>`` covering them) so the table stays a few dozen files; a file whose range lies
inside another's (a merge killed before it removed its inputs), or at or below the
``through`` number in results.parquet's metadata (a compaction killed likewise), is
superseded: readers skip it and the next writer deletes it. `records.compact` folds everything back
into results.parquet (the sweep calls it at its end). An old run (results.parquet alone,
written before this layout) is this layout's compacted form; the first append of a resumed
run rewrites it in the current schema with the metadata.

Row key: (trial_id, epoch, phase) (ROW_KEY). A row whose key is already recorded with the same
config (ROW_CONFIG: learning_rate, dataset_size, epochs, lora_r, seed) and the same study_uid is
a replay and is dropped; with a different config, or another study's uid (the rows of another
Optuna storage, whose trial numbers restarted at 0), it is an error (RecordsError), never a
silent drop. A row without a study_uid (written before the column existed) matches any. The
writer keeps the
keys in memory (checked against the directory's stat on every append), so an append costs a
dict lookup per row plus one small file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.table import COLUMNS, RESULTS_FILE

__all__ = [
    "RecordsError",
    "result_files",
    "ROW_KEY",
    "ROW_CONFIG",
    "ROW_OWNER",
    "PARTS_DIR",
]


class RecordsError(ValueError):
    """A results table or spec copy is missing, unreadable or has the wrong shape, a row collides
    with a different config, or the table cannot be written."""


PARTS_DIR = "results"  # the part files appended since the last compaction
ROW_KEY = ("trial_id", "epoch", "phase")  # one row per key
ROW_CONFIG = ("learning_rate", "dataset_size", "epochs", "lora_r", "seed")  # a replay repeats these
ROW_OWNER = "study_uid"  # ... and comes from the same study (None: an old row, matches any)
_IDENT = (*ROW_CONFIG, ROW_OWNER)  # what the key index holds per key
_FANOUT = 16  # this many equal-sized parts merge into one
_CACHED = _FANOUT**2  # a writer keeps the parts it wrote that span fewer appends than this in memory
_META = b"scaling.results"  # results.parquet's metadata: {"format": 2, "through": <last seq folded in>}
_PART = re.compile(r"^(\d{9})-(\d{9})\.parquet$")
_ARROW_TO_PANDAS = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write to path + '.tmp', fsync, rename over path, fsync the directory; no .tmp survives a failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RecordsError(f"{path}: cannot write the results table: {type(err).__name__}: {err}") from None
        raise


def _with_through(t: pa.Table, through: int) -> pa.Table:
    meta = dict(t.schema.metadata or {})
    meta[_META] = json.dumps({"format": 2, "through": through}).encode()
    return t.replace_schema_metadata(meta)


def _arrow(df: pd.DataFrame, through: int) -> pa.Table:
    return _with_through(pa.Table.from_pandas(df, preserve_index=False), through)


def _base_meta(table: pa.Table | pq.ParquetFile | None) -> dict[str, Any] | None:
    meta = None if table is None else (table.schema_arrow if isinstance(table, pq.ParquetFile) else table.schema).metadata
    if not meta or _META not in meta:
        return None  # written before this layout
    return json.loads(meta[_META])


def _read_file(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        if columns is not None:
            have = set(pq.ParquetFile(path).schema_arrow.names)
            columns = [c for c in columns if c in have]
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise RecordsError(f"{path}: cannot read the results table: {type(err).__name__}: {err}") from None


def _scan(run_dir: Path) -> tuple[Path | None, int, list[tuple[int, int, Path]], list[Path]]:
    """(results.parquet or None, its `through`, the live parts in order, superseded files and tmps)."""
    base: Path | None = run_dir / RESULTS_FILE
    through = 0
    if base.is_dir():
        raise RecordsError(f"{base}: is a directory, not a results table")
    if not base.exists():
        base = None
    else:
        try:
            meta = _base_meta(pq.ParquetFile(base))
        except Exception as err:
            raise RecordsError(f"{base}: cannot read the results table: {type(err).__name__}: {err}") from None
        through = int(meta["through"]) if meta else 0
    parts_dir = run_dir / PARTS_DIR
    found: list[tuple[int, int, Path]] = []
    stale: list[Path] = []
    if parts_dir.is_dir():
        for name in os.listdir(parts_dir):
            m = _PART.match(name)
            if m:
                found.append((int(m[1]), int(m[2]), parts_dir / name))
            elif name.endswith(".tmp"):
                stale.append(parts_dir / name)
    elif parts_dir.exists():
        raise RecordsError(f"{parts_dir}: must be the directory of the table's part files (is a file)")
    live: list[tuple[int, int, Path]] = []
    for lo, hi, path in sorted(found, key=lambda f: (f[0], -f[1])):
        if hi <= through or (live and hi <= live[-1][1]):
            stale.append(path)  # folded into results.parquet, or merged into the part before it
        elif live and lo <= live[-1][1] or lo <= through:
            raise RecordsError(f"{path}: part overlaps {live[-1][2] if live else base} without being inside it")
        else:
            live.append((lo, hi, path))
    if (run_dir / (RESULTS_FILE + ".tmp")).exists():
        stale.append(run_dir / (RESULTS_FILE + ".tmp"))
    return base, through, live, stale


def result_files(run_dir: str | Path) -> list[Path]:
    """The files that make up run_dir's results table now, in order (for a reader other than
    pandas, e.g. DuckDB: ``read_parquet([...], union_by_name = true)``)."""
    run_dir = Path(run_dir)
    base, _, live, _ = _scan(run_dir)
    return ([base] if base else []) + [p for _, _, p in live]


def _to_pandas(tables: list[pa.Table]) -> pd.DataFrame:
    t = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    df = t.to_pandas(types_mapper=_ARROW_TO_PANDAS.get)
    known = [c for c in COLUMNS if c in df.columns]
    df = df[known + [c for c in df.columns if c not in COLUMNS]]
    for c in known:
        if str(df[c].dtype) != COLUMNS[c]:
            df[c] = df[c].astype(COLUMNS[c]) if COLUMNS[c] != "Int64" else pd.to_numeric(df[c]).astype("Int64")
    return df


def _read_run_table(run_dir: Path, columns: list[str] | None = None) -> pd.DataFrame:
    base, _, live, _ = _scan(run_dir)
    if base is None and not live:
        raise RecordsError(f"{run_dir / RESULTS_FILE}: no results table here (run `scaling sweep` first)")
    try:
        tables = [_read_file(p, columns) for p in ([base] if base else []) + [p for _, _, p in live]]
    except FileNotFoundError:  # a writer merged or compacted under us: read the new files
        return _read_run_table(run_dir, columns)
    return _to_pandas(tables)


def _na(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float | np.floating) and v != v)


def _to_int(v: Any) -> int:
    if not isinstance(v, float | np.floating):
        try:
            return int(v)
        except (TypeError, ValueError):
            pass
    f = float(v)  # 3.0 or "3.0" is 3; 2.5 is refused, never truncated
    if not f.is_integer():
        raise ValueError(f"not an integer: {v!r}")
    return int(f)


_COERCE = {"string": str, "Int64": _to_int, "float64": float}


def _columns(rows: list[Mapping[str, Any]], run_dir: Path) -> dict[str, list[Any]]:
    """rows -> {column: values} in COLUMNS' names and types (NA -> None); other keys are dropped."""
    out: dict[str, list[Any]] = {}
    for col, dtype in COLUMNS.items():
        conv, vals = _COERCE[dtype], []
        for i, r in enumerate(rows):
            v = r.get(col)
            try:
                vals.append(None if _na(v) else conv(v))
            except (TypeError, ValueError, OverflowError) as err:
                raise RecordsError(f"{run_dir / RESULTS_FILE}: row {i}: {col}: must be {dtype} (got {v!r}): {err}") from None
        out[col] = vals
    return out


def _keys(cols: Mapping[str, list[Any]], names: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Per row, the tuple of ``names`` (None for NA or an absent column) from {column: values}."""
    n = len(next(iter(cols.values()))) if cols else 0
    lists = [[None if _na(v) else v for v in cols[c]] if c in cols else [None] * n for c in names]
    return list(zip(*lists, strict=True))


class _Writer:
    """One process's view of a run directory's table: the key index, the parts, the next number."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.parts = run_dir / PARTS_DIR
        self.load()

    def stamp(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in (self.run_dir / RESULTS_FILE, self.parts):
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def load(self) -> None:
        """Read the keys from disk, delete superseded files and tmps, migrate an old results.parquet."""
        base, through, live, stale = _scan(self.run_dir)
        for p in stale:
            p.unlink(missing_ok=True)
        if base is not None and _base_meta(pq.ParquetFile(base)) is None:
            old = _to_pandas([_read_file(base)])  # an old run: rewrite it in the current schema
            cols = [*COLUMNS, *(c for c in old.columns if c not in COLUMNS)]  # keep a column since retired
            old = old.reindex(columns=cols).astype({c: t for c, t in COLUMNS.items()})
            _write_atomic(_arrow(old, through=0), base)
        self.has_base = base is not None
        self.through = through
        self.live = [(lo, hi) for lo, hi, _ in live]
        self.next = max([through, *(hi for _, hi in self.live)]) + 1
        self.index: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.cache: dict[tuple[int, int], pa.Table] = {}  # small live parts this process wrote, for merges
        self.rows = 0
        if base is not None or live:
            df = _read_run_table(self.run_dir, columns=[*ROW_KEY, *_IDENT])
            self.rows = len(df)
            cols = {c: df[c].astype(object).tolist() for c in df.columns}
            for k, c in zip(_keys(cols, ROW_KEY), _keys(cols, _IDENT), strict=True):
                self.index.setdefault(k, c)
        self.seen = self.stamp()

    def check(self, keys: list[tuple[Any, ...]], configs: list[tuple[Any, ...]]) -> list[bool]:
        """Which new rows to keep: not replays; raises on a key recorded with another config or
        by another study (``configs``: per row, ROW_CONFIG's values then ROW_OWNER's)."""
        keep: list[bool] = []
        batch: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for k, c in zip(keys, configs, strict=True):
            had = self.index.get(k, batch.get(k))
            if had is not None and had[:-1] != c[:-1]:
                diff = ", ".join(f"{f}={a!r} vs {b!r}" for f, a, b in zip(ROW_CONFIG, had, c, strict=False) if a != b)
                raise RecordsError(
                    f"{self.run_dir / RESULTS_FILE}: row key {dict(zip(ROW_KEY, k, strict=True))} is already "
                    f"recorded with a different config ({diff}, recorded vs new): two trials share one trial_id; "
                    "nothing was written"
                )
            if had is not None and None not in (had[-1], c[-1]) and had[-1] != c[-1]:
                raise RecordsError(
                    f"{self.run_dir / RESULTS_FILE}: row key {dict(zip(ROW_KEY, k, strict=True))} is already "
                    f"recorded by study {ROW_OWNER}={had[-1]!r}; the new row comes from {ROW_OWNER}={c[-1]!r} "
                    "(another Optuna storage, whose trial numbers started again): nothing was written"
                )
            keep.append(had is None)
            batch.setdefault(k, c)
        return keep

    def write(self, table: pa.Table, keys: list[tuple[Any, ...]], configs: list[tuple[Any, ...]]) -> None:
        seq = self.next
        if not self.has_base:  # the run's first rows: results.parquet itself (what a sweep looks for)
            _write_atomic(_with_through(table, seq), self.run_dir / RESULTS_FILE)
            self.has_base, self.through = True, seq
        else:
            self._mkparts()
            _write_atomic(table, self._part(seq, seq))
            self.live.append((seq, seq))
            self.cache[(seq, seq)] = table
        # the rows are on disk: count them before anything else can fail (a number is never reused)
        self.next = seq + 1
        self.rows += table.num_rows
        self.index.update(zip(keys, configs, strict=True))
        self.seen = self.stamp()
        self._merge()  # if it fails half way, the stamp differs and the next append reads the directory again
        self.seen = self.stamp()

    def _mkparts(self) -> None:
        if not self.parts.is_dir():
            try:
                self.parts.mkdir()
            except OSError as err:
                raise RecordsError(f"{self.parts}: cannot create the parts directory: {type(err).__name__}: {err}") from None
            _fsync_dir(self.run_dir)

    def _part(self, lo: int, hi: int) -> Path:
        return self.parts / f"{lo:09d}-{hi:09d}.parquet"

    def _merge(self) -> None:
        """While the last _FANOUT parts have one size, merge them into one (written before the inputs go)."""
        while len(self.live) >= _FANOUT:
            tail = self.live[-_FANOUT:]
            size = tail[-1][1] - tail[-1][0]
            if any(hi - lo != size for lo, hi in tail):
                return
            tables = [self.cache.pop(r, None) or _read_file(self._part(*r)) for r in tail]
            merged = pa.concat_tables(tables, promote_options="default")
            lo, hi = tail[0][0], tail[-1][1]
            _write_atomic(merged, self._part(lo, hi))
            for a, b in tail:
                self._part(a, b).unlink()
            self.live[-_FANOUT:] = [(lo, hi)]
            if hi - lo < _CACHED:
                self.cache[(lo, hi)] = merged

    def compact(self) -> int:
        if not self.has_base and not self.live:
            return 0
        if self.live:
            df = _read_run_table(self.run_dir)
            last = self.live[-1][1]
            _write_atomic(_arrow(df, through=last), self.run_dir / RESULTS_FILE)
            for lo, hi in self.live:
                self._part(lo, hi).unlink()
            self.live, self.through, self.cache = [], last, {}
        if self.parts.is_dir() and not os.listdir(self.parts):
            self.parts.rmdir()
            _fsync_dir(self.run_dir)
        self.seen = self.stamp()
        return self.rows


_WRITERS: dict[Path, _Writer] = {}


def _writer(run_dir: Path) -> _Writer:
    key = run_dir.resolve()
    w = _WRITERS.get(key)
    if w is None:
        while len(_WRITERS) >= 8:  # a process writing many runs (tests) keeps the latest few
            _WRITERS.pop(next(iter(_WRITERS)))
        w = _WRITERS[key] = _Writer(key)
    elif w.stamp() != w.seen:  # changed by someone else since our last write: read it again
        w.load()
    return w

