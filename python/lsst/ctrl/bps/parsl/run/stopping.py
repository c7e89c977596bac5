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

"""Stopping a driver session: signals, the watchdog, `StopHandling`, how attempts in flight ended."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lsst_ctrl_bps_parsl_worker.processes import kill_attempts

from ..control.claim import ClaimFence
from ..control.running import kill_running_jobs
from ..records import ENDED, AttemptResult, JobRow, JobState
from ..site import SiteConfig
from ..store.recorder import Recorder
from ..store.runstore import RunStore, RunTakenOverError, StateStoreError
from ..store.storefile import draining_message
from .dispatch import Dispatch
from .runner import NotStartedError

_LOG = logging.getLogger(__name__)

__all__ = ("STOP_BOUND", "InFlight", "StopHandling", "StopSignals", "StopWatchdog")

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
    """Ends a driver stuck `STOP_BOUND` s after a stop request: kill its jobs here, exit 1.

    Parameters
    ----------
    run_id, submit_path : `str`
        The run's id (the prefix of its job tokens); submit directory (for the message).
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


def _record_stopped(
    ended: Iterable[tuple[tuple[int, int], Any]],
    in_flight: dict[int, InFlight],
    recorder: Recorder,
    state: list[JobState],
    attempt: list[int],
) -> None:
    """Record how the attempts in flight (``ended``: their futures) ended; mark the rest DELETED."""
    exits: list[dict[str, int]] = []  # the exit records, read once if needed
    for (i, number), future in ended:
        _record_one(i, number, future, in_flight, recorder, state, attempt, exits)
    for i, flight in list(in_flight.items()):
        _record_one(i, flight.attempt, None, in_flight, recorder, state, attempt, exits)
    for i, s in enumerate(state):
        if s not in ENDED:
            state[i] = JobState.DELETED
            recorder.store.set_state(i, JobState.DELETED, attempt[i])
    in_flight.clear()
    recorder.store.flush()


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
    """Record attempt ``number`` of job ``i`` (``future`` `None`: it did not end; ``exits``: read once)."""
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


class StopHandling:
    """How a driver stops (`~.driver.Driver`'s attributes)."""

    rows: list[JobRow]
    state: list[JobState]
    attempt: list[int]
    in_flight: dict[int, InFlight]
    recorder: Recorder
    store: RunStore
    site: SiteConfig
    dispatch: Dispatch
    fence: ClaimFence | None
    run_id: str
    submit_path: str
    running_dir: str
    stop_reason: str | None
    draining: bool
    abort: tuple[int, str] | None
    request_stop: Callable[[str], None]

    def _check_fence(self) -> None:
        """Raise `RunTakenOverError` if another process took the run over."""
        if self.fence is not None and not self.fence.holds():
            raise RunTakenOverError(self.fence.lost)

    def _drained(self) -> bool:
        """The disk is full: start no job, let running ones end; whether none runs any more."""
        if not self.draining:
            self.draining = True
            self.dispatch.drain()
            print(draining_message(self.submit_path, len(self.in_flight)), flush=True)
        if self.in_flight:
            return False
        self.request_stop(self.store.disk_full or "")
        return True

    def _abort_to_final_phase(self) -> None:
        """After an abort in the main phase, stop every job and run the final job (as DAGMan's FINAL)."""
        self._stop_everything()
        finals = [i for i, row in enumerate(self.rows) if row.final]
        if not finals or self.stop_reason != (self.abort[1] if self.abort else None):
            return
        for i in finals:
            self.state[i] = JobState.UNREADY
            self.store.set_state(i, JobState.UNREADY, self.attempt[i])
        self.store.flush()
        self.stop_reason = None
        self.dispatch = Dispatch(self.site)
        self.dispatch.start()

    def _stop_quietly(self) -> None:
        """`_stop_everything`, when the store may refuse the record of it."""
        try:
            self._stop_everything()
        except StateStoreError as exc:
            _LOG.warning("%s", exc)

    def _end_session_quietly(self, outcome: str) -> None:
        try:
            self.store.end_session(outcome)
        except StateStoreError as exc:
            _LOG.warning("%s", exc)

    def _stop_everything(self) -> None:
        """Shut Parsl down, kill the run's processes here, record the attempts in flight, mark DELETED."""
        self._check_fence()  # a driver that lost the run kills only its own attempts
        self.dispatch.shutdown()
        kill_running_jobs(self.running_dir, self.run_id)
        _record_stopped(self.dispatch.wait(0), self.in_flight, self.recorder, self.state, self.attempt)

    def _stop_own_attempts(self) -> None:
        """The run was taken over: stop Parsl, kill only this driver's attempts (by token), record nothing."""
        tokens = [f"{self.run_id}/{i}/{flight.attempt}" for i, flight in self.in_flight.items()]
        self.dispatch.shutdown()
        if tokens:
            kill_attempts(tokens)
