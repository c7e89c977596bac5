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

"""What the run-state store holds, as types: job states and kinds, and the
rows of its ``jobs``, ``status``, ``attempts`` and ``sessions`` tables as
named records.

Standard library and ``lsst.ctrl.bps`` only, so that any module may import
it (see `state` for the store itself).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from lsst.ctrl.bps import WmsStates

__all__ = ("ENDED", "AttemptResult", "AttemptRow", "JobKind", "JobRow", "JobState", "SessionRow", "StatusRow")


class JobState(IntEnum):
    """State of a job as the store records it: the `WmsStates` value of
    that name, so that a stored value is what ``bps report`` shows.
    """

    UNREADY = WmsStates.UNREADY.value
    """Waiting for its parents (or for the final phase)."""
    READY = WmsStates.READY.value
    """Its parents succeeded; it waits to be handed to Parsl (a failed
    attempt that will be retried is READY too)."""
    PENDING = WmsStates.PENDING.value
    """An attempt was handed to Parsl and has not ended."""
    RUNNING = WmsStates.RUNNING.value
    """An attempt is running (a driver that died left it PENDING or
    RUNNING: a restart settles it from its log)."""
    SUCCEEDED = WmsStates.SUCCEEDED.value
    """An attempt exited with status 0 (a no-op node: its parents succeeded)."""
    FAILED = WmsStates.FAILED.value
    """The last attempt failed and no retry is left (or allowed)."""
    PRUNED = WmsStates.PRUNED.value
    """Never run: an ancestor failed for good."""
    DELETED = WmsStates.DELETED.value
    """Not finished when the run was stopped (cancel, signal, lost store,
    full disk); a restart runs it again."""

    def wms_state(self) -> WmsStates:
        """The `WmsStates` member of the same value.

        Returns
        -------
        state : `lsst.ctrl.bps.WmsStates`
            The BPS state.
        """
        return WmsStates(self.value)


ENDED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.PRUNED, JobState.DELETED})
"""States a job leaves only through a restart."""


class JobKind(IntEnum):
    """What a node of the prepared workflow is."""

    PAYLOAD = 0
    """A job with a command line."""
    NOOP = 1
    """Ordering only: succeeds once its parents succeeded."""
    JOIN = 2
    """End of a blocking group: succeeds once all of the group succeeded."""
    TOLERANT_JOIN = 3
    """End of a non-blocking group: succeeds once all of the group ended."""


class JobRow(NamedTuple):
    """One job of the prepared workflow, as stored: from prepare to the
    store and back, the columns of table ``jobs`` are its fields, in order.
    """

    id: int
    name: str
    label: str
    kind: int
    final: bool
    command: str | None = None
    env_id: int | None = None
    request_cpus: int | None = None
    request_memory: int | None = None
    request_memory_max: int | None = None
    memory_multiplier: float | None = None
    request_disk: int | None = None
    request_walltime: str | None = None
    priority: str | None = None
    retries: int | None = None
    retry_unless_exit: str | None = None
    log_dir: str | None = None
    tags: str | None = None
    concurrency_limit: str | None = None
    """BPS ``concurrencyLimit``: ``name[:units]`` entries, comma-separated."""
    abort_on_value: int | None = None
    """Exit status of this job that aborts the run (BPS ``abortOnValue``)."""
    abort_return_value: int | None = None
    """Status of a run this job aborted (BPS ``abortReturnValue``)."""
    compute_site: str | None = None
    """BPS ``computeSite`` of this job."""
    queue: str | None = None
    """BPS ``queue`` of this job."""


class AttemptResult(NamedTuple):
    """How an attempt ended: what `~lsst.ctrl.bps.parsl.run.runner.run_job` returns
    (a plain tuple on a Parsl worker), and what the local pool's futures give.
    """

    exit_code: int
    """Exit status (``128 + signal`` if a signal killed it; -1: the executor lost it)."""
    signal: int | None
    """Signal that killed it."""
    start: float | None
    """When it started (epoch seconds)."""
    end: float | None
    """When it ended."""
    host: str | None
    """Host it ran on."""
    timed_out: bool
    """Whether its walltime killed it."""


class StatusRow(NamedTuple):
    """A job's current state (table ``status``)."""

    job: int
    """Job id."""
    state: JobState
    """Current state."""
    attempt: int
    """Number of its last attempt (0: none yet)."""
    exit_code: int | None
    """Exit status of the last attempt (``128 + signal`` if killed)."""
    signal: int | None
    """Signal that killed the last attempt."""
    start: float | None
    """When the last attempt was submitted or started (epoch seconds)."""
    end: float | None
    """When the last attempt ended."""
    host: str | None
    """Host of the last attempt."""


class AttemptRow(NamedTuple):
    """One ended attempt of a job (table ``attempts``)."""

    job: int
    """Job id."""
    attempt: int
    """Attempt number, from 1."""
    session: int
    """Driver session that ran it."""
    state: JobState
    """SUCCEEDED, FAILED or DELETED."""
    exit_code: int | None
    """Exit status (``128 + signal`` if killed; -1 if the executor lost it)."""
    signal: int | None
    """Signal that killed it."""
    memory: int | None
    """Memory (MB) it asked for."""
    executor: str | None
    """Label of the executor it ran on."""
    submitted: float | None
    """When it was handed to Parsl."""
    start: float | None
    """When it started."""
    end: float | None
    """When it ended."""
    host: str | None
    """Host it ran on."""
    lost: str | None = None
    """Why the infrastructure lost it (its worker, worker pool, node or
    block, the interchange, the local pool's spawner); `None` if it ended by
    itself. A lost attempt has exit status -1 and does not count against the
    job's ``numberOfRetries``."""


class SessionRow(NamedTuple):
    """One driver session (table ``sessions``)."""

    id: int
    """Session id, from 1."""
    kind: str
    """``submit`` or ``restart``."""
    pid: int
    """Process id of the driver."""
    host: str
    """Host of the driver."""
    start: float
    """When it started."""
    end: float | None
    """When it ended; `None` while it runs or if it died."""
    outcome: str | None
    """``succeeded``, ``failed``, ``cancelled`` or ``error``."""
