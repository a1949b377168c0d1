"""The embedded model family by name, and a model's label in cell keys; no torch here.

The spec (which must not import torch) and tiny.py (which builds the models) both read names
through this module, so a name means the same model on both sides.

    tiny-llama          today's embedded model: hidden 128 (bit-identical to every earlier build)
    tiny-llama-w<W>     the same recipe at hidden width W (W in TINY_WIDTHS): 4 layers, 4 heads,
                        MLP 3W, the same pretraining text and seed, 900 x W/128 steps (tiny.py);
                        tiny-llama-w128 is tiny-llama itself (same build, same cache folder)

Only the widths a spec names are ever built (models.ensure_base_model), each once per machine.
"""

from __future__ import annotations

import re

__all__ = ["BUILTIN_TINY", "DEFAULT_WIDTH", "TINY_WIDTHS", "is_tiny", "model_label", "tiny_name", "tiny_width"]

BUILTIN_TINY = "tiny-llama"
DEFAULT_WIDTH = 128  # tiny-llama's hidden size
# heads stay 4, so a width must be a multiple of 4 (head dim W/4 >= 8). Steps grow with W
# (tiny.py), so a build costs more than in proportion: w32 took 5 s, tiny-llama 83 s on one core;
# w256 takes 2x the steps at about 4x the step (the step is overhead-bound at the small sizes)
TINY_WIDTHS = (32, 48, 64, 96, 128, 192, 256)
_WIDTH_NAME = re.compile(rf"^{re.escape(BUILTIN_TINY)}-w(\d+)$")


def tiny_width(name: str) -> int | None:
    """Hidden width of an embedded-family name ("tiny-llama" -> 128, "tiny-llama-w64" -> 64), None
    for any other name (a hub id, a path) and for a width the family does not have."""
    if name == BUILTIN_TINY:
        return DEFAULT_WIDTH
    m = _WIDTH_NAME.match(name)
    if m and int(m.group(1)) in TINY_WIDTHS:
        return int(m.group(1))
    return None


def is_tiny(name: str) -> bool:
    return tiny_width(name) is not None


def looks_tiny(name: str) -> bool:
    """A name in the family's namespace ("tiny-llama-..."), known width or not: a typo there is an
    error, never a hub id."""
    return name == BUILTIN_TINY or name.startswith(BUILTIN_TINY + "-")


def tiny_name(width: int) -> str:
    """The family's name of a width: 128 -> "tiny-llama", 64 -> "tiny-llama-w64"."""
    if width not in TINY_WIDTHS:
        raise ValueError(f"the embedded family has widths {list(TINY_WIDTHS)}, got {width!r}")
    return BUILTIN_TINY if width == DEFAULT_WIDTH else f"{BUILTIN_TINY}-w{width}"


def model_label(name: str) -> str:
    """A model as it appears in a cell key and an Optuna study name (``M=<label>,D=..``): the name
    with "/" as "--" (hub ids, as the Hugging Face cache writes them) and any character outside
    [A-Za-z0-9_.-] as "_", so a cell key stays one folder name (adapters/<cell key>/)."""
    text = name.strip().rstrip("/")
    text = text.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
