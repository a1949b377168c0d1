"""Running scaling studies of LoRA fine-tunes: ``from scaling import Study``.

Names are re-exported lazily, so ``import scaling.records`` (or the CLI's start) stays cheap.
"""

from typing import Any

__all__ = ["BestLR", "Study", "StudyResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from scaling import study

        return getattr(study, name)
    raise AttributeError(f"module 'scaling' has no attribute {name!r}")
