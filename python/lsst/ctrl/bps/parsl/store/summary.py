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

"""The store's per-label, per-state job counts, kept by SQLite triggers
(tables ``labels`` and ``summary``, state.md), and the reads of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from ..records import JobKind, JobState

__all__ = (
    "JobReports",
    "create_summary",
    "failed_exit_codes",
    "job_reports",
    "label_counts",
    "pending_labels",
)

_PAYLOAD = int(JobKind.PAYLOAD)
_JOB_LABEL = f"(SELECT label FROM jobs WHERE id = {{row}}.job AND kind = {_PAYLOAD})"

_TABLES = (
    "CREATE TABLE labels (position INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE, jobs INTEGER NOT NULL)",
    "CREATE TABLE summary (label TEXT NOT NULL, state INTEGER NOT NULL, count INTEGER NOT NULL, "
    "PRIMARY KEY (label, state)) WITHOUT ROWID",
)


def _count(row: str, state: str, delta: int) -> str:
    """SQL adding ``delta`` to the count of (label of ``row``'s job, ``state``)."""
    return (
        f"INSERT INTO summary (label, state, count) SELECT label, {state}, {delta} FROM jobs "
        f"WHERE id = {row}.job AND kind = {_PAYLOAD} "
        f"ON CONFLICT (label, state) DO UPDATE SET count = count + {delta};"
    )


_TRIGGERS = (
    "CREATE TRIGGER summary_on_update AFTER UPDATE OF state ON status WHEN old.state IS NOT new.state "
    f"BEGIN {_count('old', 'old.state', -1)} {_count('new', 'new.state', 1)} END",
    "CREATE TRIGGER summary_on_insert AFTER INSERT ON status BEGIN "
    f"INSERT INTO labels (label, jobs) SELECT label, 1 FROM jobs WHERE id = new.job AND kind = {_PAYLOAD} "
    "ON CONFLICT (label) DO UPDATE SET jobs = jobs + 1; "
    f"{_count('new', 'new.state', 1)} END",
    "CREATE TRIGGER summary_on_delete AFTER DELETE ON status BEGIN "
    f"UPDATE labels SET jobs = jobs - 1 WHERE label = {_JOB_LABEL.format(row='old')}; "
    f"{_count('old', 'old.state', -1)} END",
)


def create_summary(conn: sqlite3.Connection) -> None:
    """Create and fill the summary tables of a new store (``status`` written), and their triggers.

    Parameters
    ----------
    conn : `sqlite3.Connection`
        Connection to the new store.
    """
    for statement in _TABLES:
        conn.execute(statement)
    conn.execute(
        f"INSERT INTO labels (label, jobs) SELECT label, count(*) FROM jobs WHERE kind = {_PAYLOAD} "
        "GROUP BY label ORDER BY min(id)"
    )
    conn.execute(
        "INSERT INTO summary (label, state, count) SELECT j.label, s.state, count(*) FROM jobs j "
        f"JOIN status s ON s.job = j.id WHERE j.kind = {_PAYLOAD} GROUP BY j.label, s.state"
    )
    for statement in _TRIGGERS:
        conn.execute(statement)


def label_counts(conn: sqlite3.Connection) -> tuple[list[tuple[str, int]], dict[str, dict[int, int]]]:
    """The payload labels with their jobs, and the payload jobs per label and state.

    Parameters
    ----------
    conn : `sqlite3.Connection`
        Connection to the store.

    Returns
    -------
    labels : `list` [`tuple` [`str`, `int`]]
        (label, number of jobs) in the order of the labels' first jobs.
    counts : `dict` [`str`, `dict` [`int`, `int`]]
        Number of jobs by label, then by state.
    """
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'summary'").fetchone():
        labels = conn.execute("SELECT label, jobs FROM labels WHERE jobs > 0 ORDER BY position").fetchall()
        rows: Iterable[tuple[str, int, int]] = conn.execute(
            "SELECT label, state, count FROM summary WHERE count > 0"
        ).fetchall()
    else:
        labels = conn.execute(
            f"SELECT label, count(*) FROM jobs WHERE kind = {_PAYLOAD} GROUP BY label ORDER BY min(id)"
        ).fetchall()
        rows = conn.execute(
            "SELECT j.label, s.state, count(*) FROM jobs j JOIN status s ON s.job = j.id "
            f"WHERE j.kind = {_PAYLOAD} GROUP BY j.label, s.state"
        ).fetchall()
    counts: dict[str, dict[int, int]] = {}
    for label, state, count in rows:
        counts.setdefault(label, {})[state] = count
    return labels, counts


def pending_labels(conn: sqlite3.Connection, ids: Iterable[int]) -> list[str]:
    """Labels of the payload jobs among ``ids`` whose stored state is PENDING.

    Parameters
    ----------
    conn : `sqlite3.Connection`
        Connection to the store.
    ids : `~collections.abc.Iterable` [`int`]
        Job ids to look at.

    Returns
    -------
    labels : `list` [`str`]
        Label of each such job (a label once per job).
    """
    found: list[str] = []
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.extend(
            label
            for (label,) in conn.execute(
                f"SELECT j.label FROM jobs j JOIN status s ON s.job = j.id WHERE s.state = {int(JobState.PENDING)} "
                f"AND j.kind = {_PAYLOAD} AND j.id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        )
    return found


def failed_exit_codes(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """(label, exit status) of every failed payload job with a non-zero status.

    Parameters
    ----------
    conn : `sqlite3.Connection`
        Connection to the store.

    Returns
    -------
    codes : `list` [`tuple` [`str`, `int`]]
        (label, exit status) pairs.
    """
    return conn.execute(
        "SELECT j.label, s.exit_code FROM status s JOIN jobs j ON j.id = s.job "
        f"WHERE s.state = {int(JobState.FAILED)} AND j.kind = {_PAYLOAD} AND s.exit_code"
    ).fetchall()


class JobReports(list):
    """A run's `WmsJobReport` list, read from the store when first looked at
    (``bps report`` never looks), so a report reads the jobs only if asked.

    Parameters
    ----------
    items : `~collections.abc.Iterable` [`WmsJobReport`]
        Jobs already known (copies of the list pass them).
    loader : callable, optional
        Returns the jobs; called once, at the first look.
    """

    def __init__(self, items: Iterable[Any] = (), loader: Callable[[], Iterable[Any]] | None = None):
        super().__init__(items)
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            super().extend(loader())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        if self._loader is not None:
            return "JobReports(<not read yet>)"
        return super().__repr__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._load()
        return (JobReports, (list(super().__iter__()),))


def _loading(name: str) -> Callable[..., Any]:
    method = getattr(list, name)

    def wrapper(self: JobReports, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return method(self, *args, **kwargs)

    wrapper.__name__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


for _name in (
    "__iter__", "__len__", "__getitem__", "__contains__", "__reversed__", "__eq__", "__ne__", "__lt__",
    "__le__", "__gt__", "__ge__", "__add__", "__mul__", "__iadd__", "__setitem__", "__delitem__",
    "append", "extend", "insert", "pop", "remove", "clear", "index", "count", "copy", "sort", "reverse",
):  # fmt: skip
    setattr(JobReports, _name, _loading(_name))


def job_reports(
    store: Any, run_id: str, shown: Callable[[int, int], Any], report_type: Callable[..., Any]
) -> list[Any]:
    """Every payload job of a run as a report, by id.

    Parameters
    ----------
    store : `RunStore`
        The run's store.
    run_id : `str`
        The run's id (the reports' ids are ``<run_id>.<job id>``).
    shown : `~collections.abc.Callable` [[`int`, `int`], `~typing.Any`]
        Gives the state to report from a stored state and job id.
    report_type : `~collections.abc.Callable`
        The report class (`lsst.ctrl.bps.WmsJobReport`).

    Returns
    -------
    reports : `list`
        One report per payload job.
    """
    rows = store.conn.execute(
        "SELECT j.id, j.name, j.label, s.state FROM jobs j JOIN status s ON s.job = j.id "
        f"WHERE j.kind = {_PAYLOAD} ORDER BY j.id"
    ).fetchall()
    return [
        report_type(wms_id=f"{run_id}.{job_id}", name=name, label=label, state=shown(value, job_id))
        for job_id, name, label, value in rows
    ]
