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

"""The read side of `RunStore`: the prepared workflow and the run's state,
each read checked (a damaged file raises `StateStoreError`, never a wrong
answer), in one checked transaction (`_guarded`).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ..records import AttemptRow, JobKind, JobRow, JobState, SessionRow, StatusRow
from .schema import JOB_COLUMNS
from .storefile import READ_ERRORS, damaged, store_error

_T = TypeVar("_T")
_STATES = {int(state): state for state in JobState}
"""`JobState` by value: a dict look-up, where ``JobState(value)`` costs a microsecond."""
_KINDS = frozenset(int(kind) for kind in JobKind)


def _guarded(writing: bool = False) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorator turning SQLite errors of a `RunStore` method into `StateStoreError`
    (``writing``: for the wording); a read-only store's methods read in one
    checked transaction, retried (`RunStore.read_snapshot`).
    """

    def decorate(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
            try:
                call = functools.partial(method, self, *args, **kwargs)
                if self.conn.in_transaction:
                    return call()
                if self.readonly:
                    return cast(_T, self.read_snapshot(call))
                return cast(_T, self._waiting(call, wait=True))
            except READ_ERRORS as exc:
                raise store_error(self.path, exc, writing, self._waited()) from None

        return wrapper

    return decorate


class StoreReads:
    """The reading methods of `RunStore`."""

    path: str
    conn: sqlite3.Connection

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

    def _select(self, table: str, columns: range, tail: str, args: tuple = ()) -> sqlite3.Cursor:
        """``SELECT * FROM table tail``, checking the table has a number of
        ``columns`` this version reads.
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
        possible (ids without a gap, kinds, names, labels, jobs per label).
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
        """All (parent, child) job id pairs.

        Returns
        -------
        edges : `list` [`tuple` [`int`, `int`]]
            (parent, child) job id pairs.
        """
        return self.conn.execute("SELECT parent, child FROM edges").fetchall()

    @_guarded()
    def envs(self) -> list[str]:
        """Environment scripts, indexed by the jobs' ``env_id``.

        Returns
        -------
        scripts : `list` [`str`]
            The environment scripts.
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
        where, args = ("", ()) if job is None else ("WHERE job=? ", (job,))
        rows = self._select("attempts", range(12, 14), f"{where}ORDER BY job, attempt", args)
        states = _STATES
        found = []
        for j, a, session, state, *rest in rows:
            if state not in states:
                raise damaged(
                    self.path, f"attempt {a!r} of job {j!r} has state {state!r}, which is no job state"
                )
            found.append(AttemptRow(j, a, session, states[state], *rest))
        return found
