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

"""Stopping a driver session: the signals that ask for it, and recording how
the attempts in flight ended when it stops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..records import ENDED, AttemptResult, JobState
from ..store.recorder import Recorder
from .runner import NotStartedError

__all__ = ("STOP_BOUND", "InFlight", "StopSignals", "StopWatchdog", "record_stopped")

STOP_BOUND = 180.0
"""Seconds a driver may take to end once it was asked to stop (cancel,
SIGINT, SIGTERM, a lost executor...) before `StopWatchdog` ends it."""


@dataclass(slots=True)
class InFlight:
    """An attempt handed to Parsl that has not ended."""

    label: str
    attempt: int
    memory: int | None


class StopSignals:
    """While installed, SIGINT and SIGTERM ask for a stop (main thread only).

    Parameters
    ----------
    request_stop : `~collections.abc.Callable` [[`str`], `None`]
        Called with ``received <SIGNAL>``.
    """

    def __init__(self, request_stop: Callable[[str], None]):
        self.request_stop = request_stop
        self._old_handlers: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the signals (nothing outside the main thread)."""
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            self.request_stop(f"received {signal.Signals(signum).name}")

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        """Put back the handlers `install` replaced."""
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)


class StopWatchdog:
    """Ends a driver that does not end within `STOP_BOUND` seconds of a stop
    request (stuck in Parsl, in an executor, in a scheduler command): kills
    the run's job processes on this host by their token, says so in one
    line and exits the process with status 1. ``bps restart`` resumes the
    run (the attempts that were killed are settled from their logs).

    Parameters
    ----------
    run_id : `str`
        The run's id (the prefix of its job tokens).
    submit_path : `str`
        Submit directory (for the message).
    """

    def __init__(self, run_id: str, submit_path: str):
        self.run_id = run_id
        self.submit_path = submit_path
        self._ended = threading.Event()
        self._armed = False

    def arm(self, reason: str) -> None:
        """Start counting (once) from a stop request.

        Parameters
        ----------
        reason : `str`
            The stop request's reason, for the line printed if the bound passes.
        """
        if self._armed or self._ended.is_set():
            return
        self._armed = True
        threading.Thread(
            target=self._watch, args=(reason,), name="bps-parsl-stop-watchdog", daemon=True
        ).start()

    def ended(self) -> None:
        """The driver ended by itself: nothing to do."""
        self._ended.set()

    def _watch(self, reason: str) -> None:
        if self._ended.wait(STOP_BOUND):
            return
        from lsst_ctrl_bps_parsl_worker.processes import kill_attempts

        try:
            kill_attempts(run_prefix=self.run_id + "/")
        finally:
            print(
                f"bps-parsl: run {self.submit_path}: the driver did not end within {STOP_BOUND:.0f} s of its "
                f"stop ({reason}): it is stuck (in Parsl's shutdown or an executor); its jobs on this host were "
                f"killed and it exits; 'bps restart --id {self.submit_path}' resumes the run",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)


def record_stopped(
    ended: Iterable[tuple[tuple[int, int], Any]],
    in_flight: dict[int, InFlight],
    recorder: Recorder,
    state: list[JobState],
    attempt: list[int],
) -> None:
    """Record how the attempts in flight ended when the run stopped, and
    mark every job that has not ended DELETED.

    Parameters
    ----------
    ended : `~collections.abc.Iterable`
        ``((job, attempt), future)`` of the attempts whose futures ended.
    in_flight : `dict` [`int`, `InFlight`]
        Attempts in flight by job (emptied).
    recorder : `Recorder`
        Where the transitions go (flushed at the end).
    state, attempt : `list` [`int`]
        Per-job state and last attempt number, updated.
    """
    exits: list[dict[str, int]] = []  # the exit records, read once if needed
    for (i, number), future in ended:
        _record_one(i, number, future, in_flight, recorder, state, attempt, exits)
    for i, flight in list(in_flight.items()):
        _record_one(i, flight.attempt, None, in_flight, recorder, state, attempt, exits)
    for i, s in enumerate(state):
        if s not in ENDED:
            state[i] = JobState.DELETED
            recorder.state(i, JobState.DELETED, attempt[i])
    in_flight.clear()
    recorder.flush()


def _record_one(
    i: int,
    number: int,
    future: Any,
    in_flight: dict[int, InFlight],
    recorder: Recorder,
    state: list[JobState],
    attempt: list[int],
    exits: list[dict[str, int]],
) -> None:
    """Record attempt ``number`` of job ``i`` (``future``: `None` if it did
    not end; ``exits``: the exit records once read, `Recorder.exit_statuses`).
    """
    flight = in_flight.get(i)
    if flight is None or flight.attempt != number:
        return
    del in_flight[i]
    error = None if future is None else future.exception()
    if isinstance(error, NotStartedError):
        attempt[i] = number - 1  # never started: no attempt to record
        return
    if future is not None and error is None:
        result = AttemptResult._make(future.result())
    else:
        # The executor lost it or was shut down first: if it ran to its end, its reaper recorded how.
        if not exits:
            exits.append(recorder.exit_statuses())
        logged = recorder.exit_status(i, number, exits[0])
        result = AttemptResult(-1 if logged is None else logged, None, None, time.time(), None, False)
    ended_state = JobState.SUCCEEDED if result.exit_code == 0 else JobState.DELETED
    recorder.ended(i, number, ended_state, result, flight.memory, flight.label)
    state[i] = ended_state
