"""spec.yaml in a run directory: the study a run holds, its identity, and what ran.

spec.yaml is the spec of the run's first sweep (``StudySpec.to_record``: no password) plus a
``run:`` section the sweep keeps:

    run:
      study_uid: 3f2c...            # made on the first run; every cell study in the Optuna
                                    # storage carries it too (user attr scaling.study_uid)
      task_sha256: 9a0b...          # task.kind jsonl / chat: the task file's bytes at the first run
      sweeps:                       # one entry per `scaling sweep` on this directory
        - {started_at, optuna, adapters_per_worker, trials_per_cell, extra_trials, budget,
           max_trials, trials_recorded, trials_to_run, finished_at, trials_run, counts}

A resume may change the trial budget (trials_per_cell, sampler.extra_trials, budget; budget is
written only when the spec has one): each sweep's entry records the values it ran with, and
`as_last_swept` gives the study with the last sweep's, which analysis and `scaling status` read
(the spec copy above the run section stays the first sweep's).

A resume must match it (`_check_same_study`): the study's fields (name, model, task, axes,
learning_rate, lora, eval, train, sampler, seeds, early_stopping, packing but its
adapters_per_worker and train.gradient_checkpointing, which change speed, not results) and the JSONL task file's contents.
`_load_spec` (records.py) hands analysis the spec without the run section.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from scaling.records_io import RecordsError
from scaling.spec import SpecError, StudySpec, redact_url

__all__ = ["RUN_KEY", "_check_same_study", "_spec_yaml", "as_last_swept", "new_uid", "task_sha256", "write_run"]

RUN_KEY = "run"  # spec.yaml's section that is the run's, not the spec's
# compared as a whole (a different value is named by the section)
_WHOLE = ("name", "model", "axes", "learning_rate", "eval")
# compared field by field, a spec.yaml without the section (or an older one without the field)
# meaning the defaults (but see _older_value; train.precision auto and lora.quantize null are
# what ran before them)
_BY_FIELD = ("task", "lora", "train", "sampler", "seeds", "early_stopping", "packing")
# a resume may change these: adapters_per_worker gives the same results, and so does gradient
# checkpointing (the same computation, recomputed); extra_trials is budget, like trials_per_cell
_SPEED_ONLY = {("packing", "adapters_per_worker"), ("sampler", "extra_trials"), ("train", "gradient_checkpointing")}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def new_uid() -> str:
    import uuid

    return uuid.uuid4().hex


def task_sha256(spec: StudySpec) -> str | None:
    """sha256 of the task file's bytes (task.kind jsonl or chat; None for the built-in tasks)."""
    if spec.task.kind not in ("jsonl", "chat") or not spec.task.path:
        return None
    try:
        return hashlib.sha256(Path(spec.task.path).read_bytes()).hexdigest()
    except OSError as err:
        raise SpecError(f"{spec.source}: task.path: cannot read {spec.task.path}: {type(err).__name__}: {err}") from None


def _older_value(section: str, field: str, had: dict[str, Any], default: Any) -> Any:
    """What a field missing from an older spec copy meant: its default, except task.split, which
    came with the pair-keeping addition split; before it, addition split ordered pairs."""
    if (section, field) == ("task", "split"):
        return "ordered" if had.get("kind", "addition") == "addition" else None
    return default


def _spec_yaml(path: Path) -> dict[str, Any]:
    """A run's spec copy as a dict; RecordsError (naming the file) when unreadable or not a YAML mapping."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise RecordsError(f"{path}: cannot read the run's spec copy: {type(err).__name__}: {err}") from None
    except yaml.YAMLError as err:
        what = " ".join(str(err).split())
        raise RecordsError(f"{path}: the run's spec copy is not valid YAML: {what}") from None
    if not isinstance(raw, dict):
        raise RecordsError(f"{path}: the run's spec copy must be a YAML mapping (got {type(raw).__name__})")
    run = raw.get(RUN_KEY)
    if run is not None and not isinstance(run, dict):
        raise RecordsError(f"{path}: {RUN_KEY}: must be a mapping (got {type(run).__name__})")
    return raw


def _check_same_study(spec: StudySpec, run_dir: Path) -> dict[str, Any] | None:
    """A run directory holds one study: refuse (SpecError naming the field) to resume it with a
    different study. Returns spec.yaml's run section ({} for a run written before it existed),
    or None when the directory holds no study yet. Reads only."""
    saved = run_dir / "spec.yaml"
    if not saved.exists():
        return None
    theirs = _spec_yaml(saved)  # RecordsError naming the file when it is damaged
    mine = spec.model_dump(mode="json", include={*_WHOLE, *_BY_FIELD})
    diff = [k for k in _WHOLE if mine.get(k) != theirs.get(k)]
    shown: list[str] = []
    defaults = StudySpec.model_fields
    for section in _BY_FIELD:
        base = defaults[section].default_factory().model_dump(mode="json")  # type: ignore[misc]
        had = theirs.get(section)
        # older spec copies (and packing off) leave a section or a newer field out: the defaults
        had = had if isinstance(had, dict) else {}
        had = {**{f: _older_value(section, f, had, v) for f, v in base.items()}, **had}
        for field, now in mine[section].items():
            if (section, field) not in _SPEED_ONLY and had.get(field) != now:
                diff.append(f"{section}.{field}")
                shown.append(f"{section}.{field}: the run has {had.get(field)!r}, got {now!r}")
    if diff:
        detail = "; ".join(shown) if shown else "got a different value"
        raise SpecError(
            f"{spec.source}: {', '.join(diff)}: must match the study already in {run_dir} to resume it "
            f"({detail}); use another --out for a new study"
        )
    run = dict(theirs.get(RUN_KEY) or {})
    had_sha, sha = run.get("task_sha256"), task_sha256(spec)
    if had_sha and sha and had_sha != sha:
        raise SpecError(
            f"{spec.source}: task.path: the task file {spec.task.path} must not change during a study "
            f"(sha256 {had_sha[:12]} at the run's first sweep, recorded in {saved}; {sha[:12]} now); "
            "restore it or use another --out for a new study"
        )
    return run


def _redact_copy(data: dict[str, Any]) -> None:
    """Passwords out of a spec copy's URLs (storage.optuna, tracking.mlflow.tracking_uri), in place."""
    storage = data.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("optuna"), str):
        storage["optuna"] = redact_url(storage["optuna"])
    ml = (data.get("tracking") or {}).get("mlflow") if isinstance(data.get("tracking"), dict) else None
    if isinstance(ml, dict) and isinstance(ml.get("tracking_uri"), str):
        ml["tracking_uri"] = redact_url(ml["tracking_uri"])


