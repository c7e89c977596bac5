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

"""The warm process (design.md, "Warm starts"): `serve`, loaded by file path
into the ``pipetask`` script's Python, so standard library only and no package import.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import sys
import traceback

__all__ = ("MEMORY_BOUND", "SLOT_ENV", "SLOT_SIZE", "SUBCOMMANDS", "TOKEN_ENV", "serve")

MEMORY_BOUND = 4096
"""MB a warm process may hold resident; over it, it exits (its jobs start cold)."""
SUBCOMMANDS = frozenset({"run-qbb"})
"""``pipetask`` subcommands started warm (BPS's per-quantum one)."""
SLOT_ENV = "BPS_PARSL_WARM_SLOT"
"""Variable of the warm process's environment block a job's token is written over."""
SLOT_SIZE = 1024
"""Bytes of `SLOT_ENV`'s value."""
TOKEN_ENV = "BPS_PARSL_ATTEMPT"
_BASE_MODULES = ("lsst.ctrl.mpexec.cli.pipetask", "lsst.daf.butler", "lsst.pipe.base")
_PR_SET_NAME = 15


def _memory() -> tuple[float, float]:
    """(resident, shared) MB of this process."""
    with open("/proc/self/statm") as stream:
        fields = stream.read().split()
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(fields[1]) * page, int(fields[2]) * page


def _python_signals() -> None:
    """Signal dispositions and mask of a fresh Python, whatever was inherited."""
    for signum in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
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


def _write_token(token: str) -> None:
    """Write ``BPS_PARSL_ATTEMPT=<token>`` over this process's slot in its
    environment block (what ``/proc/<pid>/environ`` shows).
    """
    with open("/proc/self/environ", "rb") as stream:
        block = stream.read()
    slot = f"{SLOT_ENV}={'_' * SLOT_SIZE}".encode()
    offset = block.find(slot)
    item = f"{TOKEN_ENV}={token}".encode()
    if offset < 0 or len(item) > len(slot):
        return
    with open("/proc/self/stat", "rb") as stream:
        data = stream.read()
    env_start = int(data[data.rindex(b")") + 2 :].split()[47])
    ctypes.memmove(env_start + offset, item + b"\0" * (len(slot) - len(item)), len(slot))


def _run_job(request: dict, files: tuple[int, int], report: socket.socket, closing: list) -> None:
    """In the job's process (a grandchild of the warm process): become the
    job and run ``pipetask``; never returns.
    """
    code = 1
    try:
        os.setsid()
        for thing in closing:
            thing.close()
        for target, fd in enumerate((os.open(os.devnull, os.O_RDONLY), *files)):
            os.dup2(fd, target)
            os.close(fd)
        _python_signals()
        env = request["env"]
        _write_token(env.get(TOKEN_ENV, ""))
        argv = request["argv"]
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_NAME, os.path.basename(argv[0]).encode()[:15], 0, 0, 0)
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
        except SystemExit as exc:  # the exit status the interpreter gives it
            status = 0 if exc.code is None else exc.code
            if not isinstance(status, int):
                print(status, file=sys.stderr)
                status = 1
            code = status & 0xFF
        except KeyboardInterrupt:
            interrupted = True
            sys.excepthook(*sys.exc_info())
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        with contextlib.suppress(OSError):
            report.send(" ".join(sorted(set(sys.modules) - before)).encode()[:60000])
        import atexit
        import threading

        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - the job must end with a status, never return to the server
        with contextlib.suppress(BaseException):
            traceback.print_exc()
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
    files: list[int] = []
    try:
        # As the job's shell does: the log directory is made if it is missing.
        os.makedirs(os.path.dirname(request["out"]) or ".", exist_ok=True)
        files += [os.open(request["out"], flags, 0o666)]
        files += [os.open(request["err"], flags, 0o666)]
    except OSError as exc:
        for fd in files:
            os.close(fd)
        return {"cold": f"its log file cannot be created here ({exc.strerror})"}
    out, err = files
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
    return {"pid": int(data)} if data else {"cold": "the warm process could not fork"}


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

    def say(**message: object) -> None:
        sock.send(json.dumps(message).encode())

    os.set_inheritable(fd, False)
    _python_signals()
    sys.path[0] = script_dir
    sys.argv = ["pipetask"]
    try:
        for name in _BASE_MODULES:
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001
        say(fail=f"cannot import the stack: {exc!r}")
        return
    if threading.active_count() > 1:
        say(fail="importing the stack started threads")
        return
    report_in, report_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    gc.freeze()
    resident, shared = _memory()
    say(ready=True, note=f"ready: {resident:.0f} MB resident, {shared:.0f} MB shared")
    pending: list[str] = []
    tried: set[str] = set(sys.modules)
    while True:
        ready, _, _ = select.select([sock, report_in], [], [], 0 if pending else None)
        if sock in ready:
            data = sock.recv(1 << 20)
            if not data:
                return
            say(**_fork_job(json.loads(data), report_out, [sock, report_in]))
            continue
        if report_in in ready:
            names = report_in.recv(1 << 16).decode(errors="replace").split()
            pending.extend(name for name in names if name not in tried and not name.startswith("__"))
            tried.update(names)
        if pending:
            name = pending.pop(0)
            with contextlib.suppress(BaseException):  # noqa: BLE001 - what a job imported may not import here: skip it
                importlib.import_module(name)
            if threading.active_count() > 1:
                say(fail=f"importing {name} started threads")
                return
            if not pending:
                gc.freeze()
                resident, shared = _memory()
                if resident > MEMORY_BOUND:
                    say(fail=f"holds {resident:.0f} MB resident, over {MEMORY_BOUND} MB")
                    return
                say(note=f"imported its jobs' modules: {resident:.0f} MB resident, {shared:.0f} MB shared")
