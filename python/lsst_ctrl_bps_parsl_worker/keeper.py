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


"""What outlives a process that starts jobs, to look after them: the keeper of a
local-pool spawner (reliability.md, P1) and the orphan guard of a Parsl worker
(L3), whose watcher is this file run as a script. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

if __name__ == "__main__":
    # Run as a script (python -S): the package is found next to this file's directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from lsst_ctrl_bps_parsl_worker.exits import ended_child, exit_code_of, reap, record_exit  # noqa: E402
from lsst_ctrl_bps_parsl_worker.journal import journal_jobs, journal_name  # noqa: E402
from lsst_ctrl_bps_parsl_worker.processes import (  # noqa: E402
    _kill,
    _my_processes,
    _stat_fields,
    kill_attempts,
    live_jobs,
)

__all__ = (
    "LEFTOVER_WAIT",
    "WORKER_ENV",
    "OrphanGuard",
    "become_subreaper",
    "keep",
    "orphan_guard",
)

_EXEC_WAIT = 0.05
"""Seconds for a job being started when the spawner died to reach its ``exec``."""
_HOLD_UNNAMED = 10.0
"""Seconds an ended job that the journal does not name stays unreaped, for
the spawner taking over to read its exit status from ``/proc``."""
LEFTOVER_WAIT = 5.0
"""Seconds at most spent killing what jobs left behind once the spawner exited by itself."""
_PR_SET_CHILD_SUBREAPER = 36
WORKER_ENV = "BPS_PARSL_WORKER"
"""Environment variable that marks every process a guarded worker's jobs start."""
_ORPHAN_SWEEP = 0.5
"""Seconds between two sweeps once the pool is gone and the worker is not."""

Named = tuple[str, str, str]
"""(journal directory, token, stderr log) of a job the spawner's journal names."""


