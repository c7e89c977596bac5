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

"""The run-state store: one SQLite database in the submit directory.

It holds the prepared workflow (jobs, rendered command lines, dependencies,
resources, retry policy) and every job transition, so that ``bps report``,
``bps cancel`` and ``bps restart`` can work from any process and any current
directory, during the run and after it.

The database uses a rollback journal (``journal_mode=DELETE``), never WAL:
WAL needs shared memory that does not work over a network file system. One
writer (the driver, or ``bps cancel`` once the driver ended) commits; readers
on any host read in short transactions and check the file's change counter
and journal around each read, retrying with a bounded backoff while a commit
is under way (doc/state.md). A reader that holds its transaction open (a
``sqlite3`` shell, a script) keeps a commit out for as long as it does: the
driver then keeps its changes queued and tries again, logging the wait
(`RunStore.flush`), and never stops the run for it. A transition is committed in the driver's loop
iteration that saw it, so a driver killed with SIGKILL loses at most the
transitions of that iteration; restart reconciles those from the jobs' own
logs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar, cast

from ..oneline import one_line
from ..records import ENDED, AttemptRow, JobKind, JobRow, JobState, SessionRow, StatusRow
from .diskspace import SpaceReserve, is_out_of_space, out_of_space_message
from .schema import (
    CHANGE_COUNTER,
    DB_NAME,
    FORMAT_VERSION,
    JOB_COLUMNS,
    JOURNAL_MODE,
    READ_RETRY_SECONDS,
    TORN_RETRY_SECONDS,
    WRITE_WAIT_SECONDS,
    create_store,
)
from .storefile import (
    READ_ERRORS,
    FileIdentity,
    RunTakenOverError,
    StateStoreError,
    StoreLostError,
    TornReadError,
    busy,
    damaged,
    journal_is_hot,
    locked,
    retryable,
    roll_back_hot_journal,
    store_error,
)

__all__ = (
    "DB_NAME",
    "ENDED",
    "FORMAT_VERSION",
    "JOB_COLUMNS",
    "AttemptRow",
    "JobKind",
    "JobRow",
    "JobState",
    "RunStore",
    "RunTakenOverError",
    "SessionRow",
    "StateStoreError",
    "StatusRow",
    "StoreLostError",
    "out_of_space_message",
)

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_LOCK_LOG_INTERVAL = 60.0
"""Seconds between the log lines of a writer still waiting for a lock."""
_LOCK_RETRY_PAUSE = 1.0
"""Seconds before a commit left queued because of a lock (`RunStore.flush`
with ``wait=False``) is tried again."""
_STATES = {int(state): state for state in JobState}
"""`JobState` by value: a dict look-up, where ``JobState(value)`` costs a microsecond."""
_KINDS = frozenset(int(kind) for kind in JobKind)


UNREADY = JobState.UNREADY
READY = JobState.READY
PENDING = JobState.PENDING
RUNNING = JobState.RUNNING
SUCCEEDED = JobState.SUCCEEDED
FAILED = JobState.FAILED
PRUNED = JobState.PRUNED
DELETED = JobState.DELETED
# The names above are the `JobState` members, for modules that import them from here.


def _guarded(writing: bool = False) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Turn SQLite errors of a `RunStore` method into `StateStoreError`; the
    methods of a read-only store read in one checked transaction, retried
    (see `RunStore.read_snapshot`).
    """

    def decorate(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> _T:
            try:
                call = functools.partial(method, self, *args, **kwargs)
                if self.conn.in_transaction:
                    return call()
                if self.readonly:
                    return self.read_snapshot(call)
                return cast(_T, self._waiting(call, wait=True))
            except READ_ERRORS as exc:
                raise store_error(self.path, exc, writing, self._waited()) from None

        return wrapper

    return decorate


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


class RunStore(FileIdentity):
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
        self.session: int | None = None
        self.fence: int | None = None
        """The claim this writer holds (`take_fence`): every commit checks it is still the run's."""
        if not os.path.exists(path):
            raise StateStoreError(
                f"{path}: no run-state database here: pass the submit directory that 'bps submit' printed"
            )
        if not os.access(path, os.R_OK):
            raise StateStoreError(f"{path}: not readable by this user: check its permissions")
        self.lost: str | None = None
        self.disk_full: str | None = None
        self.reserve: SpaceReserve | None = None
        self._fd: int | None = None
        self._locked_since: float | None = None
        self._locked_said = 0.0
        self.retry_at = 0.0
        """`time.monotonic` before which `flush` without ``wait`` leaves the changes queued."""
        if not readonly:
            self._open_identity()
        else:
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise StateStoreError(
                    f"{path}: cannot open the run-state database ({exc.strerror})"
                ) from None
        try:
            if readonly:
                roll_back_hot_journal(path)
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
            self.close()
            if locked(exc):
                raise store_error(path, exc, not readonly, self._waited()) from None
            raise StateStoreError(
                f"{path}: not a readable run-state database ({one_line(exc)}): the file is damaged; restore it from a "
                "backup or submit the run again (nothing was re-run)"
            ) from None
        if version == 0 and not tables:
            self.close()
            raise StateStoreError(
                f"{path}: the run-state database is empty (truncated?): restore it from a backup or submit "
                "the run again (nothing was re-run)"
            )
        if version != FORMAT_VERSION or not {"meta", "jobs", "status", "attempts", "sessions"} <= tables:
            self.close()
            raise StateStoreError(
                f"{path}: run-state format {version} with tables {sorted(tables)} is not format "
                f"{FORMAT_VERSION}: use the plugin version that wrote it, or submit the run again"
            )
        if not readonly:
            # A driver or cancel writes: check every page first, so a damaged
            # file stops it here rather than half-way through a run.
            try:
                self.check_integrity()
                self._add_lost_column()
            except StateStoreError:
                self.close()
                raise

    @_guarded(writing=True)
    def _add_lost_column(self) -> None:
        """Give a store written before attempts recorded infrastructure
        losses its ``attempts.lost`` column (readers of such a store read
        `None` there).
        """
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
        """The file's change counter and whether a hot rollback journal is
        there (a writer changes the file only once its journal is hot).
        """
        assert self._fd is not None
        return os.pread(self._fd, 4, CHANGE_COUNTER), journal_is_hot(self.path)

    def read_snapshot(self, read: Callable[[], _T]) -> _T:
        """Run ``read`` (calls of this store's methods and queries of its
        ``conn``) in one read transaction that saw no commit: a consistent
        snapshot of the run, from any host.

        The transaction's shared lock keeps a writer on this host (or on a
        network file system whose locks work across hosts) from committing
        during the read; where locks do not reach another host, the change
        counter and the journal, checked after the lock is taken and again
        at the end, tell that a commit ran meanwhile. Busy, locked or torn
        reads are retried with a growing pause for `READ_RETRY_SECONDS`.

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
        StateStoreError
            If the store cannot be read (damaged, missing or kept busy for longer
            than the retry time).
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
                        raise TornReadError()
                    value = read()
                    if self._file_version() != before:
                        raise TornReadError()
                finally:
                    if self.conn.in_transaction:
                        self.conn.execute("COMMIT")
                return value
            except (sqlite3.DatabaseError, TornReadError) as exc:
                if self.readonly and roll_back_hot_journal(self.path):
                    continue
                if isinstance(exc, sqlite3.DatabaseError) and not retryable(exc):
                    raise
                if isinstance(exc, sqlite3.DatabaseError) and not busy(exc):
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

    def _waiting(self, write: Callable[[], _T], wait: bool) -> _T | None:
        """Run ``write`` (statements or a transaction of this writer); while
        another connection's lock keeps it out (a reader's open transaction,
        another writer), log the wait and try again.

        With ``wait``, tries again with a growing pause for up to
        `WRITE_WAIT_SECONDS`, then raises the lock's error; without, returns
        `None` at once (the caller keeps its changes for later).
        """
        pause = 0.05
        while True:
            try:
                value = write()
            except sqlite3.OperationalError as exc:
                if not locked(exc):
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

    # ---- creation -------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str,
        meta: dict[str, Any],
        jobs: Generator[JobRow, None, list[str]],
        edges: Iterable[tuple[int, int]],
    ) -> RunStore:
        """Write a new database for a prepared workflow (`storeschema.create_store`)
        and open it for writing.

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
        create_store(path, meta, jobs, edges)
        return cls(path)

    # ---- reading --------------------------------------------------------

    @_guarded()
    def meta(self) -> dict[str, Any]:
        """Run-wide values (checked: `StateStoreError` if one is not what it must be).

        Returns
        -------
        meta : `dict` [`str`, `~typing.Any`]
            Run-wide values by key.
        """
        values = {}
        for key, text in self.conn.execute("SELECT key, value FROM meta"):
            try:
                values[key] = json.loads(text)
            except (TypeError, ValueError):
                raise damaged(self.path, f"meta value {str(key)[:40]!r} is not JSON") from None
        for key in ("run_id", "run_name", "submit_path"):
            if key in values and not isinstance(values[key], str):
                raise damaged(self.path, f"meta value {key!r} is {values[key]!r}, not a string")
        return values

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
        self._write_fenced("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def _select(self, table: str, columns: range, tail: str, args: tuple = ()) -> sqlite3.Cursor:
        """``SELECT * FROM table tail``, checking that the table has a number
        of ``columns`` this version reads (a damaged schema may have others).
        """
        cursor = self.conn.execute(f"SELECT * FROM {table} {tail}", args)
        if len(cursor.description) not in columns:
            raise damaged(self.path, f"table {table} has {len(cursor.description)} columns")
        return cursor

    @_guarded()
    def jobs(self, start: int = 0) -> list[JobRow]:
        """All jobs (or those from id ``start`` on), by id.

        Parameters
        ----------
        start : `int`, optional
            First job id to return.

        Returns
        -------
        jobs : `list` [`JobRow`]
            The job rows, by id.
        """
        cursor = self._select("jobs", range(18, JOB_COLUMNS + 1), "WHERE id >= ? ORDER BY id", (start,))
        rows = [JobRow(*row) for row in cursor]
        self._check_jobs(rows, start)
        return rows

    def _check_jobs(self, rows: list[JobRow], start: int) -> None:
        """Raise `StateStoreError` (damaged) unless the jobs read back are
        possible: ids from ``start`` without a gap, known kinds, text names
        and labels, and (all jobs read) as many payload jobs per label as
        table ``labels`` counts.
        """
        kinds = _KINDS
        payload: dict[str, int] = {}
        for expected, row in enumerate(rows, start):
            if (
                row.id != expected
                or row.kind not in kinds
                or not isinstance(row.name, str)
                or not isinstance(row.label, str)
            ):
                raise damaged(
                    self.path,
                    f"job row {expected} reads id {row.id!r}, kind {row.kind!r}, name {row.name!r:.80}",
                )
            if row.kind == 0:
                payload[row.label] = payload.get(row.label, 0) + 1
        if start or not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'labels'").fetchone():
            return
        counted = dict(self.conn.execute("SELECT label, jobs FROM labels WHERE jobs != 0").fetchall())
        if counted != payload:
            wrong = sorted(set(counted.items()) ^ set(payload.items()))[:2]
            raise damaged(self.path, f"the jobs of each label do not match their counts: {wrong!r:.120}")

    @_guarded()
    def edges(self) -> list[tuple[int, int]]:
        """All (parent, child) pairs.

        Returns
        -------
        edges : `list` [`tuple` [`int`, `int`]]
            (parent, child) job id pairs.
        """
        return self.conn.execute("SELECT parent, child FROM edges").fetchall()

    @_guarded()
    def envs(self) -> list[str]:
        """Environment scripts, by id.

        Returns
        -------
        scripts : `list` [`str`]
            The environment scripts, indexed by the jobs' ``env_id``.
        """
        return [row[0] for row in self.conn.execute("SELECT script FROM envs ORDER BY id")]

    @_guarded()
    def statuses(self) -> list[StatusRow]:
        """The current state of every job, by job id.

        Returns
        -------
        statuses : `list` [`StatusRow`]
            One row per job, by job id.
        """
        rows = self._select("status", range(8, 9), "ORDER BY job").fetchall()
        states = _STATES
        found = []
        for expected, (job, state, *rest) in enumerate(rows):
            if job != expected or state not in states:
                raise damaged(self.path, f"the status of job {expected} reads job {job!r}, state {state!r}")
            found.append(StatusRow(job, states[state], *rest))
        return found

    @_guarded()
    def sessions(self) -> list[SessionRow]:
        """Every driver session, oldest first.

        Returns
        -------
        sessions : `list` [`SessionRow`]
            One row per driver session.
        """
        rows = [SessionRow._make(row) for row in self._select("sessions", range(7, 8), "ORDER BY id")]
        for row in rows:
            if not (
                isinstance(row.pid, int)
                and isinstance(row.kind, str)
                and isinstance(row.host, str)
                and isinstance(row.start, int | float)
                and (row.end is None or isinstance(row.end, int | float))
                and (row.outcome is None or isinstance(row.outcome, str))
            ):
                raise damaged(self.path, f"session {row.id!r} reads {tuple(row)!r}")
        return rows

    @_guarded()
    def attempts(self, job: int | None = None) -> list[AttemptRow]:
        """Ended attempts, of one job or all, by job and attempt number.

        Parameters
        ----------
        job : `int`, optional
            Job id; `None` means every job.

        Returns
        -------
        attempts : `list` [`AttemptRow`]
            The ended attempts.
        """
        if job is None:
            rows = self._select("attempts", range(12, 14), "ORDER BY job, attempt")
        else:
            rows = self._select("attempts", range(12, 14), "WHERE job=? ORDER BY attempt", (job,))
        states = _STATES
        found = []
        for j, a, session, state, *rest in rows:
            if state not in states:
                raise damaged(
                    self.path, f"attempt {a!r} of job {j!r} has state {state!r}, which is no job state"
                )
            found.append(AttemptRow(j, a, session, states[state], *rest))
        return found

    def check_integrity(self) -> None:
        """Raise `StateStoreError` if SQLite finds the file damaged."""
        try:
            found = self._waiting(lambda: self.conn.execute("PRAGMA quick_check").fetchone(), wait=True)
            result = found[0] if found else "no answer"
        except READ_ERRORS as exc:
            if locked(exc):
                raise store_error(self.path, exc, False, self._waited()) from None
            result = one_line(exc)
        if result != "ok":
            raise StateStoreError(
                f"{self.path}: the run-state database is damaged ({result}): restore it from a backup "
                "or submit the run again (nothing was re-run)"
            )

    # ---- writing --------------------------------------------------------

    @_guarded(writing=True)
    def take_fence(self, claim: int) -> None:
        """Make ``claim`` (the number of the claim this writer holds, see
        `claim`) the run's: from now on every commit of this store checks,
        inside its transaction, that the run's claim is still ``claim``, and
        writes nothing (`RunTakenOverError`) once a newer holder took it.

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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='claim'").fetchone()
            if row is not None and json.loads(row[0]) > claim:
                raise self._taken_over(json.loads(row[0]))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('claim', ?)", (json.dumps(claim),))
            self.conn.execute("COMMIT")
        finally:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def _taken_over(self, claim: Any) -> RunTakenOverError:
        return RunTakenOverError(
            f"{self.path}: the run was taken over (claim {claim}, this process held claim {self.fence}) "
            "while this process could not run (stopped or frozen longer than parslDriverStaleAfter): it "
            "wrote nothing more"
        )

    def _check_fence(self) -> None:
        """Inside a write transaction: raise `RunTakenOverError` unless this
        writer's claim (`take_fence`) is still the run's.
        """
        if self.fence is None:
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key='claim'").fetchone()
        claim = None if row is None else json.loads(row[0])
        if claim != self.fence:
            raise self._taken_over(claim)

    def _write_fenced(self, sql: str, values: tuple) -> sqlite3.Cursor:
        """One statement in its own transaction, if this writer still holds the run."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_fence()
            cur = self.conn.execute(sql, values)
            self.conn.execute("COMMIT")
            return cur
        finally:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    @_guarded(writing=True)
    def begin_session(self, kind: str, pid: int, host: str) -> int:
        """Record that a driver started; returns the session id.

        Parameters
        ----------
        kind : `str`
            What the driver does (e.g. submit or restart).
        pid : `int`
            The driver's process id.
        host : `str`
            The driver's host.

        Returns
        -------
        session : `int`
            Id of the new session.
        """
        cur = self._write_fenced(
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
        self._write_fenced(
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
        job : `int`
            Job id.
        state : `int`
            The new state (a `JobState` value).
        attempt : `int`, optional
            The job's current attempt number.
        exit_code : `int`, optional
            Exit status of that attempt, if it ended.
        signal : `int`, optional
            Signal that ended it, if any.
        start : `float`, optional
            Start time of the attempt (seconds since the epoch).
        end : `float`, optional
            End time of the attempt (seconds since the epoch).
        host : `str`, optional
            Host the attempt ran on.
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

        ``lost``: why the infrastructure lost the attempt (its worker, node,
        block or pool), `None` for an attempt that ended by itself.

        Parameters
        ----------
        job : `int`
            Job id.
        attempt : `int`
            Attempt number.
        state : `int`
            How the attempt ended (a `JobState` value).
        exit_code : `int`, optional
            Its exit status.
        signal : `int`, optional
            Signal that ended it, if any.
        memory : `int`, optional
            Memory requested for it (MB).
        executor : `str`, optional
            Label of the executor that ran it.
        submitted : `float`, optional
            Time it was handed to Parsl (seconds since the epoch).
        start : `float`, optional
            Time it started.
        end : `float`, optional
            Time it ended.
        host : `str`, optional
            Host it ran on.
        lost : `str`, optional
            Why the infrastructure lost it.
        """
        self._pending_attempts.append(
            (
                job,
                attempt,
                self.session or 0,
                state,
                exit_code,
                signal,
                memory,
                executor,
                submitted,
                start,
                end,
                host,
                lost,
            )
        )

    @property
    def dirty(self) -> bool:
        """Whether changes wait for `flush`."""
        return bool(self._pending_status or self._pending_attempts)

    def flush(self, wait: bool = True) -> None:
        """Commit every queued change in one transaction.

        Another process's lock (a reader holding a transaction open) is
        waited for, with the wait logged (`_waiting`). If the disk is full,
        `disk_full` says so and the caller should drain and stop.

        Parameters
        ----------
        wait : `bool`
            Whether the changes must be committed now: the lock is waited
            for (up to `WRITE_WAIT_SECONDS`) and, if the disk is full, the
            space of the reserve (`keep_reserve`) is given back and the
            commit tried once more. Without, a lock or a full disk leaves
            the changes queued for a later call (the driver's loop goes on).

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
                if not is_out_of_space(exc):
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
        status, attempts = self._pending_status, self._pending_attempts
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self._check_fence()
            if status:
                self.conn.executemany(
                    "UPDATE status SET state=?, attempt=?, exit_code=?, signal=?, start=?, end=?, host=? "
                    "WHERE job=?",
                    status,
                )
            if attempts:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", attempts
                )
            self.conn.execute("COMMIT")
            self._pending_status, self._pending_attempts = [], []
        except BaseException:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def close(self) -> None:
        """Close the connection (and give back any reserved space)."""
        if hasattr(self, "conn"):
            self.conn.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.reserve is not None:
            self.reserve.release()
