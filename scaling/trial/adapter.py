"""One trial's state inside a pack: everything that defines its result.

Its peft initialisation under its seed, its data order, its AdamW, its warmup + cosine
schedule, the divergence rule and its metrics dicts. The pack (trial/pack.py) runs
the shared forward and backward; everything per trial is here, written once.

Read top to bottom:
  1. PackedTrial: the handle a caller holds
  2. _Adapter: schedule, data order, divergence rule, metrics dict
  3. _bind: stack the adapters' weights into the layers' layout
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from analysis.table import METRIC_KEYS
from scaling.tokens import Tokenized
from scaling.trial.config import TrialConfig, TrialDiverged
from scaling.trial.layer import _Layout

__all__ = ["PackedTrial"]

# -----------------------------------------------------------------------------
# 1. The handle


@dataclass(eq=False)
class PackedTrial:
    """The handle add() returns: what happened to one adapter.

    status: "running" | "ok" (all epochs, or stopped early by should_stop: see stopped) |
    "failed" (error holds the exception: TrialDiverged, TaskError, ValueError, or whatever
    its report / should_stop callback raised) | "cancelled" (the pack was closed first)."""

    cfg: TrialConfig
    history: list[dict] = field(default_factory=list)
    status: str = "running"
    error: BaseException | None = None
    stopped: bool = False
    # while it trains, its LoRA weights by module name: A (r, in), B (out, r), as peft keeps
    # them in lora_A / lora_B; emptied when it leaves
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    # where its trained adapter is written (peft format) when it ends well; None: not kept
    save_to: str | None = None
    # train.precision fp16: optimizer steps skipped because the gradient overflowed the loss scale
    skipped_steps: int = 0


# -----------------------------------------------------------------------------
# 2. One trial


class _Adapter:
    """State of one trial: its weights, optimiser, schedule, data order and running sums."""

    def __init__(self, cfg: TrialConfig, handle: PackedTrial, *, train: Tokenized,
                 val: Tokenized, test: Tokenized, init: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 base_params: int, t0: float,
                 report: Callable[[dict], None] | None,
                 should_stop: Callable[[dict], bool] | None,
                 truncated: dict[str, int] | None = None):  # fmt: skip
        self.cfg, self.handle = cfg, handle
        self.truncated = truncated  # with train.max_length: examples cut per split
        self.train, self.val, self.test = train, val, test
        self.report, self.should_stop = report, should_stop
        self.t0 = t0  # the trial's clock starts once the base model and data are ready
        # 2a. the adapter: peft's weights (B = 0, so the trial starts exactly at the base
        # model), as leaves of our own, in peft's parameter order (A then B per module)
        self.A = {n: torch.nn.Parameter(a) for n, (a, _) in init.items()}
        self.B = {n: torch.nn.Parameter(b) for n, (_, b) in init.items()}
        self.params = [p for n in init for p in (self.A[n], self.B[n])]
        self.r = cfg.lora_r
        self.scaling = cfg.lora_alpha / cfg.lora_r  # peft's scaling for plain LoRA
        self.trainable = sum(p.numel() for p in self.params)
        # Kaplan's C = 6·N·T, N = non-embedding params of base + adapters. With a frozen base
        # the backward pass still flows through every base matrix (activation gradients), so
        # we keep 6·N·T; strictly the frozen weights' own gradients (2·N·T) are skipped, so
        # ~4·N·T is spent, but 6·N·T keeps the axis comparable with full fine-tunes.
        self.n_flop_params = base_params + self.trainable
        # 2b. AdamW; foreach: one C++ loop over the adapter's tensors instead of ~10
        # Python-dispatched ops per tensor
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                     foreach=True)  # fmt: skip
        # 2c. linear warmup then cosine decay to zero over all steps of the trial
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = max(1, round(cfg.warmup_fraction * self.total_steps)) if cfg.warmup_fraction else 0
        self.gen = torch.Generator().manual_seed(cfg.seed)  # data order
        self.epoch, self.step, self.train_tokens = 0, 0, 0
        self.order: list[int] = []
        self.pos = 0  # next index into order
        self.loss_sum, self.loss_tokens = 0.0, 0

    def lr_at(self, step: int) -> float:  # step is 0-based
        cfg = self.cfg
        if step < self.warmup:
            return cfg.learning_rate * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))

    # 2d. data order: one epoch over a fresh shuffle from the trial's generator
    def next_batch(self) -> Tokenized:
        if self.pos >= len(self.order):
            self.epoch += 1
            self.order = torch.randperm(len(self.train), generator=self.gen).tolist()
            self.pos = 0
            self.loss_sum, self.loss_tokens = 0.0, 0
        idx = self.order[self.pos : self.pos + self.cfg.batch_size]
        self.pos += len(idx)
        return [self.train[i] for i in idx]

    @property
    def epoch_done(self) -> bool:
        return self.pos >= len(self.order)

    # 2e. the divergence rule: a non-finite loss or gradient, or a gradient of exactly zero.
    # The last one is how a blown-up Llama dies: activations overflow, RMSNorm maps them to
    # 0, the logits go flat and no gradient flows back (seen at lr=1e3); only a loss of
    # exactly 0 may have a zero gradient.
    def diverged(self, loss: float, grad_norm: float) -> TrialDiverged | None:
        if math.isfinite(loss) and math.isfinite(grad_norm) and (grad_norm > 0 or loss == 0):
            return None
        cfg = self.cfg
        return TrialDiverged(
            f"training diverged at epoch {self.epoch}, step {self.step + 1} "
            f"(learning_rate={cfg.learning_rate:g}): loss {loss:.4g}, gradient "
            f"norm {grad_norm:.4g} (model={cfg.model!r}, dataset_size={cfg.dataset_size})"
        )

    # 2f. after the optimizer step: the running sums of the epoch
    def stepped(self, loss: float, n_ans: int, batch: Tokenized) -> None:
        self.step += 1
        self.loss_sum += loss * n_ans
        self.loss_tokens += n_ans
        self.train_tokens += sum(len(p) + len(a) for p, a in batch)

    # 2g. the metrics dict of one evaluation (keys: METRIC_KEYS, in that order; with
    # train.max_length also train_truncated, val_truncated, test_truncated: examples cut)
    def metrics(self, val: dict[str, float], test: dict[str, float]) -> dict:
        metrics = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": self.loss_sum / self.loss_tokens,
            "train_tokens": self.train_tokens,
            "train_flops": 6.0 * self.n_flop_params * self.train_tokens,
            "wall_seconds": time.perf_counter() - self.t0,
            **{f"val_{k}": x for k, x in val.items()},
            **{f"test_{k}": x for k, x in test.items()},
            "trainable_params": self.trainable,
        }
        out = {k: metrics[k] for k in METRIC_KEYS}
        if self.truncated is not None:
            out.update({f"{split}_truncated": n for split, n in self.truncated.items()})
        return out


# -----------------------------------------------------------------------------
# 3. Binding


def _bind(layout: _Layout, adapters: list[_Adapter], names: list[str]) -> None:
    """Stack the adapters' weights (differentiably: gradients reach each adapter's leaves);
    a smaller rank is zero-padded, which adds exact zeros."""
    r = max(a.r for a in adapters)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        extra = r - t.shape[dim]
        if not extra:
            return t
        return F.pad(t, (0, 0, 0, extra) if dim == 0 else (0, extra))

    layout.weights = {
        n: (torch.stack([pad(a.A[n], 0) for a in adapters]),  # (G, r, in)
            torch.stack([pad(a.B[n], 1) for a in adapters]))  # (G, out, r)
        for n in names
    }  # fmt: skip
    first = adapters[0].A[names[0]]
    layout.scale = torch.tensor([a.scaling for a in adapters], dtype=first.dtype,
                                device=first.device).view(-1, 1, 1)  # fmt: skip

