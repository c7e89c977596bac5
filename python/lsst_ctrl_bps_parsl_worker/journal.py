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

"""The journal of a local-pool spawner: which of its jobs run.

Its format is in state.md. The spawner writes it (`Journal`); report, cancel,
restart, a spawner taking over and the keeper read it. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import time

__all__ = (
    "JOURNAL_PREFIX",
    "JOURNAL_REFRESH",
    "Journal",
    "Journals",
    "journal_entries",
    "journal_logs",
    "journal_name",
    "journal_starting",
    "journal_snapshot",
    "read_journal",
)

JOURNAL_PREFIX = "spawner."
JOURNAL_REFRESH = 1.0
"""Seconds between two refreshes of a journal's modification time while jobs run."""
_HOST = socket.gethostname()
_JOURNAL_COMPACT_BYTES = 1 << 20
"""Size above which the journal is rewritten with only the running jobs."""


def journal_name(host: str, pid: int) -> str:
    """File name of the journal of the spawner ``pid`` on ``host``.

    Parameters
    ----------
    host : `str`
        Host of the spawner.
    pid : `int`
        Its process id.

    Returns
    -------
    name : `str`
        The journal's file name (no directory).
    """
    return f"{JOURNAL_PREFIX}{host}.{pid}"


def read_journal(path: str) -> dict[int, str]:
    """Return ``{pid: token}`` of the jobs a journal says are running.

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    running : `dict` [`int`, `str`]
        Token of each running job, by process id; empty if unreadable.
    """
    return journal_entries(path)[0]


def journal_entries(path: str) -> tuple[dict[int, str], set[str]]:
    """``{pid: token}`` of the running jobs, and the tokens of every job that started.

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    running : `dict` [`int`, `str`]
        Token of each running job, by process id.
    started : `set` [`str`]
        Token of every job that started, ended or not.
    """
    found = journal_snapshot(path)
    return ({}, set()) if found is None else found[:2]


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.read().decode(errors="replace")
    except OSError:
        return ""


def journal_logs(path: str) -> dict[int, str]:
    """``{pid: stderr log}`` of the jobs a journal says are running.

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    logs : `dict` [`int`, `str`]
        Stderr log of each running job, by process id.
    """
    logs: dict[int, str] = {}
    _parse(_read_text(path), logs)
    return logs


def journal_starting(path: str) -> dict[str, str]:
    """``{token: stderr log}`` of the job being started (``>`` with no ``+`` after it).

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    starting : `dict` [`str`, `str`]
        Stderr log of the job being started, by token (empty if none).
    """
    starting: dict[str, str] = {}
    for line in _read_text(path).splitlines():
        fields = line.split(" ", 3)
        try:
            if len(fields) == 3 and fields[0] == ">":
                starting[fields[1]] = json.loads(fields[2])
            elif len(fields) >= 3 and fields[0] == "+":
                starting.pop(fields[2], None)
        except ValueError:
            continue
    return starting


def journal_snapshot(path: str) -> tuple[dict[int, str], set[str], os.stat_result] | None:
    """`journal_entries` and the file's status through one open file (on NFS,
    that revalidates the cached attributes).

    Parameters
    ----------
    path : `str`
        Path of the journal.

    Returns
    -------
    snapshot : `tuple` or `None`
        ``(running, started, stat)``: as `journal_entries`, and the file's
        `os.stat_result`; `None` if unreadable.
    """
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            data = stream.read().decode(errors="replace")
    except OSError:
        return None
    running, started = _parse(data)
    return running, started, info


