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

"""Job processes: how they start, how they are found and stopped.

Every job attempt starts through `Launcher.spawn_job` (a session of its own,
default signal dispositions, no blocked signal, ``BPS_PARSL_ATTEMPT=<run
id>/<job>/<attempt>`` in its environment): either the program its shell
would run (`direct`) with its log files opened for it, or `job_argv`'s
script, which creates the log files (and their directory, if it vanished).
Every process a job starts inherits that token, so `kill_attempts` finds them all, also those that
left the job's process group or session, by reading each process's own
``/proc`` entry.

Standard library only: the local pool's spawner (``python -S``) and Parsl
workers import it.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import ChainMap
from collections.abc import Callable, Collection, Mapping

from .direct import direct_start, shell_environment, shell_kind
from .exits import log_exit_status, record_exit
from .warm import WarmStarts

__all__ = (
    "ATTEMPT_ENV",
    "KILL_GRACE",
    "Launcher",
    "START_RETRY_DELAYS",
    "append_note",
    "end_group",
    "start_failure",
    "transient_start_error",
    "write_text",
    "attempt_processes",
    "current_launcher",
    "job_argv",
    "job_script",
    "kill_attempts",
    "job_alive",
    "live_jobs",
    "process_start_time",
    "quote",
    "signal_attempts",
)

ATTEMPT_ENV = "BPS_PARSL_ATTEMPT"
KILL_GRACE = 0.5
"""Seconds between SIGTERM and SIGKILL when job processes are killed."""
START_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds before each new try to start a job whose start failed for a
passing lack of resources (`transient_start_error`): at most ~1.9 s in all."""

_TOKEN_ITEM = f"{ATTEMPT_ENV}=".encode()
_NAMED_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))

