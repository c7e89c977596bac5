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

"""Run jobs on the submitting machine."""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..site import EXECUTOR_RESOURCES, ExecutorCapacity, SiteConfig

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = ("Local", "local_pool_spec")

_LOG = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    """Log a warning once per process (prepare validates the site twice)."""
    _LOG.warning("%s", message)


def usable_cores() -> int:
    """Cores this process may run on.

    Returns
    -------
    cores : `int`
        The number of cores (at least 1).
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return count or 1


def machine_memory_mb() -> int:
    """Physical memory of this machine in MB.

    Returns
    -------
    memory : `int`
        Physical memory in MB.
    """
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def local_pool_spec(job: ParslJob, cores: int, memory: int | None) -> dict[str, Any]:
    """The resource specification of a job on a local pool: its cores and
    memory, at most the pool's (the final job, alone, gets the whole pool).

    Parameters
    ----------
    job : `ParslJob`
        The job.
    cores, memory : `int`
        Cores and memory (MB; `None`: no limit) of the pool.

    Returns
    -------
    spec : `dict` [`str`, `~typing.Any`]
        ``cores``, and ``memory`` if the job asks for memory.
    """
    spec: dict[str, Any] = {"cores": min(job.request_cpus or 1, cores)}
    if job.request_memory:
        spec["memory"] = job.request_memory if memory is None else min(job.request_memory, memory)
    return spec


class Local(SiteConfig):
    """Run every job on this machine, through the local pool
    (`~lsst.ctrl.bps.parsl.localpool.LocalPoolExecutor`), which starts a job
    when its cores and memory fit (keys: doc/sites.md).
    """

    label = "local"
    default_resource_list = EXECUTOR_RESOURCES["LocalPoolExecutor"]

    @functools.cached_property
    def cores(self) -> int:
        """Cores given to jobs."""
        return self.get("cores", int, usable_cores(), positive=True)

    @functools.cached_property
    def memory(self) -> int:
        """Memory given to jobs (MB)."""
        machine = machine_memory_mb()
        memory = self.get("memory", int, machine, positive=True)
        if memory > machine:
            raise ConfigurationError(
                f"'{self.where}.memory' is {memory} MB but this machine has {machine} MB: lower it, or leave "
                "it unset to give jobs all of it"
            )
        return memory

    def validate(self) -> None:
        super().validate()
        cores, usable = self.cores, usable_cores()
        if cores > usable:
            _warn_once(
                f"'{self.where}.cores' is {cores} but this process may use {usable} cores: jobs will share "
                "cores (lower it, or leave it unset, unless the jobs mostly wait)"
            )
        walltime = self.site.search("walltime", opt={"default": None})[1]
        if walltime is not None:
            _warn_once(
                f"'{self.where}.walltime' ({walltime!r}) is ignored by the Local site: a job's time limit is "
                "its requestWalltime (minutes, or quoted HH:MM:SS); remove it"
            )

    def get_executors(self) -> list[ParslExecutor]:
        # Parsl is imported only to run: preparing a workflow does not need it.
        from ..localpool import LocalPoolExecutor

        return [LocalPoolExecutor(label=self.label, cores=self.cores, memory=self.memory)]

    def executor_labels(self) -> list[str]:
        # Known without building the executor (which would import Parsl
        # while a workflow is only being prepared).
        self.cores  # noqa: B018
        self.memory  # noqa: B018
        return [self.label]

    def select_executor(self, job: ParslJob) -> str:
        return self.label

    def capacity(self, label: str) -> ExecutorCapacity | None:
        # What the pool has: prepare refuses a job that can never fit.
        return ExecutorCapacity(cores=self.cores, memory=self.memory)

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        if self._resource_list is not None:
            return super().resource_specification(job, label)
        return local_pool_spec(job, self.cores, self.memory)
