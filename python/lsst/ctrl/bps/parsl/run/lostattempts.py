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

"""What a driver does with an attempt the infrastructure lost, or that never started."""

from __future__ import annotations

import os
import time

from ..records import AttemptResult, JobState
from ..sites.losses import LostAttempts, infrastructure_cause, stops_run
from ..store.recorder import Recorder
from .dispatch import Dispatch
from .graphwalk import GraphWalk
from .runner import NotStartedError
from .stopping import InFlight

__all__ = ("LostAttemptHandling",)


class LostAttemptHandling:
    """The driver's handling of lost and never-started attempts (`~.driver.Driver`'s attributes)."""

    attempt: list[int]
    session_tries: list[int]
    state: list[JobState]
    recorder: Recorder
    walk: GraphWalk
    losses: LostAttempts
    dispatch: Dispatch
    running_dir: str
    stop_reason: str | None
    draining: bool

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop: no new job starts, running ones are killed.

        Parameters
        ----------
        reason : `str`
            Why; the first reason given is kept.
        """
        if not self.stop_reason:
            self.stop_reason = reason

    def _lost(self, i: int, attempt: int, flight: InFlight, error: BaseException, cause: str) -> None:
        """Record a lost attempt; its job runs again once its processes end (``infrastructureRetries``)."""
        self.session_tries[i] -= 1
        result = self.recorder.lost(i, attempt, error, time.time(), cause)
        try:  # a lost worker did not remove its running-attempt file
            os.unlink(os.path.join(self.running_dir, f"{i}.{attempt}"))
        except OSError:
            pass
        if stops_run(error):
            where = getattr(getattr(self, "site", None), "where", "the site")
            self.request_stop(f"{where}: executor {flight.label} can run nothing more: {cause}")
        again = self.losses.lost(i)
        if self.stop_reason or again:
            # Stopping: the job is recorded DELETED with the others, and a restart runs it.
            self.recorder.ended(
                i, attempt, JobState.FAILED, result, flight.memory, flight.label, JobState.READY, cause
            )
            self.state[i] = JobState.READY
            if not self.stop_reason:
                self.losses.hold(i, time.monotonic() + self.dispatch.settle_seconds(flight.label))
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
        stderr = self.recorder.stderr_of(i, attempt)
        if os.path.exists(stderr):
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
