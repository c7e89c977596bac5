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

"""Which job attempts of a run are running now, and how to stop them.

Two sources, both in ``<submit>/parsl/running/``: a file per running attempt
(``<job>.<attempt>``, holding ``<host> <pid> <token>``) written by
`runner.run_job` on Parsl workers, and the journals of the local pool's
spawners (``spawner.<host>.<pid>``, see `lsst_ctrl_bps_parsl_worker.journal`).
Stopping a run does not need them: every process of a run carries its token
(`kill_attempts`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

from lsst_ctrl_bps_parsl_worker.journal import JOURNAL_PREFIX, read_journal
from lsst_ctrl_bps_parsl_worker.processes import kill_attempts

__all__ = ("kill_running_jobs", "running_attempts", "running_job_ids")

_HOST = socket.gethostname()


def _journals(names: list[str]) -> Iterator[tuple[str, str, int]]:
    """(file name, host, spawner pid) of each journal among ``names``."""
    for name in names:
        if not name.startswith(JOURNAL_PREFIX) or name.endswith(".tmp"):
            continue
        host, _, pid = name[len(JOURNAL_PREFIX) :].rpartition(".")
        if pid.isdigit():
            yield name, host, int(pid)


def running_attempts(running_dir: str) -> Iterator[tuple[str, int, str]]:
    """Yield ``(host, process group, token)`` of each attempt said to run."""
    try:
        names = os.listdir(running_dir)
    except OSError:
        return
    for name, host, _ in _journals(names):
        for pid, token in read_journal(os.path.join(running_dir, name)).items():
            yield host, pid, token
    for name in names:
        if name.startswith(JOURNAL_PREFIX):
            continue
        try:
            with open(os.path.join(running_dir, name)) as stream:
                host, pid_text, token = stream.read().split()
            yield host, int(pid_text), token
        except (OSError, ValueError):
            continue


def running_job_ids(running_dir: str) -> set[int]:
    """Ids of the jobs with an attempt said to run."""
    try:
        names = os.listdir(running_dir)
    except OSError:
        return set()
    ids = {int(name.split(".", 1)[0]) for name in names if name.split(".", 1)[0].isdigit()}
    for name, _, _ in _journals(names):
        for token in read_journal(os.path.join(running_dir, name)).values():
            job = token.rsplit("/", 2)
            if len(job) == 3 and job[1].isdigit():
                ids.add(int(job[1]))
    return ids


def kill_running_jobs(running_dir: str, run_id: str) -> int:
    """Kill every process of this run on this host (`kill_attempts`
    with the run's token prefix: job shells, their children, and whatever
    left their process group or session), SIGTERM then SIGKILL.

    A process is signalled only if its own ``/proc`` entry carries this run's
    token, so a reused pid is never hit. Journals of spawners that are gone
    are removed afterwards. Returns how many processes were found.
    """
    killed = kill_attempts(run_prefix=run_id + "/")
    try:
        names = os.listdir(running_dir)
    except OSError:
        names = []
    for name, host, pid in _journals(names):
        if host == _HOST and not _alive(pid):
            try:
                os.unlink(os.path.join(running_dir, name))
            except OSError:
                pass
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
