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

"""What each kind of executor takes with a job (its resource specification)
and holds at once; a site's ``resource_list`` checked against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..configuration import ConfigurationError
from ..job import RESOURCE_NAMES

__all__ = ("EXECUTOR_RESOURCES", "ExecutorCapacity", "check_executors_take", "checked_resource_list")

EXECUTOR_RESOURCES: dict[str, tuple[str, ...]] = {
    "HighThroughputExecutor": ("priority",),
    "WorkQueueExecutor": ("memory", "cores", "disk", "running_time_min", "priority"),
    "TaskVineExecutor": ("memory", "cores", "disk", "running_time_min", "priority"),
    "LocalPoolExecutor": ("cores", "memory", "running_time_min"),
    "ThreadPoolExecutor": (),
}
"""The job resources each executor type takes in a task's
``parsl_resource_specification``: the old plugin's table plus the local pool
and Parsl's thread pool (doc/sites.md)."""


@dataclass(frozen=True, slots=True)
class ExecutorCapacity:
    """What one executor that runs jobs on this machine can run at once:
    `prepare` refuses a job that asks for more (batch executors have none).
    """

    cores: int
    """Cores available to jobs."""

    memory: int | None = None
    """Memory available to jobs, in MB (`None`: not limited)."""

    depth: int | None = None
    """Jobs a thread-pool executor runs at once (default: ``cores``)."""

    @property
    def queue_depth(self) -> int:
        """Jobs a thread-pool executor runs at once (``depth``, else ``cores``)."""
        return self.depth if self.depth is not None else self.cores


def checked_resource_list(resource_list: Any, site_class: str) -> list[str] | None:
    """A site's ``resource_list`` as a list, refused unless it holds job resource names.

    Parameters
    ----------
    resource_list : `~typing.Any`
        What the site class gave.
    site_class : `str`
        The site class's name, for the message.

    Returns
    -------
    names : `list` [`str`] or `None`
        The names.
    """
    if resource_list is None:
        return None
    if isinstance(resource_list, str) or not all(isinstance(key, str) for key in resource_list):
        raise ConfigurationError(
            f"site class {site_class} passes resource_list {resource_list!r}: it must be a list of names "
            f"among {', '.join(RESOURCE_NAMES)}"
        )
    unknown = [key for key in resource_list if key not in RESOURCE_NAMES]
    if unknown:
        raise ConfigurationError(
            f"site class {site_class} passes resource_list {list(resource_list)}: {unknown} are not job "
            f"resources; use names among {', '.join(RESOURCE_NAMES)}"
        )
    return list(resource_list)


def check_executors_take(
    site_class: str, resource_list: list[str] | None, executors: Callable[[], Sequence]
) -> None:
    """Refuse a ``resource_list`` that an executor of the site does not take.

    Parameters
    ----------
    site_class : `str`
        The site class's name, for the message.
    resource_list : `list` [`str`] or `None`
        The site's ``resource_list``.
    executors : `~collections.abc.Callable`
        Builds the site's executors (called only for a ``resource_list``).

    Raises
    ------
    ConfigurationError
        Naming the executor and what it takes.
    """
    if not resource_list:
        return
    for executor in executors():
        kind = type(executor).__name__
        accepted = EXECUTOR_RESOURCES.get(kind)
        if accepted is None or (
            kind == "HighThroughputExecutor" and getattr(executor, "enable_mpi_mode", False)
        ):
            continue  # not known: anything is passed on
        refused = [key for key in resource_list if key not in accepted]
        if refused:
            takes = ", ".join(sorted(accepted)) or "none"
            raise ConfigurationError(
                f"site class {site_class} passes resource_list {resource_list}, but its executor "
                f"'{executor.label}' ({kind}) does not take {refused} (it takes: {takes}): drop them from "
                "resource_list or use another executor"
            )
