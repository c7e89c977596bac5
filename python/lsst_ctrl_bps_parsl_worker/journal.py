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

"""The journal of a local-pool spawner: which of its jobs run (format in state.md).

The spawner writes it; report, cancel, restart, a spawner taking over and the
keeper read it. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import NamedTuple

__all__ = (
    "JOURNAL_PREFIX",
    "JOURNAL_REFRESH",
    "Journal",
    "JournalJobs",
    "journal_jobs",
    "journal_name",
)

JOURNAL_PREFIX = "spawner."
JOURNAL_REFRESH = 1.0
"""Seconds between two refreshes of a journal's modification time while jobs run."""
_HOST = socket.gethostname()
_JOURNAL_COMPACT_BYTES = 1 << 20
"""Size above which the journal is rewritten with only the running jobs."""
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class JournalJobs(NamedTuple):
    """What a journal says (`journal_jobs`); empty if it cannot be read."""

    running: dict[int, str]
    """Token of each running job, by pid."""
    started: set[str]
    """Token of every job that started, ended or not."""
    logs: dict[int, str]
    """Stderr log of each running job, by pid."""
    starting: dict[str, str]
    """Stderr log of the job being started (``>`` with no ``+`` after it), by token."""
    stat: os.stat_result | None
    """The file's status (`None`: unreadable), read through the same open file
    (on NFS, that revalidates the cached attributes)."""


def journal_name(pid: int) -> str:
    """File name of the journal of the spawner ``pid`` on this host.

    Parameters
    ----------
    pid : `int`
        Its process id.

    Returns
    -------
    name : `str`
        The journal's file name (no directory).
    """
    return f"{JOURNAL_PREFIX}{_HOST}.{pid}"


def journal_jobs(path: str) -> JournalJobs:
    """What the journal at ``path`` says.

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    jobs : `JournalJobs`
        Its running, started and starting jobs, and its status.
    """
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            data = stream.read()
    except OSError:
        return JournalJobs({}, set(), {}, {}, None)
    jobs = JournalJobs({}, set(), {}, {}, info)
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(" ", 3)
        with contextlib.suppress(ValueError):
            if len(fields) >= 3 and fields[0] == "+":
                jobs.starting.pop(fields[2], None)
                pid = int(fields[1])
                jobs.running[pid] = fields[2]
                jobs.started.add(fields[2])
                if len(fields) == 4:
                    jobs.logs[pid] = json.loads(fields[3])
            elif len(fields) == 3 and fields[0] == ">":
                jobs.starting[fields[1]] = json.loads(fields[2])
            elif len(fields) == 2 and fields[0] == "-":
                jobs.running.pop(int(fields[1]), None)
                jobs.logs.pop(int(fields[1]), None)
    return jobs


class Journal:
    """The append-only record of which jobs run, one per directory (made
    again, with every running job, if it was removed).

    Parameters
    ----------
    directory : `str`
        Directory of the journal (made if missing).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, journal_name(os.getpid()))
        self.running: dict[int, str] = {}  # pid: its "+" line
        self.being_started = ""  # the ">" line of the job being started
        self.size = 0
        self.pending: list[str] = []
        self.next_touch = 0.0  # monotonic
        os.makedirs(directory, exist_ok=True)
        self.fd = os.open(self.path, _APPEND, 0o600)

    def _made_again(self) -> bool:
        """Whether the journal was removed; if so, it is made again (`_compact`)."""
        try:
            if os.fstat(self.fd).st_nlink > 0:
                return False
        except OSError:
            pass
        self.pending.clear()
        self._compact()
        return True

    def write(self) -> None:
        """Append the lines recorded since the last write, in one go."""
        if not self.pending or self._made_again():
            return
        data = "".join(self.pending).encode()
        self.pending.clear()
        try:
            os.write(self.fd, data)
        except OSError:
            return
        self.size += len(data)
        if self.size > _JOURNAL_COMPACT_BYTES:
            self._compact()

    def touch(self) -> float:
        """Set the journal's modification time to now (its spawner is alive),
        at most once per `JOURNAL_REFRESH` seconds.

        Returns
        -------
        seconds : `float`
            Seconds until it is due again.
        """
        now = time.monotonic()
        if now >= self.next_touch:
            self.next_touch = now + JOURNAL_REFRESH
            if not self._made_again():
                with contextlib.suppress(OSError):
                    os.utime(self.fd)
        return self.next_touch - now

    def starting(self, token: str, stderr: str) -> None:
        """Record, and write at once, that attempt ``token`` is about to start.

        Parameters
        ----------
        token, stderr : `str`
            The attempt's token and the path of its stderr log.
        """
        self.being_started = f"> {token} {json.dumps(stderr)}\n"
        self.pending.append(self.being_started)
        self.write()

    def started(self, pid: int, token: str, stderr: str) -> None:
        """Record that attempt ``token`` runs as process group ``pid``.

        Parameters
        ----------
        pid : `int`
            Process id (and group) of the job.
        token, stderr : `str`
            The attempt's token and the path of its stderr log.
        """
        self.being_started = ""
        self.running[pid] = f"+ {pid} {token} {json.dumps(stderr)}\n"
        self.pending.append(self.running[pid])

    def ended(self, pid: int) -> None:
        """Record that process group ``pid`` ended.

        Parameters
        ----------
        pid : `int`
            Process group of the job that ended.
        """
        self.running.pop(pid, None)
        self.pending.append(f"- {pid}\n")

    def _compact(self) -> None:
        """Rewrite the journal with only the running jobs (atomically)."""
        text = "".join(self.running.values()) + self.being_started
        tmp = self.path + ".tmp"
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            new_fd = os.open(self.path, _APPEND, 0o600)
        except OSError:
            return
        os.close(self.fd)
        self.fd = new_fd
        self.size = len(text)

    def close(self) -> None:
        """Close and remove the journal (every job has ended)."""
        os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
