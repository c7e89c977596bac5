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

"""Job processes: how they are found (by the token each inherits, read from
``/proc``: reliability.md, P2) and stopped, and their notes.

Standard library only: the local pool's spawner (``python -S``) and Parsl
workers import it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Collection

__all__ = (
    "ATTEMPT_ENV",
    "KILL_GRACE",
    "append_note",
    "attempt_processes",
    "end_group",
    "job_alive",
    "kill_attempts",
    "live_jobs",
    "process_start_time",
    "signal_attempts",
    "write_text",
)

ATTEMPT_ENV = "BPS_PARSL_ATTEMPT"
KILL_GRACE = 0.5
"""Seconds between SIGTERM and SIGKILL when job processes are killed."""

_TOKEN_ITEM = f"{ATTEMPT_ENV}=".encode()


def end_group(pgid: int) -> None:
    """SIGKILL what is left in a job's process group once its main process ended.

    Parameters
    ----------
    pgid : `int`
        The group: the main process's pid, not yet reaped (so it is no other's).
    """
    if pgid > 1 and pgid != os.getpgrp():
        _kill(os.killpg, pgid, signal.SIGKILL)


def append_note(path: str, text: str) -> None:
    """Append ``text`` to a log file (`write_text`).

    Parameters
    ----------
    path, text : `str`
        The log file and the text.
    """
    write_text(path, text, "a")


def write_text(path: str, text: str, mode: str = "w") -> None:
    """Write or append ``text`` to a file, making its directory again if it
    vanished; errors are ignored (the file is a hint).

    Parameters
    ----------
    path, text : `str`
        The file and the text.
    mode : `str`, optional
        ``"w"`` to replace the file, ``"a"`` to append.
    """
    for _ in range(2):
        try:
            with open(path, mode) as stream:
                stream.write(text)
            return
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError:
                return
        except (OSError, ValueError):  # ValueError: a NUL in the path
            return


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, group, session...)."""
    data = _read(f"/proc/{pid}/stat")
    return data[data.rindex(b")") + 2 :].split()


def _my_processes() -> list[int]:
    """Pids of this user's processes, other than this one."""
    uid, me = os.getuid(), os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def attempt_processes(
    tokens: Collection[str] = (), run_prefix: str | None = None, marks: Collection[str] = ()
) -> dict[int, int]:
    """Return ``{pid: process group}`` of this user's live processes whose
    environment (read from ``/proc``) carries one of ``tokens``, a token
    starting with ``run_prefix``, or one of ``marks`` (e.g. `keeper.WORKER_ENV`).

    Parameters
    ----------
    tokens, marks : `~collections.abc.Collection` [`str`], optional
        Tokens of the attempts; environment items (``NAME=value``).
    run_prefix : `str`, optional
        Prefix of every token of a run.

    Returns
    -------
    found : `dict` [`int`, `int`]
        Process group of each matching process, by process id.
    """
    exact = {f"{ATTEMPT_ENV}={token}".encode() for token in tokens} | {mark.encode() for mark in marks}
    env_prefix = f"{ATTEMPT_ENV}={run_prefix}".encode() if run_prefix else None
    found: dict[int, int] = {}
    if not exact and env_prefix is None:
        return found
    for pid in _my_processes():
        try:
            environ = _read(f"/proc/{pid}/environ")
            carries = any(
                item in exact or (env_prefix is not None and item.startswith(env_prefix))
                for item in environ.split(b"\0")
                if item.startswith(b"BPS_")
            )
            if carries:
                found[pid] = int(_stat_fields(pid)[2])
        except (OSError, ValueError, IndexError):
            continue
    return found


def signal_attempts(
    sig: int,
    tokens: Collection[str] = (),
    run_prefix: str | None = None,
    groups: Collection[int] = (),
    marks: Collection[str] = (),
) -> int:
    """Send ``sig`` to what `attempt_processes` finds, their process groups
    (a job's own session: members that dropped the token too) and ``groups``
    (of the caller's unreaped children).

    Parameters
    ----------
    sig : `int`
        Signal to send.
    tokens, run_prefix, marks
        As `attempt_processes`.
    groups : `~collections.abc.Collection` [`int`], optional
        Process groups to signal too.

    Returns
    -------
    count : `int`
        Number of processes found.
    """
    found = attempt_processes(tokens, run_prefix, marks)
    own_group = os.getpgrp()
    for pgid in {*found.values(), *groups}:
        if pgid > 1 and pgid != own_group:
            _kill(os.killpg, pgid, sig)
    for pid in found:
        _kill(os.kill, pid, sig)
    if sig == signal.SIGTERM:
        # A stopped process acts on SIGTERM only once continued.
        for pid in found:
            _kill(os.kill, pid, signal.SIGCONT)
    return len(found)


def _kill(how: Callable[[int, int], None], target: int, sig: int) -> None:
    try:
        how(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_attempts(
    tokens: Collection[str] = (),
    run_prefix: str | None = None,
    groups: Collection[int] = (),
    grace: float = KILL_GRACE,
    marks: Collection[str] = (),
) -> int:
    """SIGTERM every process `signal_attempts` would signal, SIGKILL what is left after ``grace``.

    Parameters
    ----------
    tokens, run_prefix, groups, marks
        As `signal_attempts`.
    grace : `float`, optional
        Seconds between SIGTERM and SIGKILL.

    Returns
    -------
    count : `int`
        Number of processes found at first.
    """
    found = signal_attempts(signal.SIGTERM, tokens, run_prefix, groups, marks)
    if found or groups:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and attempt_processes(tokens, run_prefix, marks):
            time.sleep(0.05)
        signal_attempts(signal.SIGKILL, tokens, run_prefix, groups, marks)
    return found


def _token_of(pid: int) -> str | None:
    """The token process ``pid`` carries; `None` for none or a zombie."""
    prefix = _TOKEN_ITEM
    for item in _read(f"/proc/{pid}/environ").split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def live_jobs() -> dict[str, int]:
    """``{token: pid}`` of this user's live jobs (session leaders carrying a token).

    Returns
    -------
    jobs : `dict` [`str`, `int`]
        Process id of each live job, by token.
    """
    jobs: dict[str, int] = {}
    for pid in _my_processes():
        try:
            if int(_stat_fields(pid)[3]) != pid:
                continue
            token = _token_of(pid)
        except (OSError, ValueError, IndexError):
            continue
        if token is not None:
            jobs[token] = pid
    return jobs


def job_alive(pid: int, token: str) -> bool:
    """Whether process ``pid`` is still attempt ``token``'s live job.

    Parameters
    ----------
    pid : `int`
        Process id.
    token : `str`
        The attempt's token.

    Returns
    -------
    alive : `bool`
        Whether it is.
    """
    try:
        return _token_of(pid) == token
    except OSError:
        return False


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch).

    Parameters
    ----------
    pid : `int`
        Process id.

    Returns
    -------
    start : `float` or `None`
        Its start time, `None` if it is gone or ``/proc`` cannot be read.
    """
    try:
        ticks = int(_stat_fields(pid)[19])
        for line in _read("/proc/stat").splitlines():
            if line.startswith(b"btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None
