# This file is part of ctrl_bps_parsl.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This software is dual licensed under the GNU General Public License and also
# under a 3-clause BSD license. Recipients may choose which of these licenses
# to use; please see the files gpl-3.0.txt and/or bsd_license.txt,
# respectively.  If you choose the GPL option then the following text applies
# (but note that there is still no warranty even if you opt for BSD instead):
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""The write side of `RunStore`: the one writer's fence (`take_fence`), its
queued transitions and their commit, its logged wait for another's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..records import AttemptRow
from .schema import WRITE_WAIT_SECONDS
from .storefile import (
    FileIdentity,
    RunTakenOverError,
    _is_out_of_space,
    _locked,
    out_of_space_message,
    store_error,
)
from .storereads import _guarded

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_LOCK_LOG_INTERVAL = 60.0
"""Seconds between the log lines of a writer still waiting for a lock."""
_LOCK_RETRY_PAUSE = 1.0
"""Seconds before a commit left queued (lock, full disk) is tried again."""


class StoreWrites(FileIdentity):
    """The writing methods of `RunStore`."""

    conn: sqlite3.Connection
    session: int | None = None
    fence: int | None = None
    disk_full: str | None = None
    retry_at = 0.0
    """`time.monotonic` before which `flush` without ``wait`` leaves the changes queued."""
    _pending_status: list[tuple]
    _pending_attempts: list[tuple]
    _locked_since: float | None = None
    _locked_said = 0.0

    def _waiting(self, write: Callable[[], _T], wait: bool) -> _T | None:
        """Run ``write``; while another connection's lock keeps it out, log
        the wait and, with ``wait``, try again for up to `WRITE_WAIT_SECONDS`
        (then raise); without, return `None` at once (changes stay queued).
        """
        pause = 0.05
        while True:
            try:
                value = write()
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
                now = time.monotonic()
                if self._locked_since is None:
                    self._locked_since = self._locked_said = now
                    _LOG.warning(
                        "%s: locked by another process (a reader holding a transaction open?): the run goes "
                        "on and its records wait until the lock is released",
                        self.path,
                    )
                elif now - self._locked_said >= _LOCK_LOG_INTERVAL:
                    self._locked_said = now
                    _LOG.warning(
                        "%s: still locked by another process after %.0f s: the run's records wait",
                        self.path,
                        now - self._locked_since,
                    )
                if not wait:
                    self.retry_at = now + _LOCK_RETRY_PAUSE
                    return None
                if now - self._locked_since >= WRITE_WAIT_SECONDS:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            if self._locked_since is not None:
                _LOG.warning(
                    "%s: the lock was released after %.0f s: records written", self.path, self._waited()
                )
                self._locked_since = None
            return value

    def _waited(self) -> float:
        """Seconds this writer has been waiting for a lock (0 if it is not)."""
        return 0.0 if self._locked_since is None else time.monotonic() - self._locked_since

    @_guarded(writing=True)
    def set_meta(self, key: str, value: Any) -> None:
        """Store one run-wide value.

        Parameters
        ----------
        key : `str`
            Name of the value.
        value : `~typing.Any`
            The value (anything JSON can store).
        """
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_guarded(writing=True)
    def take_fence(self, claim: int) -> None:
        """Make ``claim`` (the claim this writer holds) the run's: from now on
        every commit checks, inside its transaction, that it still is, and
        writes nothing once a newer holder took the run.

        Parameters
        ----------
        claim : `int`
            Number of the claim this writer holds.

        Raises
        ------
        RunTakenOverError
            If a newer claim already holds the run.
        """
        self.fence = claim
        with self._transaction(taking=True):
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('claim', ?)", (json.dumps(claim),))

    @contextlib.contextmanager
    def _transaction(self, taking: bool = False) -> Iterator[None]:
        """A write transaction, committed only if this writer's claim is still the run's
        (``taking``: or older), else `RunTakenOverError`.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='claim'").fetchone()
            claim = None if row is None else json.loads(row[0])
            if (
                self.fence is not None
                and claim != self.fence
                and not (taking and (claim is None or claim < self.fence))
            ):
                raise RunTakenOverError(
                    f"{self.path}: the run was taken over (claim {claim}, this process held claim "
                    f"{self.fence}) while this process could not run (stopped or frozen longer than "
                    "parslDriverStaleAfter): it wrote nothing more"
                )
            yield
            self.conn.execute("COMMIT")
        finally:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")

    @_guarded(writing=True)
    def begin_session(self, kind: str, pid: int, host: str) -> int:
        """Record that a driver started.

        Parameters
        ----------
        kind, host : `str`
            What the driver does (submit, restart); its host.
        pid : `int`
            The driver's process id.

        Returns
        -------
        session : `int`
            Id of the new session.
        """
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO sessions (kind, pid, host, start) VALUES (?, ?, ?, ?)",
                (kind, pid, host, time.time()),
            )
        self.session = session = int(cur.lastrowid or 0)
        return session

    @_guarded(writing=True)
    def end_session(self, outcome: str) -> None:
        """Record that this driver ended and how.

        Parameters
        ----------
        outcome : `str`
            How the session ended.
        """
        self.flush()
        self.check_identity()
        with self._transaction():
            self.conn.execute(
                "UPDATE sessions SET end=?, outcome=? WHERE id=?", (time.time(), outcome, self.session)
            )

    def set_state(
        self,
        job: int,
        state: int,
        attempt: int = 0,
        exit_code: int | None = None,
        signal: int | None = None,
        start: float | None = None,
        end: float | None = None,
        host: str | None = None,
    ) -> None:
        """Queue a job's new current state; written at the next `flush`.

        Parameters
        ----------
        job, state, attempt, exit_code, signal : `int`
            Job id, its new state (a `JobState` value), current attempt, exit status, the signal that ended it.
        start, end : `float`, optional
            Its start and end times (seconds since the epoch).
        host : `str`, optional
            Host it ran on.
        """
        self._pending_status.append((state, attempt, exit_code, signal, start, end, host, job))

    def record_attempt(
        self,
        job: int,
        attempt: int,
        state: int,
        exit_code: int | None = None,
        signal: int | None = None,
        memory: int | None = None,
        executor: str | None = None,
        submitted: float | None = None,
        start: float | None = None,
        end: float | None = None,
        host: str | None = None,
        lost: str | None = None,
    ) -> None:
        """Queue an attempt's row (insert or replace); written at `flush`.

        Parameters
        ----------
        job, attempt, state, exit_code, signal, memory : `int`
            Job id, attempt number, how it ended (a `JobState` value), its exit status, the signal
            that ended it, the memory it asked for (MB).
        executor : `str`, optional
            Label of the executor that ran it.
        submitted, start, end : `float`, optional
            When it was handed to Parsl, started and ended (seconds since the epoch).
        host, lost : `str`, optional
            Host it ran on; why the infrastructure lost it; `None` if it ended by itself.
        """
        self._pending_attempts.append(
            (job, attempt, self.session or 0, state, exit_code, signal, memory, executor)
            + (submitted, start, end, host, lost)
        )

    @property
    def dirty(self) -> bool:
        """Whether changes wait for `flush`."""
        return bool(self._pending_status or self._pending_attempts)

    def flush(self, wait: bool = True) -> None:
        """Commit every queued change in one transaction (on a full disk,
        `disk_full` says so: the caller should drain and stop).

        Parameters
        ----------
        wait : `bool`
            Commit now: wait for a lock (up to `WRITE_WAIT_SECONDS`) and, on a
            full disk, give back the reserve's space and try once more.
            Without, a lock or a full disk leaves the changes queued.

        Raises
        ------
        StoreLostError
            If the database file was deleted, replaced or truncated.
        StateStoreError
            If the commit failed.
        """
        if not self._pending_status and not self._pending_attempts:
            return
        self.check_identity()
        if not wait and time.monotonic() < self.retry_at:
            return
        try:
            try:
                self._waiting(self._commit_pending, wait)
            except sqlite3.DatabaseError as exc:
                if not _is_out_of_space(exc):
                    raise
                self.disk_full = self.disk_full or out_of_space_message(os.path.dirname(self.path) or ".")
                if not wait:
                    self.retry_at = time.monotonic() + _LOCK_RETRY_PAUSE
                    return
                if self.reserve is None or not self.reserve.release():
                    raise
                self._waiting(self._commit_pending, wait)
        except sqlite3.DatabaseError as exc:
            raise store_error(self.path, exc, writing=True, waited=self._waited()) from None

    def _commit_pending(self) -> None:
        with self._transaction():
            if self._pending_status:
                self.conn.executemany(
                    "UPDATE status SET state=?, attempt=?, exit_code=?, signal=?, start=?, end=?, host=? "
                    "WHERE job=?",
                    self._pending_status,
                )
            if self._pending_attempts:
                self.conn.executemany(
                    f"INSERT OR REPLACE INTO attempts VALUES ({','.join('?' * len(AttemptRow._fields))})",
                    self._pending_attempts,
                )
        self._pending_status, self._pending_attempts = [], []
