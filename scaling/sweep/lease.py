"""Who drives this study: a lease in the Optuna storage, so two drivers never share one study.

RunLock (scaling/records.py) guards one run directory. Two drivers of the *same* study (same
study uid: a run directory copied or rsync'ed to a second machine, resumed there against the
shared PostgreSQL of a cluster) pass the storage identity check (identity.py) and each would
take the other's RUNNING trials as a dead driver's leftovers and re-run them. The lease stops
the second one before it claims anything: every cell study carries the user attr
``scaling.lease`` = {"holder": "<host>:<pid>:<random>", "heartbeat": <epoch seconds>,
"run_dir": ..., "taken_at": ...}, taken by run_sweep right after the identity check and
before CellSearcher collects leftovers, renewed by a daemon thread every LEASE_TIMEOUT_S / 6
seconds while the sweep runs (a long trial cannot let it expire) and released (holder None)
when the sweep ends, on error too.

A lease whose heartbeat is older than LEASE_TIMEOUT_S (60 s; env SCALING_LEASE_TIMEOUT_S) is
a dead driver's (SIGKILLed, its machine lost) and is taken over: that is how its study
resumes. A holder on this host whose process is gone is stale at once: a driver killed here
resumes without waiting out the timeout. Heartbeats are the writer's clock (time.time()) read against the reader's: clocks
of two machines must agree to well under the timeout (NTP does).

Take-and-verify, with the Optuna storage API only (works the same on SQLite and PostgreSQL):
read every cell study's lease, refuse if another holder's is live, write ours on all of them,
wait LEASE_SETTLE_S, re-read and refuse unless every one is still ours. Two drivers that both
read "free" and write interleaved see each other's holder on re-read (both may be refused:
the safe side; run one again). The residual window: a driver whose read-then-write takes
longer than the other's settle delay (a storage stalled for over a second between the two
calls) can still write after the other verified; then both run. Optuna's storage API has no
compare-and-swap to close it; starting one driver per study, as documented, does.

A driver that loses its lease stops: when a heartbeat finds another holder on a cell study (a
second driver took it over after this one stalled past the timeout), or when heartbeats have
failed for longer than the timeout (a storage outage: by then another driver may take it over),
``lost`` says how, ``halt_reason`` turns into a RecordsError naming the new holder, and the sweep
ends at once (tuner.py's stopper; the searcher suggests nothing more), keeping the rows already
recorded. Its trials in flight stay RUNNING in the storage, for the new holder to run. The lease
is not renewed again, and not released: it is not ours. Leaving the ``with`` block on an error,
the release is best effort (a warning when the storage is down), so the error is the one raised.

Read top to bottom: the timeout, the holder id, Lease (take, renew thread, release).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from analysis.redact import scrub
from scaling.records_io import RecordsError

__all__ = ["LEASE_ATTR", "LEASE_TIMEOUT_S", "Lease", "lease_timeout"]

LEASE_ATTR = "scaling.lease"
LEASE_TIMEOUT_S = 60.0  # a heartbeat older than this is a dead driver's
LEASE_SETTLE_S = 1.0  # between writing the lease and verifying it

log = logging.getLogger(__name__)


def lease_timeout() -> float:
    """LEASE_TIMEOUT_S, or SCALING_LEASE_TIMEOUT_S when set (tests shorten it)."""
    raw = os.environ.get("SCALING_LEASE_TIMEOUT_S")
    if not raw:
        return LEASE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise RecordsError(f"SCALING_LEASE_TIMEOUT_S: must be a number of seconds (got {raw!r})") from None
    if value <= 0:
        raise RecordsError(f"SCALING_LEASE_TIMEOUT_S: must be > 0 (got {raw!r})")
    return value


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _dead_here(lease: dict) -> bool:
    """The holder is a process of this host that no longer exists (a driver SIGKILLed here a
    moment ago): its lease is stale at once, without waiting out the heartbeat timeout."""
    host, _, rest = str(lease.get("holder") or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, owned by someone else
        return False
    return False


def _describe(lease: dict, now: float) -> str:
    age = now - float(lease.get("heartbeat") or 0)
    return f"driver {lease.get('holder')} (run directory {lease.get('run_dir')}, last heartbeat {age:.0f} s ago)"


class Lease:
    """The lease on one study's cell studies in ``storage``; ``take`` then ``release``."""

    def __init__(self, names: list[str], storage: optuna.storages.BaseStorage, *, url_shown: str,
                 run_dir: Path, study: str, settle: bool = True, objectives: int = 1,
                 url: str | None = None):  # fmt: skip
        # names: the cell studies (identity.study_names); url_shown: the storage URL, redacted;
        # url: the URL itself, whose password is scrubbed from the storage errors this logs;
        # settle=False: the run directory's own optuna.db, which no other run directory shares
        # (RunLock already keeps a second driver out), so take-and-verify needs no wait
        self.storage, self.url_shown, self.run_dir, self.study = storage, url_shown, run_dir, study
        self._url = url
        self.names = list(names)
        self.objectives = objectives  # the studies' directions, all minimize, when the lease creates them
        self.settle_s = LEASE_SETTLE_S if settle else 0.0
        self.holder = new_holder()
        self.timeout = lease_timeout()
        self.taken_over: str | None = None  # the stale lease taken over, described
        self.lost: str | None = None  # how this driver lost the lease while it held it (taken, heartbeats failing)
        self._last_ok = 0.0  # when a heartbeat last reached every cell study (time.time())
        self._ids: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading --------------------------------------------------------------------
    def _study_ids(self, *, create: bool) -> list[int]:
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        ids = []
        for name in self.names:
            try:
                ids.append(self.storage.get_study_id_from_name(name))
            except KeyError:
                if not create:
                    continue
                try:  # as CellSearcher would a moment later (create_study(load_if_exists=True))
                    ids.append(self.storage.create_new_study([StudyDirection.MINIMIZE] * self.objectives, name))
                except DuplicatedStudyError:  # another driver made it meanwhile
                    ids.append(self.storage.get_study_id_from_name(name))
        return ids

    def _leases(self, ids: list[int]) -> list[tuple[int, dict]]:
        out = []
        for sid in ids:
            lease = self.storage.get_study_user_attrs(sid).get(LEASE_ATTR)
            if isinstance(lease, dict) and lease.get("holder"):
                out.append((sid, lease))
        return out

    def _refusal(self, lease: dict, now: float, *, when: str = "") -> RecordsError:
        return RecordsError(
            f"{self.run_dir}: study {self.study!r} in the Optuna storage "
            f"{self.url_shown!r} is being driven by {_describe(lease, now)}{when}: a second driver "
            "would take its running trials for a dead driver's leftovers and run them twice. Wait for "
            f"that sweep to finish (or stop it), then resume; a driver that died frees its lease "
            f"{self.timeout:.0f} s after its last heartbeat (user attr {LEASE_ATTR!r} of the cell studies)"
        )

    def _live_other(self, ids: list[int], now: float) -> dict | None:
        for _, lease in self._leases(ids):
            age = now - float(lease.get("heartbeat") or 0)
            if lease.get("holder") != self.holder and age < self.timeout and not _dead_here(lease):
                return lease
        return None

    # -- taking ---------------------------------------------------------------------
    def _mine(self, now: float, taken_at: float) -> dict[str, Any]:
        return {"holder": self.holder, "heartbeat": now, "run_dir": str(self.run_dir), "taken_at": taken_at}

    def take(self) -> Lease:
        """Take the lease or raise RecordsError naming its live holder; nothing is written then
        (except, in a lost take-and-verify race, our own lease, which is released again)."""
        now = time.time()
        existing = self._study_ids(create=False)
        live = self._live_other(existing, now)
        if live is not None:
            raise self._refusal(live, now)
        stale = [lease for _, lease in self._leases(existing) if lease.get("holder") != self.holder]
        if stale:
            self.taken_over = _describe(stale[0], now)
        self._ids = self._study_ids(create=True)
        self._taken_at = now
        for sid in self._ids:
            self.storage.set_study_user_attr(sid, LEASE_ATTR, self._mine(now, now))
        if self.settle_s:
            time.sleep(self.settle_s)
        for _sid, lease in self._leases(self._ids):
            if lease.get("holder") != self.holder:
                self.release()
                raise self._refusal(lease, time.time(), when=" (it took the lease at the same moment as this driver)")
        if len(self._leases(self._ids)) != len(self._ids):  # released by another under our feet
            self.release()
            raise RecordsError(f"{self.run_dir}: the lease on the cell studies in {self.url_shown!r} "
                               "changed while it was being taken: another driver is starting; run one at a time")
        if self.taken_over:
            log.warning("took over the stale lease of %s", self.taken_over)
        self._last_ok = time.time()
        self._thread = threading.Thread(target=self._renew_loop, name="scaling-lease", daemon=True)
        self._thread.start()
        return self

    # -- renewing -------------------------------------------------------------------
    def renew(self) -> None:
        """One heartbeat on every cell study still ours; a lease another driver took (or freed) is
        left to it and recorded in ``lost``: this driver must stop."""
        now = time.time()
        for sid in self._ids:
            lease = self.storage.get_study_user_attrs(sid).get(LEASE_ATTR)
            if not isinstance(lease, dict) or lease.get("holder") != self.holder:
                if self.lost is None:
                    taken = isinstance(lease, dict) and lease.get("holder")
                    self._lose(f"it was taken by {_describe(lease, now)}" if taken else
                               "it was released by another driver (the lease user attr no longer names this one)")
                continue
            self.storage.set_study_user_attr(sid, LEASE_ATTR, self._mine(now, self._taken_at))
        if self.lost is None:
            self._last_ok = now

    def _error(self, err: BaseException) -> str:
        """A storage error in one line, with its cause (Optuna's StorageInternalError hides the
        driver's "database is locked" there), without the storage password."""
        text = f"{type(err).__name__}: {' '.join(str(err).split())}"
        cause = err.__cause__ or err.__context__
        if cause is not None:
            text += f" (cause: {type(cause).__name__}: {' '.join(str(cause).split())})"
        return scrub(text, self._url)[:500]

    def _lose(self, how: str) -> None:
        self.lost = how
        log.error("%s", self.halt_reason())

    def halt_reason(self) -> RecordsError | None:
        """Why this driver must stop (it lost the lease), else None."""
        if self.lost is None:
            return None
        return RecordsError(
            f"{self.run_dir}: this driver (holder {self.holder}) lost its lease on study {self.study!r} in the "
            f"Optuna storage {self.url_shown!r}: {self.lost}. The sweep stopped: two drivers would run the same "
            "trials twice. The rows recorded so far are kept; its trials still running are left to the "
            f"lease's holder. Resume once that driver is done (or gone: {self.timeout:.0f} s after its last "
            f"heartbeat; user attr {LEASE_ATTR!r} of the cell studies)"
        )

    def _renew_loop(self) -> None:
        every = self.timeout / 6
        while self.lost is None and not self._stop.wait(every):
            try:
                self.renew()
            except Exception as err:  # a storage hiccup: the next heartbeat tries again, up to the timeout
                failing = time.time() - self._last_ok
                if failing <= self.timeout:
                    log.warning("lease heartbeat failed (next try in %.0f s): %s", every, self._error(err))
                    continue
                self._lose(f"its heartbeat has failed for {failing:.0f} s, past the {self.timeout:.0f} s timeout "
                           f"after which another driver may take the study over (last error: {self._error(err)})")

    # -- releasing ------------------------------------------------------------------
    def release(self) -> None:
        """Stop the heartbeat and free the lease on every cell study still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        now = time.time()
        for sid in self._ids:
            lease = self.storage.get_study_user_attrs(sid).get(LEASE_ATTR)
            if isinstance(lease, dict) and lease.get("holder") == self.holder:
                self.storage.set_study_user_attr(sid, LEASE_ATTR, {
                    "holder": None, "released_at": now, "last_holder": self.holder, "run_dir": str(self.run_dir)})

    def __enter__(self) -> Lease:
        return self.take()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.release()
            return
        try:  # the error on its way out is the one to see; a storage that is down must not hide it
            self.release()
        except Exception as err:
            log.warning("%s: could not release the lease on study %r (%s); it frees itself %.0f s after its "
                        "last heartbeat", self.run_dir, self.study, self._error(err), self.timeout)  # fmt: skip
