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

"""Torque (PBS) clusters: a HighThroughputExecutor on a TorqueProvider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsl.providers import TorqueProvider

from ..configuration import get_workflow_name
from ..site import EXECUTOR_RESOURCES
from .batchsite import BatchSite
from .options import build

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

__all__ = ("PbsTorqueProvider", "Torque")

Kwargs = dict[str, Any]


class PbsTorqueProvider(TorqueProvider):
    """A TorqueProvider that asks for ``tasks_per_node`` processors per node
    (``#PBS -l nodes=N:ppn=...``), where Parsl's executors ask for one.

    Parameters
    ----------
    *args, **kwargs
        Arguments of Parsl's `~parsl.providers.TorqueProvider`.
    tasks_per_node : `int`, optional
        Processors (and worker pools) per node.
    """

    def __init__(self, *args: Any, tasks_per_node: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tasks_per_node = tasks_per_node

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.torque") -> Any:
        # The executor's tasks_per_node is replaced by the configured one.
        return super().submit(command=command, tasks_per_node=self.tasks_per_node, job_name=job_name)


class Torque(BatchSite):
    """A Torque cluster: a HighThroughputExecutor whose blocks are PBS jobs
    (keys: doc/sites.md; a job's ``priority`` reaches the executor).
    """

    label = "torque"
    default_resource_list = EXECUTOR_RESOURCES["HighThroughputExecutor"]

    def make_executor(
        self,
        label: str,
        *,
        queue: str | None = None,
        nodes: int | None = None,
        tasks_per_node: int | None = None,
        walltime: str | None = None,
        mem_per_worker: float | None = None,
        scheduler_options: str | None = None,
        worker_init: str | None = None,
        provider_options: Kwargs | None = None,
        executor_options: Kwargs | None = None,
    ) -> ParslExecutor:
        """Return a HighThroughputExecutor on a `PbsTorqueProvider`.

        Parameters
        ----------
        label : `str`
            Executor label.
        queue, nodes, tasks_per_node, walltime, scheduler_options, worker_init
            Defaults of the keys of the same names (the keys win).
        mem_per_worker : `float`, optional
            Memory per worker (GB).
        provider_options, executor_options : `dict`, optional
            More `PbsTorqueProvider` and `HighThroughputExecutor` arguments.

        Returns
        -------
        executor : `parsl.executors.HighThroughputExecutor`
            The executor.
        """
        from parsl.launchers import MpiRunLauncher

        nodes = self.get("nodes", int, nodes, required=True, positive=True)
        walltime = self._required_walltime(walltime)
        queue = self.get("queue", str, queue)
        account = self.get("account", str, None)
        tasks_per_node = self.get("tasks_per_node", int, tasks_per_node, positive=True) or 1
        scheduler_options = self.get("scheduler_options", str, scheduler_options)
        worker_init = self.get("worker_init", str, worker_init) or ""

        lines = [scheduler_options.rstrip("\n")] if scheduler_options else []
        lines.append(f"#PBS -N {get_workflow_name(self.config)}")
        if queue:
            lines.append(f"#PBS -q {queue}")

        options: Kwargs = {
            "launcher": MpiRunLauncher(overrides=f"--map-by core:{tasks_per_node}"),
            **(provider_options or {}),
            "nodes_per_block": nodes,
            "queue": queue,
            "account": account,
            "walltime": walltime,
            "scheduler_options": "\n".join(lines),
            "worker_init": worker_init,
        }
        options = self._provider_options(TorqueProvider, options)
        provider = build(PbsTorqueProvider, {**options, "tasks_per_node": tasks_per_node}, self.where)
        return self._htex(
            label, provider, mem_per_worker, {"max_workers_per_node": 1, **(executor_options or {})}
        )

    def get_executors(self) -> list[ParslExecutor]:
        return [self.make_executor(self.label)]
