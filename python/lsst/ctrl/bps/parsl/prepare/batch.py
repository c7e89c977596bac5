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

"""Batch submission (``bpsBatchSubmission``): the payload joins the run that prepared it."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ..configuration import ConfigurationError
from ..records import JobRow
from ..store.runstore import JobState, RunStore, StateStoreError, db_path

__all__ = ("LAZY_GROUPS", "Payload", "control_run", "join_payload", "lazy_group_ids")

LAZY_GROUPS = "batch_lazy_groups"
"""Run metadata: ``{name: id}`` of the lazy groups of a control workflow."""
_LOG = logging.getLogger(__name__)

JOINED = "batch_joined"
"""Run metadata: ids of the lazy groups whose payload joined the run."""


@dataclass
class Payload:
    """A payload workflow prepared for a running control run (ids from 0)."""

    rows: list[JobRow]
    edges: list[tuple[int, int]]
    envs: list[str]


def lazy_group_ids(generic_workflow: Any, node_id: Any) -> dict[str, dict[str, int]]:
    """Run metadata naming the lazy groups of a control workflow (empty if none).

    Parameters
    ----------
    generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
        The workflow being prepared.
    node_id : callable
        Stored id of a node by name.

    Returns
    -------
    meta : `dict` [`str`, `dict` [`str`, `int`]]
        ``{LAZY_GROUPS: {group name: node id}}``, or empty.
    """
    try:
        from lsst.ctrl.bps import GenericWorkflowLazyGroup  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return {}
    lazy = {
        name: node_id(name)
        for name in generic_workflow
        if isinstance(generic_workflow.get_job(name), GenericWorkflowLazyGroup)
    }
    return {LAZY_GROUPS: lazy} if lazy else {}


def control_run(submit_path: str) -> dict[str, Any] | None:
    """The metadata of the control run in ``submit_path``, if it holds one.

    Parameters
    ----------
    submit_path : `str`
        Submit directory of the control run.

    Returns
    -------
    meta : `dict` [`str`, `~typing.Any`] or `None`
        The control run's run-wide values, or `None`.
    """
    path = db_path(submit_path)
    if not os.path.exists(path):
        return None
    with closing(RunStore(path, readonly=True)) as store:
        meta = store.meta()
    return meta if meta.get(LAZY_GROUPS) else None


def join_payload(submit_path: str, payload: Payload) -> tuple[str, int]:
    """Append a payload's jobs and edges below the run's lazy group, in one transaction, once
    (`ConfigurationError` if no lazy group waits or job names clash, `StateStoreError`).

    Parameters
    ----------
    submit_path : `str`
        Submit directory of the control run.
    payload : `Payload`
        The prepared payload workflow.

    Returns
    -------
    group, added : `tuple` [`str`, `int`]
        The lazy group the payload joined and the number of jobs added.
    """
    path = db_path(submit_path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    except sqlite3.Error as exc:
        raise StateStoreError(f"{path}: cannot open the run-state database ({exc})") from None
    try:
        conn.execute("BEGIN IMMEDIATE")  # closed without a COMMIT, the connection rolls it back
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        groups: dict[str, int] = meta.get(LAZY_GROUPS) or {}
        joined: list[int] = meta.get(JOINED) or []
        waiting = {name: i for name, i in groups.items() if i not in joined}
        if not waiting:
            if groups:
                _LOG.info("the payload already joined run %s: not added again", meta.get("run_id"))
                return next(iter(groups)), 0
            raise ConfigurationError(
                f"{path}: run {meta.get('run_id')} has no lazy group: only a run submitted with "
                "'bpsBatchSubmission: true' takes a payload"
            )
        if len(waiting) > 1:
            raise ConfigurationError(
                f"{path}: lazy groups {sorted(waiting)} all wait for a payload: this plugin joins one"
            )
        group, group_id = next(iter(waiting.items()))
        offset = conn.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM jobs").fetchone()[0]
        env_ids = _add_envs(conn, payload.envs)
        rows = [
            row._replace(id=row.id + offset, env_id=None if row.env_id is None else env_ids[row.env_id])
            for row in payload.rows
        ]
        if rows:
            conn.executemany("INSERT INTO jobs VALUES (" + ",".join("?" * len(JobRow._fields)) + ")", rows)
        conn.executemany(
            "INSERT INTO edges VALUES (?, ?)", ((p + offset, c + offset) for p, c in payload.edges)
        )
        # The payload's jobs without parents, but for the final ones, wait for the lazy group.
        has_parent = {child for _, child in payload.edges}
        entries = [row.id + offset for row in payload.rows if row.id not in has_parent and not row.final]
        conn.executemany("INSERT INTO edges VALUES (?, ?)", ((group_id, i) for i in entries))
        conn.execute(
            f"INSERT INTO status (job, state) SELECT id, {JobState.UNREADY} FROM jobs WHERE id >= ?",
            (offset,),
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (JOINED, json.dumps(sorted([*joined, group_id])))
        )
        conn.execute("COMMIT")
        _LOG.info("%d payload jobs joined run %s below %s", len(rows), meta.get("run_id"), group)
        return group, len(rows)
    except sqlite3.IntegrityError as exc:
        raise ConfigurationError(
            f"{path}: the payload's jobs cannot join the run ({exc}): a payload job has the name of a "
            "control job; rename that label"
        ) from None
    except sqlite3.Error as exc:
        raise StateStoreError(f"{path}: cannot add the payload's jobs to the run ({exc})") from None
    finally:
        conn.close()


def _add_envs(conn: sqlite3.Connection, envs: list[str]) -> list[int]:
    """Store the environment scripts the run does not have; their ids."""
    known = {script: i for i, script in conn.execute("SELECT id, script FROM envs")}
    first = max(known.values(), default=-1) + 1
    new = [script for script in dict.fromkeys(envs) if script not in known]
    conn.executemany("INSERT INTO envs VALUES (?, ?)", enumerate(new, first))
    known.update((script, i) for i, script in enumerate(new, first))
    return [known[script] for script in envs]
