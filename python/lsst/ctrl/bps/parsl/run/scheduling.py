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


"""What runs next, where, and again: the walk over a run's DAG (iterative, so any depth works; final
nodes last), the order ready nodes go out, and the jobs' BPS attributes at run time: retries, memory,
executor, concurrency limits, abort, walltime (doc/design.md, doc/configuration.md).
"""

from __future__ import annotations

import heapq
import itertools
import json
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from ..configuration import ConfigurationError
from ..job import ParslJob, parse_walltime, priority_number
from ..prepare.jobattrs import parse_concurrency_limit
from ..records import ENDED, JobKind, JobRow, JobState
from ..site import SiteConfig

__all__ = (
    "ConcurrencyGate",
    "ExecutorChoiceError",
    "GraphWalk",
    "ReadyQueue",
    "RetryPolicy",
    "abort_status",
    "critical_paths",
    "walltime_seconds",
)

_FAILED = frozenset({JobState.FAILED, JobState.PRUNED, JobState.DELETED})


def _job_minutes(row: JobRow) -> float:
    """A node's expected minutes: its ``requestWalltime``, 1 if unset or not valid, 0 if it runs no process."""
    if row.kind != JobKind.PAYLOAD:
        return 0.0
    try:
        seconds = walltime_seconds(row.request_walltime)
    except ConfigurationError:
        return 1.0
    return seconds / 60.0 if seconds and 0 < seconds < float("inf") else 1.0


def critical_paths(rows: Sequence[JobRow], children: Sequence[Sequence[int]]) -> array:
    """Minutes of the longest path of work from each node to the end, its own included.

    Parameters
    ----------
    rows, children : `~collections.abc.Sequence`
        The nodes (`JobRow`), by id in topological order; child ids of each node.

    Returns
    -------
    paths : `array.array`
        Minutes of work from each node to the end, by id.
    """
    path = array("d", bytes(8 * len(rows)))
    for i in range(len(rows) - 1, -1, -1):
        path[i] = _job_minutes(rows[i]) + max((path[c] for c in children[i]), default=0.0)
    return path


class ReadyQueue:
    """Ready nodes, by priority, then longest path below, then first come (a deque's interface).

    Parameters
    ----------
    rows, children : `~collections.abc.Sequence`
        The nodes (`JobRow`), by id; child ids of each node.
    fifo : `bool`
        Hand nodes out first come, first served.
    """

    def __init__(self, rows: Sequence[JobRow], children: Sequence[Sequence[int]], fifo: bool = False):
        self._heap: list[tuple[float, float, int, int]] = []
        self._count = itertools.count()
        # Negated, as the heap pops the smallest; arrays: 8 bytes a job.
        if fifo:
            self._priority = self._path = array("d", bytes(8 * len(rows)))
        else:
            self._priority = array("d", (-(priority_number(row.priority) or 0) for row in rows))
            self._path = array("d", (-p for p in critical_paths(rows, children)))

    def append(self, i: int) -> None:
        """Add a ready node.

        Parameters
        ----------
        i : `int`
            Node id.
        """
        heapq.heappush(self._heap, (self._priority[i], self._path[i], next(self._count), i))

    def popleft(self) -> int:
        """Remove and return the node to hand out next.

        Returns
        -------
        i : `int`
            Node id.
        """
        return heapq.heappop(self._heap)[3]

    def clear(self) -> None:
        """Forget every node."""
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)


