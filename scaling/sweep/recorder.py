"""_Recorder: a Ray Tune callback in the driver that writes the results table.

It buffers a trial's per-epoch results and appends its rows (scaling/records.py builds
them) when the trial ends, ok, failed or pruned, so the table never holds half a trial;
a pack's members become the rows a solo trial each would have written. The rows appended
then go to the spec's experiment trackers (scaling/tracking.py), one tracker run per trial,
a packed trial's members each their own; a tracker never stops the recording.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from scaling.records import _trial_rows, _trial_status, append_rows
from scaling.spec import StudySpec
from scaling.tracking import Trackers

__all__: list[str] = []


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

    def __getstate__(self) -> dict:  # Tuner pickles callbacks; ours is rebuilt on resume
        return {"spec": self.spec, "run_dir": self.run_dir, "buffers": {}, "on_done": None, "counts": {},
                "study_uid": self.study_uid, "trackers": None, "on_epoch": None}  # fmt: skip

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
        append_rows(self.run_dir, rows)
        self._track(rows)
        self.counts[status] += 1
        if self.on_done:
            self.on_done(status, base)

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
        append_rows(self.run_dir, rows)
        self._track(rows)
        for status, base in done:
            self.counts[status] += 1
            if self.on_done:
                self.on_done(status, base)

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
