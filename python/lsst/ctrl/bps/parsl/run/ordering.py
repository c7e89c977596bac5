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

"""The order in which ready jobs go out, and how many are handed to Parsl at once (doc/design.md)."""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..configuration import ConfigurationError
from ..job import priority_number
from ..records import JobKind, JobRow

if TYPE_CHECKING:
    from ..site import SiteConfig

__all__ = ("ReadyQueue", "critical_paths", "in_flight_limit")

_IN_FLIGHT_MARGIN = 4
"""Jobs handed to an executor beyond its slots, so a slot that frees up is filled at once."""


def _job_minutes(row: JobRow) -> float:
    """A node's expected minutes: its ``requestWalltime``, 1 if unset, 0 if it runs no process."""
    if row.kind != JobKind.PAYLOAD:
        return 0.0
    value = row.request_walltime
    if not value:
        return 1.0
    try:
        minutes = float(value)
    except ValueError:
        from ..job import parse_walltime

        try:
            minutes = parse_walltime(value, "requestWalltime") / 60.0
        except ConfigurationError:
            return 1.0
    return minutes if minutes > 0 and minutes != float("inf") else 1.0


def critical_paths(rows: Sequence[JobRow], children: Sequence[Sequence[int]]) -> array:
    """Minutes of the longest path of work from each node to the end, its own included.

    Parameters
    ----------
    rows : `~collections.abc.Sequence` [`JobRow`]
        The nodes, by id (topological order: one pass from the last).
    children : `~collections.abc.Sequence` [`~collections.abc.Sequence` [`int`]]
        Child ids of each node.

    Returns
    -------
    paths : `array.array`
        Minutes of work from each node to the end, by id.
    """
    n = len(rows)
    path = array("d", bytes(8 * n))
    for i in range(n - 1, -1, -1):
        below = 0.0
        for c in children[i]:
            if path[c] > below:
                below = path[c]
        path[i] = _job_minutes(rows[i]) + below
    return path


class ReadyQueue:
    """Ready nodes, by priority, then longest path below, then first come (a deque's interface).

    Parameters
    ----------
    rows : `~collections.abc.Sequence` [`JobRow`]
        The nodes, by id.
    children : `~collections.abc.Sequence` [`~collections.abc.Sequence` [`int`]]
        Children of each node.
    fifo : `bool`
        Hand nodes out first come, first served.
    """

    def __init__(self, rows: Sequence[JobRow], children: Sequence[Sequence[int]], fifo: bool = False):
        self._heap: list[tuple[float, float, int, int]] = []
        self._count = itertools.count()
        # Negated, as the heap pops the smallest; arrays: 8 bytes a job.
        self._priority: array | None = None
        self._path: array | None = None
        if not fifo:
            self._priority = array("d", (-(priority_number(row.priority) or 0) for row in rows))
            self._path = array("d", (-p for p in critical_paths(rows, children)))

    def append(self, i: int) -> None:
        """Add a ready node.

        Parameters
        ----------
        i : `int`
            Node id.
        """
        seq = next(self._count)
        if self._priority is None or self._path is None:
            heapq.heappush(self._heap, (0, 0, seq, i))
        else:
            heapq.heappush(self._heap, (self._priority[i], self._path[i], seq, i))

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

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[int]:
        return (entry[3] for entry in sorted(self._heap))


def in_flight_limit(site: SiteConfig, labels: Sequence[str]) -> int | None:
    """How many attempts the driver keeps handed to Parsl at once (slots plus `_IN_FLIGHT_MARGIN`).

    Parameters
    ----------
    site : `SiteConfig`
        The run's site.
    labels : `~collections.abc.Sequence` [`str`]
        Labels of the executors in use.

    Returns
    -------
    limit : `int` or `None`
        The number; `None` (no limit) if an executor's slots are not known (batch).
    """
    total = 0
    for label in labels:
        capacity = site.capacity(label)
        if capacity is None:
            return None
        total += capacity.cores + _IN_FLIGHT_MARGIN
    return total or None
