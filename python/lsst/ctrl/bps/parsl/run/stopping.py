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

"""Stopping a driver session (the watchdog, `StopHandling`: signals, stops); attempts lost or never started."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from lsst_ctrl_bps_parsl_worker.job import NotStartedError
from lsst_ctrl_bps_parsl_worker.processes import kill_attempts

from ..control.claim import ClaimFence
from ..control.running import kill_running_jobs
from ..records import ENDED, AttemptResult, JobRow, JobState
from ..site import SiteConfig
from ..sites.losses import LostAttempts, infrastructure_cause, settle_seconds, stops_run
from ..store.recorder import Recorder
from ..store.runstore import RunStore, RunTakenOverError, StateStoreError
from ..store.storefile import draining_message
from .dispatch import Dispatch
from .scheduling import GraphWalk

_LOG = logging.getLogger(__name__)

__all__ = ("STOP_BOUND", "InFlight", "StopHandling", "StopWatchdog")

STOP_BOUND = 180.0
"""Seconds a driver may take to end once it was asked to stop (cancel,
SIGINT, SIGTERM, a lost executor...) before `StopWatchdog` ends it."""


@dataclass(slots=True)
class InFlight:
    """An attempt handed to Parsl that has not ended."""

    label: str
    attempt: int
    memory: int | None


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


class StopHandling:
    """How a driver stops, and what it does with attempts lost or never started (`~.driver.Driver`'s attributes)."""

    rows: list[JobRow]
    state: list[JobState]
    attempt: list[int]
    session_tries: list[int]
    in_flight: dict[int, InFlight]
    recorder: Recorder
    store: RunStore
    site: SiteConfig
    dispatch: Dispatch
    walk: GraphWalk
    losses: LostAttempts
    watchdog: StopWatchdog
    fence: ClaimFence | None
    run_id: str
    submit_path: str
    running_dir: str
    stop_reason: str | None
    draining: bool
    abort: tuple[int, str] | None

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop: no new job starts, running ones are killed, within `STOP_BOUND` s.

        Parameters
        ----------
        reason : `str`
            Why, for the log and the session's outcome; the first reason given is kept.
        """
        if not self.stop_reason:
            self.stop_reason = reason
        self.watchdog.arm(reason)

    def _install_signals(self) -> None:
        """Until `_restore_signals`, SIGINT and SIGTERM ask for a stop (main thread only)."""
        self._old_handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[signum] = signal.signal(
                    signum, lambda sig, _: self.request_stop(f"received {signal.Signals(sig).name}")
                )

    def _restore_signals(self) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)

    def _lost(self, i: int, attempt: int, flight: InFlight, error: BaseException, cause: str) -> None:
        """Record a lost attempt; its job runs again once its processes end (``infrastructureRetries``)."""
        self.session_tries[i] -= 1
        result = self.recorder.lost(i, attempt, error, time.time(), cause)
        with suppress(OSError):  # a lost worker did not remove its running-attempt file
            os.unlink(os.path.join(self.running_dir, f"{i}.{attempt}"))
        if stops_run(error):
            self.request_stop(f"{self.site.where}: executor {flight.label} can run nothing more: {cause}")
        if self.stop_reason or self.losses.lost(i):
            # Stopping: the job is recorded DELETED with the others, and a restart runs it.
            self.recorder.ended(
                i, attempt, JobState.FAILED, result, flight.memory, flight.label, JobState.READY, cause
            )
            self.state[i] = JobState.READY
            if not self.stop_reason:
                executor = self.dispatch.dfk.executors.get(flight.label)
                self.losses.hold(i, time.monotonic() + settle_seconds(executor))
            return
        self.recorder.note(
            i, attempt, f"infrastructureRetries ({self.losses.budget}) used up: the job failed"
        )
        self.recorder.ended(i, attempt, JobState.FAILED, result, flight.memory, flight.label, lost=cause)
        self.walk.finish(i, JobState.FAILED)

    def _never_started(self, i: int, attempt: int, error: NotStartedError) -> None:
        """An attempt that never started gives its number back; unless the run
        stops or drains, its pool was lost: the run stops.
        """
        self.attempt[i] = attempt - 1
        self.session_tries[i] -= 1
        if self.stop_reason or self.draining:
            return
        if os.path.exists(self.recorder.stderr_of(i, attempt)):
            # It did start (a pool that was lost cannot always tell): settle it from its exit record.
            self.attempt[i] = attempt
            self.session_tries[i] += 1
            if self.recorder.exit_status(i, attempt) == 0:
                self.recorder.ended(
                    i, attempt, JobState.SUCCEEDED, AttemptResult(0, None, None, None, None, False)
                )
                self.walk.finish(i, JobState.SUCCEEDED)
            elif (cause := infrastructure_cause(error)) is not None:
                # Started, then lost with its pool: an infrastructure loss (the job is recorded DELETED).
                result = self.recorder.lost(i, attempt, error, time.time(), cause)
                self.recorder.ended(i, attempt, JobState.DELETED, result, lost=cause)
        self.request_stop(str(error))

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

    def _quietly(self, action: Callable[[], object]) -> None:
        """Run ``action``, which records in the store; a store that refuses the record is only logged."""
        try:
            action()
        except StateStoreError as exc:
            _LOG.warning("%s", exc)

    def _stop_everything(self) -> None:
        """Shut Parsl down, kill the run's processes here, record the attempts in flight, mark DELETED."""
        self._check_fence()  # a driver that lost the run kills only its own attempts
        self.dispatch.shutdown()
        kill_running_jobs(self.running_dir, self.run_id)
        futures = dict(self.dispatch.wait(0))
        exits: dict[str, int] | None = None  # the exit records, read once if needed
        for i, flight in self.in_flight.items():
            future = futures.get((i, flight.attempt))
            error = None if future is None else future.exception()
            if isinstance(error, NotStartedError):
                self.attempt[i] = flight.attempt - 1  # never started: no attempt to record
                continue
            if future is not None and error is None:
                result = AttemptResult._make(future.result())
            else:
                # The executor lost it or was shut down first: if it ran to its end, its reaper recorded how.
                exits = self.recorder.exit_statuses() if exits is None else exits
                logged = self.recorder.exit_status(i, flight.attempt, exits)
                result = AttemptResult(-1 if logged is None else logged, None, None, time.time(), None, False)
            ended = JobState.SUCCEEDED if result.exit_code == 0 else JobState.DELETED
            self.recorder.ended(i, flight.attempt, ended, result, flight.memory, flight.label)
            self.state[i] = ended
        self.in_flight.clear()
        for i, s in enumerate(self.state):
            if s not in ENDED:
                self.state[i] = JobState.DELETED
                self.recorder.store.set_state(i, JobState.DELETED, self.attempt[i])
        self.recorder.store.flush()

    def _stop_own_attempts(self) -> None:
        """The run was taken over: stop Parsl, kill only this driver's attempts (by token), record nothing."""
        tokens = [f"{self.run_id}/{i}/{flight.attempt}" for i, flight in self.in_flight.items()]
        self.dispatch.shutdown()
        if tokens:
            kill_attempts(tokens)
