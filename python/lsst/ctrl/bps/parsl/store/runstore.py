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

"""The run-state store: one SQLite database in the submit directory, holding
the prepared workflow and every job transition, so that ``bps report``,
``cancel`` and ``restart`` work from any process and host (doc/state.md).

Why a rollback journal, never WAL, and how readers and the one writer share
it: state.md, "Where the submit directory may be".
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar, cast

from ..oneline import one_line
from ..records import JobKind, JobRow, JobState
from .schema import (
    CHANGE_COUNTER,
    DB_NAME,
    FORMAT_VERSION,
    JOURNAL_MODE,
    READ_RETRY_SECONDS,
    TORN_RETRY_SECONDS,
    _create_store,
)
from .storefile import (
    READ_ERRORS,
    RunTakenOverError,
    StateStoreError,
    StoreLostError,
    _locked,
    damaged,
    out_of_space_message,
    store_error,
)
from .storereads import StoreReads, _guarded
from .storewrites import StoreWrites

__all__ = (
    "DB_NAME",
    "FORMAT_VERSION",
    "JobKind",
    "JobRow",
    "JobState",
    "RunStore",
    "RunTakenOverError",
    "StateStoreError",
    "StoreLostError",
    "db_path",
    "journal_is_hot",
    "out_of_space_message",
    "store_error",
)

_T = TypeVar("_T")
_BUSY = ("locked", "busy", "readonly", "read-only")
"""Words of a reader's error that another connection's lock causes (retried for long)."""
_RETRYABLE = (*_BUSY, "malformed", "disk i/o")
"""Words of a reader's error that a commit under way (another host's) may cause."""

# The `JobState` members, for modules that import them from here.
READY = JobState.READY
PENDING = JobState.PENDING
RUNNING = JobState.RUNNING
SUCCEEDED = JobState.SUCCEEDED
FAILED = JobState.FAILED
DELETED = JobState.DELETED


class _TornReadError(Exception):
    """The file changed during a read: a commit of a writer the locks did not keep out."""


def db_path(submit_path: str) -> str:
    """Path of the run-state database of a submit directory.

    Parameters
    ----------
    submit_path : `str`
        Submit directory of the run.

    Returns
    -------
    path : `str`
        Path of its run-state database.
    """
    return os.path.join(submit_path, DB_NAME)


def journal_is_hot(path: str) -> bool:
    """Whether the store has a rollback journal with pages to restore (a
    commit under way, or a writer that died mid-commit; how: state.md).

    Parameters
    ----------
    path : `str`
        Path of the store.

    Returns
    -------
    hot : `bool`
        `True` if the journal holds pages to restore.
    """
    try:
        with open(path + "-journal", "rb") as journal:
            return journal.read(1) not in (b"", b"\0")
    except OSError:
        return False


def _roll_back_hot_journal(path: str) -> bool:
    """Roll back what a writer that died mid-commit left in the journal, if
    this user may write the store (a read-only connection cannot, and then
    fails every read): SQLite rolls a hot journal back on a writer's first
    read, and leaves a live writer's alone. Whether a journal was there and is gone now.
    """
    if not journal_is_hot(path):
        return False
    directory = os.path.dirname(path) or "."
    if not (os.access(path, os.W_OK) and os.access(directory, os.W_OK)):
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=2.0, isolation_level=None)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error:
        return False
    return not journal_is_hot(path)


class RunStore(StoreReads, StoreWrites):
    """Access to one run's state database.

    Parameters
    ----------
    path : `str`
        Database file.
    readonly : `bool`
        Open for reading only (report, status).
    """

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._pending_status: list[tuple] = []
        self._pending_attempts: list[tuple] = []
        if not os.path.exists(path):
            raise StateStoreError(
                f"{path}: no run-state database here: pass the submit directory that 'bps submit' printed"
            )
        if not os.access(path, os.R_OK):
            raise StateStoreError(f"{path}: not readable by this user: check its permissions")
        self._open_file(writing=not readonly)
        try:
            self._connect()
        except StateStoreError:
            self.close()
            raise

    def _connect(self) -> None:
        """Connect to the store and check its format (and, for a writer, every page)."""
        path = self.path
        try:
            if self.readonly:
                _roll_back_hot_journal(path)
                self.conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
                )
                self.conn.execute("PRAGMA busy_timeout=2000")
                version, tables = self.read_snapshot(self._format)
            else:
                self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                # Short: a writer waits for locks in `_waiting`, which logs the wait.
                self.conn.execute("PRAGMA busy_timeout=100")
                version, tables = cast(tuple[int, set[str]], self._waiting(self._open_writer, wait=True))
        except READ_ERRORS as exc:
            if _locked(exc):
                raise store_error(path, exc, not self.readonly, self._waited()) from None
            raise StateStoreError(
                f"{path}: not a readable run-state database ({one_line(exc)}): the file is damaged; restore it from a "
                "backup or submit the run again (nothing was re-run)"
            ) from None
        if version == 0 and not tables:
            raise StateStoreError(
                f"{path}: the run-state database is empty (truncated?): restore it from a backup or submit "
                "the run again (nothing was re-run)"
            )
        if version != FORMAT_VERSION or not {"meta", "jobs", "status", "attempts", "sessions"} <= tables:
            raise StateStoreError(
                f"{path}: run-state format {version} with tables {sorted(tables)} is not format "
                f"{FORMAT_VERSION}: use the plugin version that wrote it, or submit the run again"
            )
        if not self.readonly:
            # A driver or cancel writes: check every page first, so a damaged
            # file stops it here rather than half-way through a run.
            self.check_integrity()
            self._add_lost_column()

    @_guarded(writing=True)
    def _add_lost_column(self) -> None:
        """Give a store of an older version its ``attempts.lost`` column."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(attempts)")}
        if "lost" not in columns:
            self.conn.execute("ALTER TABLE attempts ADD COLUMN lost TEXT")

    def _open_writer(self) -> tuple[int, set[str]]:
        """Set a writer's connection up; its `_format`."""
        # Also turns the WAL of a store written by an older version into a rollback journal.
        self.conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
        self.conn.execute("PRAGMA synchronous=FULL")
        return self._format()

    def _format(self) -> tuple[int, set[str]]:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return version, tables

    def _file_version(self) -> tuple[bytes, bool]:
        """The file's change counter and whether a hot rollback journal is there."""
        assert self._fd is not None
        return os.pread(self._fd, 4, CHANGE_COUNTER), journal_is_hot(self.path)

    def read_snapshot(self, read: Callable[[], _T]) -> _T:
        """Run ``read`` (this store's methods, queries of ``conn``) in one
        read transaction that saw no commit, retried for `READ_RETRY_SECONDS`
        (how a commit is noticed across hosts: state.md).

        Parameters
        ----------
        read : `~collections.abc.Callable` [[], ``_T``]
            Function reading the store; called again on a retry.

        Returns
        -------
        value : ``_T``
            What ``read`` returned in the transaction that saw no commit.

        Raises
        ------
        sqlite3.DatabaseError
            If the store cannot be read (damaged, or busy too long).
        """
        started = time.monotonic()
        deadline = started + READ_RETRY_SECONDS
        pause = 0.01
        while True:
            try:
                self.conn.execute("BEGIN")
                try:
                    self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                    before = self._file_version()
                    if before[1]:
                        raise _TornReadError()
                    value = read()
                    if self._file_version() != before:
                        raise _TornReadError()
                finally:
                    if self.conn.in_transaction:
                        self.conn.execute("COMMIT")
                return value
            except (sqlite3.DatabaseError, _TornReadError) as exc:
                if self.readonly and _roll_back_hot_journal(self.path):
                    continue
                if isinstance(exc, sqlite3.DatabaseError):
                    text = str(exc).lower()
                    if not any(word in text for word in _RETRYABLE):
                        raise
                    if not any(word in text for word in _BUSY):
                        # A page read half-written resolves within a commit; a damaged file never does.
                        deadline = min(deadline, started + TORN_RETRY_SECONDS)
                if time.monotonic() + pause > deadline:
                    if isinstance(exc, sqlite3.DatabaseError):
                        raise
                    raise sqlite3.OperationalError(
                        f"the database kept changing during a read for {READ_RETRY_SECONDS:.0f} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    @classmethod
    def create(
        cls,
        path: str,
        meta: dict[str, Any],
        jobs: Generator[JobRow, None, list[str]],
        edges: Iterable[tuple[int, int]],
    ) -> RunStore:
        """Write a new database for a prepared workflow and open it for writing.

        Parameters
        ----------
        path : `str`
            Path of the new database.
        meta : `dict` [`str`, `~typing.Any`]
            Run-wide values.
        jobs : `~collections.abc.Generator` [`JobRow`, `None`, `list` [`str`]]
            The job rows, by id; returns the environment scripts.
        edges : `~collections.abc.Iterable` [`tuple` [`int`, `int`]]
            (parent, child) job id pairs.

        Returns
        -------
        store : `RunStore`
            The new store, open for writing.
        """
        _create_store(path, meta, jobs, edges)
        return cls(path)

    def check_integrity(self) -> None:
        """Raise `StateStoreError` if SQLite finds the file damaged."""
        try:
            found = self._waiting(lambda: self.conn.execute("PRAGMA quick_check").fetchone(), wait=True)
            result = found[0] if found else "no answer"
        except READ_ERRORS as exc:
            if _locked(exc):
                raise store_error(self.path, exc, False, self._waited()) from None
            result = one_line(exc)
        if result != "ok":
            raise damaged(self.path, result)

    def close(self) -> None:
        """Close the connection (and give back any reserved space)."""
        if hasattr(self, "conn"):
            self.conn.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.reserve is not None:
            self.reserve.release()
