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
forked warm (`warm`), and what is said when a start fails.

Standard library only: the local pool's spawner (``python -S``) and Parsl
workers import it.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Mapping

from .exits import record_exit
from .processes import ATTEMPT_ENV, append_note
from .warm import WarmStarts

__all__ = (
    "Launcher",
    "START_RETRY_DELAYS",
    "current_launcher",
    "job_script",
    "quote",
    "start_failure",
    "transient_start_error",
)

START_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds before each new try to start a job whose start failed for a
passing lack of resources (`transient_start_error`): at most ~1.9 s in all."""

_NAMED_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def quote(text: str) -> str:
    """``text`` as one word for the shell.

    Parameters
    ----------
    text : `str`
        Any text.

    Returns
    -------
    word : `str`
        ``text`` in single quotes.
    """
    return "'" + text.replace("'", "'\\''") + "'"


def job_script(token: str, prefix: str, env: str, command: str) -> str:
    """The shell script of one job attempt: its token, the site's command
    prefix, the job's exports, its command. No trap: whoever reaps the job
    records its status, and bash runs the last simple command in its own place.

    Parameters
    ----------
    token : `str`
        The attempt's token, exported as ``BPS_PARSL_ATTEMPT``.
    prefix, env, command : `str`
        The site's command prefix and the job's export lines (both may be empty), its command line.

    Returns
    -------
    script : `str`
        The script, one part per line.
    """
    parts = [f"export {ATTEMPT_ENV}={token}"]
    parts.extend(p for p in (prefix, env) if p)
    parts.append(command)
    return "\n".join(parts) + "\n"


def _job_argv(shell: str, out: str, err: str, script: str) -> list[str]:
    """``[shell, "-c", ...]`` of a job attempt: the shell creates the log files
    (the slowest step of a start, so not in the spawner), their directory
    again if it vanished; if it cannot, it says why and exits with 127.
    """
    directory = quote(os.path.dirname(out) or ".")
    redirect = f"command exec >{quote(out)} 2>{quote(err)}"
    return [
        shell,
        "-c",
        f"[ -d {directory} ] || mkdir -p {directory} 2>/dev/null; "
        f"{redirect} || {{ mkdir -p {directory} && {redirect}; }} || exit 127\n{script}",
    ]


class Launcher:
    """Starts job attempts (`spawn_job`): each in a session of its own, stdin
    and stdout on ``/dev/null`` until its script redirects them, every signal
    at its default disposition and none blocked. With glibc its ``posix_spawn``
    is called directly: ``os.posix_spawn`` cannot reset glibc's signals 32, 33.

    Parameters
    ----------
    environ : `~collections.abc.Mapping`, optional
        The jobs' environment (converted once); this process's by default.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._base = {k: v for k, v in environ.items() if k != ATTEMPT_ENV}
        self._items = [_item(k, v) for k, v in self._base.items()]
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
            The job's shell, the attempt's token, the site's command prefix,
            the job's export lines and command line.
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
        items = [*self._items, f"{ATTEMPT_ENV}={token}".encode()]
        return self._spawn(_job_argv(shell, out, err, job_script(token, prefix, env, command)), items)

    def _spawn(self, argv: list[str], items: list[bytes]) -> int:
        """Start ``argv`` with environment ``items`` (``b"NAME=value"``), stdin
        and stdout on ``/dev/null``.
        """
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


def _item(name: str, value: str) -> bytes:
    return os.fsencode(name) + b"=" + os.fsencode(value)


_LAUNCHER: list[tuple[dict | None, Launcher]] = []
"""The `Launcher` `current_launcher` made, and the environment it was made from."""


def current_launcher() -> Launcher:
    """A `Launcher` of this process's environment, made again only when the
    environment changed (converting it costs 0.2 ms per job with a batch
    job's hundred variables; a worker runs thousands of jobs).

    Returns
    -------
    launcher : `Launcher`
        The launcher for the current environment.
    """
    data = getattr(os.environ, "_data", None)  # CPython's encoded copy; elsewhere, a new one each time
    if _LAUNCHER and data is not None and _LAUNCHER[0][0] == data:
        return _LAUNCHER[0][1]
    launcher = Launcher()
    _LAUNCHER[:] = [(dict(data) if data is not None else None, launcher)]
    return launcher


_GLIBC_SPAWN: list = []
"""The glibc spawn function, once made (`None` in it: not glibc)."""


def _glibc_spawn():
    """A function ``(argv, envp) -> pid`` calling glibc's ``posix_spawn``
    with every signal (glibc's own included) reset to its default and none
    blocked, or `None` where the C library is not glibc.
    """
    if _GLIBC_SPAWN:
        return _GLIBC_SPAWN[0]
    spawn = None
    try:
        if os.confstr("CS_GNU_LIBC_VERSION"):
            spawn = _make_glibc_spawn()
    except (OSError, ValueError, AttributeError, ImportError):
        spawn = None
    _GLIBC_SPAWN.append(spawn)
    return spawn


def _make_glibc_spawn():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Opaque glibc structures (336 and 80 bytes on x86_64), with room to spare.
    attr = ctypes.create_string_buffer(1024)
    every_signal = ctypes.create_string_buffer(b"\xff" * 128, 128)  # a raw sigset_t: sigfillset omits 32, 33
    no_signal = ctypes.create_string_buffer(128)
    setsigdef, setsigmask, setsid = 0x04, 0x08, 0x80  # glibc's POSIX_SPAWN_* flags
    steps = (
        libc.posix_spawnattr_init(attr),
        libc.posix_spawnattr_setsigdefault(attr, every_signal),
        libc.posix_spawnattr_setsigmask(attr, no_signal),
        libc.posix_spawnattr_setflags(attr, ctypes.c_short(setsigdef | setsigmask | setsid)),
    )
    if any(steps):
        return None
    actions = ctypes.create_string_buffer(1024)  # stdin and stdout on /dev/null, for every job
    devnull = os.devnull.encode()
    if libc.posix_spawn_file_actions_init(actions) or any(
        libc.posix_spawn_file_actions_addopen(actions, fd, devnull, flags, 0)
        for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY))
    ):
        return None
    posix_spawn = libc.posix_spawn

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
    err : `str`
        The attempt's stderr log.
    error : `BaseException`
        What starting the job raised.
    retries : `int`
        Tries made again before giving up.
    pid_file, token : `str`
        The attempt's pid file (its directory holds the exit records) and token.

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
    record_exit(os.path.dirname(pid_file), token, code, err)
    return code
