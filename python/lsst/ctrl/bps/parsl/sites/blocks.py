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

"""Blocks and walltime: which batch blocks may take a job, and when they go
(doc/reliability.md, W1 and W2: a block's worker pools are held, then the block cancelled).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ..configuration import ConfigurationError, default_of
from ..job import parse_walltime
from ..parslcompat import interchange_alive, interchange_command, mark_scaled_in, outstanding_tasks

__all__ = ("BlockWatch",)

_LOG = logging.getLogger(__name__)

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
        """Cancel held blocks that run nothing; start a block if ``waiting``
        jobs have none that could take them.
        """
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
        """Hold and cancel the blocks idle for ``max_idle`` seconds while
        others still run tasks and none waits (with no task at all, Parsl's
        own scaling releases the blocks).
        """
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
    margin : `float`
        Seconds a block must have left beyond a job's walltime.
    max_idle : `float`
        The site key ``maxIdleTime``.
    """

    def __init__(
        self,
        executors: Mapping[str, Any],
        running_dir: str,
        margin: float = _WALLTIME_MARGIN,
        max_idle: float = _MAX_IDLE_TIME,
    ):
        self.clocks = {
            label: _Clock(executor, _block_walltime(executor))
            for label, executor in executors.items()
            if type(executor).__name__ == "HighThroughputExecutor" and getattr(executor, "provider", None)
        }
        self.max_idle = max_idle
        self.running_dir = running_dir
        self.margin = margin
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
