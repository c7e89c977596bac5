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


"""Exit statuses of job processes: read when they end, logged, reaped.

Whoever reaps a job records its exit status first (`log_exit_status`), where
a restart reads it (`logged_exit_status`): `job.run_job` on Parsl workers, the
local pool's spawner, or the spawner's keeper if the spawner died (`keeper`).
The status is the operating system's (the wait status of the reaped process),
and its record is a file of its own next to the job's stderr log
(`exit_record`, mode 0600), which none of the job's file descriptors points
to: nothing the job prints decides its status. A line for the reader of the
log is appended to the log too, and never read back. `ended_child` tells which child ended without reaping
it, so that until the status is logged the job is still there for the keeper,
or for a spawner taking over (`zombie_exit_code`).

Like the rest of this package it needs nothing beyond the standard library,
as the spawner runs under ``python -S``.
"""

from __future__ import annotations

import os

__all__ = (
    "EXIT_MARKER",
    "ended_child",
    "exit_record",
    "exit_code_of",
    "log_exit_status",
    "logged_exit_status",
    "reap",
    "zombie_exit_code",
)

EXIT_MARKER = "[bps-parsl] exit status "


def exit_record(err_path: str) -> str:
    """The file that records the exit status of the job attempt whose
    stderr log is ``err_path``.
    """
    return err_path + ".exit"


def log_exit_status(err_path: str, code: int) -> None:
    """Record a job's exit status (`logged_exit_status` reads it) in its
    private record (`exit_record`: created mode 0600, never through a
    symbolic link), and say it in its stderr log if that exists (for the
    reader only); errors are ignored.
    """
    record, flags = exit_record(err_path), os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    if not _write(record, f"{code}\n", flags, 0o600) and _made_directory(err_path):
        _write(record, f"{code}\n", flags, 0o600)
    _write(err_path, f"{EXIT_MARKER}{code}\n", os.O_APPEND)


def _write(path: str, text: str, flags: int, mode: int = 0o666) -> bool:
    """Write ``text`` to ``path`` opened with ``flags``; whether it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | flags, mode)
    except (OSError, ValueError):
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _made_directory(path: str) -> bool:
    """Make the directory of ``path`` (it vanished); whether it exists now."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return True
    except (OSError, ValueError):
        return False


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(exit code, signal) of a wait status; a signal ``s`` gives ``128 + s``,
    as the shell reports it.
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    code = os.WEXITSTATUS(status)
    return code, (code - 128 if 128 < code < 128 + 65 else None)


def logged_exit_status(stderr: str) -> int | None:
    """Exit status recorded for the job attempt whose stderr log is
    ``stderr`` (`log_exit_status`), if any. The log itself is never read:
    what the job printed there decides nothing.
    """
    try:
        with open(exit_record(stderr), "rb") as stream:
            data = stream.read(64)
    except OSError:
        return None
    try:
        return int(data.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        return None


def ended_child(block: bool = False) -> tuple[int, int, int | None] | None:
    """``(pid, exit code, signal)`` of a child of this process that ended, left
    unreaped (`reap` it once its exit status is logged: until then a process
    that takes over, or reads ``/proc``, still sees it); `None` if none ended
    (and ``block`` is false). A signal ``s`` gives exit code ``128 + s``.

    Raises
    ------
    ChildProcessError
        This process has no children.
    """
    flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, flags)
        except InterruptedError:
            continue
        if info is None or info.si_pid == 0:
            return None
        if info.si_code == os.CLD_EXITED:
            code = info.si_status
            return info.si_pid, code, (code - 128 if 128 < code < 128 + 65 else None)
        return info.si_pid, 128 + info.si_status, info.si_status


def reap(pid: int) -> None:
    """Reap child ``pid``, which has ended (`ended_child`)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def zombie_exit_code(pid: int) -> int | None:
    """Exit code (``128 + s`` for a signal ``s``) of process ``pid`` if it has
    ended but its parent did not reap it yet (read from ``/proc``); else `None`.
    """
    try:
        data = _read_stat(pid)
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" or len(fields) < 50:
            return None
        return exit_code_of(int(fields[49]))[0]
    except (OSError, ValueError, IndexError):
        return None


def _read_stat(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as stream:
        return stream.read()
