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

"""Infrastructure losses: attempts lost with their worker, worker pool,
node, block, interchange or local pool, told apart from the job's own
failures, and the separate budget of their reruns (doc/reliability.md, L1-L4).
"""

from __future__ import annotations

import heapq
import logging
from typing import Any

from lsst_ctrl_bps_parsl_worker.processes import KILL_GRACE

from ..configuration import default_of
from ..parslcompat import interchange_exit_code

__all__ = (
    "INFRASTRUCTURE_RETRIES",
    "InterchangeLostError",
    "LostAttempts",
    "fail_if_interchange_lost",
    "infrastructure_cause",
    "settle_seconds",
    "stops_run",
)

_LOG = logging.getLogger(__name__)

INFRASTRUCTURE_RETRIES: int = default_of("infrastructureRetries")
"""Default of the site key ``infrastructureRetries``."""

_SETTLE_EXTRA = 2.0
"""Seconds a lost attempt's rerun waits, beyond the executor's heartbeat
period and the kill grace, for the worker side to kill its processes."""


class InterchangeLostError(RuntimeError):
    """A HighThroughputExecutor's interchange exited: its attempts are lost."""


def infrastructure_cause(error: BaseException | None) -> str | None:
    """How the infrastructure lost an attempt, in one line; `None` if
    ``error`` is no such loss.

    Parameters
    ----------
    error : `BaseException` or `None`
        The attempt's error.

    Returns
    -------
    cause : `str` or `None`
        The cause, naming the host or executor and the error's type.
    """
    if error is None:
        return None
    from parsl.executors.errors import BadStateException
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    from ..localpool.executor import PoolLostError

    kind = type(error).__name__
    if isinstance(error, ManagerLost):
        return f"worker pool on host {error.hostname} lost (no heartbeat: its node, block or pool ended) [{kind}]"
    if isinstance(error, WorkerLost):
        return f"worker process {error.worker_id} on host {error.hostname} died [{kind}]"
    if isinstance(error, InterchangeLostError):
        return f"{error} [{kind}]"
    if isinstance(error, BadStateException):
        label = getattr(getattr(error, "executor", None), "label", "?")
        return f"executor {label} failed: {' '.join(str(error.reason).split())} [{kind}]"
    if isinstance(error, PoolLostError):
        return f"local pool lost: {error} [{kind}]"
    return None


def stops_run(error: BaseException | None) -> bool:
    """Whether ``error`` means that its executor can run nothing more: the run stops.

    Parameters
    ----------
    error : `BaseException` or `None`
        The attempt's error.

    Returns
    -------
    stops : `bool`
        `True` if the run must stop.
    """
    from parsl.executors.errors import BadStateException

    from ..localpool.executor import PoolLostError

    return isinstance(error, InterchangeLostError | PoolLostError | BadStateException)


def settle_seconds(executor: Any) -> float:
    """Seconds the rerun of an attempt ``executor`` lost waits for its
    processes to be gone (about one heartbeat period; reliability.md L4).

    Parameters
    ----------
    executor : `~typing.Any`
        The executor.

    Returns
    -------
    seconds : `float`
        The pause.
    """
    return float(getattr(executor, "heartbeat_period", 0) or 0) + KILL_GRACE + _SETTLE_EXTRA


def fail_if_interchange_lost(executor: Any) -> bool:
    """Fail every task of ``executor`` with `InterchangeLostError` if its
    interchange exited; whether it did.

    Parameters
    ----------
    executor : `~typing.Any`
        A HighThroughputExecutor.

    Returns
    -------
    lost : `bool`
        `True` if its interchange exited.
    """
    code = interchange_exit_code(executor)
    if code is None:
        return False
    error = InterchangeLostError(
        f"interchange of executor {executor.label} exited with status {code}: the attempts it held are lost"
    )
    _LOG.warning("%s", error)
    executor.set_bad_state_and_fail_all(error)
    return True


class LostAttempts:
    """Per job, the attempts the infrastructure lost in this driver session,
    and the reruns waiting for their processes to be gone.

    Parameters
    ----------
    budget : `int`
        Reruns allowed per job (``infrastructureRetries``).
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.counts: dict[int, int] = {}
        self._delayed: list[tuple[float, int]] = []

    def lost(self, job: int) -> bool:
        """Count a lost attempt of ``job``; whether it may run again.

        Parameters
        ----------
        job : `int`
            Job id.

        Returns
        -------
        again : `bool`
            `True` while the job's losses are within the budget.
        """
        count = self.counts.get(job, 0) + 1
        self.counts[job] = count
        return count <= self.budget

    def hold(self, job: int, until: float) -> None:
        """Keep ``job``'s rerun back until ``until``.

        Parameters
        ----------
        job : `int`
            Job id.
        until : `float`
            `time.monotonic` time from which it may run.
        """
        heapq.heappush(self._delayed, (until, job))

    def due(self, now: float) -> list[int]:
        """The jobs whose rerun may go now, taken out of the waiting list.

        Parameters
        ----------
        now : `float`
            The current `time.monotonic` time.

        Returns
        -------
        jobs : `list` [`int`]
            Job ids.
        """
        out = []
        while self._delayed and self._delayed[0][0] <= now:
            out.append(heapq.heappop(self._delayed)[1])
        return out

    def next_due(self) -> float | None:
        """When the next held rerun may go (`time.monotonic`; `None`: none waits).

        Returns
        -------
        when : `float` or `None`
            The time.
        """
        return self._delayed[0][0] if self._delayed else None

    def drop(self) -> list[int]:
        """Forget every held rerun (the run stops); returns their jobs.

        Returns
        -------
        jobs : `list` [`int`]
            Ids of the jobs that were held.
        """
        jobs = [job for _, job in self._delayed]
        self._delayed.clear()
        return jobs

    def __len__(self) -> int:
        return len(self._delayed)
