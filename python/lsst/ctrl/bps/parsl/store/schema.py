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

"""The run-state store's file format (doc/state.md), and writing the store of
a new run (`create_store`: one transaction into a private file, then linked
in place, so a failed write leaves nothing behind).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import typing
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from ..oneline import one_line
from ..records import JobKind, JobRow, JobState
from .storefile import StateStoreError
from .summary import create_summary

__all__ = ("DB_NAME", "FORMAT_VERSION", "JOB_COLUMNS", "JOURNAL_MODE", "create_store")

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


_SCHEMA_TEMPLATE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE envs (id INTEGER PRIMARY KEY, script TEXT NOT NULL);
{jobs}CREATE TABLE edges (parent INTEGER NOT NULL, child INTEGER NOT NULL);
CREATE TABLE status (
    job INTEGER PRIMARY KEY,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    signal INTEGER,
    start REAL,
    end REAL,
    host TEXT
);
CREATE TABLE attempts (
    job INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    session INTEGER NOT NULL,
    state INTEGER NOT NULL,
    exit_code INTEGER,
    signal INTEGER,
    memory INTEGER,
    executor TEXT,
    submitted REAL,
    start REAL,
    end REAL,
    host TEXT,
    lost TEXT,
    PRIMARY KEY (job, attempt)
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL,
    outcome TEXT
);
"""


def _jobs_table() -> str:
    """Table ``jobs``, one column per field of `JobRow`, in order."""
    types = {int: "INTEGER", bool: "INTEGER", float: "REAL", str: "TEXT"}
    columns = []
    for name, hint in typing.get_type_hints(JobRow).items():
        kinds = [kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)]
        optional = len(kinds) < len(typing.get_args(hint) or (hint,))
        column = f"    {name} {types[kinds[0]]}"
        if name == "id":
            column += " PRIMARY KEY"
        elif not optional:
            column += " NOT NULL" + (" UNIQUE" if name == "name" else "")
        columns.append(column)
    return "CREATE TABLE jobs (\n" + ",\n".join(columns) + "\n);\n"


_SCHEMA = _SCHEMA_TEMPLATE.format(jobs=_jobs_table())


def create_store(
    path: str,
    meta: dict[str, Any],
    jobs: Generator[JobRow, None, list[str]],
    edges: Iterable[tuple[int, int]],
) -> None:
    """Write a new database for a prepared workflow.

    Parameters
    ----------
    path : `str`
        Database file to create; it must not exist.
    meta : `dict`
        Run-wide values (run name, operator, ...), stored as JSON.
    jobs : `~collections.abc.Generator` [`JobRow`, `None`, `list` [`str`]]
        Job rows, ids in topological order; returns the environment scripts ``env_id`` indexes.
    edges : `~collections.abc.Iterable` [`tuple` [`int`, `int`]]
        (parent id, child id) pairs.
    """
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
    except BaseException as exc:
        if isinstance(exc, sqlite3.DatabaseError | OSError):
            text = one_line(exc)
            raise StateStoreError(
                f"{path}: cannot write the run-state database ({text}): free space or fix permissions "
                f"in {os.path.dirname(path)}, or set submitPath elsewhere, then submit again (no job ran)"
            ) from None
        raise
    finally:
        # Never leave a half-written database behind, whatever stopped the writing.
        try:
            os.unlink(tmp)
        except OSError:
            pass


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
            try:
                os.unlink(os.path.join(directory, other))
            except OSError:
                pass


def _insert_jobs(conn: sqlite3.Connection, jobs: Generator[JobRow, None, list[str]]) -> list[str]:
    """Insert job rows into table ``jobs``; what ``jobs`` returned (the environment scripts)."""
    envs: list[str] = []

    def rows() -> Iterator[JobRow]:
        envs.extend((yield from jobs) or ())

    conn.executemany("INSERT INTO jobs VALUES (" + ",".join("?" * JOB_COLUMNS) + ")", rows())
    return envs


def _write_new(
    tmp: str,
    meta: dict[str, Any],
    jobs: Generator[JobRow, None, list[str]],
    edges: Iterable[tuple[int, int]],
) -> None:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
        conn.executemany("INSERT INTO envs VALUES (?, ?)", enumerate(_insert_jobs(conn, jobs)))
        conn.executemany("INSERT INTO edges VALUES (?, ?)", edges)
        conn.execute(f"INSERT INTO status (job, state) SELECT id, {int(JobState.UNREADY)} FROM jobs")
        create_summary(conn)
        conn.execute("CREATE INDEX edges_parent ON edges (parent)")
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("COMMIT")
        conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
    finally:
        conn.close()
