"""The worker's side of a trial: the cached base model, its tokenised data, the batches
and the peft adapter every trial starts from.

Read top to bottom:
  1. the worker cache: the base model is loaded once per process and reused
  2. the task's token ids, cached per worker (train pools are nested: only the new tail)
  3. batches (right-padded for training and scoring, left-padded for decoding)
  4. the model's facts a trial needs: its KV-cache argument, Kaplan's N
  5. attach_lora: the one place an adapter's initial A, B are made; save_lora writes a
     trained one in peft's own format
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from scaling.models import _non_embedding, load_base_model, resolve_target_modules
from scaling.tasks import make_task
from scaling.tokens import Tokenized, prompt_targets, tokenize_split
from scaling.trial.config import TrialConfig

__all__ = [
    "WorkerBase", "attach_lora", "cache_kwarg", "get_base", "get_data", "left_padded", "n_targets",
    "non_embedding_params", "right_padded", "save_lora", "truncated_counts", "weights_fingerprint",
]  # fmt: skip

# -----------------------------------------------------------------------------
# 1. Worker cache. The caller keeps one dict per worker process (Ray reuses actors);
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
# 2. Token ids


def _data(cfg: TrialConfig, cache: dict, base: WorkerBase) -> dict:
    """The cached entry of cfg's task: its token ids and which were cut to cfg.max_length."""
    key = (cfg.task_kind, cfg.task_digits, cfg.task_path, cfg.task_seed, cfg.task_split,
           cfg.validation_size, cfg.test_size, cfg.max_length, base.key)  # fmt: skip
    data = cache.setdefault("data", {})
    if key not in data:
        task = make_task(kind=cfg.task_kind, digits=cfg.task_digits, path=cfg.task_path,
                         seed=cfg.task_seed, validation_size=cfg.validation_size,
                         test_size=cfg.test_size, split=cfg.task_split)  # fmt: skip
        max_len = getattr(base.model.config, "max_position_embeddings", None) or 10**9
        tok = dict(tokenizer=base.tokenizer, max_len=max_len, max_length=cfg.max_length)
        val = tokenize_split(task.validation(), split="validation", **tok)
        test = tokenize_split(task.test(), split="test", **tok)
        data[key] = {"task": task, "train": [], "train_cut": [], "val": val.items, "test": test.items,
                     "val_cut": val.truncated, "test_cut": test.truncated, "tok": tok}  # fmt: skip
    entry = data[key]
    have = len(entry["train"])
    if have < cfg.dataset_size:  # pools are nested: tokenize only the new tail
        pool = entry["task"].train_pool(cfg.dataset_size)[have:]
        tail = tokenize_split(pool, split="training", **entry["tok"])
        entry["train"] += tail.items
        entry["train_cut"] += [have + i for i in tail.truncated]
    return entry


def get_data(cfg: TrialConfig, cache: dict, base: WorkerBase) -> tuple[Tokenized, Tokenized, Tokenized]:
    """(train, validation, test) token ids; the task and its tokens are cached per worker."""
    entry = _data(cfg, cache, base)
    return entry["train"][: cfg.dataset_size], entry["val"], entry["test"]


def trial_data(cfg: TrialConfig, cache: dict, base: WorkerBase):
    """get_data's (train, val, test), and truncated_counts when cfg.max_length is set (else None)."""
    entry, n = _data(cfg, cache, base), cfg.dataset_size
    cut = None if cfg.max_length is None else {
        "train": sum(i < n for i in entry["train_cut"]), "val": len(entry["val_cut"]), "test": len(entry["test_cut"])}
    return entry["train"][:n], entry["val"], entry["test"], cut


def truncated_counts(cfg: TrialConfig, cache: dict, base: WorkerBase) -> dict[str, int] | None:
    """How many of the trial's training examples (its first dataset_size), and of validation and
    test, cfg.max_length cut: {"train": n, "val": n, "test": n}; None without max_length."""
    return trial_data(cfg, cache, base)[3]


# -----------------------------------------------------------------------------
# 3. Batches


def n_targets(items: Tokenized) -> int:
    """Target tokens of a batch: every answer's, and a chat prompt's earlier assistant turns'."""
    return sum(len(a) + len(prompt_targets(p)) for p, a in items)


def right_padded(items: Tokenized, pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T) = prompt + answer + pad, and targets (B, T) = the next token at answer
    positions (and at a chat prompt's earlier assistant tokens), -100 elsewhere. Padding sits
    after every real token, so a causal model needs no attention mask: real tokens never
    attend to it."""
    T = max(len(p) + len(a) for p, a in items) - 1  # the last answer token is never an input
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    y = torch.full((len(items), T), -100, dtype=torch.long)
    for i, (p, a) in enumerate(items):
        seq = p + a
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        y[i, len(p) - 1 : len(seq) - 1] = torch.tensor(a)  # position t predicts token t+1
        for t in prompt_targets(p):  # never 0: a chat's first token has nothing before it
            y[i, t - 1] = p[t]
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
# 4. The model's facts


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5 renamed the KV-cache argument and output from past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan's N: every parameter except embedding tables (a tied lm_head is the embedding);
    the same count models.py records per row as model_params_n."""
    return _non_embedding(model)



# -----------------------------------------------------------------------------
# 5. The adapter


def attach_lora(model: torch.nn.Module, cfg: TrialConfig) -> torch.nn.Module:
    """peft LoRA on `model`, initialised under torch.manual_seed(cfg.seed): the one place a
    trial's adapter is made (trial/pack.py copies A, B out of it)."""
    targets = resolve_target_modules(model, cfg.target_modules, model_name=cfg.model)  # TargetModulesError
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")  # fmt: skip
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora)
    except ValueError as e:
        raise ValueError(f"target_modules {cfg.target_modules} do not fit model {cfg.model!r}: {e}") from e


def save_lora(model: torch.nn.Module, cfg: TrialConfig, weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
              out_dir: str) -> torch.nn.Module:  # fmt: skip
    """Write a trained adapter (``weights``: module name -> (A, B), as peft keeps lora_A / lora_B)
    in peft's format to ``out_dir``: peft itself attaches the same LoRA to the unwrapped base
    ``model``, takes the weights and saves, so `PeftModel.from_pretrained(base, out_dir)` loads
    it; the base comes back unchanged (unload: returned, as in trial/pack.py) and the global RNG
    is left as it was."""
    with torch.random.fork_rng(devices=[]):  # attach_lora seeds torch; a pack's others must not see it
        peft_model = attach_lora(model, cfg)
    try:
        got = set()
        with torch.no_grad():
            for name, mod in model.named_modules():
                if name in weights and hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    a, b = weights[name]
                    mod.lora_A["default"].weight.copy_(a)
                    mod.lora_B["default"].weight.copy_(b)
                    got.add(name)
        if got != set(weights):  # never expected: the same cfg wraps the same modules
            raise RuntimeError(f"adapter modules {sorted(set(weights) - got)} not found when saving")
        peft_model.save_pretrained(out_dir)
    finally:
        model = peft_model.unload()
    return model
