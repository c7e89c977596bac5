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

"""Which attempts of a run run now (``<submit>/parsl/running/``), and how to stop them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsst_ctrl_bps_parsl_worker.exits import zombie_exit_code
from lsst_ctrl_bps_parsl_worker.journal import JOURNAL_PREFIX, JOURNAL_REFRESH, journal_jobs
from lsst_ctrl_bps_parsl_worker.processes import append_note, kill_attempts

from .claim import DriverBusyError
from .liveness import HOST, _file_age, _pid_exists, _unlink

if TYPE_CHECKING:
    from ..store.recorder import Recorder

__all__ = ("StaleJournal", "forget_journals", "kill_running_jobs", "running_job_ids", "spawners_elsewhere")

_UNREAPED_WAIT = 2.0
"""Seconds `kill_running_jobs` waits for ended jobs of a live spawner to be reaped."""
_NAMES_SHOWN = 3
"""Jobs a refused restart names before "and N more"."""


@dataclass(frozen=True)
class StaleJournal:
    """The journal of a spawner on another host that stopped refreshing it."""

    path: str
    host: str
    attempts: list[tuple[int, int]]
    """(job, attempt) of each attempt it says runs."""


def _journals(names: list[str]) -> Iterator[tuple[str, str, int]]:
    """(file name, host, spawner pid) of each journal among ``names``."""
    for name in names:
        if not name.startswith(JOURNAL_PREFIX) or name.endswith(".tmp"):
            continue
        host, _, pid = name[len(JOURNAL_PREFIX) :].rpartition(".")
        if pid.isdigit():
            yield name, host, int(pid)


def running_job_ids(running_dir: str) -> set[int]:
    """Ids of the jobs with an attempt said to run.

    Parameters
    ----------
    running_dir : `str`
        The run's directory of running-attempt records and journals.

    Returns
    -------
    ids : `set` [`int`]
        Job ids.
    """
    try:
        names = os.listdir(running_dir)
    except OSError:
        return set()
    ids = {int(name.split(".", 1)[0]) for name in names if name.split(".", 1)[0].isdigit()}
    for name, _, _ in _journals(names):
        attempts = map(_attempt_of, journal_jobs(os.path.join(running_dir, name)).running.values())
        ids.update(attempt[0] for attempt in attempts if attempt)
    return ids


def kill_running_jobs(running_dir: str, run_id: str) -> int:
    """Kill this run's processes here (by its token in ``/proc``); remove dead spawners' journals.

    Parameters
    ----------
    running_dir, run_id : `str`
        The run's running-attempt records and journals; its id (its tokens start with ``<run_id>/``).

    Returns
    -------
    count : `int`
        Number of processes found.
    """
    killed = kill_attempts(run_prefix=run_id + "/")
    try:
        names = os.listdir(running_dir)
    except OSError:
        names = []
    ended: set[int] = set()
    for name, host, pid in _journals(names):
        if host != HOST:
            continue
        if _pid_exists(pid):
            ended |= set(journal_jobs(os.path.join(running_dir, name)).running)
        else:
            _unlink(os.path.join(running_dir, name))
    # A job of a live spawner that ended is reaped, its exit status recorded, in a moment.
    deadline = time.monotonic() + _UNREAPED_WAIT
    while time.monotonic() < deadline and any(zombie_exit_code(pid) is not None for pid in ended):
        time.sleep(0.01)
    return killed


def _attempt_of(token: str) -> tuple[int, int] | None:
    """(job, attempt) of a token ``<run>/<job>/<attempt>``, or `None`."""
    fields = token.rsplit("/", 2)
    if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
        return None
    return int(fields[1]), int(fields[2])


def _journal_moves(path: str, info: os.stat_result, stale_after: float) -> bool:
    """Watch a stale-looking journal for two refreshes and a second: whether it moves."""
    seen = (info.st_ino, info.st_size, info.st_mtime_ns)
    deadline = time.monotonic() + min(stale_after, 2 * JOURNAL_REFRESH + 1.0)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = journal_jobs(path).stat
        if now is None:
            return False
        if (now.st_ino, now.st_size, now.st_mtime_ns) != seen:
            return True
    return False


def spawners_elsewhere(running_dir: str, stale_after: float, recorder: Recorder) -> list[StaleJournal]:
    """Check other hosts' local-pool spawner journals before a restart settles what a dead driver left:
    `DriverBusyError` if a live one still runs attempts with no recorded exit.

    Parameters
    ----------
    running_dir : `str`
        The run's ``parsl/running`` directory.
    stale_after : `float`
        The run's ``parslDriverStaleAfter``.
    recorder : `Recorder`
        The run's recorder (job names and log paths).

    Returns
    -------
    stale : `list` [`StaleJournal`]
        Journals whose spawner is gone: their attempts count as ended.
    """
    try:
        names = os.listdir(running_dir)
    except OSError:
        return []
    parsl_dir = os.path.dirname(running_dir)
    stale: list[StaleJournal] = []
    live: dict[str, list[tuple[int, int]]] = {}
    for name, host, _ in _journals(names):
        if host == HOST:
            continue
        path = os.path.join(running_dir, name)
        found = journal_jobs(path)
        if found.stat is None:
            continue
        running, info = found.running, found.stat
        attempts = sorted(a for a in map(_attempt_of, running.values()) if a and a[0] < len(recorder.rows))
        fresh = _file_age(parsl_dir, info.st_mtime, info.st_mtime) <= max(stale_after, 2 * JOURNAL_REFRESH)
        if not fresh and not _journal_moves(path, info, stale_after):
            stale.append(StaleJournal(path, host, attempts))
            continue
        exits = recorder.exit_statuses()
        unended = [a for a in attempts if recorder.exit_status(*a, exits) is None]
        if unended:
            live.setdefault(host, []).extend(unended)
    if not live:
        return stale
    host = sorted(live)[0]
    names = sorted({recorder.rows[job].name for job, _ in live[host]})
    shown = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    elsewhere = f" (and jobs on {len(live) - 1} other host(s))" if len(live) > 1 else ""
    raise DriverBusyError(
        f"{recorder.submit_path}: job(s) {shown} of the driver that died still run on {host}{elsewhere}, "
        f"under its local job pool, which this host cannot stop: run 'bps restart' on {host}, which stops "
        "them, or wait until they end"
    )


def forget_journals(stale: list[StaleJournal], recorder: Recorder) -> None:
    """Remove the journals of spawners that are gone, once their attempts are settled.

    Parameters
    ----------
    stale : `list` [`StaleJournal`]
        The journals of spawners that are gone.
    recorder : `Recorder`
        The driver's recorder (gives the attempts' logs).
    """
    exits = recorder.exit_statuses()
    for journal in stale:
        for job, attempt in journal.attempts:
            stderr = recorder.stderr_of(job, attempt)
            if os.path.exists(stderr) and recorder.exit_status(job, attempt, exits) is None:
                append_note(
                    stderr,
                    f"[bps-parsl] the local job pool on {journal.host} stopped refreshing its journal "
                    "(its spawner or host is gone) while this attempt ran: taken as ended\n",
                )
        _unlink(journal.path)
