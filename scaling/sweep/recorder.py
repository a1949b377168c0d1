"""_Recorder: a Ray Tune callback in the driver that writes the results table.

It buffers a trial's per-epoch results and appends its rows (scaling/records.py builds
them) when the trial ends, ok, failed or pruned, so the table never holds half a trial;
a pack's members become the rows a solo trial each would have written. The rows appended
then go to the spec's experiment trackers (scaling/tracking.py), one tracker run per trial,
a packed trial's members each their own; a tracker never stops the recording.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from analysis.table import RESULTS_FILE
from scaling.records import PENDING_FILE, _trial_rows, _trial_status, append_rows, spool_rows
from scaling.records_io import RecordsError
from scaling.spec import StudySpec
from scaling.tracking import Trackers

__all__: list[str] = []

APPEND_TRIES = 4  # an append is tried this often before its rows are spooled and the sweep stops
APPEND_BACKOFF_S = 0.5  # the wait after the first failed try, doubled after each (0.5 + 1 + 2 s)

log = logging.getLogger(__name__)


class _Recorder(Callback):
    def __init__(self, spec: StudySpec, run_dir: Path, on_done: Callable[[str, dict], None] | None = None,
                 study_uid: str | None = None, trackers: Trackers | None = None,
                 on_epoch: Callable[[dict], None] | None = None):  # fmt: skip
        self.spec = spec
        self.study_uid = study_uid
        self.trackers = trackers
        self.on_epoch = on_epoch
        self.run_dir = run_dir
        self.buffers: dict[str, list[dict]] = {}
        self.on_done = on_done
        self.counts = {"ok": 0, "failed": 0, "pruned": 0}
        self.pending: list[dict] = []  # rows the table would not take, oldest first (spooled)
        self.pending_trials = 0
        self.cause: str | None = None  # the append error that stopped the recording
        self.spooled: str | None = None  # where the pending rows are kept, or why they could not be

    def __getstate__(self) -> dict:  # Tuner pickles callbacks; ours is rebuilt on resume
        return {"spec": self.spec, "run_dir": self.run_dir, "buffers": {}, "on_done": None, "counts": {},
                "study_uid": self.study_uid, "trackers": None, "on_epoch": None, "pending": [],
                "pending_trials": 0, "cause": None, "spooled": None}  # fmt: skip

    def halt_reason(self) -> RecordsError | None:
        """Why the sweep must stop (the table would not take a finished trial's rows), else None."""
        if self.cause is None:
            return None
        return RecordsError(
            f"{self.run_dir / RESULTS_FILE}: the results table would not take the rows of a finished trial "
            f"after {APPEND_TRIES} tries ({self.cause}); the sweep stopped. The {len(self.pending)} rows of "
            f"{self.pending_trials} finished trial(s) it could not append are {self.spooled}. Fix the cause, "
            "then run the same `scaling sweep` again: it adds them to the table first and resumes the rest"
        )

    def _append(self, rows: list[dict]) -> str | None:
        """Append with retries; None when the rows are in the table, else the last error, described."""
        for attempt in range(1, APPEND_TRIES + 1):
            try:
                append_rows(self.run_dir, rows)
                return None
            except Exception as err:  # a disk error, a damaged table: tried again, then kept
                cause = f"{type(err).__name__}: {err}"
            if attempt < APPEND_TRIES:
                wait = APPEND_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("%s: appending %d rows to the results table failed (try %d of %d; again in %.1f s): %s",
                            self.run_dir, len(rows), attempt, APPEND_TRIES, wait, cause)  # fmt: skip
                time.sleep(wait)
        return cause

    def _keep(self, rows: list[dict], trials: int, cause: str | None) -> None:
        """Rows the table would not take: kept in memory and in the spool (rewritten whole)."""
        self.pending += rows
        self.pending_trials += trials
        self.cause = self.cause or cause
        try:
            path = spool_rows(self.run_dir, self.pending)
            self.spooled = f"kept in {path}"
        except Exception as err:  # the run directory itself is unwritable: the rows live in memory only
            self.spooled = (f"NOT kept: {self.run_dir / PENDING_FILE} could not be written either "
                            f"({type(err).__name__}: {err}); Optuna holds those trials as finished without "
                            "rows, so the next sweep runs them again")  # fmt: skip
        log.error("%s", self.halt_reason())

    def _record(self, rows: list[dict], done: list[tuple[str, dict]]) -> None:
        """One trial's rows (a pack's members' together) into the table, then its trackers and counts;
        once an append has failed for good, straight to the spool (the sweep is stopping)."""
        cause = None if self.cause is None else "stopping"
        if cause is None:
            cause = self._append(rows)
        if cause is not None:
            return self._keep(rows, len(done), cause)
        self._track(rows)
        for status, base in done:
            self.counts[status] += 1
            if self.on_done:
                self.on_done(status, base)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.buffers.setdefault(trial.trial_id, []).append(dict(result))
        if self.on_epoch and result.get("epoch") is not None:
            try:  # the progress display: it must never cost a row
                cfg = trial.config
                one = cfg["members"][int(result["member"])] if "members" in cfg else cfg
                self.on_epoch({"cell": cfg["cell"], "optuna_trial": one["optuna_trial"],
                               "learning_rate": one["learning_rate"], "epoch": int(result["epoch"]),
                               "epochs": int(cfg["epochs"])})  # fmt: skip
            except Exception:
                pass

    def _track(self, rows: list[dict]) -> None:
        if self.trackers is not None:
            self.trackers.log_trials(rows)  # never raises: a failing tracker warns once

    def _flush(self, trial: Any, status: str, error: str = "") -> None:
        rows, base = _trial_rows(self.spec, trial.config, self.buffers.pop(trial.trial_id, []), status=status,
                                 error=error, study_uid=self.study_uid)
        self._record(rows, [(status, base)])

    def _flush_pack(self, trial: Any, error: str | None = None) -> None:
        """A pack's members become the rows a solo trial each would have written, in one append;
        error (the pack itself failed) fails every member."""
        cfg = trial.config
        results = self.buffers.pop(trial.trial_id, [])
        rows: list[dict] = []
        done: list[tuple[str, dict]] = []
        for i, m in enumerate(cfg["members"]):
            mine = [r for r in results if r.get("member") == i]
            status = "failed" if error is not None else _trial_status(mine[-1] if mine else None, False)
            solo = {**{k: cfg[k] for k in ("dataset_size", "epochs", "lora_r", "model", "cell", "optuna_study")
                       if k in cfg}, **m}  # fmt: skip
            solo["pack_size"] = cfg["active"]
            member_rows, base = _trial_rows(self.spec, solo, mine, status=status, error=error or "",
                                        study_uid=self.study_uid)
            rows += member_rows
            done.append((status, base))
        self._record(rows, done)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if "members" in trial.config:
            return self._flush_pack(trial)
        last = trial.last_result or {}
        self._flush(trial, _trial_status(last, False))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # an infrastructure fault (dead worker or node): Ray re-runs the trial from its first
        # epoch, so the failed attempt's evaluations must not become rows beside the retry's
        self.buffers.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = ""
        try:
            exc = trial.get_pickled_error()
            cause = getattr(exc, "cause", None)  # a RayTaskError wraps the trial's own exception
            exc = cause if isinstance(cause, BaseException) else exc
            err = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        except Exception:
            pass
        if not err and trial.error_file and os.path.exists(trial.error_file):
            err = Path(trial.error_file).read_text().strip().splitlines()[-1]
        err = (err or "trial errored")[:2000]
        if "members" in trial.config:
            return self._flush_pack(trial, err)
        self._flush(trial, "failed", err)