def write_run(spec: StudySpec, run_dir: Path, run: dict[str, Any]) -> None:
    """Write spec.yaml with ``run`` as its run section: the first time, the spec (no password) as
    the first sweep ran it; later, the spec copy as it was. Atomic (tmp, fsync, rename)."""
    path = run_dir / "spec.yaml"
    if path.exists():
        data = {k: v for k, v in _spec_yaml(path).items() if k != RUN_KEY}
        _redact_copy(data)  # a copy written before passwords were kept out loses its password now
    else:
        # packing is how the study runs, not what it is: off (the default), it is left out as before
        exclude = {"packing"} if spec.packing.adapters_per_worker == 1 else set()
        if not spec.tracking.any():  # nor tracking, off by default
            exclude.add("tracking")
        if spec.budget is None:  # nor budget, for sampler.mode optimize only
            exclude.add("budget")
        data = spec.to_record(exclude=exclude)
    data[RUN_KEY] = run
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(run_dir, os.O_RDONLY)  # the rename itself survives a power cut
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RecordsError(f"{path}: cannot write the run's spec copy: {type(err).__name__}: {err}") from None


def _trial_budget(spec: StudySpec) -> dict[str, Any]:
    """What a resume may raise, as this sweep runs it: trials_per_cell, extra_trials, budget."""
    out: dict[str, Any] = {"trials_per_cell": spec.trials_per_cell, "extra_trials": spec.sampler.extra_trials}
    if spec.budget is not None:
        out["budget"] = spec.budget.model_dump(mode="json", exclude_none=True)
    return out


def as_last_swept(raw: dict[str, Any]) -> dict[str, Any]:
    """spec.yaml's study (without the run section) with trials_per_cell, sampler.extra_trials and
    budget as the last sweep that recorded them ran them: the study as it stands now. A sweep
    entry from before they were recorded changes nothing."""
    study = {k: v for k, v in raw.items() if k != RUN_KEY}
    run = raw.get(RUN_KEY) if isinstance(raw.get(RUN_KEY), dict) else {}
    for entry in run.get("sweeps") or []:  # in order: the last one to record a value wins
        if not isinstance(entry, dict):
            continue
        if "trials_per_cell" in entry:
            study["trials_per_cell"] = entry["trials_per_cell"]
        if "extra_trials" in entry:
            sampler = study.get("sampler") if isinstance(study.get("sampler"), dict) else {}
            study["sampler"] = {**sampler, "extra_trials": entry["extra_trials"]}
        if "budget" in entry:
            study["budget"] = entry["budget"]
    return study


def start_sweep(spec: StudySpec, run_dir: Path, run: dict[str, Any], *, uid: str, optuna: str,
                max_trials: int | None, trials_recorded: int) -> dict[str, Any]:  # fmt: skip
    """The run section with this sweep begun (``optuna``: the storage URL, redacted), written."""
    run = {"study_uid": uid, **{k: v for k, v in run.items() if k != "study_uid"}}
    sha = task_sha256(spec)
    if sha and not run.get("task_sha256"):
        run["task_sha256"] = sha
    entry = {"started_at": _now(), "optuna": optuna, "adapters_per_worker": spec.packing.adapters_per_worker,
             **_trial_budget(spec), "max_trials": max_trials, "trials_recorded": trials_recorded}  # fmt: skip
    run["sweeps"] = [*(run.get("sweeps") or []), entry]
    write_run(spec, run_dir, run)
    return run


def update_sweep(spec: StudySpec, run_dir: Path, run: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """The run section with ``facts`` added to this sweep's entry (the last), written."""
    sweeps = list(run.get("sweeps") or [{}])
    sweeps[-1] = {**sweeps[-1], **facts}
    run = {**run, "sweeps": sweeps}
    write_run(spec, run_dir, run)
    return run


def finish_sweep(spec: StudySpec, run_dir: Path, run: dict[str, Any], *, counts: dict[str, int],
                 trials_to_run: int) -> dict[str, Any]:  # fmt: skip
    return update_sweep(spec, run_dir, run, trials_to_run=trials_to_run, finished_at=_now(),
                        trials_run=sum(counts.values()), counts=dict(counts))  # fmt: skip
