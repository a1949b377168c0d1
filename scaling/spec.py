"""StudySpec: a study's YAML file turned into a validated, frozen config.

A spec says *what* to run (model, task, axes, learning-rate range, LoRA
settings, evaluation sets); `resources` and `storage` say *where* (as in Ray
Tune, the two are kept apart so the same study runs on a laptop or a cluster).

Every validation error names the file, the field, the rule and the value:

    search_spaces/demo.yaml: learning_rate.low: must be > 0 (got -0.001)

Steps of `load_spec`:
  1. read the YAML (file missing / not YAML / not a mapping -> SpecError)
  2. validate with pydantic (unknown keys are errors: a typo must not be ignored)
  3. cross-field rules (low < high, sizes ascending and unique, task file exists)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "SpecError",
    "StudySpec",
    "TaskSpec",
    "AxesSpec",
    "LRRange",
    "LoraSpec",
    "EvalSpec",
    "TrainSpec",
    "ResourcesSpec",
    "SamplerSpec",
    "StorageSpec",
    "EarlyStoppingSpec",
    "SeedsSpec",
    "PackingSpec",
    "TrackingSpec",
    "MlflowSpec",
    "WandbSpec",
    "load_spec",
    "parse_spec",
    "redact_url",
    "Cell",
    "SweepPlan",
]


class SpecError(ValueError):
    """A study spec broke a rule. The message names file, field, rule and value."""


# -- secrets: a password in a storage URL is never printed or written -------------------------
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword)=)[^&]*")


def redact_url(url: str | None) -> str | None:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``; a password given as a
    query parameter (``?password=...``) too. A ``${VAR}`` reference is shown as written."""
    if url is None:
        return None
    text = str(url)
    # user:password@ before the host; the last "@" ends the credentials (a password may hold "@")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@", text)
    if m and ":" in m.group(2):
        user = m.group(2).split(":", 1)[0]
        rest = text[m.end():]
        text = f"{m.group(1)}{user}:***@{rest}"
    return _QUERY_SECRET.sub(lambda q: q.group(1) + "***", text)


def expand_env(value: str, *, field: str, source: str) -> str:
    """``${VAR}`` references in a spec value, from the environment; a SpecError naming the file,
    field, rule and the variable (never a value) when one is unset."""

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise SpecError(f"{source}: {field}: environment variable {name} must be set (the spec says "
                            f"{value!r}); export it before running")  # fmt: skip
        return os.environ[name]

    return _ENV_REF.sub(one, value)


class _Frozen(BaseModel):
    # extra="forbid": an unknown key ("learning_rat") is almost always a typo.
    model_config = ConfigDict(extra="forbid", frozen=True)


PosInt = Annotated[int, Field(gt=0)]


class TaskSpec(_Frozen):
    kind: Literal["addition", "jsonl", "chat"] = "addition"
    digits: Annotated[int, Field(ge=1, le=4)] = 2  # 2 digits: 10k problems, learnable in seconds
    # kind jsonl: JSONL of {"prompt", "completion"} lines; kind chat: of {"messages": [{"role",
    # "content"}, ...]} lines, rendered with the tokenizer's chat template (tasks.py)
    path: str | None = None
    seed: int = 0  # fixes the permutation: which problems are val/test/train
    # addition only (default "pairs"): a+b and b+a fall in the same split, so no test problem's
    # mirror is trained on; "ordered" splits every ordered pair on its own, as studies before it did
    split: Literal["pairs", "ordered"] | None = Field(default=None, validate_default=True)

    @field_validator("split")
    @classmethod
    def _split_for_addition(cls, v: str | None, info: Any) -> str | None:
        kind = info.data.get("kind", "addition")
        if kind != "addition":
            if v is not None:
                raise ValueError(f"applies to task.kind 'addition' only (task.kind is {kind!r})")
            return None
        return v or "pairs"

    @model_validator(mode="after")
    def _path_for_file_tasks(self) -> TaskSpec:
        if self.kind in ("jsonl", "chat") and not self.path:
            raise ValueError(f"task.path is required when task.kind is {self.kind!r}")
        return self


class LogRange(_Frozen):
    """A log-spaced ladder: `{low: 500, high: 8000, num: 5}`."""

    low: PosInt
    high: PosInt
    num: Annotated[int, Field(ge=2)]

    def values(self) -> tuple[int, ...]:
        ratio = (self.high / self.low) ** (1 / (self.num - 1))
        vals = sorted({int(round(self.low * ratio**i)) for i in range(self.num)})
        return tuple(vals)


