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

"""What the run-state store holds, as types: job states and kinds, its tables' rows."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from lsst.ctrl.bps import WmsStates

__all__ = ("ENDED", "AttemptResult", "AttemptRow", "JobKind", "JobRow", "JobState", "SessionRow", "StatusRow")


class JobState(IntEnum):
    """State of a job as the store records it: the `WmsStates` value of that name."""

    UNREADY = WmsStates.UNREADY.value
    """Waiting for its parents (or for the final phase)."""
    READY = WmsStates.READY.value
    """Its parents succeeded; it waits to be handed to Parsl (a failed
    attempt that will be retried is READY too)."""
    PENDING = WmsStates.PENDING.value
    """An attempt was handed to Parsl and has not ended."""
    RUNNING = WmsStates.RUNNING.value
    """An attempt is running (a restart settles one a dead driver left)."""
    SUCCEEDED = WmsStates.SUCCEEDED.value
    """An attempt exited with status 0 (a no-op node: its parents succeeded)."""
    FAILED = WmsStates.FAILED.value
    """The last attempt failed and no retry is left (or allowed)."""
    PRUNED = WmsStates.PRUNED.value
    """Never run: an ancestor failed for good."""
    DELETED = WmsStates.DELETED.value
    """Not finished when the run was stopped; a restart runs it again."""


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
    """One job of the prepared workflow: the columns of table ``jobs``, in order."""

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
    abort_on_value: int | None = None
    abort_return_value: int | None = None
    compute_site: str | None = None
    queue: str | None = None


class AttemptResult(NamedTuple):
    """How an attempt ended (`~lsst_ctrl_bps_parsl_worker.job.run_job`'s
    result): exit status (``128 + signal`` if killed; -1: lost), the signal,
    start and end (epoch seconds), host, whether its walltime killed it.
    """

    exit_code: int
    signal: int | None
    start: float | None
    end: float | None
    host: str | None
    timed_out: bool


class StatusRow(NamedTuple):
    """A job's current state (table ``status``): its last attempt's number
    (0: none yet), exit status, signal, start (submitted or started), end, host.
    """

    job: int
    state: JobState
    attempt: int
    exit_code: int | None
    signal: int | None
    start: float | None
    end: float | None
    host: str | None


class AttemptRow(NamedTuple):
    """One ended attempt of a job (table ``attempts``): number (from 1),
    driver session, state (SUCCEEDED, FAILED or DELETED), exit status (-1:
    lost), signal, memory asked (MB), executor label, when handed to Parsl,
    started and ended, host, and why the infrastructure ``lost`` it (`None`:
    it ended by itself; a lost attempt does not count against the retries).
    """

    job: int
    attempt: int
    session: int
    state: JobState
    exit_code: int | None
    signal: int | None
    memory: int | None
    executor: str | None
    submitted: float | None
    start: float | None
    end: float | None
    host: str | None
    lost: str | None = None


class SessionRow(NamedTuple):
    """One driver session (table ``sessions``): id (from 1), ``submit`` or
    ``restart``, the driver's pid and host, start, end (`None` while it runs
    or if it died), outcome (``succeeded``, ``failed``, ``cancelled``, ``error``).
    """

    id: int
    kind: str
    pid: int
    host: str
    start: float
    end: float | None
    outcome: str | None
