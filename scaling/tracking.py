"""Experiment tracking: the results table mirrored into MLflow, TensorBoard and W&B.

One tracker run per trial (an Optuna trial: one row group of the table; each member of a
packed Ray trial is its own trial and gets its own run). The driver's recorder
(scaling/sweep/recorder.py) calls `Trackers.log_trial` with the rows it has just appended,
so every number a tracker shows is the table's own: each per-epoch metric at step = epoch,
the trial's config as params, cell and study as tags.

The table is the record; a tracker is a view. A tracker that fails (server down, disk full,
library missing) is warned about once (`TrackingWarning`) and never raises into the sweep; a
tracking URI's password never appears in a warning. The libraries' own clients write: MLflow's
MlflowClient, TensorBoard's EventFileWriter (tensorboardX would import torch into the driver),
wandb's client. Each is imported only when its tracker is on.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.table import ROW_KEYS
from scaling.spec import StudySpec, redact_url

__all__ = ["Trackers", "TrackingWarning", "TB_DIR", "run_name", "trial_metrics", "trial_params"]

TB_DIR = "tensorboard"  # <run dir>/tensorboard/<trial>/
# per-epoch columns that are bookkeeping, not metrics
_NOT_METRICS = {"epoch", "step", "worker_pid"}
# the trial's config: what the tracker shows as params
_PARAMS = ("learning_rate", "dataset_size", "epochs", "lora_r", "lora_alpha", "seed", "phase",
           "optuna_trial", "model", "task", "pack_size")  # fmt: skip
_MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "pruned": "KILLED"}


class TrackingWarning(UserWarning):
    """A tracker failed; the results table still has every row."""


def run_name(trial_id: str) -> str:
    """A trial's run and folder name: `<study>/D=64,E=1,r=8#3` -> `D=64,E=1,r=8#3` made safe."""
    tail = trial_id.split("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.,=#-]", "_", tail)


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool | str):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def trial_metrics(rows: Sequence[dict]) -> dict[int, dict[str, float]]:
    """epoch -> {metric: value} for every finite per-epoch number of a trial's rows."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        epoch = int(r.get("epoch") or 0)
        vals = {k: _number(r.get(k)) for k in ROW_KEYS if k not in _NOT_METRICS}
        vals = {k: v for k, v in vals.items() if v is not None}
        if vals:
            out.setdefault(epoch, {}).update(vals)
    return out


def trial_params(rows: Sequence[dict]) -> dict[str, str]:
    first = rows[0]
    return {k: str(first[k]) for k in _PARAMS if first.get(k) is not None}


def _tags(rows: Sequence[dict]) -> dict[str, str]:
    first, last = rows[0], rows[-1]
    return {"study": str(first["study"]), "cell": str(first["cell"]), "trial_id": str(first["trial_id"]),
            "status": str(last["status"])}  # fmt: skip


# -- the trackers -----------------------------------------------------------------------
class _MLflow:
    name = "mlflow"

    def __init__(self, uri: str, experiment: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        got = self.client.get_experiment_by_name(experiment)
        self.experiment_id = got.experiment_id if got else self.client.create_experiment(experiment)

    def log(self, rows: Sequence[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        tags = _tags(rows)
        found = self.client.search_runs([self.experiment_id], f"tags.trial_id = '{tags['trial_id']}'",
                                        max_results=1)  # fmt: skip
        if found:  # a resumed sweep replayed a trial already logged
            return
        run = self.client.create_run(self.experiment_id, run_name=run_name(tags["trial_id"]))
        rid = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for epoch, vals in trial_metrics(rows).items() for k, v in vals.items()]
        params = [Param(k, v) for k, v in trial_params(rows).items()]
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit
            self.client.log_batch(rid, metrics=metrics[i:i + 1000], params=params if i == 0 else [],
                                  tags=run_tags if i == 0 else [])  # fmt: skip
        self.client.set_terminated(rid, status=_MLFLOW_STATUS.get(tags["status"], "FINISHED"))

    def close(self) -> None:
        pass


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path):
        self.root = run_dir / TB_DIR

    def log(self, rows: Sequence[dict]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        tags = _tags(rows)
        where = self.root / run_name(tags["trial_id"])
        if where.exists() and any(where.glob("events.out.tfevents.*")):
            return  # a resumed sweep replayed a trial already logged
        where.mkdir(parents=True, exist_ok=True)
        w = EventFileWriter(str(where))
        try:
            now = time.time()
            text = "\n".join(f"- {k}: {v}" for k, v in {**tags, **trial_params(rows)}.items())
            w.add_event(Event(wall_time=now, step=0, summary=Summary(value=[Summary.Value(
                tag="config", metadata=_text_meta(), tensor=_text_tensor(text))])))  # fmt: skip
            for epoch, vals in trial_metrics(rows).items():
                summ = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in vals.items()])
                w.add_event(Event(wall_time=now, step=epoch, summary=summ))
        finally:
            w.close()

    def close(self) -> None:
        pass


def _text_meta():
    from tensorboard.compat.proto.summary_pb2 import SummaryMetadata

    return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))


def _text_tensor(text: str):
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    return TensorProto(dtype=DT_STRING, string_val=[text.encode()], tensor_shape=TensorShapeProto())


class _Wandb:
    name = "wandb"

    def __init__(self, project: str, mode: str, run_dir: Path):
        import wandb  # noqa: F401  (fail now, once, when it is not installed)

        self.project, self.mode, self.dir = project, mode, run_dir

    def log(self, rows: Sequence[dict]) -> None:
        import wandb

        tags = _tags(rows)
        run = wandb.init(project=self.project, mode=self.mode, dir=str(self.dir), name=run_name(tags["trial_id"]),
                         group=tags["cell"], job_type=str(rows[0].get("phase") or "search"),
                         config={**trial_params(rows), **tags}, tags=[tags["study"], tags["cell"]],
                         reinit="create_new", settings=wandb.Settings(console="off", silent=True))  # fmt: skip
        try:
            for epoch, vals in sorted(trial_metrics(rows).items()):
                run.log(vals, step=epoch)
            run.summary["status"] = tags["status"]
        finally:
            run.finish(exit_code=0 if tags["status"] != "failed" else 1)

    def close(self) -> None:
        pass


class Trackers:
    """The trackers a spec turns on; `log_trial(rows)` after each trial's append. Never raises."""

    def __init__(self, spec: StudySpec, run_dir: Path, *, mlflow_uri: str | None = None):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.uri = mlflow_uri  # the real URI (the recorder's spec has its password redacted)
        self._secrets = _secrets(mlflow_uri)
        self.failures: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.trackers: list[Any] = []
        t = spec.tracking
        if t.mlflow is not None:
            self._start("mlflow", lambda: _MLflow(self.uri or t.mlflow.tracking_uri, t.mlflow.experiment or spec.name))
        if t.tensorboard:
            self._start("tensorboard", lambda: _TensorBoard(self.run_dir))
        if t.wandb is not None:
            self._start("wandb", lambda: _Wandb(t.wandb.project, t.wandb.mode, self.run_dir))

    def _start(self, name: str, make) -> None:
        try:
            self.trackers.append(make())
        except Exception as err:  # an import or connection error: the sweep goes on without it
            self._failed(name, err, "could not start")

    def _failed(self, name: str, err: BaseException, what: str) -> None:
        first = name not in self.failures
        self.failures[name] = self.failures.get(name, 0) + 1
        if first:
            where = f" ({redact_url(self.uri)})" if name == "mlflow" and self.uri else ""
            msg = self._clean(f"tracking.{name}{where}: {what}: {type(err).__name__}: {err}")
            warnings.warn(f"{msg}; the results table keeps every row, later {name} errors are not shown",
                          TrackingWarning, stacklevel=3)  # fmt: skip

    def _clean(self, text: str) -> str:
        if self.uri:
            text = text.replace(self.uri, redact_url(self.uri) or "")
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def log_trial(self, rows: Sequence[dict]) -> None:
        rows = [r for r in rows if r.get("trial_id")]
        if not rows:
            return
        rows = sorted(rows, key=lambda r: int(r.get("epoch") or 0))
        for tr in self.trackers:
            try:
                tr.log(rows)
                self.logged[tr.name] = self.logged.get(tr.name, 0) + 1
            except Exception as err:
                self._failed(tr.name, err, f"could not log trial {rows[0]['trial_id']}")

    def log_trials(self, rows: Sequence[dict]) -> None:
        """Rows of one or more trials (a pack's members): one tracker run per trial_id."""
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(str(r.get("trial_id")), []).append(r)
        for group in by.values():
            self.log_trial(group)

    def close(self) -> None:
        for tr in self.trackers:
            try:
                tr.close()
            except Exception as err:
                self._failed(tr.name, err, "could not close")


def _secrets(uri: str | None) -> list[str]:
    """The password parts of a URI, to blank out of any message."""
    if not uri:
        return []
    out = []
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)@", uri)
    if m and ":" in m.group(1):
        out.append(m.group(1).split(":", 1)[1])
    out += [q for q in re.findall(r"(?i)[?&](?:password|passwd|pwd|sslpassword|token)=([^&]*)", uri) if q]
    from urllib.parse import unquote

    return sorted({*out, *(unquote(s) for s in out)}, key=len, reverse=True)
