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

"""BPS job attributes that the HTCondor plugin honours, and this plugin too:
``concurrencyLimit``, ``abortOnValue``/``abortReturnValue``, ``computeSite``
and ``queue`` per job.

- **Concurrency limits.** A job's ``concurrencyLimit`` names limits as
  HTCondor does: ``name`` or ``name:units``, comma-separated (units: 1 by
  default; names are case-insensitive). At most ``N`` units of a limit are
  held by running jobs at once, across the run, where ``N`` comes from the
  ``concurrencyLimits`` mapping (``site.<computeSite>`` first, then the top
  level of the submit YAML), with `DEFAULT_LIMITS` underneath. A name
  without an entry is refused at prepare (one line naming the job).
- **Abort.** A job exiting with its ``abortOnValue`` stops the whole run, as
  DAGMan's ``ABORT-DAG-ON``: running jobs are killed, the others are
  recorded DELETED, the final job still runs (as DAGMan's FINAL node), and
  the run ends with status ``abortReturnValue`` (default: that exit value).
- **Compute site and queue.** A job's ``computeSite`` or ``queue`` that
  names one of the site's executor labels sends the job there; any other
  value (other than the run's own ``computeSite``) is ignored with one
  warning per label at prepare.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from lsst.ctrl.bps import BpsConfig

from ..configuration import ConfigurationError, RunSettings
from ..oneline import shown
from ..records import JobRow

__all__ = (
    "DEFAULT_LIMITS",
    "ConcurrencyGate",
    "abort_status",
    "check_job_values",
    "job_attribute_check",
    "concurrency_limits",
    "parse_concurrency_limit",
    "route",
    "walltime_seconds",
)

_LOG = logging.getLogger(__name__)

DEFAULT_LIMITS: dict[str, float] = {"db_limit": 1}
"""Limits known without configuration: ``db_limit``, which ctrl_bps's
defaults give the final job."""


def parse_concurrency_limit(text: str, where: str) -> tuple[tuple[str, float], ...]:
    """``name[:units], ...`` as ``((name, units), ...)``, names in lower case.

    Parameters
    ----------
    text : `str`
        A job's ``concurrencyLimit`` value.
    where : `str`
        The job it belongs to, for the error message.

    Returns
    -------
    limits : `tuple` [`tuple` [`str`, `float`], ...]
        (limit name, units) pairs; units default to 1.

    Raises
    ------
    ConfigurationError
        If an entry is empty or its units are not a number greater than 0.
    """
    entries = []
    for part in text.split(","):
        name, _, units_text = part.strip().partition(":")
        name = name.strip().lower()
        try:
            units = float(units_text) if units_text.strip() else 1.0
        except ValueError:
            units = -1.0
        if not name or not units > 0 or units == float("inf"):
            raise ConfigurationError(
                f"concurrencyLimit {text!r} of {where}: write 'name' or 'name:units' (units > 0), "
                "comma-separated"
            )
        entries.append((name, units))
    return tuple(entries)


def concurrency_limits(config: BpsConfig, compute_site: str | None) -> dict[str, float]:
    """The run's limits: `DEFAULT_LIMITS`, then the top-level
    ``concurrencyLimits``, then ``site.<computeSite>.concurrencyLimits``.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The run's configuration.
    compute_site : `str` or `None`
        The run's ``computeSite``.

    Returns
    -------
    limits : `dict` [`str`, `float`]
        Units each limit allows at once, by lower-case name.

    Raises
    ------
    ConfigurationError
        If a mapping or one of its values is malformed.
    """
    limits = dict(DEFAULT_LIMITS)
    keys = [".concurrencyLimits"]
    if compute_site:
        keys.append(f".site.{compute_site}.concurrencyLimits")
    for key in keys:
        found, table = config.search(key, opt={"default": None})
        if not found or table is None:
            continue
        where = key.lstrip(".")
        if not isinstance(table, BpsConfig | dict):
            raise ConfigurationError(
                f"'{where}' is {table!r}: give a mapping of limit name to a number, e.g. {{db_limit: 1}}"
            )
        for name, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(
                    f"'{where}.{name}' is {value!r}: give the units that may be held at once, a number > 0"
                )
            limits[str(name).lower()] = float(value)
    return limits


_INT = "an integer"
_NUMBER = "a number"
_VALUE_RULES: tuple[tuple[str, str, str, float, float], ...] = (
    # (attribute, BPS key, kind, smallest, largest)
    ("request_cpus", "requestCpus", _INT, 1, 1e6),
    ("request_memory", "requestMemory", _INT, 1, 2**53),
    ("request_memory_max", "requestMemoryMax", _INT, 1, 2**53),
    ("memory_multiplier", "memoryMultiplier", _NUMBER, 1, 1e6),
    ("request_disk", "requestDisk", _INT, 0, 2**53),
    ("number_of_retries", "numberOfRetries", _INT, 0, 1e6),
    ("abort_on_value", "abortOnValue", _INT, 0, 255),
    ("abort_return_value", "abortReturnValue", _INT, 0, 255),
)
"""The numeric attributes of a `GenericWorkflowJob` the plugin reads, with
their type and range (all may be `None`: not set). ``requestMemoryMax`` is
where ctrl_bps puts ``memoryLimit``."""
_TEXT_KEYS = (
    ("concurrency_limit", "concurrencyLimit"),
    ("compute_site", "computeSite"),
    ("queue", "queue"),
)


def _bad_value(job: Any, key: str, value: Any, rule: str) -> ConfigurationError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:60] + f"... ({len(shown)} characters)"
    return ConfigurationError(
        f"{key} of job {str(job.name)[:200]!r} (label {str(job.label)[:200]!r}) is {shown}: it must be {rule}; "
        f"fix '{key}' for that label in the submit YAML"
    )


def check_job_values(job: Any) -> None:
    """Check every value of a `GenericWorkflowJob` that the plugin reads by
    type and range (`_VALUE_RULES`, ``priority``, ``retryUnlessExit``,
    the text keys).

    Parameters
    ----------
    job : `lsst.ctrl.bps.GenericWorkflowJob`
        The job to check.

    Raises
    ------
    ConfigurationError
        If a value has the wrong type or is out of range; one line naming
        the job, its label and the key.
    """
    if not isinstance(job.label, str) or not job.label:
        raise _bad_value(job, "label", job.label, "a non-empty string")
    for attribute, key, kind, low, high in _VALUE_RULES:
        value = getattr(job, attribute)
        if value is None:
            continue
        if kind is _INT:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not low <= value <= high:
            rule = f"{kind} from {low:g} to {high:g}"
            if attribute == "memory_multiplier":
                rule += " (1: no growth between retries)"
            raise _bad_value(job, key, value, rule)
    priority = job.priority
    if priority is not None:
        try:
            ok = not isinstance(priority, bool) and math.isfinite(float(priority))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _bad_value(job, "priority", priority, "a number (higher runs first)")
    codes = job.retry_unless_exit
    if codes is not None:
        listed = codes if isinstance(codes, list | tuple) else [codes]
        if not all(type(c) is int and 0 <= c <= 255 for c in listed):
            raise _bad_value(job, "retryUnlessExit", codes, "an exit status (0 to 255) or a list of them")
    for attribute, key in _TEXT_KEYS:
        value = getattr(job, attribute)
        if value is not None and not isinstance(value, str):
            raise _bad_value(job, key, value, "a string")


def _int_or_none(value: Any, key: str, row: JobRow) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigurationError(
            f"{key} of job '{shown(row.name)}' (label '{shown(row.label)}') is {value!r}: it must be an integer "
            "exit status"
        )


def job_attribute_check(
    config: BpsConfig, compute_site: str | None, labels: Sequence[str]
) -> Callable[[JobRow], None]:
    """A check of each job row's concurrency limits and abort values
    (`ConfigurationError`, one line naming the job) that also warns, once
    per label, of a ``computeSite`` or ``queue`` that nothing here maps.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration (``concurrencyLimits``, ``parslDispatchOrder``).
    compute_site : `str` or `None`
        The run's ``computeSite``.
    labels : `~collections.abc.Sequence` [`str`]
        The site's executor labels.

    Returns
    -------
    check : `~collections.abc.Callable`
        Called with every job row; raises `ConfigurationError` for a bad one.
    """
    RunSettings.read(config)  # the run-wide keys, refused here rather than when the driver starts
    limits = concurrency_limits(config, compute_site)
    checked: set[str] = set()
    warned: set[tuple[str, str]] = set()

    def check(row: JobRow) -> None:
        limit, site, queue = row.concurrency_limit, row.compute_site, row.queue
        if limit is None and row.abort_on_value is None and row.abort_return_value is None and queue is None:
            if site is None or site == compute_site:
                return
        if limit and limit not in checked:
            where = f"job '{shown(row.name)}' (label '{shown(row.label)}')"
            for name, units in parse_concurrency_limit(limit, where):
                if name not in limits:
                    raise ConfigurationError(
                        f"{where} holds concurrency limit '{name}', which no 'concurrencyLimits' entry "
                        f"defines: add e.g. 'concurrencyLimits: {{{name}: 1}}' to the submit YAML"
                    )
                if units > limits[name]:
                    raise ConfigurationError(
                        f"{where} holds {units:g} units of concurrency limit '{name}', which allows "
                        f"{limits[name]:g}: raise 'concurrencyLimits.{name}' or lower the job's units"
                    )
            checked.add(limit)
        _int_or_none(row.abort_on_value, "abortOnValue", row)
        _int_or_none(row.abort_return_value, "abortReturnValue", row)
        for key, value in (("computeSite", site), ("queue", queue)):
            if not value or value in labels or (key == "computeSite" and value == compute_site):
                continue
            if (row.label, key) in warned:
                continue
            warned.add((row.label, key))
            _LOG.warning(
                "jobs of label '%s' ask for %s '%s', which is not an executor of site '%s' (executors: %s): "
                "ignored; the site chooses their executor",
                shown(row.label),
                key,
                shown(value),
                compute_site,
                ", ".join(labels),
            )

    return check


def route(row: JobRow, labels: Sequence[str]) -> str | None:
    """The executor a job's ``computeSite`` or ``queue`` names, if any.

    Parameters
    ----------
    row : `JobRow`
        The job.
    labels : `~collections.abc.Sequence` [`str`]
        Labels of the site's executors.

    Returns
    -------
    label : `str` or `None`
        The executor's label, `None` if neither names one.
    """
    for value in (row.compute_site, row.queue):
        if value and value in labels:
            return value
    return None


def abort_status(row: JobRow, exit_code: int, signal: int | None) -> int | None:
    """The run's status if an attempt's exit aborts the run, else `None`.

    Parameters
    ----------
    row : `JobRow`
        The job.
    exit_code : `int`
        The attempt's exit status.
    signal : `int` or `None`
        The signal that ended it, if any.

    Returns
    -------
    status : `int` or `None`
        The run's exit status (the job's ``abortReturnValue``, else the exit
        code), or `None` if the run goes on.
    """
    if row.abort_on_value is None or signal is not None or exit_code != row.abort_on_value:
        return None
    return exit_code if row.abort_return_value is None else row.abort_return_value


class ConcurrencyGate:
    """The units of each concurrency limit held by running jobs, and the
    ready jobs waiting for some.

    Parameters
    ----------
    rows : `~collections.abc.Sequence` [`JobRow`]
        The run's jobs, by id.
    limits : `dict` [`str`, `float`]
        Units of each limit (`concurrency_limits`).
    """

    def __init__(self, rows: Sequence[JobRow], limits: dict[str, float]):
        self.limits = limits
        self.held: dict[str, float] = dict.fromkeys(limits, 0.0)
        parsed: dict[str, tuple[tuple[str, float], ...]] = {}
        self.needs: dict[int, tuple[tuple[str, float], ...]] = {}
        for row in rows:
            if row.concurrency_limit:
                if row.concurrency_limit not in parsed:
                    parsed[row.concurrency_limit] = parse_concurrency_limit(
                        row.concurrency_limit, f"job '{row.name}'"
                    )
                self.needs[row.id] = parsed[row.concurrency_limit]
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
        """Give back a job's units (once per acquire); returns the waiting
        jobs, which the caller makes ready again.

        Parameters
        ----------
        job : `int`
            Job id.

        Returns
        -------
        woken : `list` [`int`]
            Ids of the jobs that waited for units.
        """
        if job not in self._holding:
            return []
        self._holding.discard(job)
        for name, units in self.needs[job]:
            self.held[name] -= units
        woken, self.waiting = self.waiting, []
        return woken


def walltime_seconds(value: str | None) -> float | None:
    """A job's ``requestWalltime`` in seconds (a bare number is minutes, as
    in BPS; `None` where it is not set).

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
        from ..job import parse_walltime

        return float(parse_walltime(value, "requestWalltime"))
