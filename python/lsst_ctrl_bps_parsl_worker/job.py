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

"""`run_job`: what a Parsl worker runs for one job attempt; run as a script,
a local pool Python task. How a job starts, ends and fails to start is in
design.md and reliability.md (J1, P2); on the local pool the spawner does it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

if __name__ == "__main__":
    # Run as a script (a Python task): the package is next to this file's directory.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsst_ctrl_bps_parsl_worker.exits import ended_child, exit_code_of, record_exit  # noqa: E402
from lsst_ctrl_bps_parsl_worker.keeper import orphan_guard  # noqa: E402
from lsst_ctrl_bps_parsl_worker.processes import (  # noqa: E402
    START_RETRY_DELAYS,
    Launcher,
    append_note,
    kill_attempts,
    signal_attempts,
    start_failure,
    transient_start_error,
    write_text,
)
from lsst_ctrl_bps_parsl_worker.warm import WarmStarts  # noqa: E402

__all__ = ("JobResult", "NotStartedError", "run_job", "worker_notes")

_HOST = socket.gethostname()
_NOTES: list[str] = []
"""This worker's warm-start notes not yet returned with a result."""
_WARM = WarmStarts(_NOTES.append)
"""This worker process's warm processes (no process until a job starts warm)."""
_NOTED: set[str] = set()
"""Notes the driver has logged (`worker_notes`)."""
_LAUNCHER: list[tuple[dict | None, Launcher]] = []
"""The `Launcher` `_launcher` made, and the environment it was made from."""


class NotStartedError(RuntimeError):
    """The job attempt was not started (the run is stopping, or its pool was lost)."""


class JobResult(tuple):
    """What `run_job` returns: a plain 6-tuple to its callers, with the
    worker's new warm-start notes (`notes`) for the driver's log.
    """

    notes: tuple[str, ...] = ()


def worker_notes(result: Any) -> list[str]:
    """The notes of a `run_job` result this process has not seen before.

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
        ``<run id>/<job id>/<attempt>``, exported to the job: how its processes are recognised.
    prefix, env, command : `str`
        Site command prefix, job environment exports, job command line.
    out_path, err_path : `str`
        Log files (created with their directories).
    pid_file : `str`
        File naming this attempt's host and process group while it runs.
    time_limit : `float`, optional
        Seconds after which the job is killed (not ``walltime``, which Parsl takes for itself).
    shell : `str`
        Shell that runs the job's script.
    warm : `bool`
        Let a ``pipetask run-qbb`` job start warm (`warm`); only in a worker's main thread.
    inputs : `~collections.abc.Sequence`, optional
        Parent futures (Parsl resolves them before this runs).
    parsl_resource_specification : `dict`, optional
        Passed by Parsl; not used (the executor takes cores, memory and walltime from it).

    Returns
    -------
    result : `JobResult`
        (exit code (``128 + signal`` for a signal), signal or None, start time
        (`None`: not started), end time, host, whether the walltime killed it);
        its ``notes``: why jobs of this worker started cold (`worker_notes`).
    """
    start = time.time()
    guard = orphan_guard()
    if guard is not None:
        guard.watch()
    # Warm starts only where a guarded worker's main thread runs the job, not in the driver's threads.
    starts = _WARM if warm and guard is not None else None
    launcher = _launcher()
    for tries, delay in enumerate((*START_RETRY_DELAYS, None)):
        try:
            pid = launcher.spawn_job(shell, token, prefix, env, command, out_path, err_path, starts)
            break
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this job's failure
            if delay is None or not transient_start_error(exc):
                code = start_failure(err_path, exc, tries, os.path.dirname(pid_file), token)
                return _result((code, None, None, time.time(), _HOST, False))
            time.sleep(delay)
    write_text(pid_file, f"{_HOST} {pid} {token}\n")
    timed_out = False
    try:
        if not _ended(pid, time_limit):
            timed_out = True
            kill_attempts((token,), groups=(pid,))
        returncode = exit_code_of(_reap(pid))
        record_exit(os.path.dirname(pid_file), token, returncode, err_path)
        # SIGKILL what it left outside its process group (``setsid``, double forks),
        # looked for again while some are found (they may fork meanwhile).
        for _ in range(10):
            if not signal_attempts(signal.SIGKILL, (token,)):
                break
            time.sleep(0.02)
        if starts is not None:
            # A subreaper adopts what any job leaves behind: reap those that ended.
            starts.reap_orphans(guard.pids if guard is not None else ())
    except BaseException:
        kill_attempts((token,), groups=(pid,))
        _reap(pid)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(pid_file)
    end = time.time()
    if timed_out:
        append_note(err_path, f"[bps-parsl] killed after walltime of {time_limit:.0f} s\n")
    sig = returncode - 128 if 128 < returncode < 128 + 65 else None
    return _result((returncode, sig, start, end, _HOST, timed_out))


def _result(values: tuple) -> JobResult:
    """``values`` with this worker's new notes."""
    result = JobResult(values)
    result.notes, _NOTES[:] = tuple(_NOTES), []
    return result


def _launcher() -> Launcher:
    """A `Launcher` of this process's environment, made again only when it
    changed (converting it costs 0.2 ms per job with a hundred variables).
    """
    data = getattr(os.environ, "_data", None)  # CPython's encoded copy; elsewhere, a new one each time
    if _LAUNCHER and data is not None and _LAUNCHER[0][0] == data:
        return _LAUNCHER[0][1]
    launcher = Launcher()
    _LAUNCHER[:] = [(dict(data) if data is not None else None, launcher)]
    return launcher


def _ended(pid: int, timeout: float | None) -> bool:
    """Whether child ``pid`` ended within ``timeout`` seconds (`None`: wait
    until it does); it is left unreaped, so its pid still names its
    process group (`_reap`).
    """
    if timeout is None:
        ended_child(pid, block=True)
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (before Linux 5.3): poll
        deadline = time.monotonic() + timeout
        while ended_child(pid) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _reap(pid: int) -> int:
    """SIGKILL what child ``pid`` left in its process group, then reap it; its wait status."""
    signal_attempts(signal.SIGKILL, groups=(pid,))
    return os.waitpid(pid, 0)[1]


def _run_task(task_path: str, result_path: str) -> None:
    """Run a local pool Python task (`lsst.ctrl.bps.parsl.localpool.tasks`):
    ``task_path`` holds ``(sys.path, message)`` pickled, ``message`` being
    Parsl's ``pack_apply_message(func, args, kwargs)``; ``result_path`` gets
    Parsl's ``serialize((True, value))``, or ``(False, RemoteExceptionWrapper)``.
    """
    with open(task_path, "rb") as stream:
        path, message = pickle.load(stream)
    # The submitting process's path: its functions import here as they did there
    # (and this script's own directory does not shadow anything).
    sys.path[:] = path
    from parsl.app.errors import RemoteExceptionWrapper
    from parsl.serialize import serialize, unpack_apply_message

    try:
        func, args, kwargs = unpack_apply_message(message)
        outcome = (True, func(*args, **kwargs))
    except BaseException:  # noqa: BLE001 - whatever the task raised goes back to its future
        outcome = (False, RemoteExceptionWrapper(*sys.exc_info()))
    try:
        data = serialize(outcome)
    except Exception:  # noqa: BLE001 - an unpicklable result or exception
        data = serialize((False, RemoteExceptionWrapper(*sys.exc_info())))
    with open(result_path + ".tmp", "wb") as stream:
        stream.write(data)
    os.replace(result_path + ".tmp", result_path)


if __name__ == "__main__":
    _run_task(sys.argv[1], sys.argv[2])
