"""One LoRA fine-tune trial: (base model, task, D, epochs, lr) -> one metrics dict per epoch.

The sweep calls run_trial in a worker process and turns each report(metrics) into a
row of the results table. Nothing here knows about Ray: the sweep passes callbacks.

Read top to bottom:
  1. TrialConfig and TrialDiverged
  2. the worker cache: the base model is loaded once per process and reused
  3. tokenizing a task (answer tokens = completion + eos)
  4. batches (right-padded for training and scoring, left-padded for decoding)
  5. evaluation: teacher-forced loss / token accuracy / log-prob, greedy exact match
  6. run_trial: adapter, AdamW, warmup + cosine, epochs, report, clean up
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from analysis.table import METRIC_KEYS
from scaling.models import load_base_model
from scaling.tasks import Example, TaskError, make_task

__all__ = [
    "TrialConfig", "TrialDiverged", "run_trial",
    # the parts of a trial that scaling/packed.py shares, so a packed trial is built
    # exactly as a solo one: the worker's base, its data, the batches, the adapter
    "WorkerBase", "Tokenized", "attach_lora", "cache_kwarg", "get_base", "get_data",
    "left_padded", "non_embedding_params", "right_padded", "weights_fingerprint",
]  # fmt: skip

# -----------------------------------------------------------------------------
# 1. Config


@dataclass(frozen=True)
class TrialConfig:
    model: str  # name_or_path understood by models.ensure_base_model
    task_kind: str  # "addition" | "jsonl"
    task_digits: int
    task_path: str | None
    task_seed: int  # fixes the split; train pools are nested prefixes for one task_seed
    dataset_size: int  # D: training examples (a prefix of the task's training pool)
    epochs: int
    learning_rate: float  # peak LR after warmup
    lora_r: int = 8  # rank 8 on every projection learns 2-digit addition on the tiny base
    lora_alpha: float = 16  # alpha / r = 2, the common LoRA scaling
    lora_dropout: float = 0.0  # the runs are short and data-limited by design: no dropout noise
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip  (all Llama projections)
    batch_size: int = 32  # small batches: many steps even at D = 500
    seed: int = 0  # adapter init + data order
    validation_size: int = 500  # 500 problems: exact match to within ~±0.02
    test_size: int = 500
    warmup_fraction: float = 0.05  # of all steps; Adam's moment estimates settle in a few dozen
    weight_decay: float = 0.0  # adapters start at zero (B = 0); decay would pull them back there
    threads: int = 1  # one trial per core: the sweep packs trials, not threads

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
        if not self.target_modules:
            raise ValueError(f"target_modules must name at least one module, got {self.target_modules!r}")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TrialDiverged(RuntimeError):
    """Training blew up: a NaN/inf loss or gradient, or a dead (all-zero) gradient.

    Usually the learning rate is too high; the sweep records the trial as failed."""


# -----------------------------------------------------------------------------
# 2. Worker cache. The caller keeps one dict per worker process (Ray reuses actors);
# it holds the base model, the tokenizer and tokenized tasks. get_peft_model edits
# the base model in place, so each trial ends with unload() and a check that the base
# weights are what they were when loaded.


@dataclass
class WorkerBase:
    key: tuple
    model: torch.nn.Module
    tokenizer: object
    fingerprint: dict[str, int]


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def weights_fingerprint(model: torch.nn.Module) -> dict[str, int]:
    """Per tensor, the integer sum of its raw bits: exact and independent of summation order
    (so of the thread count), computed on the device, cheap even for a 7B base."""
    with torch.no_grad():
        return {
            name: t.contiguous().view(_INT_VIEW[t.element_size()]).sum(dtype=torch.int64).item()
            for name, t in model.state_dict().items()
        }


def get_base(cfg: TrialConfig, cache: dict, device: str) -> WorkerBase:
    key = (cfg.model, device)
    base = cache.get("base")
    if base is None or base.key != key:
        cache.pop("base", None)  # one base model per worker: free the old one first
        model, tokenizer = load_base_model(cfg.model, device=device)
        for p in model.parameters():
            p.requires_grad_(False)
        base = WorkerBase(key=key, model=model, tokenizer=tokenizer, fingerprint=weights_fingerprint(model))
        cache["base"] = base
    return base


# -----------------------------------------------------------------------------
# 3. Tokenizing: prompt ids (with the tokenizer's own bos, if it adds one) and answer
# ids = completion ids + eos. Loss, accuracy and log-prob are over answer ids only.

Tokenized = list[tuple[list[int], list[int]]]  # [(prompt_ids, answer_ids)]


def _tokenize(examples: list[Example], tokenizer, *, split: str, max_len: int) -> Tokenized:
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    unk, eos = tokenizer.unk_token_id, tokenizer.eos_token_id
    if eos is None:
        raise TaskError(f"the model's tokenizer has no eos token: answers could not end ({tokenizer!r:.80})")
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if unk is not None and (unk in p or unk in c):
            ex = examples[i]
            bad = sorted({ch for ch in ex.prompt + ex.completion
                          if unk in tokenizer(ch, add_special_tokens=False)["input_ids"]})
            raise TaskError(
                f"{split} example {i} ({ex.prompt!r} -> {ex.completion!r}) has characters the "
                f"model's tokenizer does not know: {''.join(bad)!r}"
            )
        if not p:  # nothing to predict the first answer token from
            raise TaskError(f"{split} example {i} has an empty prompt and the tokenizer adds no bos token")
        a = c + [eos]
        if len(p) + len(a) > max_len:
            raise TaskError(
                f"{split} example {i} is {len(p) + len(a)} tokens, longer than the model's "
                f"{max_len} positions: {examples[i].prompt!r:.60}"
            )
        out.append((p, a))
    return out


def get_data(cfg: TrialConfig, cache: dict, base: WorkerBase) -> tuple[Tokenized, Tokenized, Tokenized]:
    """(train, validation, test) token ids; the task and its tokens are cached per worker."""
    key = (cfg.task_kind, cfg.task_digits, cfg.task_path, cfg.task_seed,
           cfg.validation_size, cfg.test_size, base.key)  # fmt: skip
    data = cache.setdefault("data", {})
    if key not in data:
        task = make_task(kind=cfg.task_kind, digits=cfg.task_digits, path=cfg.task_path,
                         seed=cfg.task_seed, validation_size=cfg.validation_size,
                         test_size=cfg.test_size)  # fmt: skip
        max_len = getattr(base.model.config, "max_position_embeddings", None) or 10**9
        val = _tokenize(task.validation(), base.tokenizer, split="validation", max_len=max_len)
        test = _tokenize(task.test(), base.tokenizer, split="test", max_len=max_len)
        data[key] = {"task": task, "train": [], "val": val, "test": test, "max_len": max_len}
    entry = data[key]
    have = len(entry["train"])
    if have < cfg.dataset_size:  # pools are nested: tokenize only the new tail
        pool = entry["task"].train_pool(cfg.dataset_size)[have:]
        entry["train"] += _tokenize(pool, base.tokenizer, split="training", max_len=entry["max_len"])
    return entry["train"][: cfg.dataset_size], entry["val"], entry["test"]


# -----------------------------------------------------------------------------
# 4. Batches


def right_padded(items: Tokenized, pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T) = prompt + answer + pad, and targets (B, T) = the next token at answer
    positions, -100 elsewhere. Padding sits after every real token, so a causal model needs
    no attention mask: real tokens never attend to it."""
    T = max(len(p) + len(a) for p, a in items) - 1  # the last answer token is never an input
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    y = torch.full((len(items), T), -100, dtype=torch.long)
    for i, (p, a) in enumerate(items):
        seq = p + a
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        y[i, len(p) - 1 : len(seq) - 1] = torch.tensor(a)  # position t predicts token t+1
    return x.to(device), y.to(device)