class AxesSpec(_Frozen):
    dataset_size: list[PosInt] | LogRange
    epochs: list[PosInt] = Field(default_factory=lambda: [1])
    lora_r: list[PosInt] | None = None  # optional rank axis

    @field_validator("dataset_size", "epochs", "lora_r")
    @classmethod
    def _ascending_unique(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("must list at least one value")
            if len(set(v)) != len(v):
                raise ValueError("values must be unique")
        return v

    def dataset_sizes(self) -> tuple[int, ...]:
        ds = self.dataset_size
        return ds.values() if isinstance(ds, LogRange) else tuple(sorted(ds))

    def epoch_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.epochs))


class LRRange(_Frozen):
    low: float
    high: float
    log: bool = True  # optima of LR live on a log scale; a linear search wastes trials

    @field_validator("low", "high")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("must be > 0 and finite")
        return v


class LoraSpec(_Frozen):
    r: PosInt = 8  # rank 8: enough for 2-digit addition on the tiny base (measured)
    alpha: float | Literal["2r"] = 16.0  # fixed alpha (default) or "2r" to scale with rank
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # tiny data, few epochs: no need
    # "all-linear" (peft's rule: every Linear/Conv1D but the output head; fits any
    # architecture) or module names ["q_proj", "v_proj"], checked against the loaded model
    # by models.resolve_target_modules. Unset: the embedded tiny-llama keeps its Llama
    # projection list (TINY_TARGET_MODULES), every hub or local model gets "all-linear".
    target_modules: Literal["all-linear"] | list[str] | None = None
    # QLoRA: the frozen base in 4-bit NF4 through bitsandbytes (trial/base.py); CUDA only
    quantize: Literal["4bit"] | None = None

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lower() != "all-linear":
                raise ValueError("must be 'all-linear' or a list of module names")
            return "all-linear"
        if isinstance(v, list | tuple):
            if not v or not all(isinstance(n, str) and n.strip() for n in v):
                raise ValueError("must list at least one module name, each a non-empty string")
            if len(set(v)) != len(v):
                raise ValueError("module names must be unique")
            return list(v)
        if v is not None:
            raise ValueError("must be 'all-linear' or a list of module names")
        return v

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_number(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if v <= 0:
                raise ValueError("must be > 0 or the text '2r'")
            return float(v)
        return v

    def alpha_for(self, r: int) -> float:
        return float(2 * r) if self.alpha == "2r" else float(self.alpha)

    def for_model(self, model: str) -> LoraSpec:
        """This section with target_modules filled in for `model` when it was left unset."""
        if self.target_modules is not None:
            return self
        targets = list(TINY_TARGET_MODULES) if model == "tiny-llama" else "all-linear"
        return self.model_copy(update={"target_modules": targets})


# the embedded model's LoRA targets: all Llama projections (tiny.TINY_TARGET_MODULES;
# repeated here because the spec must not import torch)
TINY_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class EvalSpec(_Frozen):
    validation_size: PosInt = 500  # chooses LR, drives early stopping
    test_size: PosInt = 500  # reported numbers only; never used for selection


class TrainSpec(_Frozen):
    batch_size: PosInt = 32
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_length: PosInt | None = None  # tokens per example; longer ones are cut (and counted)
    # auto: bf16 on a CUDA GPU that supports it (the tiny model stays fp32), fp32 elsewhere, as
    # before this field. bf16 / fp16: the base's weights in that dtype and the forward under
    # autocast, adapters and AdamW in fp32 (fp16: CUDA only, with a loss scale)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time, same numbers


class ResourcesSpec(_Frozen):
    cpus: Annotated[float, Field(gt=0)] = 1
    gpus: Annotated[float, Field(ge=0)] = 0  # fractional allowed: 0.25 packs 4 trials per GPU
    max_concurrent: PosInt | None = None  # default: what the cluster's resources allow
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries for infrastructure faults only


class SamplerSpec(_Frozen):
    # bracket (scaling/lr_sampler.py): brackets every cell's LR optimum within its first 3
    # trials, then refines, and starts later cells at the LR the finished ones predict. On the
    # real tiny model it bracketed 4/4 cells in 3 trials against TPE's 3/4, and put lr* within
    # 1.3x of a 12-LR grid in 4/4 cells against 2/4 (bench/results/lr_search_cpu.txt).
    kind: Literal["bracket", "tpe", "random"] = "bracket"
    seed: int = 0
    # every (dataset_size, epochs, rank) cell gets trials_per_cell LR trials: the scaling
    # design. (A joint "optimize" mode over D, epochs and LR is not built yet.)
    mode: Literal["cells"] = "cells"
    # tpe/random: the first trial of every cell sits at the log-midpoint of the LR range:
    # with 3-8 trials per cell, a fixed anchor stops a cell from being judged on unlucky
    # draws (bracket places its first trial itself)
    anchor: bool = True
    # a cell whose best LR still has no tried LR on one side after trials_per_cell (and is not
    # at the range's edge there) gets up to this many more LR trials, one at a time, stepping
    # out on the open side: an unbracketed optimum is only a bound. Seed noise on the demo left
    # 3-7 of 10 cells unbracketed after 3 trials; one more trial brackets most of them
    extra_trials: Annotated[int, Field(ge=0)] = 2


_URL = re.compile(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://")


class StorageSpec(_Frozen):
    # Optuna URL; default sqlite:///<run_dir>/optuna.db. May be (or hold) ${VAR}, read from the
    # environment when the sweep opens it: a password then never sits in the spec at all
    optuna: str | None = None
    results_dir: str = "runs"  # the run directory is <results_dir>/<name>
    # trained adapters kept under <run dir>/adapters/: "best" the one each cell's selection picks
    # (adapters/<cell>/, peft format), "all" every trial's too (adapters/trials/), "none" none
    keep_adapters: Literal["best", "all", "none"] = "best"

    @field_validator("optuna")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_REF.search(v) and not _URL.match(v):
            raise ValueError("must be an SQLAlchemy URL starting sqlite://, postgresql:// or mysql://")
        return v


class EarlyStoppingSpec(_Frozen):
    method: Literal["none", "asha", "median"] = "none"
    grace_epochs: PosInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3


class SeedsSpec(_Frozen):
    base: int = 0  # seed of the LR-search trials
    repeat_best: Annotated[int, Field(ge=0)] = 0  # extra seeds for each cell's best config


class PackingSpec(_Frozen):
    # K LoRA trials of one cell trained at once on one copy of the base (scaling/packed.py):
    # one Ray trial runs a pack of K Optuna trials. 1 = off, the default: on 2 CPU cores K=8
    # gave only 1.2x over a warm loop of single trials (2.4x over a process per trial), and a
    # pack is one failure domain (a dead worker re-runs all K). On an H100 K=8 gave 6.4x over
    # a process per trial: GPU specs turn it on (search_spaces/cluster_gpu.yaml).
    adapters_per_worker: Annotated[int, Field(ge=1)] = 1


class MlflowSpec(_Frozen):
    # any MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, databricks); may be (or hold)
    # ${VAR}, read from the environment when the sweep starts, so a password need not sit here
    tracking_uri: Annotated[str, Field(min_length=1)]
    experiment: Annotated[str, Field(min_length=1)] | None = None  # default: the study's name


class WandbSpec(_Frozen):
    project: Annotated[str, Field(min_length=1)]
    mode: Literal["offline", "online"] = "offline"  # offline: files under <run dir>/wandb/, no account


class TrackingSpec(_Frozen):
    # experiment trackers the driver mirrors the results table into, one tracker run per trial
    # (scaling/tracking.py); all off by default. The table stays the record: a tracker that
    # fails is warned about once and never stops the sweep or loses a row.
    mlflow: MlflowSpec | None = None
    tensorboard: bool = False  # event files under <run dir>/tensorboard/<trial>/
    wandb: WandbSpec | None = None

    def any(self) -> bool:
        return self.mlflow is not None or self.tensorboard or self.wandb is not None


class Cell(BaseModel):
    """One point of the study's grid: the axes, not the LR."""

    model_config = ConfigDict(frozen=True)
    dataset_size: int
    epochs: int
    lora_r: int

    @property
    def key(self) -> str:
        return f"D={self.dataset_size},E={self.epochs},r={self.lora_r}"


class StudySpec(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
    model: str = "tiny-llama"  # the embedded model; or a hub id / local path
    task: TaskSpec = Field(default_factory=TaskSpec)
    axes: AxesSpec
    learning_rate: LRRange
    trials_per_cell: PosInt = 3
    seeds: SeedsSpec = Field(default_factory=SeedsSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec, validate_default=True)  # targets per model
    eval: EvalSpec = Field(default_factory=EvalSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    packing: PackingSpec = Field(default_factory=PackingSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    source: str | None = None  # the file it came from (set by load_spec)

    @field_validator("lora", mode="after")
    @classmethod
    def _lora_targets_for_model(cls, v: LoraSpec, info: Any) -> LoraSpec:
        # lora.target_modules is never None after validation: the model decides the default
        return v.for_model(info.data.get("model", "tiny-llama"))

    @model_validator(mode="after")
    def _cross_field(self) -> StudySpec:
        if self.learning_rate.low >= self.learning_rate.high:
            raise ValueError(
                f"learning_rate.low must be < learning_rate.high, got low={self.learning_rate.low} "
                f"high={self.learning_rate.high}"
            )
        ds = self.axes.dataset_size
        if isinstance(ds, LogRange) and ds.low >= ds.high:
            raise ValueError(f"axes.dataset_size.low must be < high, got low={ds.low} high={ds.high}")
        k = self.packing.adapters_per_worker
        if k > 1 and self.lora.dropout != 0:
            raise ValueError(
                f"packing.adapters_per_worker > 1 requires lora.dropout 0 (packed adapters train "
                f"without dropout), got adapters_per_worker={k} dropout={self.lora.dropout}"
            )
        if self.resources.gpus == 0:  # CUDA-only options: refuse them before anything runs
            if self.train.precision == "fp16":
                raise ValueError("train.precision: fp16 training requires a CUDA GPU: set resources.gpus > 0 "
                                 "or use fp32, bf16 or auto (got 'fp16' with resources.gpus 0)")  # fmt: skip
            if self.lora.quantize is not None:
                raise ValueError(f"lora.quantize: 4-bit QLoRA (bitsandbytes) requires a CUDA GPU: set "
                                 f"resources.gpus > 0 (got {self.lora.quantize!r} with resources.gpus 0)")  # fmt: skip
        return self

    # -- derived views ---------------------------------------------------
    def cells(self) -> list[Cell]:
        ranks = self.axes.lora_r or [self.lora.r]
        return [
            Cell(dataset_size=d, epochs=e, lora_r=r)
            for r in sorted(ranks)
            for d in self.axes.dataset_sizes()
            for e in self.axes.epoch_values()
        ]

    def planned_trials(self) -> int:
        """Trials every cell gets: trials_per_cell LR trials plus the repeat seeds."""
        return len(self.cells()) * (self.trials_per_cell + self.seeds.repeat_best)

    def max_trials(self) -> int:
        """planned_trials plus every cell's sampler.extra_trials (taken only by unbracketed cells)."""
        return self.planned_trials() + len(self.cells()) * self.sampler.extra_trials

    def run_dir(self, out: str | Path | None = None) -> Path:
        return Path(out) if out is not None else Path(self.storage.results_dir) / self.name

    def optuna_url(self, run_dir: Path) -> str:
        """The Optuna storage URL to connect to, ${VAR}s read from the environment (SpecError
        naming the variable when unset). Print `redact_url` of it, never the URL itself."""
        if not self.storage.optuna:
            return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
        url = expand_env(self.storage.optuna, field="storage.optuna", source=self.source or "<spec>")
        if not _URL.match(url):
            raise SpecError(f"{self.source}: storage.optuna: must be an SQLAlchemy URL starting sqlite://, "
                            f"postgresql:// or mysql:// (got {redact_url(url)!r})")  # fmt: skip
        return url

    def without_secrets(self) -> StudySpec:
        """The spec with a storage URL's password redacted, a ${VAR} kept as written: what may be
        written, pickled (Ray Tune's tuner.pkl holds the searcher and callbacks) or shipped."""
        out = self
        if self.storage.optuna:
            out = out.model_copy(update={"storage": self.storage.model_copy(
                update={"optuna": redact_url(self.storage.optuna)})})  # fmt: skip
        ml = self.tracking.mlflow
        if ml is not None and redact_url(ml.tracking_uri) != ml.tracking_uri:
            ml = ml.model_copy(update={"tracking_uri": redact_url(ml.tracking_uri)})
            out = out.model_copy(update={"tracking": self.tracking.model_copy(update={"mlflow": ml})})
        return out

    def mlflow_uri(self) -> str | None:
        """tracking.mlflow.tracking_uri with its ${VAR}s read from the environment (SpecError naming
        the variable when unset); None when MLflow is off. Print `redact_url` of it, never itself."""
        if self.tracking.mlflow is None:
            return None
        return expand_env(self.tracking.mlflow.tracking_uri, field="tracking.mlflow.tracking_uri",
                          source=self.source or "<spec>")  # fmt: skip

    def sweep_plan(self, out: str | Path | None = None) -> SweepPlan:
        """Everything a sweep derives from the spec, worked out once (SpecError for an unset
        ${VAR} in storage.optuna or tracking.mlflow.tracking_uri) before anything is written."""
        run_dir = self.run_dir(out).resolve()
        url = self.optuna_url(run_dir)
        return SweepPlan(
            run_dir=run_dir,
            url=url,
            url_shown=redact_url(url) or "",
            own_storage=not self.storage.optuna,
            safe=self.without_secrets(),
            worker_spec=self.to_record(),
            mlflow_uri=self.mlflow_uri(),
            planned=self.planned_trials(),
            cells=self.cells(),
        )

    def to_record(self, *, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The spec as plain data to write or ship (spec.yaml, Ray workers), without secrets; a
        resume reads a ${VAR} again."""
        return self.without_secrets().model_dump(mode="json", exclude={"source", *exclude})

    def facts(self) -> dict[str, Any]:
        """What analysis needs to know about the study beyond the raw spec, as plain values."""
        return {
            "dataset_sizes": list(self.axes.dataset_sizes()),
            "epochs": list(self.axes.epoch_values()),
            "planned_trials": self.planned_trials(),
        }


@dataclass(frozen=True)
class SweepPlan:
    """What one sweep derives from its spec (StudySpec.sweep_plan)."""

    run_dir: Path  # resolved
    url: str  # the Optuna storage to connect to: may hold a password, never print it
    url_shown: str  # the same, password redacted: what is printed and written
    own_storage: bool  # the run directory's own optuna.db (no storage.optuna given)
    safe: StudySpec  # without secrets: what Ray Tune may pickle
    worker_spec: dict[str, Any]  # what Ray workers get (to_record: no password)
    mlflow_uri: str | None  # tracking.mlflow.tracking_uri with its ${VAR}s read
    planned: int  # planned_trials()
    cells: list[Cell]  # cells()


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-after", "list[", "LogRange"))]
    return ".".join(parts) or "(top level)"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        # a union (list | LogRange) reports both branches: keep the one the user wrote
        branch = [str(p) for p in e["loc"] if str(p).startswith(("list[", "LogRange"))]
        if branch and e["type"] in ("dict_type", "model_type", "model_attributes_type", "list_type"):
            continue
        field = _loc(e["loc"])
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
            value = None
        if field == "(top level)" or (isinstance(value, dict) and e["type"] != "model_type"):
            value = None  # a cross-field rule: its message already quotes the values
            named = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", msg, re.S)
            if field == "(top level)" and named:  # the rule names its own field first
                field, msg = named.groups()
        if field.startswith(("storage", "tracking")) and isinstance(value, str):
            value = redact_url(value)
        shown = "" if value is None else f" (got {value!r})"
        lines.append(f"{source}: {field}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: Any, *, source: str = "<spec>") -> StudySpec:
    """Validate a mapping (already parsed YAML) into a StudySpec."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: (top level): must be a mapping of keys to values (got {type(data).__name__})")
    try:
        spec = StudySpec.model_validate({**data, "source": source})
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None
    if spec.task.kind in ("jsonl", "chat"):
        path = Path(spec.task.path)  # type: ignore[arg-type]
        if not path.is_absolute() and source != "<spec>":
            # relative task files are relative to the spec file, like an include
            cand = Path(source).parent / path
            path = cand if cand.exists() else path
        if not path.exists():
            raise SpecError(f"{source}: task.path: file must exist (got {spec.task.path!r})")
        spec = spec.model_copy(update={"task": spec.task.model_copy(update={"path": str(path)})})
    return spec


def with_packing(spec: StudySpec, adapters_per_worker: int) -> StudySpec:
    """The spec with packing.adapters_per_worker replaced (the sweep's --adapters-per-worker),
    validated again: a pack still needs lora.dropout 0."""
    data = spec.model_dump(mode="json", exclude={"source"})
    data["packing"] = {"adapters_per_worker": adapters_per_worker}
    return parse_spec(data, source=f"{spec.source} with --adapters-per-worker")


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec file."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{p}: file does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    return parse_spec(data, source=str(p))
