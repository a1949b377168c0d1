"""The searchers' Optuna storage, riding out a brief outage (issue 17).

A PostgreSQL restart, a network blip or SQLite's "database is locked" makes every storage call
raise while it lasts. The searchers call the storage inside Ray Tune's event loop, where an
exception would end the sweep (or lose the finished trial's rows: Ray tells the searcher before
the recorder), so every call of the storage they use goes through ``RetryingStorage``: a
transient database error (a lost or refused connection, a lock) is retried with backoff for up
to ``retry_bound()`` seconds (SCALING_STORAGE_RETRY_S, default 45), one warning per outage
and the password scrubbed. Integrity, programming and data errors are not transient: they
raise at once. The engine's pool_pre_ping (identity.open_storage) replaces the connections a
restart killed. An outage that outlasts the bound raises ``StorageDown``; the searcher then
stops the sweep (searcher.StorageBacked) with the rows of every finished trial recorded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage

from analysis.redact import redact_url, scrub

__all__ = ["RetryingStorage", "StorageDown", "is_transient", "retry_bound"]

# below the lease's 60 s heartbeat timeout (lease.py): an outage stops the sweep with this module's
# message (what a resume will do) rather than the lease's
RETRY_S = 45.0
log = logging.getLogger(__name__)


class StorageDown(Exception):
    """The storage stayed unreachable for longer than the bound; the message holds no password."""


def retry_bound() -> float:
    """SCALING_STORAGE_RETRY_S (seconds a storage call is retried), default RETRY_S."""
    raw = os.environ.get("SCALING_STORAGE_RETRY_S")
    try:
        return max(0.0, float(raw)) if raw else RETRY_S
    except ValueError:
        return RETRY_S


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def is_transient(err: BaseException) -> bool:
    """A lost/refused connection or a lock (worth retrying), not a wrong query or a constraint."""
    import sqlalchemy.exc as sa

    chain = _chain(err)
    if any(isinstance(e, (sa.IntegrityError, sa.ProgrammingError, sa.DataError)) for e in chain):
        return False
    transient: tuple[type, ...] = (sa.OperationalError, sa.DisconnectionError, sa.InterfaceError,
                                   sa.TimeoutError, sqlite3.OperationalError, ConnectionError)  # fmt: skip
    try:
        import psycopg

        transient += (psycopg.OperationalError,)
    except ImportError:
        pass
    return any(isinstance(e, transient) for e in chain)


def describe(err: BaseException, url: str) -> str:
    """One line: the error and the driver's cause (Optuna's StorageInternalError hides it), scrubbed."""
    chain = _chain(err)[:4]  # Optuna's wrapper, SQLAlchemy's, the driver's: the driver's says what happened
    root = (str(chain[-1]).strip().splitlines() or [""])[0]
    return scrub(" <- ".join(type(e).__name__ for e in chain) + f": {root}", url)[:500]


class RetryingStorage(BaseStorage):
    """``inner`` (an Optuna storage) whose every call retries transient errors up to the bound."""

    def __init__(self, inner: BaseStorage, url: str, bound: float | None = None):
        self._inner, self._url, self._shown = inner, url, redact_url(url)
        self._bound = retry_bound() if bound is None else bound
        self.outages = 0  # how many outages were ridden out or given up on (tests, logs)

    def __getattr__(self, name: str) -> Any:  # engine, scoped_session, ...: the inner storage's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0: float | None = None
        wait = 0.25
        while True:
            try:
                result = fn(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if t0 is not None and getattr(fn, "__name__", "") == "set_trial_state_values":
                    return True  # the try the outage cut short had landed: the trial is told
                raise
            except Exception as err:
                if not is_transient(err):
                    raise
                now = time.monotonic()
                if t0 is None:
                    t0 = now
                    self.outages += 1
                    log.warning("Optuna storage %r unreachable (%s); retrying for up to %.0f s",
                                self._shown, describe(err, self._url), self._bound)  # fmt: skip
                if now - t0 >= self._bound:
                    raise StorageDown(f"the Optuna storage {self._shown!r} was unreachable for {now - t0:.0f} s "
                                      f"({describe(err, self._url)})") from None  # fmt: skip
                time.sleep(min(wait, self._bound - (now - t0)))
                wait = min(2 * wait, 5.0)
                continue
            if t0 is not None:
                log.warning("Optuna storage %r reachable again after %.1f s", self._shown, time.monotonic() - t0)
            return result

    def __repr__(self) -> str:
        return f"RetryingStorage({self._shown!r})"


def _wrap(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self._inner, name), *args, **kwargs)

    method.__name__ = name
    return method


for _name in dir(BaseStorage):
    if not _name.startswith("_") and callable(getattr(BaseStorage, _name)):
        setattr(RetryingStorage, _name, _wrap(_name))
RetryingStorage.__abstractmethods__ = frozenset()
