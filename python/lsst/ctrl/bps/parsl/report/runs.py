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
"""The runs ``bps report``, ``bps status`` and ``bps cancel`` see: one by id, or from the run index."""

from __future__ import annotations

import getpass
import os
import pwd
import time
from contextlib import closing, suppress
from pathlib import Path

from lsst.ctrl.bps import WmsRunReport, WmsStates

from ..control.liveness import driver_alive
from ..oneline import shown
from ..records import ENDED
from ..store.runindex import INDEX_SUBDIR, list_runs, resolve_run
from ..store.runstore import RunStore, StateStoreError, db_path
from .reports import readable_run, run_report, run_state

__all__ = ("cancellable_runs", "listed_reports", "run_status")


def listed_reports(user: str | None, hist: float, return_exit_codes: bool) -> tuple[list[WmsRunReport], str]:
    """Short reports of the runs ``bps report`` lists (active, or ended within ``hist`` days).

    Parameters
    ----------
    user : `str` or `None`
        Only this operator's runs (read from their run index if another user).
    hist : `float`
        Days of history.
    return_exit_codes : `bool`
        Include non-zero exit codes per label.

    Returns
    -------
    reports, message : `tuple`
        The reports and the problems, one per line.
    """
    runs, problems = _runs_of(user)
    reports = []
    since = time.time() - (hist or 0) * 86400
    for submit_path in runs:
        try:
            if not user and not _is_owner(submit_path):
                continue
            readable_run(submit_path)
            when, alive = _last_activity(submit_path)
            if not alive and when < since:
                continue
            report = run_report(submit_path, False, return_exit_codes)
        except (StateStoreError, OSError) as exc:
            problems.append(str(exc))
            continue
        if user and report.operator != user:
            continue
        reports.append(report)
    return reports, "\n".join(problems)


def run_status(wms_workflow_id: str) -> tuple[WmsStates, str]:
    """The state of a run, without per-job work.

    Parameters
    ----------
    wms_workflow_id : `str`
        Submit directory or run id.

    Returns
    -------
    state, message : `tuple`
        The run's `WmsStates` (``UNKNOWN`` if unreadable) and a message.
    """
    try:
        submit_path = resolve_run(wms_workflow_id)
        readable_run(submit_path)
        with closing(RunStore(db_path(submit_path), readonly=True)) as store:
            state, message = run_state(store, submit_path)
        return state, shown(message, 4000)
    except (StateStoreError, OSError) as exc:
        return WmsStates.UNKNOWN, str(exc)


def cancellable_runs(wms_id: str | None, user: str | None) -> list[str]:
    """Submit directories ``bps cancel`` can act on (a live driver or unfinished jobs).

    Parameters
    ----------
    wms_id : `str` or `None`
        One run's submit directory or id (none: this user's runs with a live driver).
    user : `str` or `None`
        Only runs whose ``operator`` is this user.

    Returns
    -------
    ids : `list` [`str`]
        Submit directories.
    """
    if wms_id:
        try:
            submit_path = resolve_run(wms_id)
            readable_run(submit_path)  # another user's run: `cancel` says why it refuses
        except (StateStoreError, OSError):
            return []
        try:
            return [submit_path] if _cancellable(submit_path) else []
        except (StateStoreError, OSError):
            return [submit_path]  # unreadable or damaged: `cancel` says so in one line
    ids = []
    for run_id, submit_path in list_runs():
        with suppress(StateStoreError, OSError):
            if (
                _is_owner(submit_path)
                and driver_alive(submit_path, run_id) is not None
                and _operator_is(submit_path, user)
            ):
                ids.append(submit_path)
    return ids


def _runs_of(user: str | None) -> tuple[list[str], list[str]]:
    """Submit directories in this user's index and ``user``'s (if readable); the problems met."""
    runs = [path for _, path in list_runs()]
    problems: list[str] = []
    if user and user != getpass.getuser():
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            return runs, [f"user '{user}' does not exist on this host: check --user"]
        other_index = Path(home) / INDEX_SUBDIR
        if not os.access(other_index, os.R_OK | os.X_OK):
            problems.append(
                f"{other_index}: the run index of user '{user}' is not readable by you: pass --id with the "
                "run's submit directory, or ask them to let you read it"
            )
        runs.extend(path for _, path in list_runs(other_index) if path not in runs)
    return runs, problems


def _is_owner(submit_path: str) -> bool:
    return os.stat(db_path(submit_path)).st_uid == os.getuid()


def _operator_is(submit_path: str, user: str | None) -> bool:
    if not user:
        return True
    with closing(RunStore(db_path(submit_path), readonly=True)) as store:
        return store.meta().get("operator") == user


def _cancellable(submit_path: str) -> bool:
    if driver_alive(submit_path) is not None:
        return True
    with closing(RunStore(db_path(submit_path), readonly=True)) as store:
        return store.sessions() != [] and any(row.state not in ENDED for row in store.statuses())


def _last_activity(submit_path: str) -> tuple[float, bool]:
    """Time of the run's last session end or start (now while a driver is alive), and whether one is."""
    if driver_alive(submit_path) is not None:
        return time.time(), True
    with closing(RunStore(db_path(submit_path), readonly=True)) as store:
        sessions = store.sessions()
        created = store.meta().get("created", 0.0)
    return (sessions[-1].end or sessions[-1].start) if sessions else created, False
