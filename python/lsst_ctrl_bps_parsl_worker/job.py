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

"""`run_job`: what a Parsl worker runs for one job attempt.

The job starts as the local pool's spawner starts its jobs
(`processes.Launcher.spawn_job`: a session of its own, default signal
dispositions, the program itself when the shell would only start it),
and a walltime kill stops every process carrying its token
(`processes.kill_attempts`). While it runs, a small file names its host and
process group, so that report, cancel, and a restart after the driver was
killed, can find it. Its exit status (``128 + N`` for a signal N) is also
appended to its stderr log, so a restart can tell that a job finished even
when the driver died before recording it: here by `run_job` once it reaped
the job (the job's shell has no trap, so bash runs a simple command in its
own place instead of forking for it); a job killed with its worker (the
orphan guard) logs none, and counts as not finished.

On the local pool (`lsst.ctrl.bps.parsl.localpool`) this function is not
called: the pool's spawner starts the job itself (the same way) and logs
the exit status as it reaps the job (or its keeper does, if the spawner died).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

from .exits import exit_code_of, log_exit_status
from .guard import orphan_guard
from .processes import (
    append_note,
    current_launcher,
    job_script,
    kill_attempts,
    write_text,
)
from .warm import warm_starts

__all__ = ("NotStartedError", "job_script", "run_job")

_HOST = socket.gethostname()


class NotStartedError(RuntimeError):
    """The job attempt was not started (the run is stopping, or its pool was lost)."""


def run_job(
    token: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    time_limit: float | None = None,
    shell: str = "/bin/bash",
    warm: bool = False,
    inputs: Sequence[Any] = (),
    parsl_resource_specification: dict[str, Any] | None = None,
) -> tuple[int, int | None, float, float, str, bool]:
    """Run one attempt of one job.

    Parameters
    ----------
    token : `str`
        ``<run id>/<job id>/<attempt>``, exported to the job and written in
        its shell's command line, so that its processes can be recognised
        later.
    prefix, env, command : `str`
        Site command prefix, job environment exports, job command line.
    out_path, err_path : `str`
        Log files (created with their directories).
    pid_file : `str`
        File naming this attempt's host and process group while it runs.
    time_limit : `float`, optional
        Seconds after which the job is killed (its ``request_walltime``;
        not named ``walltime``, which Parsl would take for itself).
    shell : `str`
        Shell that runs the job's script.
    warm : `bool`
        Let a ``pipetask run-qbb`` job start warm (`warm.WarmStarts`: one
        warm process per worker process, which adopts its jobs as a
        subreaper); only in a worker's main thread.
    inputs : `~collections.abc.Sequence`, optional
        Parent futures (Parsl resolves them before this runs).
    parsl_resource_specification : `dict`, optional
        Parsl passes a task's resource specification on to its function;
        not used here (the executor takes cores, memory and walltime from
        it: the local pool, `lsst.ctrl.bps.parsl.localpool`).

    Returns
    -------
    result : `tuple`
        (exit code, signal or None, start time, end time, host, whether the
        walltime killed it). A job killed by a signal has exit code
        ``128 + signal``.
    """
    return _run(token, shell, prefix, env, command, out_path, err_path, pid_file, time_limit, warm)


def _run(
    token: str,
    shell: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    walltime: float | None,
    warm: bool = False,
) -> tuple[int, int | None, float, float, str, bool]:
    start = time.time()
    guard = orphan_guard()
    if guard is not None:
        guard.watch()
    # Warm starts only where a guarded worker's main thread runs the job, not in the driver's threads.
    starts = warm_starts() if warm and guard is not None else None
    pid = current_launcher().spawn_job(shell, token, prefix, env, command, out_path, err_path, starts)
    write_text(pid_file, f"{_HOST} {pid} {token}\n")
    timed_out = False
    try:
        status = _wait(pid, walltime)
        if status is None:
            timed_out = True
            kill_attempts((token,), groups=(pid,))
            status = _wait(pid, None)
        assert status is not None  # waited without a timeout
        returncode, sig = exit_code_of(status)
        log_exit_status(err_path, returncode)
        if starts is not None:
            # A subreaper adopts what any job leaves behind: reap those that ended.
            starts.reap_orphans(guard.pids() if guard is not None else ())
    except BaseException:
        kill_attempts((token,), groups=(pid,))
        _wait(pid, None)
        raise
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass
    end = time.time()
    if timed_out:
        append_note(err_path, f"[bps-parsl] killed after walltime of {walltime:.0f} s\n")
    return returncode, sig, start, end, _HOST, timed_out


def _wait(pid: int, timeout: float | None) -> int | None:
    """Wait status of child ``pid``, or `None` if it still runs after ``timeout`` seconds."""
    if timeout is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            if not ready:
                return None
        else:
            deadline = time.monotonic() + timeout
            while True:
                found, status = os.waitpid(pid, os.WNOHANG)
                if found:
                    return status
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