def left_padded(prompts: list[list[int]], pad_id: int, device: str):
    """input_ids, attention_mask, position_ids (B, T) for batched greedy decoding."""
    T = max(len(p) for p in prompts)
    x = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return x.to(device), mask.to(device), pos.to(device)


# -----------------------------------------------------------------------------
# 5. Evaluation


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5 renamed the KV-cache argument and output from past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@torch.no_grad()
def _evaluate(model, items: Tokenized, *, pad_id: int, cache_kw: str, batch_size: int,
              device: str) -> dict[str, float]:  # fmt: skip
    """eval_loss: mean cross-entropy per answer token; token_accuracy: teacher-forced argmax
    over answer tokens; answer_logprob: mean over examples of the summed log-prob of the
    answer; exact_match: greedy decoding gives the completion and then eos."""
    if not items:  # validation_size or test_size 0
        return dict.fromkeys(("eval_loss", "token_accuracy", "exact_match", "answer_logprob"), math.nan)
    loss_sum, correct, n_tokens, logprob_sum, exact = 0.0, 0, 0, 0.0, 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        # teacher-forced scoring
        x, y = right_padded(chunk, pad_id, device)  # (B, T), (B, T)
        logits = model(input_ids=x).logits.float()  # (B, T, V)
        mask = y != -100  # (B, T)
        nll = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")  # (B, T)
        loss_sum += nll[mask].sum().item()
        logprob_sum -= nll.sum().item()  # ignored positions are 0
        correct += ((logits.argmax(-1) == y) & mask).sum().item()
        n_tokens += mask.sum().item()
        # greedy decoding, batched with left padding and the KV cache
        answers = [a for _, a in chunk]
        steps = max(len(a) for a in answers)  # longest completion + eos
        ids, attn, pos = left_padded([p for p, _ in chunk], pad_id, device)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        generated = []
        for k in range(steps):
            nxt = out.logits[:, -1].argmax(-1)  # (B,)
            generated.append(nxt)
            if k == steps - 1:
                break
            attn = torch.cat([attn, attn.new_ones(len(chunk), 1)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                        use_cache=True, **{cache_kw: getattr(out, cache_kw)})  # fmt: skip
        gen = torch.stack(generated, 1).tolist()  # (B, steps)
        for g, a in zip(gen, answers, strict=True):
            # a already ends in eos, so equality means: the completion, then a stop
            exact += g[: len(a)] == a
    n = len(items)
    return {
        "eval_loss": loss_sum / n_tokens,
        "token_accuracy": correct / n_tokens,
        "exact_match": exact / n,
        "answer_logprob": logprob_sum / n,
    }


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan's N: every parameter except embedding tables (a tied lm_head is the embedding)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in emb and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# -----------------------------------------------------------------------------
# 6. The trial


def attach_lora(model: torch.nn.Module, cfg: TrialConfig) -> torch.nn.Module:
    """peft LoRA on `model`, initialised under torch.manual_seed(cfg.seed): the one place a
    trial's adapter is made, so a packed trial (scaling/packed.py) starts from the same A, B."""
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none",
                      task_type="CAUSAL_LM")  # fmt: skip
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora)
    except ValueError as e:
        raise ValueError(f"target_modules {cfg.target_modules} do not fit model {cfg.model!r}: {e}") from e


