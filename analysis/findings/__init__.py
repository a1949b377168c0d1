"""The report's questions, one module each; `analyse` runs them and collects what each returns.

    from analysis.findings import analyse
    an = analyse(run)          # a Run (scaling.records.read_run) or a results DataFrame
    an.numbers["data"]         # the numbers of section 2
"""

from analysis.findings.analyse import analyse
from analysis.findings.common import BOOTSTRAP, LEVEL, PARTS, SECTIONS, Analysis, Finding
from analysis.findings.epochs import dc_multiplier

__all__ = ["BOOTSTRAP", "LEVEL", "PARTS", "SECTIONS", "Analysis", "Finding", "analyse", "dc_multiplier"]
