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

"""The view of one job that sites see when they choose an executor."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from .configuration import ConfigurationError

if TYPE_CHECKING:
    from lsst.ctrl.bps import BpsConfig, GenericWorkflow

    from .store.runstore import JobRow

__all__ = ("RESOURCE_NAMES", "ParslJob", "get_file_paths", "parse_walltime")

RESOURCE_NAMES = ("memory", "cores", "disk", "running_time_min", "priority")
"""Keys of `ParslJob.get_resources` (Parsl's ``parsl_resource_specification`` names)."""


def get_file_paths(workflow: GenericWorkflow, name: str) -> dict[str, str]:
    """Return the paths of a job's input files, by the files' names.

    Parameters
    ----------
    workflow : `lsst.ctrl.bps.GenericWorkflow`
        Workflow holding the job.
    name : `str`
        Name of the job.

    Returns
    -------
    paths : `dict` [`str`, `str`]
        ``src_uri`` of each input file of the job that has one.
    """
    files = workflow.get_job_inputs(name, data=True)
    return {gwfile.name: gwfile.src_uri for gwfile in files if gwfile.src_uri is not None}


class ParslJob:
    """One job (one attempt of it, when the plugin runs it), as handed to
    `SiteConfig.select_executor`, with `lsst.ctrl.bps.GenericWorkflowJob`'s attribute
    names (also as ``job.generic``); ``request_memory`` is this attempt's.

    Parameters
    ----------
    generic : `lsst.ctrl.bps.GenericWorkflowJob`
        The job (the old plugin's constructor).
    config : `lsst.ctrl.bps.BpsConfig`, optional
        BPS configuration.
    file_paths : `dict` [`str`, `str`], optional
        Paths of the job's input files by name (see `get_file_paths`).
    """

    _logs: tuple[str, str | None] | None
    _tags: dict[str, Any] | str | None

    def __init__(
        self,
        generic: Any,
        config: BpsConfig | None = None,
        file_paths: dict[str, str] | None = None,
    ):
        walltime, priority = generic.request_walltime, generic.priority
        self.name, self.label, self.request_cpus = generic.name, generic.label, generic.request_cpus or 1
        self.request_memory, self.request_disk = generic.request_memory, generic.request_disk
        self.request_walltime = None if walltime is None else str(walltime)
        self.priority = None if priority is None else str(priority)
        self.attempt, self.final, self._tags = 1, False, dict(generic.tags or {})
        self._generic, self.config, self.future, self.done = generic, config, None, False
        self.file_paths = dict(file_paths or {})
        self._logs = None
        if config is not None:
            found, submit_path = config.search("submitPath", opt={"default": None})
            if found and submit_path:
                from .store.recorder import log_dir_template

                self._logs = (str(submit_path), log_dir_template(config)(self.label, self.tags))

    @classmethod
    def from_row(
        cls,
        row: JobRow,
        attempt: int = 1,
        request_memory: int | None = None,
        config: BpsConfig | None = None,
        submit_path: str | None = None,
    ) -> ParslJob:
        """The view of attempt ``attempt`` of a stored job.

        Parameters
        ----------
        row : `JobRow`
            The stored job.
        attempt, request_memory : `int`, optional
            The attempt's number and memory (MB, scaled for retries; `None`: the row's).
        config, submit_path : optional
            The run's `~lsst.ctrl.bps.BpsConfig` and submit directory (for ``stdout``/``stderr``).

        Returns
        -------
        job : `ParslJob`
            The job's view.
        """
        job = cls.__new__(cls)
        job.name, job.label, job.request_cpus = row.name, row.label, row.request_cpus or 1
        job.request_memory = row.request_memory if request_memory is None else request_memory
        job.request_disk, job.request_walltime, job.priority = (
            row.request_disk,
            row.request_walltime,
            row.priority,
        )
        job.attempt, job.final, job._tags = attempt, bool(row.final), row.tags
        job._generic, job.config, job.future, job.done = None, config, None, False
        job.file_paths = {}
        job._logs = None if submit_path is None else (submit_path, row.log_dir)
        return job

    @property
    def generic(self) -> Any:
        """The `~lsst.ctrl.bps.GenericWorkflowJob` given, else this object."""
        return self if self._generic is None else self._generic

    @property
    def tags(self) -> dict[str, Any]:
        """The job's BPS tags (e.g. ``visit``, ``detector``)."""
        if not isinstance(self._tags, dict):
            self._tags = {} if self._tags is None else json.loads(self._tags)
        return self._tags

    @property
    def stdout(self) -> str | None:
        """File of this attempt's standard output, if the run is known."""
        return self._log_paths()[0]

    @property
    def stderr(self) -> str | None:
        """File of this attempt's standard error, if the run is known."""
        return self._log_paths()[1]

    def _log_paths(self) -> tuple[str | None, str | None]:
        if self._logs is None:
            return None, None
        from .store.recorder import log_paths

        return log_paths(self._logs[0], self._logs[1], self.name, self.attempt)

    def get_resources(self) -> dict[str, Any]:
        """Return what the job asks for, by Parsl's resource names.

        Returns
        -------
        resources : `dict` [`str`, `~typing.Any`]
            ``memory`` (MB), ``cores``, ``disk`` (MB), ``running_time_min``
            (`None` when unset) and ``priority`` only when set (HTEX refuses `None`).
        """
        resources: dict[str, Any] = {
            "memory": self.request_memory or None,
            "cores": self.request_cpus or 1,
            "disk": self.request_disk or None,
            "running_time_min": _walltime_minutes(self.request_walltime),
        }
        priority = priority_number(self.priority)
        if priority is not None:
            resources["priority"] = priority
        return resources

    def __repr__(self) -> str:
        return f"ParslJob({self.name!r}, label={self.label!r}, attempt={self.attempt})"


def priority_number(value: Any) -> int | float | None:
    """A BPS ``priority`` as a number, or `None` if unset or not a number.

    Parameters
    ----------
    value : `~typing.Any`
        The job's ``priority``.

    Returns
    -------
    priority : `int`, `float` or `None`
        An `int` when whole.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number


def _walltime_minutes(value: Any) -> int | None:
    """A ``requestWalltime`` in whole minutes (at least 1, rounded up), or `None` if unset or unreadable."""
    if not value:
        return None
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        try:
            minutes = parse_walltime(str(value), "requestWalltime") / 60
        except ConfigurationError:
            return None
    return max(1, math.ceil(minutes)) if math.isfinite(minutes) else None


_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_walltime(value: str | int | float, name: str) -> int:
    """Convert a walltime to seconds.

    Parameters
    ----------
    value : `str`, `int` or `float`
        ``HH:MM:SS``, ``D-HH:MM:SS`` or a number of minutes.
    name : `str`
        Key name for messages.

    Returns
    -------
    seconds : `int`
        Walltime in seconds.

    Raises
    ------
    ConfigurationError
        If the value has another format.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"'{name}' is {value!r}: use HH:MM:SS or a number of minutes")
    if isinstance(value, int | float):
        if value <= 0:
            raise ConfigurationError(f"'{name}' is {value!r}: it must be greater than 0")
        return int(value * 60)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_walltime(float(text), name)
    match = _WALLTIME.match(text)
    if not match:
        raise ConfigurationError(f"'{name}' is {value!r}: use HH:MM:SS, D-HH:MM:SS or a number of minutes")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    if minutes >= 60 or seconds >= 60:
        raise ConfigurationError(f"'{name}' is {value!r}: minutes and seconds must be below 60")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
