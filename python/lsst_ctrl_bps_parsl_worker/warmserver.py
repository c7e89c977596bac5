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

"""Warm starts: a ``pipetask run-qbb`` job forked from a process that has
already imported the stack, instead of a fresh Python that spends ~2 s
importing it before a quantum's few milliseconds of work.

`WarmStarts` (in the process that starts jobs: the local pool's spawner, a
Parsl worker's `job.run_job`) is asked by `processes.Launcher.spawn_job`
to start a job whose script is plain (`direct.direct_start` worked out the
program, its arguments and its environment) and whose program is ctrl_mpexec's
``pipetask`` script (the console script, or the stack's ``bin/pipetask``:
`pipetask_python`). It keeps one *warm process* per environment that
matters (`environment_key`: the script's Python and directory, ``PYTHON*``,
``LD_*``, ``*_DIR``, ``SETUP_*``, ``EUPS_*``, locale, ``TZ``, thread-count
variables): that Python started with the first such job's environment, running
`serve` (this file, loaded from its path: standard library only), which
imports ``lsst.ctrl.mpexec.cli.pipetask``, ``lsst.daf.butler`` and
``lsst.pipe.base``, then, between jobs, every module its jobs imported (the
pipeline's task modules, formatters, ...).

For each job the warm process forks a child that forks the job and exits: the
job is reparented to the process that asked (a ``PR_SET_CHILD_SUBREAPER``),
which waits for it, times it out, kills and reaps it exactly as a job it
started itself. The job leads a session of its own, has ``/dev/null`` as its
stdin and its log files as stdout and stderr, the job's own environment
(``os.environ``; its token ``BPS_PARSL_ATTEMPT`` is also written into the
environment block ``/proc/<pid>/environ`` shows, where the killer and the
keeper look for it), the asker's working directory, the signal dispositions
of a fresh Python, and runs the script's ``main()`` with the script's
``sys.argv``; its exit status is what Python's would be (``SystemExit``,
tracebacks, ``KeyboardInterrupt``, thread joins and ``atexit`` as at
interpreter exit). Every job is a fresh fork: nothing it changes reaches the
next one.

Whatever does not fit starts cold, and the asker's note function says why,
once per reason: not ``pipetask run-qbb``, a script that is not plain, the
warm process still starting, dead (replaced, up to `MAX_DEATHS` times),
refusing (threads started by an import, over `MEMORY_BOUND` MB resident), more
than `MAX_SERVERS` environments.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

__all__ = (
    "MAX_SERVERS",
    "MEMORY_BOUND",
    "WarmStarts",
    "environment_key",
    "pipetask_python",
    "serve",
    "warm_starts",
)

MAX_SERVERS = 2
"""Warm processes (environments) one asker keeps at most."""
MAX_DEATHS = 3
"""Warm processes of one environment that may die before its jobs all start cold."""
MEMORY_BOUND = 4096
"""MB a warm process may hold resident; over it, it exits (its jobs start cold)."""
SUBCOMMANDS = frozenset({"run-qbb"})
"""``pipetask`` subcommands started warm (BPS's per-quantum one)."""
_SLOT_ENV = "BPS_PARSL_WARM_SLOT"
_SLOT_SIZE = 1024
"""Bytes of the environment-block item a job's token is written over."""
_TOKEN_ENV = "BPS_PARSL_ATTEMPT"
_MATTERS = re.compile(
    r"(PYTHON.*|LD_.*|.*_DIR|SETUP_.*|EUPS_.*|LC_.*|LANG|LANGUAGE|TZ|OMP_.*|MKL_.*|OPENBLAS_.*|"
    r"NUMEXPR_.*|.*_NUM_THREADS)"
)
"""Variables read when the stack is imported: a job whose values differ needs another warm process."""
_SCRIPT_LINES = frozenset(
    {
        "import re",
        "import sys",
        "from lsst.ctrl.mpexec.cli.pipetask import main",
        "if __name__ == '__main__':",
        'if __name__ == "__main__":',
        "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])",
        "sys.exit(main())",
        "main()",
    }
)
"""Lines of a ``pipetask`` script (pip's console script, the stack's ``bin/pipetask``)."""
_BASE_MODULES = ("lsst.ctrl.mpexec.cli.pipetask", "lsst.daf.butler", "lsst.pipe.base")
_START_TIMEOUT = 300.0
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


# ---- the asker's side ---------------------------------------------------------------


def pipetask_python(path: str, environ: Mapping[str, str]) -> tuple[str, str] | str:
    """(Python, script directory) of a ``pipetask`` script, or why ``path`` is not one.

    The script must be ctrl_mpexec's (only the lines of `_SCRIPT_LINES`,
    comments and blank lines) with an absolute ``#!`` Python, or
    ``#!/usr/bin/env python...`` found on the job's ``PATH``.

    Parameters
    ----------
    path : `str`
        The program a job runs.
    environ : `~collections.abc.Mapping`
        The job's environment (its ``PATH``).

    Returns
    -------
    found : `tuple` [`str`, `str`] or `str`
        The script's Python and its directory (resolved, ``sys.path[0]``
        of a cold start), or the reason it is not started warm.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(4096)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    lines = head.decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("#!"):
        return f"{path} is not ctrl_mpexec's pipetask script"
    body = [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("#")]
    if "from lsst.ctrl.mpexec.cli.pipetask import main" not in body or not set(body) <= _SCRIPT_LINES:
        return f"{path} is not ctrl_mpexec's pipetask script"
    words = lines[0][2:].split()
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        python = _which(words[1], environ.get("PATH", ""))
    elif len(words) == 1:
        python = words[0]
    else:
        python = None
    if not python or not os.path.isabs(python) or not os.access(python, os.X_OK):
        return f"the Python of {path} ({lines[0][2:].strip()}) is not found"
    return python, os.path.dirname(os.path.realpath(path))


def _which(name: str, path: str) -> str | None:
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


def environment_key(python: str, script_dir: str, environ: Mapping[str, str]) -> tuple:
    """What must be equal for two jobs to share a warm process.

    Parameters
    ----------
    python, script_dir : `str`
        `pipetask_python` of the job's program.
    environ : `~collections.abc.Mapping`
        The job's environment.

    Returns
    -------
    key : `tuple`
        The Python, the script's directory and the variables matching
        `_MATTERS` (read while the stack is imported), sorted.
    """
    return (python, script_dir, tuple(sorted((k, v) for k, v in environ.items() if _MATTERS.fullmatch(k))))


def _subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class _Server:
    """One warm process, as its asker sees it."""

    def __init__(self, python: str, script_dir: str, environ: Mapping[str, str]) -> None:
        import subprocess  # here: the spawner starts faster without it

        self.python = python
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in environ.items() if k != _TOKEN_ENV}
        env[_SLOT_ENV] = "_" * _SLOT_SIZE
        boot = (  # sys.path[0] first: never a module of the current directory (`python -c`)
            f"import sys; sys.path[0] = {script_dir!r};"
            "import importlib.util as u;"
            f"s = u.spec_from_file_location('_bps_parsl_warm', {os.path.abspath(__file__)!r});"
            "m = u.module_from_spec(s); s.loader.exec_module(m);"
            f"m.serve({theirs.fileno()}, {script_dir!r})"
        )
        self.proc: subprocess.Popen = subprocess.Popen(
            [python, "-c", boot],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.sock = ours
        self.ready = False
        self.dead: str | None = None
        self.started = time.monotonic()

    def poll(self, note: Callable[[str], None]) -> None:
        """Read what the warm process said since (ready, notes), without waiting."""
        while self.dead is None:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                break
            self._message(self._receive(), note)
        if self.dead is None and not self.ready and time.monotonic() - self.started > _START_TIMEOUT:
            self.stop()
            self.dead = f"did not import the stack within {_START_TIMEOUT:.0f} s"

    def _receive(self) -> dict:
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            code = self.proc.poll()
            self.dead = "died" if code is None else f"died (exit status {code})"
            self.stop()
            return {}
        return json.loads(data)

    def _message(self, message: dict, note: Callable[[str], None]) -> None:
        if "note" in message:
            note(f"warm process {self.proc.pid} ({self.python}): {message['note']}")
        if message.get("ready"):
            self.ready = True
        if "fail" in message:
            self.dead = message["fail"]
            self.stop()

    def start(self, request: dict, note: Callable[[str], None]) -> int | str:
        """Ask for a job; its pid, or why it was not started."""
        try:
            self.sock.send(json.dumps(request).encode())
        except OSError:
            self._receive()
            return f"the warm process {self.dead}"
        while True:
            message = self._receive()
            if self.dead is not None:
                return f"the warm process {self.dead}"
            if "pid" in message:
                return int(message["pid"])
            if "cold" in message:
                return str(message["cold"])
            self._message(message, note)
            if self.dead is not None:
                return f"the warm process {self.dead}"

    def stop(self) -> None:
        """Close the connection (the warm process exits at its end) and reap it."""
        import subprocess

        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        except ChildProcessError:
            pass


class WarmStarts:
    """Warm processes of one asker, and its notes about jobs started cold.

    Parameters
    ----------
    note : callable
        Called with one line of text the first time a reason comes up.
    """

    def __init__(self, note: Callable[[str], None]) -> None:
        self._note = note
        self._said: set[str] = set()
        self._not_pipetask: dict[tuple[str, str | None], str] = {}
        """Programs found not to be ``pipetask`` (a cold start is always right: no file read per job)."""
        self._servers: dict[tuple, _Server] = {}
        self._deaths: dict[tuple, int] = {}
        self._subreaper: bool | None = None
        self.warm = 0
        self.cold = 0

    def say(self, text: str) -> None:
        """Note ``text`` once.

        Parameters
        ----------
        text : `str`
            The line for the log; not noted again if it was already (nor
            after 100 different lines).
        """
        if text not in self._said and len(self._said) < 100:
            self._said.add(text)
            self._note(text)

    def _cold(self, reason: str | None) -> None:
        self.cold += 1
        if reason:
            self.say(f"jobs started cold: {reason}")

    def start(self, argv: list[str], environ: Mapping[str, str], out: str, err: str) -> int | None:
        """Start a job warm: its pid (a child of this process to reap), or
        `None` when it must start cold.

        Parameters
        ----------
        argv : `list` [`str`]
            The program the job's shell would run, and its arguments.
        environ : `~collections.abc.Mapping`
            The environment the program would get (its token included).
        out, err : `str`
            Its stdout and stderr log files.

        Returns
        -------
        pid : `int` or `None`
            The job's pid, or `None`: start it cold (the reason, if any, was noted).
        """
        seen = (argv[0], environ.get("PATH"))
        found = self._not_pipetask.get(seen) or pipetask_python(argv[0], environ)
        if isinstance(found, str):
            if len(self._not_pipetask) < 1024:
                self._not_pipetask[seen] = found
            self._cold(found)
            return None
        if self._subreaper is None:
            self._subreaper = _subreaper()
        if not self._subreaper:
            self._cold("this process cannot adopt the jobs a warm process forks (PR_SET_CHILD_SUBREAPER)")
            return None
        python, script_dir = found
        key = environment_key(python, script_dir, environ)
        server = self._servers.get(key)
        if server is not None:
            server.poll(self.say)
            if server.dead is not None:
                del self._servers[key]
                self._deaths[key] = self._deaths.get(key, 0) + 1
                self.say(f"the warm process {server.proc.pid} for {python} {server.dead}")
                server = None
        if server is None:
            if self._deaths.get(key, 0) >= MAX_DEATHS:
                self._cold(f"the warm processes for {python} died {MAX_DEATHS} times")
                return None
            if len(self._servers) >= MAX_SERVERS:
                self._cold(
                    f"more than {MAX_SERVERS} different environments (Python, PYTHONPATH, stack setup)"
                )
                return None
            try:
                self._servers[key] = _Server(python, script_dir, environ)
            except OSError as exc:
                self._deaths[key] = self._deaths.get(key, 0) + 1
                self._cold(f"a warm process for {python} could not be started: {exc}")
                return None
            self._cold(None)  # while it imports the stack
            return None
        if not server.ready:
            self._cold(None)
            return None
        request = {"argv": argv, "env": dict(environ), "cwd": os.getcwd(), "out": out, "err": err}
        result = server.start(request, self.say)
        if isinstance(result, int):
            self.warm += 1
            return result
        self._cold(result)
        return None

    def reap_orphans(self, keep: Collection[int] = ()) -> None:
        """Reap the ended children this process adopted as a subreaper (processes
        its jobs left behind), not its own (the warm processes, and ``keep``).

        Parameters
        ----------
        keep : `~collections.abc.Collection` [`int`], optional
            Pids of other children of this process's own, left for their
            owner to reap (the orphan guard's watcher).
        """
        if not self._subreaper:
            return
        keep = {*keep, *(server.proc.pid for server in self._servers.values())}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0 or info.si_pid in keep:
                return
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return

    def close(self) -> None:
        """Stop every warm process, and say how many jobs started warm."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()
        if self.warm:
            self._note(f"{self.warm} job(s) started warm, {self.cold} cold")


_WARM: list[WarmStarts] = []


def warm_starts(note: Callable[[str], None] | None = None) -> WarmStarts:
    """Return this process's `WarmStarts`, made on the first call.

    Parameters
    ----------
    note : `~collections.abc.Callable` [[`str`], `None`], optional
        Where its notes go, used only on the first call; `None`: to stderr.

    Returns
    -------
    starts : `WarmStarts`
        The process's one `WarmStarts`.
    """
    if not _WARM:
        _WARM.append(WarmStarts(note or (lambda text: print(f"[bps-parsl] {text}", file=sys.stderr))))
    return _WARM[0]


# ---- the warm process --------------------------------------------------------------


def _memory() -> tuple[float, float]:
    """(resident, shared) MB of this process."""
    with open("/proc/self/statm") as stream:
        fields = stream.read().split()
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(fields[1]) * page, int(fields[2]) * page


def _python_signals() -> None:
    """Signal dispositions and mask of a fresh Python, whatever was inherited."""
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            continue
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _subcommand(args: list[str]) -> str | None:
    """The ``pipetask`` subcommand of ``args`` (after its global options)."""
    from lsst.ctrl.mpexec.cli.pipetask import cli

    takes_value = set()
    for param in cli.params:
        if not getattr(param, "is_flag", False) and getattr(param, "nargs", 0) != 0:
            takes_value.update(param.opts)
    words = iter(args)
    for word in words:
        if word == "--":
            return next(words, None)
        if not word.startswith("-"):
            return word
        if "=" not in word and word in takes_value:
            next(words, None)
    return None


def _write_token(token: str) -> bool:
    """Write ``BPS_PARSL_ATTEMPT=<token>`` over this process's slot in its
    environment block (what ``/proc/<pid>/environ`` shows).
    """
    import ctypes

    with open("/proc/self/environ", "rb") as stream:
        block = stream.read()
    slot = f"{_SLOT_ENV}={'_' * _SLOT_SIZE}".encode()
    offset = block.find(slot)
    item = f"{_TOKEN_ENV}={token}".encode()
    if offset < 0 or len(item) > len(slot):
        return False
    with open("/proc/self/stat", "rb") as stream:
        data = stream.read()
    env_start = int(data[data.rindex(b")") + 2 :].split()[47])
    ctypes.memmove(env_start + offset, item + b"\0" * (len(slot) - len(item)), len(slot))
    return True


def _exit_code(exc: SystemExit) -> int:
    """The exit status Python gives a ``SystemExit`` at the top level."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_job(request: dict, files: tuple[int, int], report: socket.socket, closing: list) -> None:
    """In the job's process (a grandchild of the warm process): become the
    job and run ``pipetask``; never returns.
    """
    code = 1
    try:
        os.setsid()
        for thing in closing:
            thing.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(files[0], 1)
        os.dup2(files[1], 2)
        for fd in (null, *files):
            os.close(fd)
        _python_signals()
        env = request["env"]
        _write_token(env.get(_TOKEN_ENV, ""))
        argv = request["argv"]
        try:
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_NAME, os.path.basename(argv[0]).encode()[:15], 0, 0, 0)
        except (OSError, AttributeError):
            pass
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [re.sub(r"(-script\.pyw|\.exe)?$", "", argv[0]), *argv[1:]]
        sys.modules["__main__"].__file__ = argv[0]
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()  # a fresh process seeds it from the OS
        before = set(sys.modules)
        from lsst.ctrl.mpexec.cli.pipetask import main

        interrupted = False
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt:
            interrupted = True
            sys.excepthook(*sys.exc_info())
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        try:
            new = sorted(set(sys.modules) - before)
            report.send(" ".join(new).encode()[:60000])
        except OSError:
            pass
        import atexit
        import threading

        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - the job must end with a status, never return to the server
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    os._exit(code)


def _fork_job(request: dict, report: socket.socket, closing: list[socket.socket]) -> dict:
    """Fork a job (through a child that exits at once, so the asker adopts
    it); the reply for the asker.
    """
    import threading

    if threading.active_count() > 1:
        return {"cold": "the warm process runs threads (an import started them)"}
    argv = request["argv"]
    subcommand = _subcommand(argv[1:])
    if subcommand not in SUBCOMMANDS:
        return {"cold": f"pipetask {subcommand or '(no subcommand)'} is not started warm"}
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        # As the job's shell does: the log directory is made if it is missing.
        os.makedirs(os.path.dirname(request["out"]) or ".", exist_ok=True)
        out = os.open(request["out"], flags, 0o666)
    except OSError as exc:
        return {"cold": f"its log file cannot be created here ({exc.strerror})"}
    try:
        err = os.open(request["err"], flags, 0o666)
    except OSError as exc:
        os.close(out)
        return {"cold": f"its log file cannot be created here ({exc.strerror})"}
    read_end, write_end = os.pipe()
    try:
        try:
            middle = os.fork()
        except OSError as exc:
            os.close(read_end)
            return {"cold": f"the warm process could not fork ({exc.strerror})"}
        if middle == 0:
            try:
                os.close(read_end)
                job = os.fork()
                if job == 0:
                    os.close(write_end)
                    _run_job(request, (out, err), report, closing)
                os.write(write_end, str(job).encode())
            finally:
                os._exit(0)
    finally:
        os.close(write_end)
        os.close(out)
        os.close(err)
    try:
        data = os.read(read_end, 64)
    finally:
        os.close(read_end)
    os.waitpid(middle, 0)
    if not data:
        return {"cold": "the warm process could not fork"}
    return {"pid": int(data)}


def serve(fd: int, script_dir: str) -> None:
    """The warm process: import the stack, then fork the jobs asked for on
    socket ``fd`` until it ends; between jobs import what they imported.

    Parameters
    ----------
    fd : `int`
        The asker's ``SOCK_SEQPACKET`` socket.
    script_dir : `str`
        Directory of the ``pipetask`` script (``sys.path[0]`` of a cold start).
    """
    import gc
    import importlib
    import threading

    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    _python_signals()
    sys.path[0] = script_dir
    sys.argv = ["pipetask"]
    try:
        for name in _BASE_MODULES:
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001
        sock.send(json.dumps({"fail": f"cannot import the stack: {exc!r}"}).encode())
        return
    if threading.active_count() > 1:
        sock.send(json.dumps({"fail": "importing the stack started threads"}).encode())
        return
    report_in, report_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    gc.freeze()
    resident, shared = _memory()
    sock.send(
        json.dumps(
            {"ready": True, "note": f"ready: {resident:.0f} MB resident, {shared:.0f} MB shared"}
        ).encode()
    )
    pending: list[str] = []
    tried: set[str] = set(sys.modules)
    while True:
        ready, _, _ = select.select([sock, report_in], [], [], 0 if pending else None)
        if sock in ready:
            data = sock.recv(1 << 20)
            if not data:
                return
            sock.send(json.dumps(_fork_job(json.loads(data), report_out, [sock, report_in])).encode())
            continue
        if report_in in ready:
            names = report_in.recv(1 << 16).decode(errors="replace").split()
            pending.extend(name for name in names if name not in tried and not name.startswith("__"))
            tried.update(names)
            if not pending:
                continue
        if pending:
            name = pending.pop(0)
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - what a job imported may not import here: skip it
                pass
            if threading.active_count() > 1:
                sock.send(json.dumps({"fail": f"importing {name} started threads"}).encode())
                return
            if not pending:
                gc.freeze()
                resident, shared = _memory()
                if resident > MEMORY_BOUND:
                    sock.send(
                        json.dumps(
                            {"fail": f"holds {resident:.0f} MB resident, over {MEMORY_BOUND} MB"}
                        ).encode()
                    )
                    return
                sock.send(
                    json.dumps(
                        {
                            "note": f"imported its jobs' modules: {resident:.0f} MB resident, {shared:.0f} MB shared"
                        }
                    ).encode()
                )
