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


"""Exit statuses of job processes: read when they end, recorded, reaped.

Whoever reaps a job (`job.run_job`, the local pool's spawner, or its keeper)
first records its exit status (`record_exit`) in its private exit record
(state.md), where a restart reads it (`recorded_exits`): nothing a job prints
decides its status (design.md). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = (
    "EXITS_PREFIX",
    "EXIT_MARKER",
    "ended_child",
    "exit_code_of",
    "record_exit",
    "recorded_exits",
    "reap",
    "zombie_exit_code",
)

EXIT_MARKER = "[bps-parsl] exit status "
EXITS_PREFIX = "exits."
"""Name prefix of the exit records, ``exits.<host>.<pid>``."""
_HOST = socket.gethostname()
_RECORDS: dict[str, tuple[int, int]] = {}
"""(pid, fd) of this process's open exit record by directory (a fork opens its own)."""


def record_exit(directory: str, token: str, code: int, err: str) -> None:
    """Record that attempt ``token`` exited with ``code`` in this process's exit
    record in ``directory``, then say it in the attempt's stderr log (for its
    reader, never read back); errors are ignored (the attempt then counts as
    not finished).

    Parameters
    ----------
    directory, token : `str`
        Directory of the exit records (empty: nothing is recorded); the attempt's token.
    code : `int`
        The attempt's exit status.
    err : `str`
        The attempt's stderr log (nothing is said if it does not exist).
    """
    if directory:
        _append_record(directory, f"{token} {code}\n".encode())
    with contextlib.suppress(OSError, ValueError):  # not made again: the run's logs may have been removed
        with open(os.open(err, os.O_WRONLY | os.O_APPEND), "wb") as stream:
            stream.write(f"{EXIT_MARKER}{code}\n".encode())


def _append_record(directory: str, line: bytes) -> None:
    """Append ``line`` to this process's exit record in ``directory`` (made again if removed)."""
    for _ in range(2):
        pid, fd = _RECORDS.get(directory, (0, -1))
        try:
            if pid != os.getpid() or os.fstat(fd).st_nlink == 0:
                _forget(directory)
                os.makedirs(directory, exist_ok=True)
                path = os.path.join(directory, f"{EXITS_PREFIX}{_HOST}.{os.getpid()}")
                fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
                )
                _RECORDS[directory] = (os.getpid(), fd)
            os.write(fd, line)
            return
        except (OSError, ValueError):
            _forget(directory)


def _forget(directory: str) -> None:
    pid, fd = _RECORDS.pop(directory, (0, -1))
    if pid == os.getpid():
        with contextlib.suppress(OSError):
            os.close(fd)


def recorded_exits(directory: str) -> dict[str, int]:
    """``{token: exit code}`` recorded in ``directory`` by any process on any host.

    Parameters
    ----------
    directory : `str`
        Directory of the exit records.

    Returns
    -------
    exits : `dict` [`str`, `int`]
        Exit status by attempt token; empty if unreadable.
    """
    found: dict[str, int] = {}
    try:
        names = [name for name in os.listdir(directory) if name.startswith(EXITS_PREFIX)]
    except (OSError, ValueError):
        return found
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as stream:
                data = stream.read().decode(errors="replace")
        except OSError:
            continue
        for line in data.splitlines():
            token, _, code = line.partition(" ")
            with contextlib.suppress(ValueError):
                found[token] = int(code)
    return found


def exit_code_of(status: int) -> int:
    """Exit code of a wait status; a signal ``s`` gives ``128 + s``.

    Parameters
    ----------
    status : `int`
        A wait status (`os.waitpid`).

    Returns
    -------
    code : `int`
        The exit code.
    """
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def ended_child(pid: int = 0, block: bool = False) -> tuple[int, int] | None:
    """``(pid, exit code)`` of a child (``pid``, or any) that ended, left
    unreaped (`reap` it once its status is recorded).

    Parameters
    ----------
    pid : `int`, optional
        The child to look at (``0``: any).
    block : `bool`, optional
        Wait until it ends.

    Returns
    -------
    ended : `tuple` [`int`, `int`] or `None`
        ``(pid, exit code)``, ``128 + s`` for a signal ``s``; `None` if none ended
        (`ChildProcessError` if there is no such child).
    """
    flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
    info = os.waitid(os.P_PID if pid else os.P_ALL, pid, flags)  # retried on EINTR (PEP 475)
    if info is None or info.si_pid == 0:
        return None
    return info.si_pid, info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status


def reap(pid: int) -> None:
    """Reap child ``pid``, which has ended (`ended_child`).

    Parameters
    ----------
    pid : `int`
        Process id of the child.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def zombie_exit_code(pid: int) -> int | None:
    """Exit code of process ``pid`` if it ended unreaped (from ``/proc``).

    Parameters
    ----------
    pid : `int`
        Process id.

    Returns
    -------
    code : `int` or `None`
        Its exit code, or `None` if it runs, was reaped or cannot be read.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            data = stream.read()
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" or len(fields) < 50:
            return None
        return exit_code_of(int(fields[49]))
    except (OSError, ValueError, IndexError):
        return None
