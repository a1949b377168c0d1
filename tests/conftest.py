"""Shared fixtures. The tiny base model is built once per machine (~1-2 minutes on 2 cores)
into the default cache ($SCALING_CACHE or ~/.cache/scaling), so CI and later runs reuse it."""

import sqlite3
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The full built-in base model's directory (built here on first use)."""
    from scaling.models import ensure_base_model
    from scaling.tiny import BUILTIN_TINY

    t0 = time.perf_counter()
    path = ensure_base_model(BUILTIN_TINY)
    print(f"\ntiny base model at {path} ({time.perf_counter() - t0:.1f}s)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) of the built-in base, loaded once; tests must not modify it."""
    from scaling.models import load_base_model

    return load_base_model(tiny_model_dir)


# helpers shared by tests that watch a sweep from outside (import: from conftest import ...)


def live_trials(db: Path) -> list[tuple[str, int, int]]:
    """(study, trial number, epochs reported) of RUNNING Optuna trials, read-only, so that
    watching never races the sweep creating its tables."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(
                "SELECT s.study_name, t.number, COUNT(v.step) FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id "
                "LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' GROUP BY t.trial_id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:  # tables not created yet
        return []


# tiny random-init checkpoints of other architectures, saved as a user's model directory would be


def gpt2_style_tokenizer():
    """A real fast tokenizer as GPT-2's behaves, one token per character of the built-in tasks:
    one special token <|endoftext|> that is bos, eos and unk, and no pad token (models.py pads
    with eos). No hub, no files: built from the tokenizers library."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from scaling.tiny import CHARS

    end = "<|endoftext|>"
    vocab = {t: i for i, t in enumerate((end, *CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=end))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end,
                                   model_max_length=64, padding_side="right")  # fmt: skip


def save_tiny_checkpoint(arch: str, out: Path, *, seed: int = 0, **config) -> str:
    """A random-init causal LM of `arch` (gpt2, gpt_neox, qwen2, llama) with 2 layers of width 32,
    saved with gpt2_style_tokenizer() into `out` (config.json, safetensors, tokenizer): a model
    directory the spec's `model:` and TrialConfig.model take. `config` overrides config fields
    (e.g. GPT-2's dropouts, 0.1 each by default)."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = gpt2_style_tokenizer()
    end = tok.eos_token_id
    common = dict(vocab_size=len(tok), bos_token_id=end, eos_token_id=end, tie_word_embeddings=False)
    llama_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    cls, cfg = {
        "gpt2": (GPT2LMHeadModel, lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                     **common, **config)),  # fmt: skip
        "gpt_neox": (GPTNeoXForCausalLM, lambda: GPTNeoXConfig(hidden_size=32, num_hidden_layers=2,
                                                               num_attention_heads=4, intermediate_size=64,
                                                               max_position_embeddings=64, **common, **config)),  # fmt: skip
        "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(**llama_like, **common, **config)),
        "llama": (LlamaForCausalLM, lambda: LlamaConfig(**llama_like, **common, **config)),
    }[arch]
    torch.manual_seed(seed)
    model = cls(cfg())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
