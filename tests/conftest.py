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
