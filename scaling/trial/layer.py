"""The multi-LoRA linear layer: one base nn.Linear, G adapters' deltas on their own rows.

The pack (trial/pack.py) sets a layout before every forward pass: G groups of equal
size, rows [g*n, (g+1)*n) of the batch belonging to adapter slot g, and per module the
stacked adapter weights A (G, r, in), B (G, out, r). A solo trial is a layout of G = 1.

Read top to bottom:
  1. _Layout: what every wrapped layer of one pack adds in the current forward
  2. MultiLoRALinear
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MultiLoRALinear"]

# -----------------------------------------------------------------------------
# 1. The layout


class _Layout:
    """Shared by every MultiLoRALinear of one pack: what to add in the current forward."""

    def __init__(self) -> None:
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.scale: torch.Tensor | None = None  # (G, 1, 1): alpha / r per group
        # peft's lora_dropout on the adapter's input; only a pack of one may set it (a mask
        # per adapter is random state a shared pass cannot reproduce): trial/pack.py checks
        self.dropout = 0.0


# -----------------------------------------------------------------------------
# 2. The layer


class MultiLoRALinear(torch.nn.Module):
    """base(x) for the whole packed batch + each group's own LoRA delta on its own rows.

    peft's lora.Linear computes result = base(x); result + B(A(x)) * scaling. Here the
    same products are batched over groups with bmm, the scaling is applied to the small
    (rows, r) intermediate and the add is fused into the second matmul (baddbmm): equal
    to peft's result to float rounding (bit for bit in the cases we checked). Holds no
    parameters of its own: the adapters live in the pack, so the model's parameters do
    not grow with K."""

    def __init__(self, base: torch.nn.Linear, name: str, layout: _Layout):
        super().__init__()
        self.base_layer = base
        self.name = name
        self._layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (N, T, out), N = G * n rows
        weights = self._layout.weights
        if weights is None:
            return result
        A, B = weights[self.name]  # (G, r, in), (G, out, r)
        G = A.shape[0]
        h = x.to(A.dtype)
        if self._layout.dropout and self.training:  # peft: lora_B(lora_A(dropout(x)))
            h = F.dropout(h, self._layout.dropout)
        h = h.reshape(G, -1, x.shape[-1])  # (G, n*T, in): group g's rows are contiguous
        # peft scales the (n*T, out) product; we scale the (n*T, r) one: a fraction of the
        # work, and bit-identical for the usual power-of-two alpha / r (else ~1 ulp apart)
        h = torch.bmm(h, A.transpose(1, 2)) * self._layout.scale  # (G, n*T, r)
        if result.dtype == h.dtype:  # result + h @ B^T in one pass over the output (same bits)
            return torch.baddbmm(result.reshape(G, -1, result.shape[-1]), h, B.transpose(1, 2)).view(result.shape)
        delta = torch.bmm(h, B.transpose(1, 2))  # (G, n*T, out); a bf16 base adds an fp32 delta
        return (result + delta.reshape(result.shape)).to(result.dtype)
