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

"""Progress lines a driver session prints while it runs."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence

from ..oneline import shown
from ..records import JobKind, JobRow, JobState

__all__ = ("ProgressLines", "count_states")


def count_states(states: Sequence[int]) -> dict[int, int]:
    """Jobs per state (`JobState` values).

    Parameters
    ----------
    states : `~collections.abc.Sequence` [`int`]
        State of each job.

    Returns
    -------
    counts : `dict` [`int`, `int`]
        Number of jobs by state.
    """
    return dict(Counter(states))


class ProgressLines:
    """Print a run's job counts every ``interval`` seconds.

    Parameters
    ----------
    run_id : `str`
        Run the lines name.
    interval : `float`
        Seconds between lines (0: none, except forced ones).
    by_label : `bool`
        Follow each line with one line per label.
    """

    def __init__(self, run_id: str, interval: float, by_label: bool):
        self.run_id = run_id
        self.interval = interval
        self.by_label = by_label
        self.last = time.monotonic()

    def restart(self) -> None:
        """Count the next interval from now."""
        self.last = time.monotonic()

    def print(self, rows: Sequence[JobRow], states: Sequence[int], force: bool = False) -> None:
        """Print the counts (as ``bps report``) once per interval (0: never), or if ``force``.

        Parameters
        ----------
        rows : `~collections.abc.Sequence` [`JobRow`]
            The jobs, by id.
        states : `~collections.abc.Sequence` [`int`]
            State of each job, by id.
        force : `bool`, optional
            Print now whatever the interval.
        """
        if not self.interval:
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        counts = count_states(states)
        print(
            f"bps-parsl {self.run_id}: {counts.get(JobState.SUCCEEDED, 0)} succeeded, "
            f"{counts.get(JobState.RUNNING, 0)} running, {counts.get(JobState.PENDING, 0)} pending, "
            f"{counts.get(JobState.FAILED, 0)} failed, {counts.get(JobState.PRUNED, 0)} pruned, "
            f"{counts.get(JobState.DELETED, 0)} deleted, of {len(states)}",
            file=sys.stdout,
            flush=True,
        )
        if self.by_label:
            by_label: dict[str, dict[int, int]] = {}
            for row, s in zip(rows, states, strict=True):
                if row.kind == JobKind.PAYLOAD:
                    label_counts = by_label.setdefault(row.label, {})
                    label_counts[s] = label_counts.get(s, 0) + 1
            for label, label_counts in by_label.items():
                print(
                    f"  {shown(label)}: {label_counts.get(JobState.SUCCEEDED, 0)} succeeded, "
                    f"{label_counts.get(JobState.RUNNING, 0)} running, "
                    f"{label_counts.get(JobState.PENDING, 0)} pending, "
                    f"{label_counts.get(JobState.FAILED, 0)} failed, "
                    f"{label_counts.get(JobState.PRUNED, 0)} pruned, of {sum(label_counts.values())}",
                    flush=True,
                )
