"""The Ray side of a study: searcher (CellSearcher, Optuna storage), schedule, recorder,
worker (imports scaling.trial lazily) and run (run_sweep)."""

from scaling.sweep.identity import cell_study_name, open_storage
from scaling.sweep.optimize import OptimizeSearcher, make_searcher
from scaling.sweep.run import SweepResult, run_sweep
from scaling.sweep.searcher import CellSearcher

__all__ = ["CellSearcher", "OptimizeSearcher", "SweepResult", "cell_study_name", "make_searcher", "open_storage",
           "run_sweep"]