class GraphWalk:
    """The DAG of one run and the state of each node.

    Parameters
    ----------
    rows, edges : `~collections.abc.Sequence` [`JobRow`], `~collections.abc.Iterable` [`tuple`]
        The nodes, by id; (parent, child) id pairs.
    on_pruned : callable
        Called with the id of each node the walk prunes.
    fifo : `bool`
        Hand ready nodes out first come, first served (`ReadyQueue`).
    """

    def __init__(
        self,
        rows: Sequence[JobRow],
        edges: Iterable[tuple[int, int]],
        on_pruned: Callable[[int], None],
        fifo: bool = False,
    ):
        n = len(rows)
        self.rows = rows
        self.children: list[list[int]] = [[] for _ in range(n)]
        self.parents: list[list[int]] = [[] for _ in range(n)]
        for parent, child in edges:
            self.children[parent].append(child)
            self.parents[child].append(parent)
        self.state: list[JobState] = [JobState.UNREADY] * n
        self.ready = ReadyQueue(rows, self.children, fifo)
        self.remaining: dict[int, int] = {}
        """Unfinished blocking parents of each waiting node."""
        self.futures: dict[int, Any] = {}
        """The future of each node's last attempt, while a child may still need it."""
        self._waiting_children: dict[int, int] = {}
        self._on_pruned = on_pruned

    def _tolerant(self, i: int) -> bool:
        return self.rows[i].kind == JobKind.TOLERANT_JOIN

    def _blocking_parents(self, i: int) -> int:
        if self._tolerant(i):
            return sum(1 for p in self.parents[i] if self.state[p] not in ENDED)
        return sum(1 for p in self.parents[i] if self.state[p] != JobState.SUCCEEDED)

    def start_phase(self, final: bool) -> None:
        """Find the ready, waiting and pruned nodes of a phase.

        Parameters
        ----------
        final : `bool`
            `True` for the phase of the final nodes.
        """
        self.ready.clear()
        self.remaining = {}
        for i, row in enumerate(self.rows):
            if bool(row.final) != final or self.state[i] in ENDED:
                continue
            if not self._tolerant(i) and any(self.state[p] in _FAILED for p in self.parents[i]):
                self._prune(i)
            elif count := self._blocking_parents(i):
                self.remaining[i] = count
            else:
                self.ready.append(i)

    def finish(self, i: int, state: JobState) -> None:
        """Mark a node ended and release or prune its children.

        Parameters
        ----------
        i, state : `int`, `JobState`
            Node id; the state it ended in.
        """
        self.state[i] = state
        for c in self.children[i]:
            if self.state[c] in ENDED:
                continue
            if state != JobState.SUCCEEDED and not self._tolerant(c):
                self._prune(c)
            else:
                self._parent_ended(c)
        self._release_parent_futures(i)

    def _parent_ended(self, c: int) -> None:
        left = self.remaining.get(c, 0) - 1
        if left <= 0:
            self.remaining.pop(c, None)
            self.ready.append(c)
        else:
            self.remaining[c] = left

    def _prune(self, start: int) -> None:
        """Prune a node and its children, transitively (up to a non-blocking group's join)."""
        stack = [start]
        while stack:
            i = stack.pop()
            if self.state[i] in ENDED:
                continue
            self.state[i] = JobState.PRUNED
            self.remaining.pop(i, None)
            self._on_pruned(i)
            self._release_parent_futures(i)
            for c in self.children[i]:
                if not self._tolerant(c):
                    stack.append(c)
                elif self.state[c] not in ENDED:
                    self._parent_ended(c)

    def parent_futures(self, i: int) -> list[Any]:
        """The parents' futures of a node.

        Parameters
        ----------
        i : `int`
            Node id.

        Returns
        -------
        futures : `list`
            Those kept.
        """
        return [self.futures[p] for p in self.parents[i] if p in self.futures]

    def keep_future(self, i: int, future: Any) -> None:
        """Keep the future of a node's attempt for its children.

        Parameters
        ----------
        i, future : `int`, `~typing.Any`
            Node id; the future of its attempt.
        """
        if self.children[i]:
            self._waiting_children.setdefault(i, len(self.children[i]))
            self.futures[i] = future

    def _release_parent_futures(self, i: int) -> None:
        """Node ``i`` ended: drop its parents' futures no other child needs."""
        for p in self.parents[i]:
            left = self._waiting_children.get(p)
            if left is not None:
                if left <= 1:
                    del self._waiting_children[p]
                    self.futures.pop(p, None)
                else:
                    self._waiting_children[p] = left - 1


class ExecutorChoiceError(RuntimeError):
    """`SiteConfig.select_executor` failed or named an unknown executor."""


