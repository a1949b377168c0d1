"""Kaplan's N of a model: one count, shared by the rows' model_params_n (models.py) and the
FLOPs a worker counts (trial/base.py)."""

from __future__ import annotations

import torch

__all__ = ["non_embedding_count"]


def non_embedding_count(model: torch.nn.Module) -> int:
    """Kaplan's N: every parameter but the embedding tables (a tied lm_head is the embedding);
    models.model_params_n records it per row; trial/base.py counts a worker's base with it
    (WorkerBase.n_params, which FLOPs use)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in emb and id(p) not in seen:
            seen.add(id(p))
            qs = getattr(p, "quant_state", None)  # a 4-bit weight packs two values per byte
            n += qs.shape.numel() if qs is not None else p.numel()
    return n
