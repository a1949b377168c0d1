"""The embedded tiny Llama the project pretrains itself, and its cache.

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
  5. the cache: lock, build into a temp dir, atomic rename (_ensure_tiny, which
     models.ensure_base_model calls for BUILTIN_TINY)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scaling.family import BUILTIN_TINY, DEFAULT_WIDTH, TINY_WIDTHS, tiny_width

__all__ = [
    "BUILTIN_TINY",
    "TINY_TARGET_MODULES",
    "TinyBuildConfig",
    "build_tiny_model",
    "tiny_build_config",
    "tiny_tokenizer",
]

# BUILTIN_TINY ("tiny-llama", the spec's default model name) and the family's other widths
# ("tiny-llama-w64", ...) are named in scaling/family.py
# its LoRA targets today: all Llama projections (spec.py holds the same list: it may not import torch)
TINY_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# -----------------------------------------------------------------------------
# 1. Vocabulary and tokenizer: one token per character
# Digits and arithmetic signs for the built-in tasks; lowercase letters and a little
# punctuation so small user JSONL tasks (e.g. "sort: 3 1 2") fit too. Anything else
# maps to <unk>, which scaling/tokens.py reports as an error naming the characters.

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


def tiny_build_config(name: str = BUILTIN_TINY) -> TinyBuildConfig:
    """The build config of an embedded-family name: tiny-llama is TinyBuildConfig() itself (the same
    hash, so the same cache folder and weights as every earlier build); tiny-llama-w<W> changes only
    the width (hidden W, MLP 3W, 4 heads) and the steps with it (tiny_config_of_width): the same
    text, seed and schedule."""
    width = tiny_width(name)
    if width is None:
        raise ValueError(f"{name!r} is not a model of the embedded family (scaling/family.py)")
    return tiny_config_of_width(width)


def tiny_config_of_width(width: int) -> TinyBuildConfig:
    """The build config of the family's member of this width (family.tiny_width of its name): hidden
    W, MLP 3W, and pretraining steps in proportion to W (900 at W=128), so pretraining tokens grow
    with N (as N^0.5: N ~ W^2), as a model family's do. At 900 steps for every width the bases
    differed in luck more than in size: final pretraining losses 0.74 (w32), 0.66 (w64), 0.32
    (w96), 0.43 (w128), and a fine-tune's loss did not fall with N. Builds at 3e-3 x 128/W instead
    (muP's Adam rule) came out worse at the narrow widths (w32 0.78, w64 0.81), not ordered either.
    With steps ~ W: 0.83 (w64, 450 steps), 0.66 (w96, 675), 0.43 (w128, 900)."""
    base = TinyBuildConfig()
    if width == DEFAULT_WIDTH:
        return base
    steps = base.steps * width // DEFAULT_WIDTH
    return dataclasses.replace(base, hidden_size=width, intermediate_size=3 * width, steps=steps)


def tiny_llama_config(cfg: TinyBuildConfig) -> LlamaConfig:
    """The transformers config of a build (vocabulary from the tokenizer's)."""
    ids = tiny_tokenizer().get_vocab()
    return LlamaConfig(
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
        model = LlamaForCausalLM(tiny_llama_config(cfg))
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
        # family.tiny_name's rule, spelled here so a build reads no other module's names
        "name": f"{BUILTIN_TINY}-w{cfg.hidden_size}" if cfg.hidden_size in set(TINY_WIDTHS) - {DEFAULT_WIDTH}
        else BUILTIN_TINY,
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
# 5. The cache: <cache dir>/tiny-llama-<config hash>/ (models.default_cache_dir: $SCALING_CACHE
# or ~/.cache/scaling)

_REQUIRED_FILES = ("config.json", "tokenizer.json", "build.json")


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