class RetryPolicy:
    """The plugin's retries (Parsl's own are 0; doc/design.md) and each attempt's memory and executor.

    Parameters
    ----------
    rows : `~collections.abc.Sequence` [`JobRow`]
        The run's jobs, by id.
    site, submit_path : `SiteConfig`, `str`
        The site that chooses executors; submit directory (for the `ParslJob` views).
    """

    def __init__(self, rows: Sequence[JobRow], site: SiteConfig, submit_path: str):
        self.rows = rows
        self.site = site
        self.submit_path = submit_path
        # Parsed once per distinct text: the jobs of a label share theirs.
        texts = {row.retry_unless_exit for row in rows}
        parsed = {text: frozenset(json.loads(text or "[]")) for text in texts}
        self.retry_codes: list[frozenset[int]] = [parsed[row.retry_unless_exit] for row in rows]

    def next_attempt(
        self, job: int, attempt: int, tries: int, labels: Collection[str]
    ) -> tuple[ParslJob, str]:
        """The resources and executor of a job's next attempt.

        Parameters
        ----------
        job, attempt, tries : `int`
            Job id, attempt number, attempts of the job in this session so far.
        labels : `~collections.abc.Collection` [`str`]
            Labels of the executors in use.

        Returns
        -------
        pjob, label : `ParslJob`, `str`
            The attempt's job view (memory scaled by ``memoryMultiplier`` per try); its executor
            (the one its ``computeSite`` or ``queue`` names, else ``select_executor``'s).

        Raises
        ------
        ExecutorChoiceError
            If ``select_executor`` fails or names none of ``labels``.
        """
        row = self.rows[job]
        memory = row.request_memory
        if memory is not None and row.memory_multiplier and tries:
            memory = int(memory * row.memory_multiplier**tries)
            if row.request_memory_max:
                memory = min(memory, row.request_memory_max)
        pjob = ParslJob.from_row(row, attempt, memory, self.site.config, self.submit_path)
        site = type(self.site).__name__
        try:
            label = self.site.select_executor(pjob)
        except Exception as exc:
            raise ExecutorChoiceError(f"{site}.select_executor failed for this job: {exc}") from None
        if label not in labels:
            raise ExecutorChoiceError(
                f"{site}.select_executor failed for this job: it returned '{label}', which is not one of "
                f"the executors {sorted(labels)}"
            )
        routed = [value for value in (row.compute_site, row.queue) if value and value in labels]
        return pjob, routed[0] if routed else label

    def retry(self, job: int, exit_code: int, timed_out: bool, tries: int, stopping: bool) -> bool:
        """Whether a failed attempt runs again.

        Parameters
        ----------
        job, exit_code, tries : `int`
            Job id; exit status of the failed attempt; attempts of the job in this session, it included.
        timed_out, stopping : `bool`
            It was killed for its walltime; the run is stopping (neither is retried).

        Returns
        -------
        retry : `bool`
            `True` if the job runs again.
        """
        if stopping or timed_out or exit_code in self.retry_codes[job]:
            return False
        return tries <= (self.rows[job].retries or 0)


def abort_status(row: JobRow, exit_code: int, signal: int | None) -> int | None:
    """The run's status if an attempt's exit aborts the run, else `None`.

    Parameters
    ----------
    row : `JobRow`
        The job.
    exit_code, signal : `int`, `int` or `None`
        The attempt's exit status; the signal that ended it, if any.

    Returns
    -------
    status : `int` or `None`
        The run's exit status (``abortReturnValue``, else the exit code), or `None`.
    """
    if row.abort_on_value is None or signal is not None or exit_code != row.abort_on_value:
        return None
    return exit_code if row.abort_return_value is None else row.abort_return_value


class ConcurrencyGate:
    """The units of each concurrency limit held by running jobs, and the ready jobs waiting for some.

    Parameters
    ----------
    rows, limits : `~collections.abc.Sequence` [`JobRow`], `dict` [`str`, `float`]
        The run's jobs, by id; units of each limit (`concurrency_limits`).
    """

    def __init__(self, rows: Sequence[JobRow], limits: dict[str, float]):
        self.limits = limits
        self.held: dict[str, float] = dict.fromkeys(limits, 0.0)
        parsed: dict[str, tuple[tuple[str, float], ...]] = {}
        self.needs: dict[int, tuple[tuple[str, float], ...]] = {}
        for row in rows:
            if text := row.concurrency_limit:
                if text not in parsed:
                    parsed[text] = parse_concurrency_limit(text, f"job '{row.name}'")
                self.needs[row.id] = parsed[text]
        self.waiting: list[int] = []
        """Ready jobs that found a limit full, in the order they came."""
        self._holding: set[int] = set()

    def acquire(self, job: int) -> bool:
        """Take a job's units; `False` (and the job waits) if a limit is full.

        Parameters
        ----------
        job : `int`
            Job id.

        Returns
        -------
        acquired : `bool`
            `True` if the job may run now.
        """
        needs = self.needs.get(job)
        if not needs:
            return True
        for name, units in needs:
            if self.held.get(name, 0.0) + units > self.limits.get(name, float("inf")) + 1e-9:
                self.waiting.append(job)
                return False
        for name, units in needs:
            self.held[name] = self.held.get(name, 0.0) + units
        self._holding.add(job)
        return True

    def release(self, job: int) -> list[int]:
        """Give back a job's units (once per acquire).

        Parameters
        ----------
        job : `int`
            Job id.

        Returns
        -------
        woken : `list` [`int`]
            Ids of the jobs that waited for units (the caller makes them ready).
        """
        if job not in self._holding:
            return []
        self._holding.remove(job)
        for name, units in self.needs[job]:
            self.held[name] -= units
        woken, self.waiting = self.waiting, []
        return woken


def walltime_seconds(value: str | None) -> float | None:
    """A job's ``requestWalltime`` in seconds (a bare number is minutes).

    Parameters
    ----------
    value : `str` or `None`
        The job's ``requestWalltime``.

    Returns
    -------
    seconds : `float` or `None`
        The walltime in seconds.
    """
    if not value:
        return None
    try:
        return float(value) * 60.0
    except ValueError:
        return float(parse_walltime(value, "requestWalltime"))