def run_trial(
    cfg: TrialConfig,
    *,
    report: Callable[[dict], None] | None = None,
    cache: dict | None = None,
    should_stop: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """Fine-tune a LoRA adapter for cfg.epochs epochs, evaluating after each.

    Returns every metrics dict passed to report (keys: METRIC_KEYS). Raises TrialDiverged
    when training blows up (NaN/inf loss or gradient, or a dead zero gradient), TaskError for
    unusable data (e.g. characters the tokenizer does not know), ValueError for a bad config.
    Deterministic on CPU for a config: the same cfg gives the same metrics (wall time aside),
    whether the base model comes from cache or is loaded fresh.
    """
    cache = {} if cache is None else cache
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    base = get_base(cfg, cache, device)
    peft_model = None
    try:
        # 6a. data (validated before anything is trained)
        train, val, test = get_data(cfg, cache, base)
        tok = base.tokenizer
        pad_id = tok.pad_token_id
        t0 = time.perf_counter()  # the trial's clock starts once the base model is loaded

        # 6b. the adapter: only LoRA A/B matrices are trainable; B = 0 at init, so the trial
        # starts exactly at the base model
        peft_model = attach_lora(base.model, cfg)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        # Kaplan's C = 6·N·T, N = non-embedding params of base + adapters. With a frozen base
        # the backward pass still flows through every base matrix (activation gradients), so
        # we keep 6·N·T; strictly the frozen weights' own gradients (2·N·T) are skipped, so
        # ~4·N·T is spent, but 6·N·T keeps the axis comparable with full fine-tunes.
        n_flop_params = non_embedding_params(peft_model)

        # 6c. AdamW; linear warmup then cosine decay to zero over all steps of the trial
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction else 0

        def lr_at(step: int) -> float:  # step is 0-based
            if step < warmup:
                return cfg.learning_rate * (step + 1) / warmup
            frac = (step - warmup) / max(1, total_steps - warmup)
            return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))

        gen = torch.Generator().manual_seed(cfg.seed)
        cache_kw = cache_kwarg(base.model)
        eval_batch = 4 * cfg.batch_size  # no activations kept for backward: 4x fits
        history: list[dict] = []
        step, train_tokens = 0, 0
        for epoch in range(1, cfg.epochs + 1):
            # 6d. one epoch over a fresh shuffle
            peft_model.train()
            order = torch.randperm(len(train), generator=gen).tolist()
            loss_sum, loss_tokens = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = [train[i] for i in order[start : start + cfg.batch_size]]
                x, y = right_padded(batch, pad_id, device)  # (B, T), (B, T)
                logits = peft_model(input_ids=x).logits  # (B, T, V)
                n_ans = int((y != -100).sum())
                loss = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100)
                loss_value = loss.item()
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()  # clip: guards high LRs
                # Divergence: a non-finite loss or gradient, or a gradient of exactly zero. The
                # last one is how a blown-up Llama dies: activations overflow, RMSNorm maps
                # them to 0, the logits go flat and no gradient flows back (seen at lr=1e3);
                # only a loss of exactly 0 may have a zero gradient.
                if not (math.isfinite(loss_value) and math.isfinite(grad_norm)
                        and (grad_norm > 0 or loss_value == 0)):
                    raise TrialDiverged(
                        f"training diverged at epoch {epoch}, step {step + 1} "
                        f"(learning_rate={cfg.learning_rate:g}): loss {loss_value:.4g}, gradient "
                        f"norm {grad_norm:.4g} (model={cfg.model!r}, dataset_size={cfg.dataset_size})"
                    )
                opt.step()
                step += 1
                loss_sum += loss_value * n_ans
                loss_tokens += n_ans
                train_tokens += sum(len(p) + len(a) for p, a in batch)

            # 6e. evaluate and report
            peft_model.eval()
            kw = dict(pad_id=pad_id, cache_kw=cache_kw, batch_size=eval_batch, device=device)
            v = _evaluate(peft_model, val, **kw)
            t = _evaluate(peft_model, test, **kw)
            metrics = {
                "epoch": epoch,
                "step": step,
                "train_loss": loss_sum / loss_tokens,
                "train_tokens": train_tokens,
                "train_flops": 6.0 * n_flop_params * train_tokens,
                "wall_seconds": time.perf_counter() - t0,
                **{f"val_{k}": x for k, x in v.items()},
                **{f"test_{k}": x for k, x in t.items()},
                "trainable_params": trainable,
            }
            metrics = {k: metrics[k] for k in METRIC_KEYS}
            history.append(metrics)
            if report is not None:
                report(metrics)
            if should_stop is not None and should_stop(metrics):
                break
        return history
    finally:
        # 6f. remove the adapter and make sure the cached base is pristine again
        if peft_model is not None:
            base.model = peft_model.unload()
            del peft_model
            base.model.eval()
            if weights_fingerprint(base.model) != base.fingerprint:  # never expected; don't trust it
                warnings.warn(f"base model {cfg.model!r} changed during a trial; reloading it",
                              RuntimeWarning, stacklevel=2)  # fmt: skip
                cache.pop("base", None)
        if device == "cuda":
            torch.cuda.empty_cache()
        torch.set_num_threads(prev_threads)
