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

"""No orphans: a job dies with the worker, or the worker pool, that started it.

A job runs in a session of its own, so nothing ends it when its Parsl worker
dies (reliability.md, L3). The mark is `WORKER_ENV` (the worker's pid and a
nanosecond clock); the watcher is this file as a script (``python -S``),
holding the read end of a pipe the worker keeps open. It also ignores SIGINT
and SIGHUP. Only a worker whose main thread runs the job is guarded: jobs of
the driver's own threads end with the driver.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

__all__ = ("WORKER_ENV", "OrphanGuard", "orphan_guard")

WORKER_ENV = "BPS_PARSL_WORKER"
"""Environment variable that marks every process a guarded worker's jobs start."""

_ORPHAN_SWEEP = 0.5
"""Seconds between two sweeps once the pool is gone and the worker is not."""


class OrphanGuard:
    """The watcher of this worker process's jobs (see the module's docstring)."""

    def __init__(self) -> None:
        self.mark = f"{os.getpid()}.{time.time_ns()}"
        self._proc: subprocess.Popen | None = None
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

    def pids(self) -> tuple[int, ...]:
        """The watcher's pid, if it was started (a child of this process).

        Returns
        -------
        pids : `tuple` [`int`, ...]
            The watcher's pid, or empty if it was not started.
        """
        return (self._proc.pid,) if self._proc is not None else ()


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
    then kill what carries the worker's mark.
    """
    from lsst_ctrl_bps_parsl_worker.processes import kill_attempts

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    pool_fd: int | None = None
    pool_gone = False
    try:
        if pool > 1:
            pool_fd = os.pidfd_open(pool)
    except ProcessLookupError:
        pool_gone = True  # it died while this watcher started
    except OSError:
        pool_fd = None
    stdin = sys.stdin.fileno()
    marks = (f"{WORKER_ENV}={mark}",)
    while True:
        if pool_gone:
            # The worker lives on without its pool: whatever it starts is an orphan already.
            kill_attempts(marks=marks)
        watched = [stdin] + ([pool_fd] if pool_fd is not None and not pool_gone else [])
        ready, _, _ = select.select(watched, [], [], _ORPHAN_SWEEP if pool_gone else None)
        if pool_fd is not None and pool_fd in ready:
            pool_gone = True
        if stdin in ready and not os.read(stdin, 4096):
            kill_attempts(marks=marks)
            # A job spawned but not yet exec'd may not show the mark yet: look once more.
            kill_attempts(marks=marks)
            return


if __name__ == "__main__":
    # Run as a script (python -S): the package is found next to this file's directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
