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

The sections (TaskSpec ... TrackingSpec, with SpecError and redact_url) are defined in
scaling/spec_sections.py; callers import them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scaling.family import BUILTIN_TINY, model_label
from scaling.spec_sections import (  # noqa: F401  (re-exported: scaling.spec is where callers import them)
    _URL,
    AxesSpec,
    BudgetSpec,
    EarlyStoppingSpec,
    EvalSpec,
    LogRange,
    LoraSpec,
    LRRange,
    MlflowSpec,
    PackingSpec,
    PosInt,
    ResourcesSpec,
    SamplerSpec,
    SeedsSpec,
    SpecError,
    StorageSpec,
    TaskSpec,
    TrackingSpec,
    TrainSpec,
    WandbSpec,
    _Frozen,
    expand_env,
    redact_url,
)

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
    "BudgetSpec",
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


class Cell(BaseModel):
    """One point of the study's grid: the axes, not the LR. ``model`` is set only when the spec has
    a model axis (axes.model); without one the key is today's ``D=..,E=..,r=..``."""

    model_config = ConfigDict(frozen=True)
    dataset_size: int
    epochs: int
    lora_r: int
    model: str | None = None

    @property
    def key(self) -> str:
        axes = f"D={self.dataset_size},E={self.epochs},r={self.lora_r}"
        return axes if self.model is None else f"M={model_label(self.model)},{axes}"


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
    budget: BudgetSpec | None = None  # sampler.mode optimize only (and required there)
    source: str | None = None  # the file it came from (set by load_spec)

    @model_validator(mode="before")
    @classmethod
    def _model_from_axis(cls, data: Any) -> Any:
        # with a model axis and no top-level model, `model` is the axis's first: spec.yaml then
        # writes a model that validates again, and code reading spec.model gets one of the axis's
        if isinstance(data, dict) and "model" not in data:
            axes = data.get("axes")
            models = axes.get("model") if isinstance(axes, dict) else None
            if isinstance(models, list) and models and isinstance(models[0], str):
                data = {**data, "model": models[0]}
        return data

    @field_validator("lora", mode="after")
    @classmethod
    def _lora_targets_for_model(cls, v: LoraSpec, info: Any) -> LoraSpec:
        # lora.target_modules is never None after validation: the model(s) decide the default
        axes = info.data.get("axes")
        models = axes.base_models() if isinstance(axes, AxesSpec) else None
        return v.for_models(models or [info.data.get("model", BUILTIN_TINY)])

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
        models = self.axes.base_models()
        if models is not None and "model" in self.model_fields_set and self.model not in models:
            raise ValueError(
                f"model {self.model!r} is not one of axes.model {list(models)}: with a model axis leave "
                "the top-level model out (or name one of the axis's models)"
            )
        k = self.packing.adapters_per_worker
        if k > 1 and self.lora.dropout != 0:
            raise ValueError(
                f"packing.adapters_per_worker > 1 requires lora.dropout 0 (packed adapters train "
                f"without dropout), got adapters_per_worker={k} dropout={self.lora.dropout}"
            )
        mode, k, rb = self.sampler.mode, self.packing.adapters_per_worker, self.seeds.repeat_best
        for bad, rule in (
            (mode == "optimize" and self.budget is None,
             "budget: is required when sampler.mode is 'optimize': give {flops: X} or {trial_hours: X} (got none)"),
            (mode == "cells" and self.budget is not None,
             f"budget: applies to sampler.mode 'optimize' only (got mode 'cells' and budget {self.budget and self.budget.model_dump(exclude_none=True)})"),
            (mode == "cells" and self.sampler.objective != "single",
             "sampler.objective: 'multi' needs sampler.mode 'optimize' (got mode 'cells')"),
            (mode == "optimize" and k > 1,
             f"packing.adapters_per_worker: must be 1 with sampler.mode 'optimize', a pack shares one (D, epochs) (got {k})"),
            (mode == "optimize" and rb > 0, f"seeds.repeat_best: must be 0 with sampler.mode 'optimize' (got {rb})"),
            # optimize samples D, epochs, rank and LR on one base; it would train axes.model's first only
            (mode == "optimize" and models is not None,
             f"axes.model: must be unset with sampler.mode 'optimize', which searches D, epochs, LoRA rank and LR "
             f"for one base model: give it as the top-level model and run one optimize study per model, or use "
             f"sampler.mode 'cells' to compare models (got {list(models or ())})"),
        ):  # fmt: skip
            if bad:
                raise ValueError(rule)
        if self.resources.gpus == 0:  # CUDA-only options: refuse them before anything runs
            if self.train.precision == "fp16":
                raise ValueError("train.precision: fp16 training requires a CUDA GPU: set resources.gpus > 0 "
                                 "or use fp32, bf16 or auto (got 'fp16' with resources.gpus 0)")  # fmt: skip
            if self.lora.quantize is not None:
                raise ValueError(f"lora.quantize: 4-bit QLoRA (bitsandbytes) requires a CUDA GPU: set "
                                 f"resources.gpus > 0 (got {self.lora.quantize!r} with resources.gpus 0)")  # fmt: skip
        return self

    # -- derived views ---------------------------------------------------
    def models(self) -> tuple[str, ...]:
        """The base models the study fine-tunes: axes.model, else the top-level model alone."""
        return self.axes.base_models() or (self.model,)

    def cells(self) -> list[Cell]:
        ranks = self.axes.lora_r or [self.lora.r]
        models: tuple[str | None, ...] = self.axes.base_models() or (None,)  # None: today's cells
        return [
            Cell(dataset_size=d, epochs=e, lora_r=r, model=m)
            for m in models
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
            models=tuple(self.models()),
            source=self.source or "<spec>",
            objectives=2 if self.sampler.mode == "optimize" and self.sampler.objective == "multi" else 1,
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
            # sampler.mode optimize plans no count: the budget decides
            "planned_trials": self.planned_trials() if self.sampler.mode == "cells" else None,
            **({"models": list(self.models())} if self.axes.model is not None else {}),
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
    models: tuple[str, ...]  # models(): the base models (axes.model, else model)
    source: str  # the spec's file, for messages
    objectives: int  # of the Optuna studies: 2 for sampler.mode optimize, objective multi


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
