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
(`launch.Launcher.spawn_job`), warm when it can (`warm`). While it runs, a
small file names its host and process group, for report, cancel and a
restart. Its exit status is recorded as it is reaped (`exits.record_exit`);
a job killed with its worker (`keeper.orphan_guard`) has none and counts as not finished.
A job that cannot start fails as reliability.md, J1 says. When it ends, what
it left behind is killed (P2). On the local pool the spawner does all this.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from .exits import exit_code_of, record_exit
from .keeper import orphan_guard
from .launch import START_RETRY_DELAYS, current_launcher, job_script, start_failure, transient_start_error
from .processes import append_note, end_group, kill_attempts, signal_attempts, write_text
from .warm import warm_starts

__all__ = ("JobResult", "NotStartedError", "job_script", "run_job", "worker_notes")

_HOST = socket.gethostname()
_NOTES: list[str] = []
"""This worker's warm-start notes not yet returned with a result."""
_NOTED: set[str] = set()
"""Notes the driver has logged (`worker_notes`)."""


class NotStartedError(RuntimeError):
    """The job attempt was not started (the run is stopping, or its pool was lost)."""


class JobResult(tuple):
    """What `run_job` returns: a plain 6-tuple to its callers, with the
    worker's new warm-start notes (`notes`) for the driver's log.
    """

    notes: tuple[str, ...] = ()

    def __new__(cls, values: tuple, notes: tuple[str, ...] = ()) -> JobResult:  # noqa: D102
        result = super().__new__(cls, values)
        result.notes = notes
        return result


def worker_notes(result: Any) -> list[str]:
    """The notes a `run_job` result carries that this process has not seen
    before (each reason is logged once, whichever worker says it).

    Parameters
    ----------
    result : `tuple`
        What `run_job` returned.

    Returns
    -------
    notes : `list` [`str`]
        Lines for the driver's log.
    """
    new = [note for note in getattr(result, "notes", ()) if note not in _NOTED]
    _NOTED.update(new)
    return new


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
) -> JobResult:
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
    result : `JobResult`
        (exit code, signal or None, start time (`None`: it could not be
        started), end time, host, whether the walltime killed it). A job
        killed by a signal has exit code ``128 + signal``. Its ``notes``:
        why jobs of this worker started cold (`worker_notes`).
    """
    result = _run(token, shell, prefix, env, command, out_path, err_path, pid_file, time_limit, warm)
    notes, _NOTES[:] = tuple(_NOTES), []
    return JobResult(result, notes)


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
) -> tuple[int, int | None, float | None, float, str, bool]:
    start = time.time()
    guard = orphan_guard()
    if guard is not None:
        guard.watch()
    # Warm starts only where a guarded worker's main thread runs the job, not in the driver's threads.
    starts = warm_starts(_NOTES.append) if warm and guard is not None else None
    launcher = current_launcher()
    tries = 0
    while True:
        try:
            pid = launcher.spawn_job(shell, token, prefix, env, command, out_path, err_path, starts)
            break
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this job's failure
            if transient_start_error(exc) and tries < len(START_RETRY_DELAYS):
                time.sleep(START_RETRY_DELAYS[tries])
                tries += 1
                continue
            code = start_failure(err_path, exc, tries, pid_file, token)
            return code, None, None, time.time(), _HOST, False
    write_text(pid_file, f"{_HOST} {pid} {token}\n")
    timed_out = False
    try:
        if not _ended(pid, walltime):
            timed_out = True
            kill_attempts((token,), groups=(pid,))
        returncode, sig = exit_code_of(_reap(pid))
        record_exit(os.path.dirname(pid_file), token, returncode, err_path)
        _end_leftovers(token)
        if starts is not None:
            # A subreaper adopts what any job leaves behind: reap those that ended.
            starts.reap_orphans(guard.pids() if guard is not None else ())
    except BaseException:
        kill_attempts((token,), groups=(pid,))
        _reap(pid)
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


def _ended(pid: int, timeout: float | None) -> bool:
    """Whether child ``pid`` ended within ``timeout`` seconds (`None`: wait
    until it does); it is left unreaped, so its pid still names its
    process group (`_reap`).
    """
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
                return False
        else:
            deadline = time.monotonic() + timeout
            while True:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None and info.si_pid:
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            return True
        except InterruptedError:
            continue


def _reap(pid: int) -> int:
    """End what child ``pid`` left in its process group (`processes.end_group`),
    then reap it; its wait status.
    """
    end_group(pid)
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _end_leftovers(token: str) -> None:
    """SIGKILL what the ended attempt ``token`` left behind outside its
    process group (``setsid``, double forks): every process carrying its
    token, looked for again while some are found (they may fork meanwhile).
    """
    for _ in range(10):
        if not signal_attempts(signal.SIGKILL, (token,)):
            return
        time.sleep(0.02)
