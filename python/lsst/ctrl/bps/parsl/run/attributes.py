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

"""A job's BPS attributes at run time: retries, memory, executor, concurrency limits, abort, walltime (doc/configuration.md)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from ..job import ParslJob, parse_walltime
from ..prepare.jobattrs import parse_concurrency_limit
from ..records import JobRow
from ..site import SiteConfig

__all__ = ("ConcurrencyGate", "ExecutorChoiceError", "RetryPolicy", "abort_status", "walltime_seconds")


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
