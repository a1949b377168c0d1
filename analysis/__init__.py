"""Tables in, numbers out: the results table's names (table), the one selection rule (selection),
laws and their fits, best LRs, jump verdicts, the report's findings and its rendering.

    from analysis import fit_law, best_lr, lr_rule, detect_jumps, check_mirage, analyse

Names are re-exported lazily (PEP 562), so ``import analysis.table`` stays cheap and
``import analysis`` imports no scipy until a name is used.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "fit_law": "analysis.fit", "LawFit": "analysis.fit", "holdout": "analysis.fit", "compare": "analysis.fit",
    "best_lr": "analysis.lr_cell", "lr_rule": "analysis.lr_trend", "LRRule": "analysis.lr_trend",
    "search_range": "analysis.lr_edge",
    "detect_jumps": "analysis.jumps", "check_mirage": "analysis.mirage",
    "select": "analysis.selection", "trial_summary": "analysis.table", "Run": "analysis.table",
    "analyse": "analysis.findings", "write_report": "analysis.report", "plan_budget": "analysis.plan",
}  # fmt: skip

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
