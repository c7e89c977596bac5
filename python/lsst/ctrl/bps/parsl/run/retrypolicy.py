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

"""The plugin's retry policy (Parsl's own retries are 0; doc/design.md)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import NamedTuple

from ..job import ParslJob
from ..records import JobRow
from ..site import SiteConfig

__all__ = ("ExecutorChoiceError", "NextAttempt", "RetryPolicy")


class ExecutorChoiceError(RuntimeError):
    """`SiteConfig.select_executor` failed or named an unknown executor."""


class NextAttempt(NamedTuple):
    """The next attempt of a job (as the site sees it) and its executor's label."""

    job: ParslJob
    label: str

    @property
    def memory(self) -> int | None:
        """Memory (MB) the attempt asks for."""
        return self.job.request_memory


class RetryPolicy:
    """The retry policy of the jobs of one run.

    Parameters
    ----------
    rows : `~collections.abc.Sequence` [`JobRow`]
        The run's jobs, by id.
    site : `SiteConfig`
        The site that chooses executors.
    submit_path : `str`
        Submit directory (for the `ParslJob` views).
    """

    def __init__(self, rows: Sequence[JobRow], site: SiteConfig, submit_path: str):
        self.rows = rows
        self.site = site
        self.submit_path = submit_path
        parsed: dict[str | None, frozenset[int]] = {None: frozenset(), "": frozenset()}

        def codes(text: str | None) -> frozenset[int]:
            found = parsed.get(text)
            if found is None:
                found = parsed[text] = frozenset(json.loads(text or "[]"))
            return found

        # Parsed once per distinct text: the jobs of a label share theirs.
        self.retry_codes: list[frozenset[int]] = [codes(r.retry_unless_exit) for r in rows]

    def _memory_for(self, job: int, tries: int) -> int | None:
        """Memory (MB) of a job's attempt after ``tries`` attempts in this session."""
        row = self.rows[job]
        memory = row.request_memory
        if memory is None or not row.memory_multiplier or tries == 0:
            return memory
        scaled = int(memory * row.memory_multiplier**tries)
        return min(scaled, row.request_memory_max) if row.request_memory_max else scaled

    def next_attempt(self, job: int, attempt: int, tries: int, labels: Collection[str]) -> NextAttempt:
        """The resources and executor of a job's next attempt.

        Parameters
        ----------
        job, attempt, tries : `int`
            Job id, attempt number, attempts of the job in this session so far.
        labels : `~collections.abc.Collection` [`str`]
            Labels of the executors in use.

        Returns
        -------
        next : `NextAttempt`
            The attempt's job view and executor label.

        Raises
        ------
        ExecutorChoiceError
            If ``select_executor`` fails or names none of ``labels``.
        """
        row = self.rows[job]
        pjob = ParslJob.from_row(
            row, attempt, self._memory_for(job, tries), self.site.config, self.submit_path
        )
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
        return NextAttempt(pjob, label)

    def retry(self, job: int, exit_code: int, timed_out: bool, tries: int, stopping: bool) -> bool:
        """Whether a failed attempt runs again.

        Parameters
        ----------
        job, exit_code : `int`
            Job id; exit status of the failed attempt.
        timed_out : `bool`
            Whether it was killed for its walltime (never retried).
        tries : `int`
            Attempts of the job in this session, the failed one included.
        stopping : `bool`
            Whether the run is stopping (nothing is retried).

        Returns
        -------
        retry : `bool`
            `True` if the job runs again.
        """
        if stopping or timed_out or exit_code in self.retry_codes[job]:
            return False
        return tries <= (self.rows[job].retries or 0)
