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


"""Jobs of a local-pool spawner that died: what the spawner that replaces it
takes over (`TakeOver`, a part of `spawner.Spawner`; reliability.md, P1).
A live one is followed through ``/proc``: it is not a child of this process.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable

from .exits import log_exit_status, record_exit, recorded_exits, zombie_exit_code
from .journal import Journal, Journals, journal_entries, journal_name
from .processes import append_note, job_alive, live_jobs, process_start_time

__all__ = ("TakeOver",)

_HOST = socket.gethostname()


class TakeOver:
    """The spawner's handling of the jobs of a spawner that died."""

    queue: deque[dict]
    adopted: dict[int, dict]
    """Jobs started by a spawner that died, by pid: followed through ``/proc``, not reaped."""
    journals: Journals
    _reply: Callable[..., None]
    _journal: Callable[[dict], Journal | None]
    _take: Callable[[dict], None]
    _ended: Callable[..., None]

    def _resume(self, dead_spawner: int, jobs: list[dict]) -> None:
        """Take over the requests a spawner that died had not answered: a job
        it had started (its journal says so, its process is alive, or its
        stderr log exists) is followed to its end or answered at once
        (`_answer_from_log`), never started again; the others are queued.
        """
        live = live_jobs()
        started: set[str] = set()
        journaled: dict[str, int] = {}
        old_journals = {
            os.path.join(directory, journal_name(_HOST, dead_spawner))
            for directory in {os.path.dirname(job.get("pid_file") or "") for job in jobs}
            if directory
        }
        for path in old_journals:
            running, tokens = journal_entries(path)
            started |= tokens
            journaled.update((token, pid) for pid, token in running.items())
        for job in jobs:
            token = job["token"]
            pid = live.get(token)
            if pid is not None:
                self._adopt(pid, job)
            elif token in started or os.path.exists(job["err"]):
                self._reply(job, *self._answer_from_log(job, journaled.get(token)), "?")
            else:
                self.queue.append(job)
        self.journals.write()
        for path in old_journals:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _adopt(self, pid: int, job: dict) -> None:
        self._take(job)
        start = process_start_time(pid)
        job["start"] = start if start is not None else "?"
        limit = job.get("time_limit")
        ran = time.time() - start if start is not None else 0.0
        job["deadline"] = time.monotonic() + limit - ran if limit else None
        self.adopted[pid] = job
        journal = self._journal(job)
        if journal is not None:
            journal.started(pid, job["token"], job["err"])

    @staticmethod
    def _answer_from_log(job: dict, pid: int | None) -> tuple[int, int | None]:
        """(exit code, signal) of a job that a spawner that died had started:
        read from ``/proc`` while the job (``pid``) ended unreaped, else from
        the exit records (where that spawner, or its keeper, recorded it).
        """
        directory = os.path.dirname(job.get("pid_file") or "")
        code = zombie_exit_code(pid) if pid is not None else None
        if code is not None:
            record_exit(directory, job["token"], code)
            log_exit_status(job["err"], code)
        else:
            code = recorded_exits(directory).get(job["token"]) if directory else None
        if code is None:
            append_note(
                job["err"],
                "[bps-parsl] the job pool's spawner died while this job ran, and neither it nor its "
                "keeper logged an exit status: counted as failed\n",
            )
            code, sig = -1, None
        else:
            sig = code - 128 if 128 < code < 128 + 65 else None
        return code, sig

    def _poll_adopted(self) -> None:
        """Answer the adopted jobs that ended."""
        for pid, job in list(self.adopted.items()):
            if not job_alive(pid, job["token"]):
                del self.adopted[pid]
                code, sig = self._answer_from_log(job, pid)
                self._ended(pid, job, code, sig, job["start"])
