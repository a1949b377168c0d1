"""FitError and FitWarning, defined apart from analysis.fit (private home).

The private modules behind analysis.fit (_fit_input, _fit_auto,
_fit_bootstrap, _fit_diagnose) raise and warn with these, and analysis.fit
imports all of them, so the classes cannot live in analysis.fit without an
import cycle. analysis.fit exports them; import them from there.
"""

from __future__ import annotations

__all__: list[str] = []  # private: analysis.fit exports FitError and FitWarning


class FitError(ValueError):
    """Bad input to a fit: unknown law, missing column, bad values, too few points."""


class FitWarning(UserWarning):
    """A fit that ran but deserves doubt, or a prediction outside the fitted range."""


# the public name, in tracebacks, reprs and pickles, is the one users import
FitError.__module__ = FitWarning.__module__ = "analysis.fit"
