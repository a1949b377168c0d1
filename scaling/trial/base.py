"""The worker's side of a trial: the cached base model, its tokenised data, the batches
and the peft adapter every trial starts from.

Read top to bottom:
  1. the worker cache: the base model is loaded once per process and reused
  2. the task's token ids, cached per worker (train pools are nested: only the new tail)
  3. batches (right-padded for training and scoring, left-padded for decoding)
  4. the model's facts a trial needs: its KV-cache argument, Kaplan's N
  5. how the base runs: train.precision (resolve_precision, autocast), lora.quantize (QLoRA),
     train.gradient_checkpointing (set_checkpointing)
  6. attach_lora: the one place an adapter's initial A, B are made; save_lora writes a
     trained one in peft's own format
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from scaling.family import BUILTIN_TINY
from scaling.models import load_base_model, resolve_target_modules
from scaling.param_count import non_embedding_count
from scaling.tasks import make_task
from scaling.tokens import Tokenized, prompt_targets, tokenize_split
from scaling.trial.config import TrialConfig

__all__ = [
    "WorkerBase", "attach_lora", "autocast", "base_key", "cache_kwarg", "get_base", "get_data",
    "left_padded", "n_targets", "resolve_precision", "right_padded", "save_lora",
    "set_checkpointing", "truncated_counts", "weights_fingerprint",
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
    n_params: int  # non-embedding parameters (Kaplan's N), counted once at load


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def weights_fingerprint(model: torch.nn.Module) -> dict[str, int]:
    """Per tensor, the integer sum of its raw bits: exact and independent of summation order
    (so of the thread count), computed on the device, cheap even for a 7B base."""
    with torch.no_grad():
        return {
            name: t.contiguous().view(_INT_VIEW[t.element_size()]).sum(dtype=torch.int64).item()
            for name, t in model.state_dict().items()
        }


def base_key(cfg: TrialConfig, device: str) -> tuple:
    """What makes two trials' base models the same: model, device, resolved precision, quantization."""
    return (cfg.model, device, resolve_precision(cfg, device), cfg.quantize)


def get_base(cfg: TrialConfig, cache: dict, device: str) -> WorkerBase:
    """The worker's base model for cfg (loaded once, frozen); ValueError naming the spec field when
    the device cannot run cfg's precision or quantization."""
    key = base_key(cfg, device)
    base = cache.get("base")
    if base is None or base.key != key:
        cache.pop("base", None)  # one base model per worker: free the old one first
        precision = key[2]
        quant = _quantization(cfg, device, precision)
        model, tokenizer = load_base_model(cfg.model, device=device, dtype=DTYPES[precision],
                                           quantization_config=quant)  # fmt: skip
        n_params = non_embedding_count(model)  # a 4-bit weight counts its unpacked values
        if quant is not None:  # QLoRA's preparation: norms and head in fp32, everything frozen
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        base = WorkerBase(key=key, model=model, tokenizer=tokenizer, fingerprint=weights_fingerprint(model),
                          n_params=n_params)  # fmt: skip
        cache["base"] = base
    return base

# -----------------------------------------------------------------------------
# 2. Token ids


