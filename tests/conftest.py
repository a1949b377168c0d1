"""Shared fixtures. The tiny base model is built once per machine (~1-2 minutes on 2 cores)
into the default cache ($SCALING_CACHE or ~/.cache/scaling), so CI and later runs reuse it."""

import time

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The full built-in base model's directory (built here on first use)."""
    from scaling.models import BUILTIN_TINY, ensure_base_model

    t0 = time.perf_counter()
    path = ensure_base_model(BUILTIN_TINY)
    print(f"\ntiny base model at {path} ({time.perf_counter() - t0:.1f}s)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) of the built-in base, loaded once; tests must not modify it."""
    from scaling.models import load_base_model

    return load_base_model(tiny_model_dir)
