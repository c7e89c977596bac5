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

"""A job's values checked at prepare (doc/configuration.md) and the run's concurrency limits."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from lsst.ctrl.bps import BpsConfig

from ..configuration import ConfigurationError, RunSettings
from ..job import ParslJob, parse_walltime
from ..oneline import shown
from ..records import JobRow

__all__ = ("check_job_values", "concurrency_limits", "parse_concurrency_limit")

_LOG = logging.getLogger(__name__)


def parse_concurrency_limit(text: str, where: str) -> tuple[tuple[str, float], ...]:
    """``name[:units], ...`` as ``((name, units), ...)`` (lower-case names, units 1 by default).

    Parameters
    ----------
    text, where : `str`
        A job's ``concurrencyLimit``; the job, for the message.

    Returns
    -------
    limits : `tuple` [`tuple` [`str`, `float`], ...]
        (name, units) pairs.
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
    """The run's limits: ``db_limit``, then top-level, then ``site.<computeSite>.concurrencyLimits``.

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
    """
    limits = {"db_limit": 1.0}  # ctrl_bps's defaults give it to the final job
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
"""The numeric attributes of a job the plugin reads, with type and range
(`None`: not set; ``requestMemoryMax`` holds ``memoryLimit``)."""
_TEXT_KEYS = (("concurrency_limit", "concurrencyLimit"), ("compute_site", "computeSite"), ("queue", "queue"))


def _bad_value(job: Any, key: str, value: Any, rule: str) -> ConfigurationError:
    """The error for a job's bad value."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:60] + f"... ({len(shown)} characters)"
    return ConfigurationError(
        f"{key} of job {str(job.name)[:200]!r} (label {str(job.label)[:200]!r}) is {shown}: it must be {rule}; "
        f"fix '{key}' for that label in the submit YAML"
    )


def check_job_values(job: Any) -> None:
    """Check the type and range of every value of a job the plugin reads (`ConfigurationError`).

    Parameters
    ----------
    job : `lsst.ctrl.bps.GenericWorkflowJob`
        The job to check.
    """
    if not isinstance(job.label, str) or not job.label:
        raise _bad_value(job, "label", job.label, "a non-empty string")
    for attribute, key, kind, low, high in _VALUE_RULES:
        value = getattr(job, attribute)
        if value is None:
            continue
        # NaN and the infinities fail the range check.
        ok = isinstance(value, int if kind is _INT else int | float) and not isinstance(value, bool)
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


def _job_row_check(config: BpsConfig, site: Any) -> Callable[[JobRow], None]:
    """A check of payload job rows (resources, walltime, concurrency limits; `ConfigurationError`);
    warns once per label of a site or queue that is no executor of the validated ``site``.
    """
    compute_site, labels = site.compute_site, site.executor_labels()
    capacities = {label: site.capacity(label) for label in labels}
    RunSettings.read(config)  # the run-wide keys, refused here rather than when the driver starts
    limits = concurrency_limits(config, compute_site)
    requests: set[tuple] = set()
    checked: set[str] = set()
    warned: set[tuple[str, str]] = set()

    def check(row: JobRow) -> None:
        request = (row.label, row.request_cpus, row.request_memory, row.request_disk, row.request_walltime)
        if request not in requests:
            requests.add(request)
            _check_resources(row, site, capacities)
        limit, site_name, queue = row.concurrency_limit, row.compute_site, row.queue
        if limit is None and queue is None and (site_name is None or site_name == compute_site):
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
        for key, value in (("computeSite", site_name), ("queue", queue)):
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


def _check_resources(row: JobRow, site: Any, capacities: dict[str, Any]) -> None:
    """A job's walltime is valid and it goes to an existing executor that can ever hold it."""
    if row.request_walltime is not None:
        where = f"requestWalltime of job '{row.name}' (label '{row.label}')"
        try:
            minutes = float(row.request_walltime)
        except ValueError:
            parse_walltime(row.request_walltime, where)
        else:
            if not minutes > 0 or minutes == float("inf"):
                raise ConfigurationError(
                    f"'{where}' is {row.request_walltime!r}: it must be a number of minutes greater than 0"
                )
    cpus = row.request_cpus or 1
    job = ParslJob.from_row(row)
    try:
        label = site.select_executor(job)
    except Exception as exc:
        raise ConfigurationError(
            f"site class {type(site).__name__}.select_executor failed for job '{row.name}' (label "
            f"'{row.label}'): {type(exc).__name__}: {exc}: fix the site class or the job's requests"
        ) from None
    if label not in capacities:
        raise ConfigurationError(
            f"site class {type(site).__name__}.select_executor returned '{label}' for job '{row.name}', "
            f"but the site's executors are {sorted(capacities)}: fix the site class or its executor labels"
        )
    cap = capacities[label]
    # The final job runs alone, after every other job ended, so it gets
    # the whole executor: its request (bps defaults: 16 cores, 32 GB) is
    # clamped to the capacity when it runs, never rejected.
    if cap is None or row.final:
        return
    if cpus > cap.cores:
        raise ConfigurationError(
            f"job '{row.name}' asks for {cpus} cores (requestCpus) but executor '{label}' of "
            f"{site.where} has {cap.cores}: lower requestCpus for label '{row.label}' or raise "
            f"{site.where}.cores"
        )
    if cap.memory and row.request_memory and row.request_memory > cap.memory:
        raise ConfigurationError(
            f"job '{row.name}' asks for {row.request_memory} MB (requestMemory) but executor '{label}' of "
            f"{site.where} has {cap.memory} MB: lower requestMemory for label '{row.label}' or raise "
            f"{site.where}.memory"
        )
