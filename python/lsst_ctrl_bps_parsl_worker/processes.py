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

"""Job processes: started (`Launcher.spawn_job`, through the job's shell or
warm), found by the token each inherits, read from ``/proc`` (reliability.md,
P2), and stopped; what is said when a start fails. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import time
from collections.abc import Callable, Collection
from shlex import quote
from typing import TYPE_CHECKING

from .exits import record_exit

if TYPE_CHECKING:
    from .warm import WarmStarts

__all__ = (
    "ATTEMPT_ENV",
    "KILL_GRACE",
    "START_RETRY_DELAYS",
    "Launcher",
    "append_note",
    "attempt_processes",
    "job_script",
    "kill_attempts",
    "live_jobs",
    "process_start_time",
    "signal_attempts",
    "start_failure",
    "transient_start_error",
    "write_text",
)

ATTEMPT_ENV = "BPS_PARSL_ATTEMPT"
KILL_GRACE = 0.5
"""Seconds between SIGTERM and SIGKILL when job processes are killed."""
START_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds before each new try to start a job whose start failed for a
passing lack of resources (`transient_start_error`): at most ~1.9 s in all."""

_NAMED_SIGNALS = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
_TOKEN_ITEM = f"{ATTEMPT_ENV}=".encode()


def job_script(token: str, prefix: str, env: str, command: str) -> str:
    """The shell script of one job attempt. No trap: whoever reaps the job
    records its status, and bash runs the last simple command in its own place.

    Parameters
    ----------
    token, prefix, env, command : `str`
        The attempt's token, the site's command prefix and the job's exports
        (both may be empty), its command line.

    Returns
    -------
    script : `str`
        The script, one part per line.
    """
    return "\n".join([f"export {ATTEMPT_ENV}={token}", *(p for p in (prefix, env) if p), command]) + "\n"


class Launcher:
    """Starts job attempts (`spawn_job`) with this process's environment, converted
    once: each in a session of its own, stdin and stdout on ``/dev/null`` until its
    script redirects them, signals as reliability.md, P3 says (with glibc, its
    ``posix_spawn`` is called directly: ``os.posix_spawn`` cannot reset 32, 33).
    """

    def __init__(self) -> None:
        self._base = {k: v for k, v in os.environ.items() if k != ATTEMPT_ENV}
        self._items = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in self._base.items()]
        self._glibc = _glibc_spawn()

    def spawn_job(
        self,
        shell: str,
        token: str,
        prefix: str,
        env: str,
        command: str,
        out: str,
        err: str,
        warm: WarmStarts | None = None,
    ) -> int:
        """Start a job attempt, forked warm if ``warm`` can (`warm.WarmStarts.start_job`),
        else by its shell running `job_script`; the caller must reap it.

        Parameters
        ----------
        shell, token, prefix, env, command : `str`
            The job's shell, token, command prefix, export lines and command line.
        out, err : `str`
            The attempt's stdout and stderr logs.
        warm : `WarmStarts`, optional
            Warm starts to try first; `None`: start it cold.

        Returns
        -------
        pid : `int`
            Process id of the job, leader of its own session.
        """
        if warm is not None:
            pid = warm.start_job(shell, token, prefix, env, command, out, err, self._base)
            if pid is not None:
                return pid
        # The shell creates the log files (the slowest step of a start, so not here), their
        # directory again if it vanished; if it cannot, it says why and exits with 127.
        directory = quote(os.path.dirname(out) or ".")
        redirect = f"command exec >{quote(out)} 2>{quote(err)}"
        script = job_script(token, prefix, env, command)
        argv = [
            shell,
            "-c",
            f"[ -d {directory} ] || mkdir -p {directory} 2>/dev/null; "
            f"{redirect} || {{ mkdir -p {directory} && {redirect}; }} || exit 127\n{script}",
        ]
        items = [*self._items, f"{ATTEMPT_ENV}={token}".encode()]
        if self._glibc is not None:
            return self._glibc(argv, items)
        return os.posix_spawn(
            argv[0],
            argv,
            dict(item.split(b"=", 1) for item in items),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
            setsigdef=_NAMED_SIGNALS,
            setsigmask=(),
        )


