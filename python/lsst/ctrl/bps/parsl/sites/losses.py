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

"""Infrastructure during a run: attempts lost with their worker, pool, node,
block, interchange or local pool told apart from the job's own failures, their
reruns' budget (reliability.md, L1-L4), and the blocks' walltime and idleness (W1, W2).
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from lsst_ctrl_bps_parsl_worker.processes import KILL_GRACE

from ..configuration import ConfigurationError, default_of
from ..job import parse_walltime
from ..parslcompat import (
    interchange_alive,
    interchange_command,
    interchange_exit_code,
    mark_scaled_in,
    outstanding_tasks,
)

__all__ = (
    "BlockWatch",
    "InterchangeLostError",
    "LostAttempts",
    "fail_if_interchange_lost",
    "infrastructure_cause",
    "settle_seconds",
    "stops_run",
)

_LOG = logging.getLogger(__name__)

_SETTLE_EXTRA = 2.0
"""Seconds a lost attempt's rerun waits beyond the heartbeat period and the kill grace."""


class InterchangeLostError(RuntimeError):
    """A HighThroughputExecutor's interchange exited: its attempts are lost."""


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


_MAX_IDLE_TIME: float = default_of("maxIdleTime")
_WALLTIME_MARGIN = 30.0
"""Seconds a block must have left beyond a job's ``requestWalltime`` to take
it (the job's start-up, and the watch's own period)."""

_COMMAND_TIMEOUT = 30.0
_PERIOD = 1.0


def _block_walltime(executor: Any) -> float | None:
    """Walltime (s) of the blocks of an HTEX, if known."""
    value = getattr(executor.provider, "walltime", None)
    try:
        return float(parse_walltime(value, "walltime")) if value else None
    except (ConfigurationError, TypeError, ValueError):
        return None


class _Clock:
    """The blocks of one executor and their remaining walltime (infinite if unknown)."""

    def __init__(self, executor: Any, walltime: float | None):
        self.executor = executor
        self.walltime = walltime
        self.seen: dict[str, float] = {}
        self.held: set[str] = set()
        self.warned = False

    def _command(self, command: Any) -> Any:
        return interchange_command(self.executor, command, _COMMAND_TIMEOUT)

    def update(self, now: float) -> None:
        for block in list(self.executor.blocks_to_job_id):
            self.seen.setdefault(block, now)

    def remaining(self, block: str, now: float) -> float:
        if self.walltime is None:
            return float("inf")
        return self.walltime - (now - self.seen.get(block, now))

    def _active_blocks(self) -> list[str]:
        return [b for b, status in list(self.executor.status_facade.items()) if not status.terminal]

    def drain_short(self, need: float, now: float) -> None:
        """Hold every connected block with less than ``need`` seconds left."""
        if not interchange_alive(self.executor):
            return
        self.update(now)
        managers = self._command("MANAGERS")
        for manager in managers:
            block = manager["block_id"]
            if not manager["active"] or self.remaining(block, now) >= need:
                continue
            self._command(["HOLD_MANAGER", manager["manager"]])
            if block not in self.held:
                self.held.add(block)
                _LOG.info(
                    "executor %s: block %s has %.0f s of walltime left, less than the %.0f s a waiting job "
                    "needs: it takes no new job",
                    self.executor.label,
                    block,
                    max(0.0, self.remaining(block, now)),
                    need,
                )

    def release_held(self, waiting: bool, need: float, now: float) -> None:
        """Cancel held blocks that run nothing; start a block if ``waiting`` jobs have none to take them."""
        if not interchange_alive(self.executor):
            return
        executor = self.executor
        if self.held:
            busy = {manager["block_id"] for manager in self._command("MANAGERS") if manager["tasks"]}
            for block in sorted(self.held - busy):
                self.held.discard(block)
                job_id = executor.blocks_to_job_id.get(block)
                if job_id is not None:
                    _LOG.info(
                        "executor %s: block %s runs nothing and takes no new job: cancelled",
                        executor.label,
                        block,
                    )
                    executor.provider.cancel([job_id])
                    # Parsl counts it scaled in, not failed.
                    mark_scaled_in(executor, block, "released: it ran nothing")
        if not waiting:
            return
        active = self._active_blocks()
        usable = [b for b in active if b not in self.held and self.remaining(b, now) >= need]
        if not usable and len(active) < executor.provider.max_blocks:
            _LOG.info("executor %s: no block has %.0f s of walltime left: one more", executor.label, need)
            executor.scale_out_facade(1)
            self.update(now)

    def release_idle(self, max_idle: float) -> None:
        """Hold and cancel blocks idle ``max_idle`` s while others run and none waits (else: Parsl's scaling)."""
        if not interchange_alive(self.executor):
            return
        executor = self.executor
        managers = self._command("MANAGERS")
        running = sum(manager["tasks"] for manager in managers)
        if running == 0 or outstanding_tasks(executor) > running:
            return
        busy = {m["block_id"] for m in managers if m["tasks"] or m["idle_duration"] < max_idle}
        idle = {m["block_id"] for m in managers} - busy - self.held
        active = self._active_blocks()
        spare = len(active) - (executor.provider.min_blocks or 0)
        for block in sorted(b for b in active if b in idle)[: max(spare, 0)]:
            for manager in managers:
                if manager["block_id"] == block:
                    self._command(["HOLD_MANAGER", manager["manager"]])
            self.held.add(block)
            _LOG.info(
                "executor %s: block %s ran nothing for %.0f s while its other blocks finish: released",
                executor.label,
                block,
                max_idle,
            )
        # A task sent to a pool between the two questions keeps its block held until it ends.
        self.release_held(False, 0.0, time.monotonic())


