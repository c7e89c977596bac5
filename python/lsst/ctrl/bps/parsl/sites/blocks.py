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

"""Blocks and walltime: which batch blocks may take a job, and when they go.

HTEX sends a task to any worker pool with a free worker; it cannot be told
to use one block and not another. What the plugin can do is keep tasks away
from a block: a worker pool put *on hold* takes no new task (its running
tasks go on). `BlockWatch` uses that for jobs with a ``requestWalltime``
on an executor whose blocks have a known walltime (a provider ``walltime``):

- a block's remaining walltime is counted from when the plugin first saw it
  requested, which is never after the batch system started it, so the true
  remaining time is never shorter than the estimate;
- before a job asking for ``R`` seconds is submitted, and as long as such a
  job waits in the interchange, every block of its executor with less than
  ``R`` + `WALLTIME_MARGIN` left is put on hold;
- a held block is cancelled as soon as it runs no task, and when no block
  is left that could take a waiting job, one more is requested (within the
  provider's ``max_blocks``).

Limits: the hold is per block, not per job, so while a long job waits,
short jobs stay off the held blocks too; a job whose ``R`` + margin is
longer than the block walltime can never be placed safely: it is sent
anyway, with a warning; other executors (local pool, thread pools, Work
Queue) are not watched.

Blocks with no work left go after the site key ``maxIdleTime`` (default
`MAX_IDLE_TIME`): once an executor has no task at all (e.g. while only the
final job runs, on another executor) Parsl's own scaling (`scaling_strategy`:
``simple``) releases its blocks; while some of its tasks still run and none
waits in the interchange, `BlockWatch` puts every block whose worker pools
have all been idle that long on hold and cancels it (never below the
provider's ``min_blocks``), so the tail of a run keeps only the blocks that
run its last jobs. Parsl's ``htex_auto_scale``, which also releases single
idle blocks, is not used: in Parsl 2026.10.26 its scale-in asked for 0 blocks
cancels every idle block, also blocks still starting, so blocks are started
and cancelled in a loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..configuration import default_of
from ..parslcompat import interchange_alive, interchange_command, mark_scaled_in, outstanding_tasks

__all__ = ("MAX_IDLE_TIME", "WALLTIME_MARGIN", "BlockWatch", "scaling_strategy")

_LOG = logging.getLogger(__name__)

MAX_IDLE_TIME: float = default_of("maxIdleTime")
"""Default of the site key ``maxIdleTime``: seconds a block with no task
stays before Parsl releases it."""

WALLTIME_MARGIN = 30.0
"""Seconds a block must have left beyond a job's ``requestWalltime`` to
take it (the job's start-up, and the watch's own period)."""

_COMMAND_TIMEOUT = 30.0
_PERIOD = 1.0


def scaling_strategy(executors: Sequence[Any]) -> str:
    """Parsl's scaling strategy for ``executors``: ``simple`` (an executor's
    blocks go once it has had no task for ``maxIdleTime``; see the module's
    docstring for why not ``htex_auto_scale``).

    Parameters
    ----------
    executors : `~collections.abc.Sequence`
        The site's executors.

    Returns
    -------
    strategy : `str`
        Always ``simple``.
    """
    return "simple"


def _block_walltime(executor: Any) -> float | None:
    """Walltime (s) of the blocks of an HTEX with a provider, if known."""
    if type(executor).__name__ != "HighThroughputExecutor":
        return None
    value = getattr(getattr(executor, "provider", None), "walltime", None)
    if not value:
        return None
    from ..configuration import ConfigurationError
    from ..job import parse_walltime

    try:
        return float(parse_walltime(value, "walltime"))
    except (ConfigurationError, TypeError, ValueError):
        return None


class _Clock:
    """The blocks of one executor and their remaining walltime (infinite
    where the blocks' walltime is not known).
    """

    def __init__(self, executor: Any, walltime: float | None):
        self.executor = executor
        self.walltime = walltime
        self.seen: dict[str, float] = {}
        self.held: set[str] = set()
        self.warned = False

    def _alive(self) -> bool:
        return interchange_alive(self.executor)

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
        if not self._alive():
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
        """Cancel held blocks that run nothing; start a block if ``waiting``
        jobs have none that could take them.
        """
        if not self._alive():
            return
        executor = self.executor
        if self.held:
            tasks: dict[str, int] = {}
            for manager in self._command("MANAGERS"):
                tasks[manager["block_id"]] = tasks.get(manager["block_id"], 0) + manager["tasks"]
            for block in sorted(self.held):
                if tasks.get(block, 0):
                    continue
                self.held.discard(block)
                self._cancel(block)
        if not waiting:
            return
        active = self._active_blocks()
        usable = [b for b in active if b not in self.held and self.remaining(b, now) >= need]
        if not usable and len(active) < executor.provider.max_blocks:
            _LOG.info("executor %s: no block has %.0f s of walltime left: one more", executor.label, need)
            executor.scale_out_facade(1)
            self.update(now)

    def _cancel(self, block: str) -> None:
        """Cancel a block that runs nothing; Parsl counts it scaled in, not failed."""
        executor = self.executor
        job_id = executor.blocks_to_job_id.get(block)
        if job_id is None:
            return
        _LOG.info("executor %s: block %s runs nothing and takes no new job: cancelled", executor.label, block)
        executor.provider.cancel([job_id])
        mark_scaled_in(executor, block, "released: it ran nothing")

    def release_idle(self, max_idle: float) -> None:
        """Hold and cancel the blocks whose worker pools have all run
        nothing for ``max_idle`` seconds, while other blocks still run tasks
        and none waits in the interchange (with no task at all, Parsl's own
        scaling releases the blocks).
        """
        if not self._alive():
            return
        executor = self.executor
        managers = self._command("MANAGERS")
        running = sum(manager["tasks"] for manager in managers)
        if running == 0 or outstanding_tasks(executor) > running:
            return
        idle: dict[str, bool] = {}
        for manager in managers:
            block = manager["block_id"]
            quiet = manager["tasks"] == 0 and manager["idle_duration"] >= max_idle
            idle[block] = idle.get(block, True) and quiet
        active = self._active_blocks()
        spare = len(active) - (executor.provider.min_blocks or 0)
        for block in sorted(b for b in active if idle.get(b) and b not in self.held)[: max(spare, 0)]:
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
    """Keep jobs off blocks whose walltime ends before theirs could (see
    the module's docstring).

    Parameters
    ----------
    executors : `~collections.abc.Mapping` [`str`, `object`]
        The run's executors by label.
    running_dir : `str`
        Where a running attempt ``(job, attempt)`` has its file
        ``<job>.<attempt>`` (`lsst_ctrl_bps_parsl_worker.job.run_job`).
    margin : `float`
        `WALLTIME_MARGIN`.
    max_idle : `float`
        Seconds a block runs nothing before it is released while the
        executor's other blocks work (the site key ``maxIdleTime``).
    """

    def __init__(
        self,
        executors: Mapping[str, Any],
        running_dir: str,
        margin: float = WALLTIME_MARGIN,
        max_idle: float = MAX_IDLE_TIME,
    ):
        self.clocks: dict[str, _Clock] = {}
        for label, executor in executors.items():
            if type(executor).__name__ == "HighThroughputExecutor" and getattr(executor, "provider", None):
                self.clocks[label] = _Clock(executor, _block_walltime(executor))
        self.max_idle = max_idle
        self.running_dir = running_dir
        self.margin = margin
        self.waiting: dict[Any, tuple[str, float, Any]] = {}
        """Attempts submitted with a walltime, not known to run: key -> (label, seconds, future)."""
        self._next = 0.0

    def before_submit(self, label: str, seconds: float | None) -> bool:
        """Hold the blocks of ``label`` too short for a job of ``seconds``;
        whether the attempt is to be watched (`track`).

        Parameters
        ----------
        label : `str`
            Label of the executor.
        seconds : `float` or `None`
            The job's walltime in seconds.

        Returns
        -------
        watch : `bool`
            `True` if the attempt is to be tracked.
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

    def track(self, key: Any, label: str, seconds: float, future: Any) -> None:
        """Watch a submitted attempt until it runs or ends.

        Parameters
        ----------
        key : `~typing.Any`
            The attempt's key in the driver.
        label : `str`
            Label of the executor.
        seconds : `float`
            The job's walltime in seconds.
        future : `~typing.Any`
            The attempt's future.
        """
        self.waiting[key] = (label, seconds, future)

    def tick(self) -> None:
        """Hold blocks that became too short for the waiting attempts, cancel
        held blocks that run nothing, start a block where none fits, release
        blocks idle while others work (at most once a second).
        """
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