@functools.cache
def _glibc_spawn():
    """A function ``(argv, envp) -> pid`` calling glibc's ``posix_spawn``
    with every signal (glibc's own included) reset to its default and none
    blocked, or `None` where the C library is not glibc.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # Opaque glibc structures (336 and 80 bytes on x86_64), with room to spare.
        attr = ctypes.create_string_buffer(1024)
        # A raw full sigset_t: sigfillset omits glibc's 32 and 33.
        every_signal = ctypes.create_string_buffer(b"\xff" * 128, 128)
        no_signal = ctypes.create_string_buffer(128)
        setsigdef, setsigmask, setsid = 0x04, 0x08, 0x80  # glibc's POSIX_SPAWN_* flags
        actions = ctypes.create_string_buffer(1024)  # stdin and stdout on /dev/null, for every job
        devnull = os.devnull.encode()
        if (
            libc.posix_spawnattr_init(attr)
            or libc.posix_spawnattr_setsigdefault(attr, every_signal)
            or libc.posix_spawnattr_setsigmask(attr, no_signal)
            or libc.posix_spawnattr_setflags(attr, ctypes.c_short(setsigdef | setsigmask | setsid))
            or libc.posix_spawn_file_actions_init(actions)
            or libc.posix_spawn_file_actions_addopen(actions, 0, devnull, os.O_RDONLY, 0)
            or libc.posix_spawn_file_actions_addopen(actions, 1, devnull, os.O_WRONLY, 0)
        ):
            return None
        posix_spawn = libc.posix_spawn
    except (OSError, ValueError, AttributeError, ImportError):
        return None

    def spawn(argv: list[str], items: list[bytes]) -> int:
        pid = ctypes.c_int()
        args = [os.fsencode(arg) for arg in argv]
        error = posix_spawn(
            ctypes.byref(pid),
            args[0],
            actions,
            attr,
            (ctypes.c_char_p * (len(args) + 1))(*args, None),
            (ctypes.c_char_p * (len(items) + 1))(*items, None),
        )
        if error:
            raise OSError(error, os.strerror(error), argv[0])
        return pid.value

    spawn.keep = (libc, attr, every_signal, no_signal, actions, devnull)
    return spawn


def transient_start_error(error: BaseException) -> bool:
    """Whether a job's start failed for a passing lack of resources (EAGAIN, ENOMEM).

    Parameters
    ----------
    error : `BaseException`
        What starting the job raised.

    Returns
    -------
    transient : `bool`
        `True` if it is an `OSError` with EAGAIN or ENOMEM.
    """
    return isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.ENOMEM)


def start_failure(err: str, error: BaseException, retries: int, directory: str, token: str) -> int:
    """Say in a job attempt's stderr log why it could not be started,
    record its exit status (`exits.record_exit`), and return it.

    Parameters
    ----------
    err, directory, token : `str`
        The attempt's stderr log, the directory of its exit record, its token.
    error : `BaseException`
        What starting the job raised.
    retries : `int`
        Tries made again before giving up.

    Returns
    -------
    code : `int`
        127 if the program or a directory is missing, else 126 (the shell's).
    """
    code = 127 if isinstance(error, FileNotFoundError) else 126
    reason = f"{type(error).__name__}: {error}" if not isinstance(error, OSError) else str(error)
    if len(reason) > 500:
        reason = reason[:500] + "..."
    again = f" (tried {retries + 1} times)" if retries else ""
    append_note(err, f"[bps-parsl] the job could not be started{again}: {reason}\n")
    record_exit(directory, token, code, err)
    return code


def append_note(path: str, text: str) -> None:
    """Append ``text`` to a log file (`write_text`).

    Parameters
    ----------
    path, text : `str`
        The log file and the text.
    """
    write_text(path, text, "a")


def write_text(path: str, text: str, mode: str = "w") -> None:
    """Write (``mode`` ``"w"``) or append (``"a"``) ``text`` to a file, making
    its directory again if it vanished; errors are ignored (the file is a hint).

    Parameters
    ----------
    path, text, mode : `str`
        The file, the text and the mode.
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
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
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
        Tokens of the attempts; environment items.
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
        with contextlib.suppress(OSError, ValueError, IndexError):
            items = (item for item in _read(f"/proc/{pid}/environ").split(b"\0") if item.startswith(b"BPS_"))
            if any(item in exact or (env_prefix and item.startswith(env_prefix)) for item in items):
                found[pid] = int(_stat_fields(pid)[2])
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
    for pgid in {*found.values(), *groups}:
        if pgid > 1 and pgid != os.getpgrp():
            _kill(os.killpg, pgid, sig)
    for pid in found:
        _kill(os.kill, pid, sig)
        if sig == signal.SIGTERM:  # a stopped process acts on SIGTERM only once continued
            _kill(os.kill, pid, signal.SIGCONT)
    return len(found)


def _kill(how: Callable[[int, int], None], target: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        how(target, sig)


def kill_attempts(
    tokens: Collection[str] = (),
    run_prefix: str | None = None,
    groups: Collection[int] = (),
    marks: Collection[str] = (),
) -> int:
    """SIGTERM every process `signal_attempts` would signal, SIGKILL what is left after `KILL_GRACE`.

    Parameters
    ----------
    tokens, run_prefix, groups, marks
        As `signal_attempts`.

    Returns
    -------
    count : `int`
        Number of processes found at first.
    """
    found = signal_attempts(signal.SIGTERM, tokens, run_prefix, groups, marks)
    if found or groups:
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline and attempt_processes(tokens, run_prefix, marks):
            time.sleep(0.05)
        signal_attempts(signal.SIGKILL, tokens, run_prefix, groups, marks)
    return found


def _token_of(pid: int) -> str | None:
    """The token process ``pid`` carries; `None` for none or a zombie."""
    for item in _read(f"/proc/{pid}/environ").split(b"\0"):
        if item.startswith(_TOKEN_ITEM):
            return item[len(_TOKEN_ITEM) :].decode(errors="replace")
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
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(_stat_fields(pid)[3]) == pid and (token := _token_of(pid)) is not None:
                jobs[token] = pid
    return jobs


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