class BlockWatch:
    """Keep jobs off blocks whose walltime ends before theirs could, and release idle blocks.

    Parameters
    ----------
    executors : `~collections.abc.Mapping` [`str`, `object`]
        The run's executors by label.
    running_dir : `str`
        Where a running attempt has its file ``<job>.<attempt>``.
    max_idle : `float`, optional
        The site key ``maxIdleTime``.
    """

    def __init__(self, executors: Mapping[str, Any], running_dir: str, max_idle: float = _MAX_IDLE_TIME):
        self.clocks = {
            label: _Clock(executor, _block_walltime(executor))
            for label, executor in executors.items()
            if type(executor).__name__ == "HighThroughputExecutor" and getattr(executor, "provider", None)
        }
        self.max_idle = max_idle
        self.running_dir = running_dir
        self.margin = _WALLTIME_MARGIN
        self.waiting: dict[Any, tuple[str, float, Any]] = {}
        """Attempts submitted with a walltime, not known to run: key -> (label, seconds, future)."""
        self._next = 0.0

    def before_submit(self, label: str, seconds: float | None) -> bool:
        """Hold the blocks of ``label`` too short for a job of ``seconds``.

        Parameters
        ----------
        label : `str`
            Label of the executor.
        seconds : `float` or `None`
            The job's walltime in seconds.

        Returns
        -------
        watch : `bool`
            Whether to put the attempt in `waiting` once submitted.
        """
        clock = self.clocks.get(label)
        if clock is None or clock.walltime is None or not seconds:
            return False
        need = seconds + self.margin
        if need > clock.walltime:
            if not clock.warned:
                clock.warned = True
                _LOG.warning(
                    "executor %s: a job asks for %.0f s of walltime, more than its blocks' %.0f s less "
                    "%.0f s: such jobs are sent anyway and may be cut off",
                    label,
                    seconds,
                    clock.walltime,
                    self.margin,
                )
            return False
        self._guarded(clock.drain_short, need, time.monotonic())
        return True

    def tick(self) -> None:
        """Hold, cancel, start and release blocks as needed (at most once a second)."""
        now = time.monotonic()
        if not self.clocks or now < self._next:
            return
        self._next = now + _PERIOD
        if self.waiting:
            try:
                started = set(os.listdir(self.running_dir))
            except OSError:
                started = set()
            for key, (_, _, future) in list(self.waiting.items()):
                if future.done() or f"{key[0]}.{key[1]}" in started:
                    del self.waiting[key]
        needs: dict[str, float] = {}
        for label, seconds, _ in self.waiting.values():
            needs[label] = max(needs.get(label, 0.0), seconds + self.margin)
        for label, clock in self.clocks.items():
            need = needs.get(label)
            if need is not None:
                self._guarded(clock.drain_short, need, now)
            if need is not None or clock.held:
                self._guarded(clock.release_held, need is not None, need or 0.0, now)
            self._guarded(clock.release_idle, self.max_idle)

    def _guarded(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001
            # The interchange went away meanwhile (`losses` notices) or did not answer in time.
            _LOG.warning("block watch: %r", exc)
