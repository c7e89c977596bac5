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

"""Starting job attempts (`Launcher.spawn_job`), through the job's shell or
forked warm (`warm`), and what is said when a start fails. Standard library only.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from shlex import quote

from .exits import log_exit_status, record_exit
from .processes import ATTEMPT_ENV, append_note
from .warm import WarmStarts

__all__ = (
    "Launcher",
    "START_RETRY_DELAYS",
    "job_script",
    "start_failure",
    "transient_start_error",
)

START_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds before each new try to start a job whose start failed for a
passing lack of resources (`transient_start_error`): at most ~1.9 s in all."""

_NAMED_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


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
    parts = [f"export {ATTEMPT_ENV}={token}"]
    parts.extend(p for p in (prefix, env) if p)
    parts.append(command)
    return "\n".join(parts) + "\n"


class Launcher:
    """Starts job attempts (`spawn_job`) with this process's environment, converted
    once: each in a session of its own, stdin and stdout on ``/dev/null`` until
    its script redirects them, every signal at its default disposition and none
    blocked. With glibc its ``posix_spawn`` is called directly: ``os.posix_spawn``
    cannot reset glibc's signals 32, 33.
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


def start_failure(err: str, error: BaseException, retries: int, pid_file: str, token: str) -> int:
    """Say in a job attempt's stderr log why it could not be started,
    record its exit status (`exits.record_exit`), and return it.

    Parameters
    ----------
    err, pid_file, token : `str`
        The attempt's stderr log, pid file (its directory holds the exit records) and token.
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
    record_exit(os.path.dirname(pid_file), token, code)
    log_exit_status(err, code)
    return code
