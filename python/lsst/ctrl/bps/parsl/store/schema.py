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

"""The run-state store's tables (doc/state.md): writing the store of a new run
(`RunStore.create`: one transaction into a private file, then linked in place, so
a failed write leaves nothing behind); the per-label, per-state job counts kept
by SQLite triggers (tables ``labels`` and ``summary``) and the report's reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import typing
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from ..oneline import one_line
from ..records import AttemptRow, JobKind, JobRow, JobState, SessionRow, StatusRow
from .storefile import StateStoreError

__all__ = (
    "DB_NAME",
    "FORMAT_VERSION",
    "JOB_COLUMNS",
    "JOURNAL_MODE",
    "JobReports",
    "failed_exit_codes",
    "job_reports",
    "label_counts",
    "pending_labels",
)

# Adapters for None and the IntEnums: without, sqlite3 searches for one by failing
# attribute lookups (0.3 us per NULL, a third of a million-job prepare).
_NULL: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NULL.get)  # None -> None, in C
sqlite3.register_adapter(JobState, int)
sqlite3.register_adapter(JobKind, int)

DB_NAME = "bps_parsl.sqlite3"
FORMAT_VERSION = 1
JOURNAL_MODE = "DELETE"
"""SQLite journal mode of every store: a rollback journal, safe on network file systems."""
READ_RETRY_SECONDS = 30.0
"""How long a reader keeps retrying a read that a commit got in the way of."""
WRITE_WAIT_SECONDS = 600.0
"""How long a commit that cannot wait in memory waits for other connections' locks."""
TORN_RETRY_SECONDS = 1.0
"""How long a reader retries a read that found pages half-written (a damaged file fails after it)."""
CHANGE_COUNTER = 24
"""Offset of the file change counter in an SQLite header (rollback-journal mode)."""
JOB_COLUMNS = len(JobRow._fields)
"""Columns of table ``jobs`` (older stores lack the last five: read as `None`)."""


def _table(table: str, row: type, key: str, **more: str) -> str:
    """``CREATE TABLE table``: one column per field of the NamedTuple ``row``, in
    order, ``NOT NULL`` unless optional, then ``more[field]``; primary ``key``
    (``"a, b"`` for a pair).
    """
    types = {int: "INTEGER", float: "REAL", str: "TEXT"}  # bool and the IntEnums are ints
    columns = []
    for field, hint in typing.get_type_hints(row).items():
        kinds = typing.get_args(hint) or (hint,)
        sql_type = next(types[kind] for kind in types if issubclass(kinds[0], kind))
        constraint = "PRIMARY KEY" if field == key else "" if type(None) in kinds else "NOT NULL"
        columns.append(" ".join(filter(None, (field, sql_type, constraint, more.get(field)))))
    if "," in key:
        columns.append(f"PRIMARY KEY ({key})")
    return f"CREATE TABLE {table} (\n    " + ",\n    ".join(columns) + "\n)"


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE envs (id INTEGER PRIMARY KEY, script TEXT NOT NULL)",
    _table("jobs", JobRow, "id", name="UNIQUE"),
    "CREATE TABLE edges (parent INTEGER NOT NULL, child INTEGER NOT NULL)",
    _table("status", StatusRow, "job", attempt="DEFAULT 0"),
    _table("attempts", AttemptRow, "job, attempt"),
    _table("sessions", SessionRow, "id"),
)


def _create_store(
    path: str,
    meta: dict[str, Any],
    jobs: Generator[JobRow, None, list[str]],
    edges: Iterable[tuple[int, int]],
) -> None:
    """Write a new database for a prepared workflow (`RunStore.create`); ``path`` must not exist."""
    if os.path.exists(path):
        raise _exists(path)
    # A name of this process's own: two submits into one directory never share a file.
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        _remove_stale_tmp(path)
        if os.path.exists(tmp):
            os.unlink(tmp)
        _write_new(tmp, meta, jobs, edges)
        os.chmod(tmp, 0o600)
        try:
            # link() puts the complete file in place only if no store is there yet
            # (atomic and exclusive, on network file systems too): one submit wins.
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
    except (sqlite3.DatabaseError, OSError) as exc:
        raise StateStoreError(
            f"{path}: cannot write the run-state database ({one_line(exc)}): free space or fix permissions "
            f"in {os.path.dirname(path)}, or set submitPath elsewhere, then submit again (no job ran)"
        ) from None
    finally:
        # Never leave a half-written database behind, whatever stopped the writing.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _exists(path: str) -> StateStoreError:
    directory = os.path.dirname(path)
    return StateStoreError(
        f"{directory}: already holds a run (another 'bps submit' may have created it at the same time): "
        f"'bps restart --id {directory}' resumes it; submit with another submitPath"
    )


def _remove_stale_tmp(path: str) -> None:
    """Remove the temporary stores of killed submits of this host into this directory."""
    directory, name = os.path.split(path)
    host = socket.gethostname()
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for other in names:
        if not (other.startswith(f"{name}.{host}.") and other.endswith(".tmp")):
            continue
        pid = other[len(name) + len(host) + 2 : -4]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, other))


def _write_new(
    tmp: str,
    meta: dict[str, Any],
    jobs: Generator[JobRow, None, list[str]],
    edges: Iterable[tuple[int, int]],
) -> None:
    envs: list[str] = []

    def rows() -> Iterator[JobRow]:
        envs.extend((yield from jobs) or ())  # what ``jobs`` returns: the environment scripts

    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
        conn.executemany("INSERT INTO jobs VALUES (" + ",".join("?" * JOB_COLUMNS) + ")", rows())
        conn.executemany("INSERT INTO envs VALUES (?, ?)", enumerate(envs))
        conn.executemany("INSERT INTO edges VALUES (?, ?)", edges)
        conn.execute(f"INSERT INTO status (job, state) SELECT id, {int(JobState.UNREADY)} FROM jobs")
        _create_summary(conn)
        conn.execute("CREATE INDEX edges_parent ON edges (parent)")
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("COMMIT")
        conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
    finally:
        conn.close()


_PAYLOAD = int(JobKind.PAYLOAD)
_JOB_LABEL = f"(SELECT label FROM jobs WHERE id = {{row}}.job AND kind = {_PAYLOAD})"

_LABEL_JOBS = f"SELECT label, count(*) FROM jobs WHERE kind = {_PAYLOAD} GROUP BY label ORDER BY min(id)"
_LABEL_STATE_JOBS = (
    "SELECT j.label, s.state, count(*) FROM jobs j JOIN status s ON s.job = j.id "
    f"WHERE j.kind = {_PAYLOAD} GROUP BY j.label, s.state"
)
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


def _create_summary(conn: sqlite3.Connection) -> None:
    """Create and fill the summary tables of a new store (``status`` written), and their triggers."""
    for statement in _TABLES:
        conn.execute(statement)
    conn.execute(f"INSERT INTO labels (label, jobs) {_LABEL_JOBS}")
    conn.execute(f"INSERT INTO summary (label, state, count) {_LABEL_STATE_JOBS}")
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
    else:  # a store written before the summary tables
        labels = conn.execute(_LABEL_JOBS).fetchall()
        rows = conn.execute(_LABEL_STATE_JOBS).fetchall()
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
