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

"""Infrastructure losses: the batch sites' block error handlers, attempts
lost with their worker, pool, node, block, interchange or local pool told
apart from the job's own failures, and their reruns' budget (reliability.md, L1-L4, C18).
"""

from __future__ import annotations

import heapq
import logging
import weakref
from typing import TYPE_CHECKING, Any

from lsst_ctrl_bps_parsl_worker.processes import KILL_GRACE

from ..parslcompat import hold_block, interchange_exit_code

if TYPE_CHECKING:
    from parsl.executors.status_handling import BlockProviderExecutor
    from parsl.jobs.states import JobStatus

__all__ = (
    "BLOCK_SUBMIT_FAILURES",
    "BlockSubmitError",
    "InterchangeLostError",
    "LostAttempts",
    "fail_if_interchange_lost",
    "give_up_if_blocks_refused",
    "infrastructure_cause",
    "settle_seconds",
    "stops_run",
    "tolerate_lost_blocks",
)

_LOG = logging.getLogger(__name__)

BLOCK_SUBMIT_FAILURES = 3
"""Block submissions in a row the scheduler refused after which an executor
with no block pending or running gives up (reliability.md C18)."""

_HELD_BLOCKS: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
"""Blocks of each executor whose worker pools `tolerate_lost_blocks` held."""

_SETTLE_EXTRA = 2.0
"""Seconds a lost attempt's rerun waits beyond the heartbeat period and the kill grace."""


class InterchangeLostError(RuntimeError):
    """A HighThroughputExecutor's interchange exited: its attempts are lost."""


class BlockSubmitError(RuntimeError):
    """The scheduler refused every block of an executor (`tolerate_lost_blocks`)."""


def tolerate_lost_blocks(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Block error handler of the batch sites' HighThroughputExecutors (doc/sites.md, "Lost nodes"):
    Parsl's `~parsl.jobs.error_handlers.simple_error_handler` over the blocks
    that never had workers, after `give_up_if_blocks_refused`; the worker pools
    of a block that ended are held at once (else they get tasks until their heartbeats expire).

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.
    """
    from parsl.jobs.error_handlers import simple_error_handler
    from parsl.jobs.states import JobState

    held = _HELD_BLOCKS.setdefault(executor, set())
    for block, block_status in status.items():
        if block_status.terminal and block_status.state != JobState.SCALED_IN and block not in held:
            held.add(block)
            try:
                hold_block(executor, block)
            except Exception as exc:  # noqa: BLE001 (the interchange may be gone; the heartbeat still works)
                _LOG.warning("Could not hold the worker pools of ended block %s: %s", block, exc)
    if give_up_if_blocks_refused(executor, status):
        return
    lost = getattr(executor.provider, "lost_blocks", {})
    kept = {
        block: s
        for block, s in status.items()
        if s.state != JobState.FAILED and executor.blocks_to_job_id.get(block) not in lost
    }
    simple_error_handler(executor, kept)


def give_up_if_blocks_refused(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> bool:
    """Block error handler (Ccin2p3's): give the executor up (`BlockSubmitError`)
    if the scheduler refused its last `BLOCK_SUBMIT_FAILURES` blocks and none is active.

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.

    Returns
    -------
    gave_up : `bool`
        Whether it gave the executor up.
    """
    from parsl.jobs.states import JobState

    if any(s.state in (JobState.PENDING, JobState.RUNNING, JobState.HELD) for s in status.values()):
        return False
    recent = sorted(status, key=lambda block: int(block) if block.isdigit() else -1)[-BLOCK_SUBMIT_FAILURES:]
    refused = [b for b in recent if status[b].state == JobState.FAILED and b not in executor.blocks_to_job_id]
    if len(refused) < BLOCK_SUBMIT_FAILURES:
        return False
    said = " ".join(str(status[recent[-1]].message or "no error message").split())
    provider = type(executor.provider).__name__
    executor.set_bad_state_and_fail_all(
        BlockSubmitError(
            f"{provider} could not submit a block {BLOCK_SUBMIT_FAILURES} times in a row, giving up: {said}"
        )
    )
    return True


def infrastructure_cause(error: BaseException | None) -> str | None:
    """How the infrastructure lost an attempt, in one line; `None` if ``error`` is no such loss.

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
    """Seconds the rerun of an attempt ``executor`` lost waits for its processes to go (reliability.md L4).

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
    """Fail every task of ``executor`` with `InterchangeLostError` if its interchange exited.

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
    """Per job, the attempts the infrastructure lost in this driver session, and the held reruns.

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
        self.counts[job] = self.counts.get(job, 0) + 1
        return self.counts[job] <= self.budget

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

    def __len__(self) -> int:
        return len(self._delayed)
