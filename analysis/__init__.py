"""Tables in, numbers out: the results table's names (table), the one selection rule (selection),
laws and their fits, best LRs, jump verdicts, the report's findings and its rendering.

Import the modules themselves (``from analysis.findings import analyse``); this package
re-exports nothing so that ``import analysis.table`` stays cheap.
"""

__all__: list[str] = []
