"""The sections of a study spec (task, axes, learning_rate, lora, eval, train, resources,
sampler, budget, storage, early_stopping, seeds, packing, tracking), each a frozen pydantic
model with its own rules; scaling/spec.py assembles them into StudySpec and is where callers
import them from. Also: SpecError, and the secrets rules (redact_url, expand_env).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from analysis.redact import redact_url
from scaling.family import BUILTIN_TINY, TINY_WIDTHS, is_tiny, looks_tiny, model_label, tiny_name

__all__ = [
    "SpecError",
    "redact_url",
    "expand_env",
    "_Frozen",
    "TaskSpec",
    "LogRange",
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
    "MlflowSpec",
    "WandbSpec",
    "TrackingSpec",
]


class SpecError(ValueError):
    """A study spec broke a rule. The message names file, field, rule and value."""


# -- secrets: a password in a storage URL is never printed or written (analysis.redact) ------
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
def expand_env(value: str, *, field: str, source: str) -> str:
    """``${VAR}`` references in a spec value, from the environment; a SpecError naming the file,
    field, rule and the variable (never a value) when one is unset."""

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise SpecError(f"{source}: {field}: environment variable {name} must be set (the spec says "
                            f"{redact_url(value)!r}); export it before running")  # fmt: skip
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "org/name" (as models.py)


def _check_model_entry(i: int, name: Any) -> str:
    """One axes.model entry: an embedded name, a model directory, or a hub id (ValueError naming it)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"entry {i} must be a non-empty model name or path (got {name!r})")
    if looks_tiny(name):
        if not is_tiny(name):
            known = ", ".join(tiny_name(w) for w in TINY_WIDTHS)
            raise ValueError(f"entry {i} {name!r} is not a model of the embedded family; its names are {known}")
        return name
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or ("/" in name and Path(name.split("/")[0]).is_dir())
    if path.is_dir() or (not looks_local and _HUB_ID.match(name)):
        return name
    if looks_local:
        raise ValueError(f"entry {i} {name!r} must be an existing model directory (no such directory)")
    raise ValueError(f"entry {i} {name!r} must be an embedded model ({BUILTIN_TINY}, {BUILTIN_TINY}-w64, ...), "
                     "a model directory or a hub id (org/name)")  # fmt: skip


class AxesSpec(_Frozen):
    dataset_size: list[PosInt] | LogRange
    epochs: list[PosInt] = Field(default_factory=lambda: [1])
    lora_r: list[PosInt] | None = None  # optional rank axis
    # optional base-model axis: embedded names (tiny-llama, tiny-llama-w64, ...), hub ids or model
    # directories. Unset: the spec's top-level `model` is the one model, with today's cells,
    # cell keys and Optuna study names (a run from before the axis resumes unchanged)
    model: list[Any] | None = None

    @field_validator("model")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one model")
        names = [_check_model_entry(i, m) for i, m in enumerate(v)]
        if len(set(names)) != len(names):
            raise ValueError("models must be unique")
        labels: dict[str, str] = {}
        for m in names:
            other = labels.setdefault(model_label(m), m)
            if other != m:
                raise ValueError(f"{other!r} and {m!r} would share the cell label {model_label(m)!r} "
                                 "(M=.. in cell keys); rename one")  # fmt: skip
        return names

    @model_serializer(mode="wrap")
    def _without_unset_model(self, handler: Any) -> Any:
        # a spec without the axis writes (and compares, on resume) exactly what it did before it
        data = handler(self)
        if isinstance(data, dict) and data.get("model") is None:
            data.pop("model", None)
        return data

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

    def base_models(self) -> tuple[str, ...] | None:
        """The base models in the order written, or None when the spec has no model axis."""
        return tuple(self.model) if self.model is not None else None


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
        return self.for_models([model])

    def for_models(self, models: list[str] | tuple[str, ...]) -> LoraSpec:
        """target_modules filled in for every model of the study when it was left unset: the Llama
        projection list when every model is embedded, else "all-linear" (peft's rule, which on an
        embedded Llama picks exactly those projections), so one setting fits each model."""
        if self.target_modules is not None:
            return self
        targets = list(TINY_TARGET_MODULES) if all(is_tiny(m) for m in models) else "all-linear"
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
    # cells: every (dataset_size, epochs, rank) cell gets trials_per_cell LR trials, the scaling
    # design. optimize: ONE Optuna study over (D, epochs, LR[, rank]) under the spec's `budget`
    # (scaling/sweep/optimize.py): TPE for objective single (val loss), NSGA-II for multi (val loss
    # and train FLOPs); kind, anchor, extra_trials and trials_per_cell are the cells mode's only
    mode: Literal["cells", "optimize"] = "cells"
    objective: Literal["single", "multi"] = "single"
    # tpe/random: the first trial of every cell sits at the log-midpoint of the LR range:
    # with 3-8 trials per cell, a fixed anchor stops a cell from being judged on unlucky
    # draws (bracket places its first trial itself)
    anchor: bool = True
    # a cell whose best LR still has no tried LR on one side after trials_per_cell (and is not
    # at the range's edge there) gets up to this many more LR trials, one at a time, stepping
    # out on the open side: an unbracketed optimum is only a bound. Seed noise on the demo left
    # 3-7 of 10 cells unbracketed after 3 trials; one more trial brackets most of them
    extra_trials: Annotated[int, Field(ge=0)] = 2


class BudgetSpec(_Frozen):
    # sampler.mode optimize: the study's compute, exactly one of training FLOPs (train_flops as the
    # table records it: 6 x forward-pass parameters x training tokens) and trial-hours (the sum of
    # trials' wall_seconds / 3600, as GPU-hours count one trial's resources). A trial estimated to
    # cost more than max_trial_share of it is not run (infeasible): a tenth keeps ten trials at least
    flops: Annotated[float, Field(gt=0)] | None = None
    trial_hours: Annotated[float, Field(gt=0)] | None = None
    max_trial_share: Annotated[float, Field(gt=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        if (self.flops is None) == (self.trial_hours is None):
            raise ValueError(f"must give exactly one of flops and trial_hours (got flops={self.flops}, "
                             f"trial_hours={self.trial_hours})")  # fmt: skip
        return self

    def total(self) -> float:
        """The budget in its own unit (FLOPs or trial-hours)."""
        return float(self.flops if self.flops is not None else self.trial_hours)  # type: ignore[arg-type]


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
    # K LoRA trials of one cell trained at once on one copy of the base (scaling/trial/pack.py):
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