def _data(cfg: TrialConfig, cache: dict, base: WorkerBase) -> dict:
    """The cached entry of cfg's task: its token ids and which were cut to cfg.max_length."""
    key = (cfg.task_kind, cfg.task_digits, cfg.task_path, cfg.task_seed, cfg.task_split,
           cfg.validation_size, cfg.test_size, cfg.max_length, base.key)  # fmt: skip
    data = cache.setdefault("data", {})
    entry = data.get(key)
    # the task's examples first, then their tokens: a new entry's validation and test, and the
    # training pool's new tail (pools are nested: only the tail is tokenized)
    task = entry["task"] if entry is not None else make_task(
        kind=cfg.task_kind, digits=cfg.task_digits, path=cfg.task_path, seed=cfg.task_seed,
        validation_size=cfg.validation_size, test_size=cfg.test_size, split=cfg.task_split)  # fmt: skip
    have = len(entry["train"]) if entry is not None else 0
    pool = task.train_pool(cfg.dataset_size)[have:] if have < cfg.dataset_size else []
    evals = (task.validation(), task.test()) if entry is None else None
    if evals is not None:
        max_len = getattr(base.model.config, "max_position_embeddings", None) or 10**9
        tok = dict(tokenizer=base.tokenizer, max_len=max_len, max_length=cfg.max_length)
        val = tokenize_split(evals[0], split="validation", **tok)
        test = tokenize_split(evals[1], split="test", **tok)
        entry = data[key] = {"task": task, "train": [], "train_cut": [], "val": val.items, "test": test.items,
                             "val_cut": val.truncated, "test_cut": test.truncated, "tok": tok}  # fmt: skip
    if pool:
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


# -----------------------------------------------------------------------------
# 5. How the base runs. The base's weights are stored in the trial's precision; adapters and
# their AdamW stay fp32, and the forward runs under autocast, so the adapters' matmuls take
# the same dtype as the base's. bitsandbytes is imported only on a CUDA device.

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(cfg: TrialConfig, device: str) -> str:
    """cfg.precision as `device` runs it: "fp32" | "bf16" | "fp16". auto: bf16 on a CUDA GPU that
    supports it (the tiny model excepted, as before train.precision), else fp32. bf16 runs on a CPU
    too (autocast; fast only where the CPU has bf16 units). ValueError naming the field, the rule
    and the value when the device cannot run it."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cfg.precision == "auto":
        tiny = cfg.model == BUILTIN_TINY or cfg.model.startswith(BUILTIN_TINY + "-")  # the embedded family: fp32
        return "bf16" if cuda and not tiny and torch.cuda.is_bf16_supported() else "fp32"
    if cfg.precision == "fp16" and not cuda:
        raise ValueError(f"train.precision: fp16 training requires a CUDA device; this trial runs on {device} "
                         f"(torch.cuda.is_available() is {torch.cuda.is_available()}); use fp32, bf16 or auto "
                         f"(got 'fp16')")  # fmt: skip
    if cfg.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision: bf16 requires a GPU with bfloat16 support, which "
                         f"{torch.cuda.get_device_name()} lacks; use fp16, fp32 or auto (got 'bf16')")  # fmt: skip
    return cfg.precision


def autocast(precision: str, device: str):
    """The forward's autocast for a resolved precision (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[precision])


def _quantization(cfg: TrialConfig, device: str, precision: str):
    """lora.quantize "4bit": transformers' BitsAndBytesConfig (NF4, double quantization, computing in
    the trial's precision), on a CUDA device only; bitsandbytes is never imported elsewhere."""
    if cfg.quantize is None:
        return None
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"lora.quantize: 4-bit QLoRA (bitsandbytes) requires a CUDA device; this trial runs "
                         f"on {device} (torch.cuda.is_available() is {torch.cuda.is_available()}) "
                         f"(got {cfg.quantize!r})")  # fmt: skip
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"lora.quantize: 4-bit QLoRA needs the bitsandbytes package on the worker "
                         f"(pip install bitsandbytes) (got {cfg.quantize!r})") from None  # fmt: skip
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=DTYPES[precision])  # fmt: skip


def supports_checkpointing(model: torch.nn.Module, model_name: str) -> None:
    """ValueError naming train.gradient_checkpointing when the model cannot recompute activations."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.gradient_checkpointing: model {model_name!r} ({type(model).__name__}) does not "
                         f"support gradient checkpointing; set it to false (got True)")  # fmt: skip


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Turn gradient checkpointing of the base on (non-reentrant, and the input embeddings'
    output requiring grad, as peft wants) or off again (both undone)."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5: the new name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    else:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        model.disable_input_require_grads()



# -----------------------------------------------------------------------------
# 6. The adapter


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
