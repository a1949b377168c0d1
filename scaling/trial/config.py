"""What one LoRA trial is: its frozen config, and the error a blown-up trial raises.

Read top to bottom:
  1. TrialConfig: model, task, D, epochs, LR, the adapter and the optimiser's settings
  2. TrialDiverged
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["PRECISIONS", "TrialConfig", "TrialDiverged"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# -----------------------------------------------------------------------------
# 1. Config


@dataclass(frozen=True)
class TrialConfig:
    model: str  # name_or_path understood by models.ensure_base_model
    task_kind: str  # "addition" | "jsonl" | "chat"
    task_digits: int
    task_path: str | None
    task_seed: int  # fixes the split; train pools are nested prefixes for one task_seed
    dataset_size: int  # D: training examples (a prefix of the task's training pool)
    epochs: int
    learning_rate: float  # peak LR after warmup
    lora_r: int = 8  # rank 8 on every projection learns 2-digit addition on the tiny base
    lora_alpha: float = 16  # alpha / r = 2, the common LoRA scaling
    lora_dropout: float = 0.0  # the runs are short and data-limited by design: no dropout noise
    # "all-linear" (peft's rule, any architecture) or module names; resolved against the loaded
    # model by scaling.models.resolve_target_modules. Default: all Llama projections.
    target_modules: str | tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip
    batch_size: int = 32  # small batches: many steps even at D = 500
    seed: int = 0  # adapter init + data order
    validation_size: int = 500  # 500 problems: exact match to within ~±0.02
    test_size: int = 500
    warmup_fraction: float = 0.05  # of all steps; Adam's moment estimates settle in a few dozen
    weight_decay: float = 0.0  # adapters start at zero (B = 0); decay would pull them back there
    threads: int = 1  # one trial per core: the sweep packs trials, not threads
    task_split: str | None = None  # addition: "pairs" (None: the default) | "ordered"
    max_length: int | None = None  # train.max_length: tokens per example, longer ones cut
    # spec train.precision / train.gradient_checkpointing / lora.quantize: how the base runs
    # (trial/base.py resolve_precision); one pack shares them, as it shares the base
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    quantize: str | None = None  # None | "4bit" (QLoRA, CUDA only)

    def __post_init__(self) -> None:
        for name in ("dataset_size", "epochs", "lora_r", "batch_size", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.learning_rate, int | float) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be an int >= 1 or None, got {self.max_length!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        if self.quantize not in (None, "4bit"):
            raise ValueError(f"quantize must be None or '4bit', got {self.quantize!r}")
        if not self.target_modules:
            raise ValueError(f"target_modules must name at least one module, got {self.target_modules!r}")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -----------------------------------------------------------------------------
# 2. Divergence


class TrialDiverged(RuntimeError):
    """Training blew up: a NaN/inf loss or gradient, or a dead (all-zero) gradient.

    Usually the learning rate is too high; the sweep records the trial as failed."""