def _parse(data: str, logs: dict[int, str] | None = None) -> tuple[dict[int, str], set[str]]:
    """Running jobs and started tokens; ``logs`` gets the running jobs' stderr logs."""
    running: dict[int, str] = {}
    started: set[str] = set()
    for line in data.splitlines():
        fields = line.split(" ", 3)
        try:
            if len(fields) >= 3 and fields[0] == "+":
                pid = int(fields[1])
                running[pid] = fields[2]
                started.add(fields[2])
                if logs is not None and len(fields) == 4:
                    logs[pid] = json.loads(fields[3])
            elif len(fields) == 2 and fields[0] == "-":
                pid = int(fields[1])
                running.pop(pid, None)
                if logs is not None:
                    logs.pop(pid, None)
        except ValueError:
            continue
    if logs is not None:
        for pid in set(logs) - set(running):
            del logs[pid]
    return running, started


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
        self.path = os.path.join(directory, journal_name(_HOST, os.getpid()))
        self.running: dict[int, tuple[str, str]] = {}  # pid: (token, stderr log)
        self.size = 0
        self.pending: list[str] = []
        self.being_started: tuple[str, str] | None = None  # (token, stderr log)
        os.makedirs(directory, exist_ok=True)
        self.fd = self._open(self.path)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self) -> None:
        """Append the lines recorded since the last write, in one go."""
        if not self.pending:
            return
        try:
            vanished = os.fstat(self.fd).st_nlink == 0
        except OSError:
            vanished = True
        if vanished:
            self.pending.clear()
            os.makedirs(self.directory, exist_ok=True)
            self._compact()
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

    def touch(self) -> None:
        """Set the journal's modification time to now: its spawner is alive."""
        try:
            if os.fstat(self.fd).st_nlink == 0:
                os.makedirs(self.directory, exist_ok=True)
                self._compact()
            else:
                os.utime(self.fd)
        except OSError:
            pass

    def starting(self, token: str, stderr: str) -> None:
        """Record, and write at once, that attempt ``token`` is about to start.

        Parameters
        ----------
        token, stderr : `str`
            The attempt's token and the path of its stderr log.
        """
        self.being_started = (token, stderr)
        self.pending.append(self._starting_line(token, stderr))
        self.write()

    @staticmethod
    def _starting_line(token: str, stderr: str) -> str:
        return f"> {token} {json.dumps(stderr)}\n"

    def started(self, pid: int, token: str, stderr: str) -> None:
        """Record that attempt ``token`` runs as process group ``pid``.

        Parameters
        ----------
        pid : `int`
            Process id (and group) of the job.
        token, stderr : `str`
            The attempt's token and the path of its stderr log.
        """
        self.being_started = None
        self.running[pid] = (token, stderr)
        self.pending.append(self._line(pid, token, stderr))

    @staticmethod
    def _line(pid: int, token: str, stderr: str) -> str:
        return f"+ {pid} {token} {json.dumps(stderr)}\n"

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
        text = "".join(self._line(pid, *job) for pid, job in self.running.items())
        if self.being_started is not None:
            text += self._starting_line(*self.being_started)
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            new_fd = self._open(self.path)
        except OSError:
            return
        os.close(self.fd)
        self.fd = new_fd
        self.size = len(text)

    def close(self) -> None:
        """Close and remove the journal (every job has ended)."""
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Journals:
    """The journals of one spawner, one per directory of its jobs' pid files.

    Parameters
    ----------
    dirs_fd : `int`
        Where each new journal's directory is written (a JSON line) for the keeper; ``-1``: none.
    """

    def __init__(self, dirs_fd: int = -1) -> None:
        self.by_directory: dict[str, Journal] = {}
        self.dirs_fd = dirs_fd
        self.next_refresh = 0.0  # monotonic

    def of(self, pid_file: str) -> Journal | None:
        """The journal of the directory of ``pid_file`` (`None`: none can be made).

        Parameters
        ----------
        pid_file : `str`
            Path of a job's pid file.

        Returns
        -------
        journal : `Journal` or `None`
            The journal of its directory (made on first use).
        """
        directory = os.path.dirname(pid_file)
        if not directory:
            return None
        journal = self.by_directory.get(directory)
        if journal is None:
            try:
                journal = self.by_directory[directory] = Journal(directory)
            except OSError:
                return None
            if self.dirs_fd >= 0:
                try:
                    os.write(self.dirs_fd, (json.dumps(directory) + "\n").encode())
                except OSError:
                    pass
        return journal

    def write(self) -> None:
        """Append every journal's pending lines."""
        for journal in self.by_directory.values():
            journal.write()

    def refresh(self, busy: bool) -> float | None:
        """While ``busy``, refresh the journals' modification time every `JOURNAL_REFRESH` seconds.

        Parameters
        ----------
        busy : `bool`
            Whether jobs run.

        Returns
        -------
        seconds : `float` or `None`
            Seconds until the next refresh, `None` when not busy.
        """
        if not busy:
            return None
        now = time.monotonic()
        if now >= self.next_refresh:
            for journal in self.by_directory.values():
                journal.touch()
            self.next_refresh = now + JOURNAL_REFRESH
        return self.next_refresh - now

    def close(self) -> None:
        """Close and remove every journal."""
        for journal in self.by_directory.values():
            journal.close()
        self.by_directory.clear()
