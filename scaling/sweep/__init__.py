"""The Ray side of a study: searcher (CellSearcher, Optuna storage), schedule, recorder,
worker (imports scaling.trial lazily) and run (run_sweep)."""

from scaling.sweep.identity import cell_study_name
from scaling.sweep.run import SweepResult, run_sweep
from scaling.sweep.searcher import CellSearcher, open_storage

__all__ = ["CellSearcher", "SweepResult", "cell_study_name", "open_storage", "run_sweep"]