# ---- starting a job ---------------------------------------------------------------


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
    prefix, the job's environment exports, its command.

    There is no trap: whoever reaps the job logs its exit status (`run_job`,
    the local pool's spawner or its keeper), and bash, which runs the last
    simple command of ``bash -c`` in its own place when nothing is trapped,
    saves a fork per job.

    Parameters
    ----------
    token : `str`
        The attempt's token, exported as ``BPS_PARSL_ATTEMPT``.
    prefix : `str`
        The site's command prefix (may be empty).
    env : `str`
        The job's export lines (may be empty).
    command : `str`
        The job's command line.

    Returns
    -------
    script : `str`
        The script, one part per line.
    """
    parts = [f"export {ATTEMPT_ENV}={token}"]
    parts.extend(p for p in (prefix, env) if p)
    parts.append(command)
    return "\n".join(parts) + "\n"


def job_argv(shell: str, out: str, err: str, script: str) -> list[str]:
    """The command line of a job attempt's shell.

    The shell creates the log files itself (creating files is the slowest
    step of a start, and the spawner starts jobs one at a time), and their
    directory first if it does not exist (a log directory may be removed
    while a run goes on). If they cannot be created, the shell says why on
    its inherited stderr and exits with 127.

    Parameters
    ----------
    shell : `str`
        Path of the shell.
    out : `str`
        Path of the attempt's stdout log.
    err : `str`
        Path of the attempt's stderr log.
    script : `str`
        The attempt's `job_script`.

    Returns
    -------
    argv : `list` [`str`]
        ``[shell, "-c", ...]``.
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
    """Starts job attempts (`spawn_job`): each in a session of its own, with
    stdin on ``/dev/null``, stdout and stderr on its log files (opened here
    for a program started directly, by `job_argv`'s script otherwise), every
    signal at its default disposition and none blocked, whatever the caller
    ignores or blocks.

    With glibc the C library's ``posix_spawn`` is called directly: Python's
    ``os.posix_spawn`` cannot name glibc's two internal signals (32 and 33),
    which glibc then leaves ignored in the child. Elsewhere ``os.posix_spawn``
    resets every other signal.

    Parameters
    ----------
    environ : `~collections.abc.Mapping`, optional
        The jobs' environment (converted once); this process's by default.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._base = {k: v for k, v in environ.items() if k != ATTEMPT_ENV}
        self._items = [_item(k, v) for k, v in self._base.items()]
        self._shell_environ: dict[str, dict[str, str] | None] = {}
        self._shell_items: dict[str, dict[str, bytes]] = {}
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
        """Start a job attempt; return its pid, which the caller must reap.

        The program the job's shell would run is started directly when its
        script is plain (`direct.direct_start`), with ``out`` and ``err`` as
        its stdout and stderr; with ``warm``, a ``pipetask run-qbb`` program
        is forked from a warm process instead (`warm.WarmStarts.start`);
        otherwise, or if it cannot be started, the
        shell runs `job_script` (`job_argv`). Either way the process carries
        ``BPS_PARSL_ATTEMPT=<token>`` in its environment from its start.

        Parameters
        ----------
        shell : `str`
            Path of the job's shell.
        token : `str`
            The attempt's token.
        prefix : `str`
            The site's command prefix.
        env : `str`
            The job's export lines.
        command : `str`
            The job's command line.
        out : `str`
            Path of the attempt's stdout log.
        err : `str`
            Path of the attempt's stderr log.
        warm : `WarmStarts`, optional
            The worker's warm starts, to fork a ``pipetask run-qbb``
            program from; `None` to start it cold.

        Returns
        -------
        pid : `int`
            Process id of the job, leader of its own session.
        """
        kind = shell_kind(shell)
        if kind is not None and shell not in self._shell_environ:
            passed = shell_environment(shell, self._base)
            self._shell_environ[shell] = passed
            if passed is not None:
                self._shell_items[shell] = {k: _item(k, v) for k, v in passed.items()}
        start = direct_start(kind, self._shell_environ.get(shell), ATTEMPT_ENV, token, prefix, env, command)
        if start is None and warm is not None:
            warm.say(
                "jobs started cold: their script is not plain (commandPrefix, shell syntax; see design.md)"
            )
        if start is not None:
            argv, changes = start
            if warm is not None:
                passed = self._shell_environ[shell]
                assert passed is not None  # direct_start needs it
                pid = warm.start(argv, ChainMap(changes, passed), out, err)
                if pid is not None:
                    return pid
            items = [item for name, item in self._shell_items[shell].items() if name not in changes]
            items.extend(_item(k, v) for k, v in changes.items())
            files = ((1, out), (2, err))
            try:
                return self._spawn(argv, items, files)
            except OSError:
                pass  # the shell says why, or runs the file as a script
        items = [*self._items, f"{ATTEMPT_ENV}={token}".encode()]
        return self._spawn(job_argv(shell, out, err, job_script(token, prefix, env, command)), items, ())

    def _spawn(self, argv: list[str], items: list[bytes], files: tuple[tuple[int, str], ...]) -> int:
        """Start ``argv`` with environment ``items`` (``b"NAME=value"``),
        stdin from ``/dev/null``, stdout to ``/dev/null`` unless ``files``
        (``(fd, path)``, created or truncated) says otherwise.
        """
        if self._glibc is not None:
            return self._glibc(argv, items, files)
        opened = dict(files)
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        actions.append(
            (os.POSIX_SPAWN_OPEN, 1, opened[1], write, 0o666)
            if 1 in opened
            else (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)
        )
        if 2 in opened:
            actions.append((os.POSIX_SPAWN_OPEN, 2, opened[2], write, 0o666))
        return os.posix_spawn(
            argv[0],
            argv,
            dict(item.split(b"=", 1) for item in items),
            file_actions=actions,
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
    posix_spawn = libc.posix_spawn
    init_actions = libc.posix_spawn_file_actions_init
    add_open = libc.posix_spawn_file_actions_addopen
    destroy_actions = libc.posix_spawn_file_actions_destroy
    devnull = os.devnull.encode()
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

    def spawn(argv: list[str], items: list[bytes], files: tuple[tuple[int, str], ...]) -> int:
        pid = ctypes.c_int()
        args = [os.fsencode(arg) for arg in argv]
        actions = ctypes.create_string_buffer(1024)
        if init_actions(actions):
            raise OSError(ctypes.get_errno(), "posix_spawn_file_actions_init failed")
        try:
            opened = dict(files)
            for fd in (0, 1, 2):
                if fd in opened:
                    error = add_open(actions, fd, os.fsencode(opened[fd]), write, 0o666)
                elif fd < 2:
                    error = add_open(actions, fd, devnull, os.O_WRONLY if fd else os.O_RDONLY, 0)
                else:
                    continue
                if error:
                    raise OSError(error, os.strerror(error))
            error = posix_spawn(
                ctypes.byref(pid),
                args[0],
                actions,
                attr,
                (ctypes.c_char_p * (len(args) + 1))(*args, None),
                (ctypes.c_char_p * (len(items) + 1))(*items, None),
            )
        finally:
            destroy_actions(actions)
        if error:
            raise OSError(error, os.strerror(error), argv[0])
        return pid.value

    spawn.keep = (libc, attr, every_signal, no_signal)
    return spawn


def transient_start_error(error: BaseException) -> bool:
    """Whether a job's start failed for a passing lack of resources (no
    process or memory left for a moment: EAGAIN, ENOMEM), worth trying again.

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
        Path of the attempt's stderr log.
    error : `BaseException`
        What starting the job raised.
    retries : `int`
        Number of tries made again before giving up.
    pid_file : `str`
        Path of the attempt's pid file; its directory holds the exit
        records.
    token : `str`
        The attempt's token, under which the exit status is recorded.

    Returns
    -------
    code : `int`
        127 if the program or a directory is missing, else 126, as the
        shell's.
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


