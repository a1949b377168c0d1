"""Packing is an optimisation, not a change of result: on whatever device this machine
has (CUDA if present), 4 ragged configs (different D, epochs, LR, seed, rank and batch
size) are trained alone with run_trial (a pack of one) and as one pack, and the largest difference
over every reported metric but wall time is printed (tests/test_packed.py holds it to 1e-4).

    .venv/bin/python bench/packing_equivalence.py
"""

from __future__ import annotations

import time

import torch

from analysis.table import METRIC_KEYS
from scaling.models import ensure_base_model
from scaling.tiny import BUILTIN_TINY
from scaling.trial import TrialConfig, run_packed, run_trial


def _cfg(**overrides) -> TrialConfig:
    base = dict(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None,
                task_seed=0, dataset_size=256, epochs=2, learning_rate=3e-3,
                validation_size=64, test_size=64)  # fmt: skip
    return TrialConfig(**{**base, **overrides})


CONFIGS = [
    _cfg(),
    _cfg(dataset_size=160, epochs=3, learning_rate=1e-2, seed=1),
    _cfg(dataset_size=96, epochs=1, learning_rate=5e-3, seed=2, lora_r=4, lora_alpha=8),
    _cfg(dataset_size=100, epochs=2, learning_rate=2e-3, seed=3, batch_size=16),
]


def main() -> None:
    ensure_base_model(BUILTIN_TINY)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    cache: dict = {}
    t0 = time.perf_counter()
    alone = [run_trial(c, cache=cache) for c in CONFIGS]
    t1 = time.perf_counter()
    packed = run_packed(CONFIGS, cache=cache)
    t2 = time.perf_counter()
    worst, where = 0.0, None
    for i, (p_hist, a_hist) in enumerate(zip(packed, alone, strict=True)):
        if isinstance(p_hist, BaseException):
            raise p_hist
        for p, a in zip(p_hist, a_hist, strict=True):
            for k in METRIC_KEYS:
                if k != "wall_seconds" and abs(p[k] - a[k]) > worst:
                    worst, where = abs(p[k] - a[k]), (i, p["epoch"], k)
    print(f"{device} (torch {torch.__version__}): largest |packed - alone| = {worst:.3g} "
          f"(config, epoch, metric = {where}); alone {t1 - t0:.1f} s, packed {t2 - t1:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