def become_subreaper() -> bool:
    """Make this process a ``PR_SET_CHILD_SUBREAPER`` (it adopts its descendants' orphans).

    Returns
    -------
    done : `bool`
        Whether it is one (not on systems without it).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def keep(spawner_main: Callable[[int], int]) -> int:
    """Run ``spawner_main(dirs_fd)`` in a child process kept by this one
    (``dirs_fd``: a pipe for the journals' directories, JSON lines; ``-1``: no keeper).

    Parameters
    ----------
    spawner_main : `~collections.abc.Callable` [[`int`], `int`]
        The spawner's main function, called with ``dirs_fd``.

    Returns
    -------
    code : `int`
        Exit status for this process: the spawner's.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not become_subreaper():
        return spawner_main(-1)
    dirs_r, dirs_w = os.pipe2(os.O_CLOEXEC)
    try:
        spawner = os.fork()
    except OSError:
        os.close(dirs_r)
        os.close(dirs_w)
        return spawner_main(-1)
    if spawner == 0:
        os.close(dirs_r)
        code = 1
        try:
            code = spawner_main(dirs_w)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(dirs_w)
    _to_devnull(0, 2)  # it may outlive the run (jobs left behind): it holds no terminal open
    code = _await_spawner(spawner)
    with contextlib.suppress(OSError):  # nobody reads the wire any more
        os.write(1, f"\nexit {code}\n".encode())
    _to_devnull(1)
    if code == 0:
        # The spawner exited by itself: every child left is a process a job left behind.
        _end_leftovers()
    _keep_orphans(_read_dirs(dirs_r), journal_name(spawner))
    return code


def _to_devnull(*fds: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(devnull, fd)
    os.close(devnull)


def _read_dirs(fd: int) -> set[str]:
    """The journals' directories the spawner wrote to ``fd`` (closed)."""
    dirs = set()
    with contextlib.suppress(OSError), open(fd, "rb") as stream:
        for line in stream:
            with contextlib.suppress(ValueError):
                dirs.add(json.loads(line))
    return dirs


def _await_spawner(spawner: int) -> int:
    """Reap children until the spawner ends; its exit code. Until then, the
    only other children are processes a job left behind when it ended.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if pid == spawner:
            return exit_code_of(status)


def _end_leftovers() -> None:
    """SIGKILL every child left with its process group, again for what they
    leave in turn, for `LEFTOVER_WAIT` s at most.
    """
    deadline = time.monotonic() + LEFTOVER_WAIT
    while time.monotonic() < deadline:
        children = _children()
        if not children:
            return
        for pid, state in children.items():
            if state != b"Z":
                _kill(os.killpg, pid, signal.SIGKILL)
                _kill(os.kill, pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.02)


def _keep_orphans(dirs: set[str], journal: str) -> None:
    """Log the exit status of each job the spawner left, as it ends; return
    when no child is left.
    """
    logs: dict[int, Named] = {}
    starting: dict[str, Named] = {}
    for directory in dirs:
        jobs = journal_jobs(os.path.join(directory, journal))
        logs.update((pid, (directory, jobs.running[pid], err)) for pid, err in jobs.logs.items())
        starting.update((token, (directory, token, err)) for token, err in jobs.starting.items())
    if starting:
        _name_starting(logs, starting)
        time.sleep(_EXEC_WAIT)  # a job started as the spawner died may not carry its token yet
        _name_starting(logs, starting)
    held: dict[int, float] = {}
    while True:
        try:
            info = ended_child(block=not held)
        except ChildProcessError:
            return
        ended = {pid for pid, state in _children().items() if state == b"Z"}
        if info is not None:
            ended.add(info[0])
        for pid in ended:
            if _settle(pid, logs, held):
                held.pop(pid, None)
        if held:
            time.sleep(0.1)


def _name_starting(logs: dict[int, Named], starting: dict[str, Named]) -> None:
    """Add to ``logs`` the job the spawner was starting when it died (a child
    leading its own session, with the token of the journal's ``>`` line).
    """
    children = _children()
    for token, pid in live_jobs().items():
        if token in starting and pid in children:
            logs.setdefault(pid, starting[token])


def _children() -> dict[int, bytes]:
    """The state (``/proc/<pid>/stat``) of each of this process's children."""
    me = str(os.getpid()).encode()
    found = {}
    for pid in _my_processes():
        with contextlib.suppress(OSError, IndexError):
            state, parent = _stat_fields(pid)[:2]
            if parent == me:
                found[pid] = state
    return found


def _settle(pid: int, logs: dict[int, Named], held: dict[int, float]) -> bool:
    """Record the exit status of ended child ``pid`` if the journal named it,
    and reap it; or hold it (see `_HOLD_UNNAMED`). Whether it was reaped.
    """
    named = logs.get(pid)
    if named is None and time.monotonic() < held.setdefault(pid, time.monotonic() + _HOLD_UNNAMED):
        return False
    try:
        ended = ended_child(pid)
    except ChildProcessError:
        return True
    if ended is None:
        return False
    if named is not None:
        directory, token, stderr = named
        record_exit(directory, token, ended[1], stderr)
    reap(pid)
    return True


# ---- the orphan guard ----


class OrphanGuard:
    """The watcher of this worker process's jobs (reliability.md, L3)."""

    def __init__(self) -> None:
        self.mark = f"{os.getpid()}.{time.time_ns()}"
        self._proc: subprocess.Popen | None = None
        self.pids: tuple[int, ...] = ()
        """The watcher's pid, once started (a child of this process)."""
        self._failed = False

    def watch(self) -> None:
        """Make sure the watcher runs before a job starts (started with the
        first job, and again if it died).
        """
        if self._failed or (self._proc is not None and self._proc.poll() is None):
            return
        os.environ[WORKER_ENV] = self.mark
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-S",
                    os.path.abspath(__file__),
                    str(os.getpid()),
                    str(os.getppid()),
                    self.mark,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # it may outlive the worker: it holds no terminal open
                close_fds=True,
                start_new_session=True,
            )
        except OSError:
            # No watcher (no process left to start, say): the jobs still run, unguarded.
            self._failed = True
            return
        self.pids = (self._proc.pid,)


_GUARD: list[OrphanGuard] = []


def orphan_guard() -> OrphanGuard | None:
    """Return the `OrphanGuard` of this worker process, or `None` where jobs are not
    guarded (a thread of the driver runs them, or the worker has no parent).

    Returns
    -------
    guard : `OrphanGuard` or `None`
        The process's one guard, made on the first call.
    """
    if threading.current_thread() is not threading.main_thread() or os.getppid() == 1:
        return None
    if not _GUARD:
        _GUARD.append(OrphanGuard())
    return _GUARD[0]


def _watch(worker: int, pool: int, mark: str) -> None:
    """Run the watcher: wait until the worker's pipe ends or the pool exits,
    then kill what carries the worker's mark. It ignores SIGTERM (a block's
    cancellation leaves it time to act), SIGINT and SIGHUP.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    stdin = sys.stdin.fileno()
    watched = [stdin]
    sweep = None  # seconds between sweeps once the pool is gone
    try:
        if pool > 1:
            watched.append(os.pidfd_open(pool))
    except ProcessLookupError:
        sweep = _ORPHAN_SWEEP  # it died while this watcher started
    except OSError:
        pass
    marks = (f"{WORKER_ENV}={mark}",)
    while True:
        if sweep is not None:
            # The worker lives on without its pool: whatever it starts is an orphan already.
            kill_attempts(marks=marks)
        ready, _, _ = select.select(watched, [], [], sweep)
        if stdin in ready and not os.read(stdin, 4096):
            kill_attempts(marks=marks)
            # A job spawned but not yet exec'd may not show the mark yet: look once more.
            kill_attempts(marks=marks)
            return
        if len(watched) > 1 and watched[1] in ready:
            del watched[1]
            sweep = _ORPHAN_SWEEP


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