def end_group(pgid: int) -> None:
    """SIGKILL what is left in a job's process group once its main process
    ended: ``cmd &``, ``nohup cmd &``.

    Parameters
    ----------
    pgid : `int`
        The group's id: the main process's pid, called before it is reaped,
        so the group cannot be another's.
    """
    if pgid > 1 and pgid != os.getpgrp():
        _kill(os.killpg, pgid, signal.SIGKILL)


def append_note(path: str, text: str) -> None:
    """Append ``text`` to a log file, making its directory again if it vanished.

    Parameters
    ----------
    path : `str`
        Path of the log file.
    text : `str`
        Text to append.
    """
    write_text(path, text, "a")


def write_text(path: str, text: str, mode: str = "w") -> None:
    """Write (``mode`` "w") or append ("a") ``text`` to a file, making its
    directory again if it vanished; errors are ignored (the file is a hint).

    Parameters
    ----------
    path : `str`
        Path of the file.
    text : `str`
        Text to write.
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


# ---- finding and stopping a job's processes -----------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid,
    process group, session, ...
    """
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
    """Return ``{pid: process group}`` of this user's live processes that
    carry one of ``tokens`` (or a token starting with ``run_prefix``), read
    from their own ``/proc`` entry: in their environment (a job has it from
    its start, `Launcher.spawn_job`, and every process it starts inherits
    it); or whose environment holds one of ``marks`` (``BPS_...=value`` items, e.g. a guarded worker's
    `guard.WORKER_ENV`).

    Parameters
    ----------
    tokens : `~collections.abc.Collection` [`str`], optional
        Tokens of the attempts.
    run_prefix : `str`, optional
        Prefix of every token of a run.
    marks : `~collections.abc.Collection` [`str`], optional
        Environment items (``NAME=value``) to look for.

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
    """Send ``sig`` to the processes `attempt_processes` finds and to their
    process groups, and to ``groups`` (process groups of the caller's own
    children, not yet reaped). Returns how many processes were found.

    A job runs in a session of its own, so every member of a group found
    this way was started by the job, also one that dropped the token.

    Parameters
    ----------
    sig : `int`
        Signal to send.
    tokens : `~collections.abc.Collection` [`str`], optional
        Tokens of the attempts.
    run_prefix : `str`, optional
        Prefix of every token of a run.
    groups : `~collections.abc.Collection` [`int`], optional
        Process groups to signal too.
    marks : `~collections.abc.Collection` [`str`], optional
        Environment items (``NAME=value``) to look for.

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
    """Stop every process of the given job attempts (or of a whole run, or
    carrying one of ``marks``): SIGTERM, then, after up to ``grace`` seconds,
    SIGKILL to what is left. See `signal_attempts`. Returns how many
    processes were found at first.

    Parameters
    ----------
    tokens : `~collections.abc.Collection` [`str`], optional
        Tokens of the attempts.
    run_prefix : `str`, optional
        Prefix of every token of a run.
    groups : `~collections.abc.Collection` [`int`], optional
        Process groups to stop too.
    grace : `float`, optional
        Seconds between SIGTERM and SIGKILL.
    marks : `~collections.abc.Collection` [`str`], optional
        Environment items (``NAME=value``) to look for.

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
    """The token process ``pid`` carries in its environment (every job
    process has it from its start: `Launcher.spawn_job`); `None` for a
    process without one, or ended (a zombie has none).
    """
    prefix = _TOKEN_ITEM
    for item in _read(f"/proc/{pid}/environ").split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def live_jobs() -> dict[str, int]:
    """``{token: pid}`` of this user's live job processes: the session leaders
    that carry a token (`job_alive`).

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
    """Whether process ``pid`` is still the job of attempt ``token`` (its
    shell, or the command the shell became), and has not ended.

    Parameters
    ----------
    pid : `int`
        Process id.
    token : `str`
        The attempt's token.

    Returns
    -------
    alive : `bool`
        `True` if ``pid`` is that attempt's live job.
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
