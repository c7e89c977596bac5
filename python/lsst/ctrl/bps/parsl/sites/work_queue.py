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

"""Work Queue sites: a WorkQueueExecutor, which schedules each job by its
cores, memory, disk and walltime (``ndcctools`` is not a dependency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..site import EXECUTOR_RESOURCES
from .batchsite import BatchSite, require_work_queue, work_queue_spec
from .options import build

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = ("LocalSrunWorkQueue", "WorkQueue")


class WorkQueue(BatchSite):
    """Base of the Work Queue sites; subclasses provide `get_provider` (keys: doc/sites.md)."""

    label = "work_queue"
    default_resource_list = EXECUTOR_RESOURCES["WorkQueueExecutor"]

    def get_provider(self) -> Any:
        """Return the Parsl provider that starts the workers."""
        raise NotImplementedError

    def make_executor(
        self,
        label: str,
        provider: Any,
        *,
        port: int = 9000,
        worker_options: str = "",
        wq_max_retries: int = 1,
    ) -> ParslExecutor:
        """Return a WorkQueueExecutor on ``provider``.

        Parameters
        ----------
        label : `str`
            Executor label.
        provider : `~typing.Any`
            Parsl provider that starts the workers.
        port, worker_options, wq_max_retries : optional
            Defaults of the keys of the same names (the keys win).

        Returns
        -------
        executor : `parsl.executors.WorkQueueExecutor`
            The executor.
        """
        require_work_queue(
            f"{self.where}.class", "use lsst.ctrl.bps.parsl.sites.Local or lsst.ctrl.bps.parsl.sites.Slurm"
        )
        from parsl.executors import WorkQueueExecutor

        port = self.get("port", int, port)
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"'{self.where}.port' is {port}: it must be a TCP port, 0-65535")
        worker_options = self.get("worker_options", str, worker_options)
        max_retries = self.site.search("wq_max_retries", opt={"default": wq_max_retries})[1]
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)):
            raise ConfigurationError(
                f"'{self.where}.wq_max_retries' is {max_retries!r}: it must be an integer, or null to retry forever"
            )
        return build(
            WorkQueueExecutor,
            {
                "label": label,
                "provider": provider,
                "port": port,
                "worker_options": worker_options,
                "max_retries": max_retries,
                "shared_fs": True,
                "autolabel": False,
            },
            self.where,
        )

    def get_executors(self) -> list[ParslExecutor]:
        return [self.make_executor(self.label, self.get_provider())]

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        if self._resource_list is not None:
            return super().resource_specification(job, label)
        return work_queue_spec(job)


class LocalSrunWorkQueue(WorkQueue):
    """Work Queue inside an allocation you hold: a LocalProvider starts the
    workers, with ``srun`` when there are several nodes (keys: doc/sites.md).
    """

    def get_provider(self) -> Any:
        from parsl.launchers import SrunLauncher
        from parsl.providers import LocalProvider

        nodes = self.get("nodes_per_block", int, 1, positive=True)
        options: dict[str, Any] = {
            "nodes_per_block": nodes,
            "init_blocks": 0,
            "min_blocks": 0,
            "max_blocks": 1,
            "parallelism": 0,
            "cmd_timeout": 300,
        }
        if nodes > 1:
            options["launcher"] = SrunLauncher(overrides="-K0 -k --slurmd-debug=verbose")
        return build(LocalProvider, options, self.where)
