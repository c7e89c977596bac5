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

"""Slurm clusters: one HighThroughputExecutor (`Slurm`) or three sized by
memory (`TripleSlurm`), whose blocks come from the plugin's `SlurmProvider`,
which sees blocks lost to node failure or requeue (doc/sites.md, "Lost nodes").
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from typing import TYPE_CHECKING, Any

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.providers import SlurmProvider as ParslSlurmProvider
from parsl.providers.slurm.slurm import sacct_translate_table

from ..configuration import ConfigurationError, get_workflow_name
from ..site import EXECUTOR_RESOURCES
from .batchsite import SRUN_OVERRIDES, BatchSite, normalize_walltime
from .options import build

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = ("Slurm", "SlurmProvider", "TripleSlurm", "default_launcher")

_LOG = logging.getLogger(__name__)

Kwargs = dict[str, Any]

_FAILED_STATES = ("FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT")
_SLURM_STATES: dict[str, JobState] = {
    # REQUEUE*: pending again, see SlurmProvider._read.
    **dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED"), JobState.PENDING),
    **dict.fromkeys(("RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"), JobState.RUNNING),
    **dict.fromkeys(("SUSPENDED", "STOPPED", "RESV_DEL_HOLD", "REQUEUE_HOLD"), JobState.HELD),
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    **dict.fromkeys(_FAILED_STATES, JobState.FAILED),
    # Ended by the batch system, as Parsl's own tables: not a sign that
    # blocks cannot run (Parsl's error handler counts FAILED only).
    **dict.fromkeys(("TIMEOUT", "DEADLINE", "PREEMPTED"), JobState.TIMEOUT),
}
"""Parsl state of each Slurm job state (long names, as squeue, scontrol and sacct print them)."""


class SlurmProvider(ParslSlurmProvider):
    """Parsl's `~parsl.providers.SlurmProvider`, reading block states so
    that lost blocks are seen.

    Parameters
    ----------
    requeue : `bool`, optional
        Let Slurm requeue a block after a node failure (default: ``--no-requeue``).
    status_polling_interval : `int`, optional
        Seconds between two reads of the block states.
    *args, **kwargs
        Arguments of Parsl's `~parsl.providers.SlurmProvider`.
    """

    def __init__(self, *args: Any, requeue: bool = False, status_polling_interval: int = 15, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if status_polling_interval <= 0:
            raise ValueError(f"status_polling_interval is {status_polling_interval}: it must be above 0")
        self._polling_interval = status_polling_interval
        if not requeue:
            self.scheduler_options += "#SBATCH --no-requeue\n"
        self.accounting = self._translate_table is sacct_translate_table
        """Whether ``sacct`` works here (Slurm accounting)."""
        self._clusters = f" --clusters={self.clusters}" if self.clusters else ""
        self.lost_blocks: dict[str, str] = {}
        """Job ids of blocks lost with a node or to requeue, and why."""

    @property
    def status_polling_interval(self) -> int:
        return self._polling_interval

    def _write_submit_script(self, template: str, script_filename: str, job_name: str, configs: dict) -> bool:
        # The sites name the Slurm job after the workflow (for 'singleton'), and Parsl's srun
        # launchers write the worker pool's command to cmd_$SLURM_JOB_NAME.sh in the script
        # directory: blocks starting together overwrote each other's and ran one block's pools.
        worker_init = configs.get("worker_init") or ""
        unique = 'SLURM_JOB_NAME="$SLURM_JOB_NAME.$SLURM_JOB_ID"  # one launcher command file per block'
        configs = dict(configs, worker_init="\n".join(p for p in (worker_init.rstrip("\n"), unique) if p))
        return super()._write_submit_script(template, script_filename, job_name, configs)

    def _status(self) -> None:
        active = [str(job_id) for job_id, job in self.resources.items() if not job["status"].terminal]
        if not active:
            return
        found: dict[str, tuple[str, int, str]] = {}
        size = max(1, self.status_batch_size)
        for start in range(0, len(active), size):
            retcode, stdout, stderr = self.execute_wait(
                f"squeue{self._clusters} --noheader --states=all --Format='JobID:|,State:|,Reason:|,RestartCnt:' "
                f"--job {','.join(active[start : start + size])}"
            )
            if retcode != 0 and not stdout.strip():
                # squeue refuses the whole list when it knows none of them.
                _LOG.debug("squeue failed (%s): %s", retcode, stderr.strip())
            for line in stdout.splitlines():
                parts = [part.strip() for part in line.split("|")]
                if len(parts) == 4 and parts[0]:
                    found[parts[0]] = (parts[1], _integer(parts[3]), parts[2])
        for job_id in active:
            record = found.get(job_id) or self._forgotten(job_id)
            self.resources[job_id]["status"] = self._read(job_id, record)

    def _forgotten(self, job_id: str) -> tuple[str, int, str] | None:
        """State, restarts and reason of a job squeue did not list, from scontrol or sacct (`None`: unknown)."""
        retcode, stdout, _ = self.execute_wait(f"scontrol{self._clusters} show job -o {job_id}")
        if retcode == 0 and "JobState=" in stdout:
            fields = dict(word.split("=", 1) for word in stdout.split() if "=" in word)
            return fields["JobState"], _integer(fields.get("Restarts")), fields.get("Reason", "")
        if self.accounting:
            retcode, stdout, _ = self.execute_wait(
                f"sacct{self._clusters} -X --noheader --parsable2 --format=JobID,State,Restart --job {job_id}"
            )
            for line in stdout.splitlines():
                parts = line.split("|")
                if retcode == 0 and len(parts) >= 2 and parts[0] == job_id:
                    return parts[1].split()[0], _integer(parts[2] if len(parts) > 2 else None), ""
        return None

    def _read(self, job_id: str, record: tuple[str, int, str] | None) -> JobStatus:
        """The Parsl status of a job from its Slurm record; a requeued block is cancelled here."""
        job = self.resources[job_id]
        paths = {"stdout_path": job["job_stdout_path"], "stderr_path": job["job_stderr_path"]}
        if record is None:
            # Ended more than MinJobAge ago without accounting: how is unknown.
            return JobStatus(
                JobState.COMPLETED, message=f"Slurm job {job_id} no longer known to Slurm", **paths
            )
        slurm_state, restarts, reason = record
        slurm_state = slurm_state.rstrip("+")
        state = _SLURM_STATES.get(slurm_state)
        if state is None:
            _LOG.warning("Slurm job %s is in state %s, which this plugin does not know", job_id, slurm_state)
            return JobStatus(JobState.UNKNOWN, message=f"Slurm state {slurm_state}", **paths)
        if state in (JobState.PENDING, JobState.HELD) and (restarts > 0 or slurm_state.startswith("REQUEUE")):
            why = (
                f"Slurm requeued block job {job_id} ({slurm_state}, reason {reason or 'none'}, "
                f"{restarts} restart(s)): cancelled so that a new block replaces it"
            )
            if job_id not in self.lost_blocks:
                _LOG.warning("%s", why)
                self.execute_wait(f"scancel{self._clusters} {job_id}")
                self.lost_blocks[job_id] = why
            return JobStatus(JobState.FAILED, message=why, **paths)
        if slurm_state == "NODE_FAIL":
            why = f"Slurm job {job_id} lost a node ({slurm_state}, reason {reason or 'none'})"
            if job_id not in self.lost_blocks:
                _LOG.warning("Block %s", why)
                self.lost_blocks[job_id] = why
            return JobStatus(state, message=why, **paths)
        message = None if state in (JobState.PENDING, JobState.RUNNING) else f"Slurm state {slurm_state}"
        return JobStatus(state, message=message, **paths)


def _own_signature() -> None:
    """Give `SlurmProvider.__init__` Parsl's signature and hints plus its own (`options.check_options`)."""
    init: Any = SlurmProvider.__init__
    own = {"requeue": bool, "status_polling_interval": int}
    parent = inspect.signature(ParslSlurmProvider.__init__)
    extra = [inspect.signature(init).parameters[name].replace(annotation=hint) for name, hint in own.items()]
    init.__signature__ = parent.replace(parameters=[*parent.parameters.values(), *extra])
    init.__annotations__ = {**typing.get_type_hints(ParslSlurmProvider.__init__), **own, "return": None}


_own_signature()


def default_launcher(nodes: int = 2) -> Any:
    """The launcher of a Slurm block of ``nodes`` nodes, as the old plugin
    chose it: ``SingleNodeLauncher`` for one node, else ``srun`` (one worker pool per node).

    Parameters
    ----------
    nodes : `int`, optional
        Nodes of each block.

    Returns
    -------
    launcher : `parsl.launchers.base.Launcher`
        The launcher.
    """
    if nodes <= 1:
        return SingleNodeLauncher()
    return SrunLauncher(overrides=SRUN_OVERRIDES)


class Slurm(BatchSite):
    """A Slurm cluster: a HighThroughputExecutor whose blocks are Slurm jobs
    from the plugin's `SlurmProvider` (keys: doc/sites.md; a job's ``priority``
    reaches the executor, its cores, memory and walltime do not).
    """

    label = "slurm"
    default_resource_list = EXECUTOR_RESOURCES["HighThroughputExecutor"]

    def make_executor(
        self,
        label: str,
        *,
        nodes: int | None = None,
        cores_per_node: int | None = None,
        walltime: str | None = None,
        mem_per_node: int | None = None,
        mem_per_worker: float | None = None,
        qos: str | None = None,
        constraint: str | None = None,
        singleton: bool = False,
        exclusive: bool = True,
        no_kill: bool | None = None,
        scheduler_options: str | None = None,
        partition: str | None = None,
        account: str | None = None,
        provider_options: Kwargs | None = None,
        executor_options: Kwargs | None = None,
    ) -> ParslExecutor:
        """Return a HighThroughputExecutor on a SlurmProvider; the arguments
        are defaults (subclasses' cluster values), the site's keys win.

        Parameters
        ----------
        label : `str`
            Executor label.
        nodes, cores_per_node, walltime, mem_per_node, qos, constraint, \
singleton, exclusive, no_kill, scheduler_options, partition, account
            Defaults of the keys of the same names (``no_kill`` `None`: ``nodes`` > 1).
        mem_per_worker : `float`, optional
            Memory per worker (GB).
        provider_options, executor_options : `dict`, optional
            More `SlurmProvider` and `HighThroughputExecutor` arguments.

        Returns
        -------
        executor : `parsl.executors.HighThroughputExecutor`
            The executor.
        """
        nodes = self.get("nodes", int, nodes, required=True, positive=True)
        cores_per_node = self.get("cores_per_node", int, cores_per_node, positive=True)
        walltime = self._required_walltime(walltime)
        mem_per_node = self.get("mem_per_node", int, mem_per_node, positive=True)
        qos = self.get("qos", str, qos)
        constraint = self.get("constraint", str, constraint)
        singleton = self.get("singleton", bool, singleton)
        exclusive = self.get("exclusive", bool, exclusive)
        no_kill = self.get("no_kill", bool, nodes > 1 if no_kill is None else no_kill)
        partition = self.get("partition", str, partition)
        account = self.get("account", str, account)
        scheduler_options = self.get("scheduler_options", str, scheduler_options)
        parts = ((provider_options or {}).get("worker_init"), self.get("worker_init", str, None))
        worker_init = "\n".join(p for p in parts if p)

        lines = [scheduler_options.rstrip("\n")] if scheduler_options else []
        # Parsl names the script after its own job name; this names the Slurm
        # job after the workflow, so that 'singleton' counts this workflow's
        # blocks only.
        job_name = re.sub(r"[^A-Za-z0-9_.+-]", "_", get_workflow_name(self.config))
        lines.append(f"#SBATCH --job-name={job_name}")
        if singleton:
            lines.append("#SBATCH --dependency=singleton")
        if no_kill:
            lines.append("#SBATCH --no-kill")

        options: Kwargs = dict(provider_options or {})
        options.setdefault("launcher", default_launcher(nodes))
        options.update(nodes_per_block=nodes, cores_per_node=cores_per_node, mem_per_node=mem_per_node)
        options.update(walltime=walltime, qos=qos, constraint=constraint, partition=partition)
        options.update(account=account, exclusive=exclusive, scheduler_options="\n".join(lines))
        options["worker_init"] = worker_init
        provider = build(SlurmProvider, self._provider_options(SlurmProvider, options), self.where)
        return self._htex(label, provider, mem_per_worker, executor_options or {})

    def default_address(self) -> str:
        from . import batchsite  # its functions looked up when called: tests replace them

        return batchsite.choose_address(
            batchsite.slurm_node_addresses(self.get("partition", str, None)), self.where
        )

    def get_executors(self) -> list[ParslExecutor]:
        return [self.make_executor(self.label)]


class TripleSlurm(Slurm):
    """Three Slurm executors, ``small``, ``medium`` and ``large``; a job goes
    to the smallest whose worker memory holds its (scaled) memory (keys: doc/sites.md).

    Parameters
    ----------
    *args, **kwargs
        Arguments of `SiteConfig`.
    """

    labels = ("small", "medium", "large")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.small_memory = self.get("small_memory", float, 2.0, positive=True)
        self.medium_memory = self.get("medium_memory", float, 4.0, positive=True)
        self.large_memory = self.get("large_memory", float, 8.0, positive=True)
        self.small_walltime = self.get("small_walltime", str, "10:00:00")
        self.medium_walltime = self.get("medium_walltime", str, "10:00:00")
        self.large_walltime = self.get("large_walltime", str, "40:00:00")

    def validate(self) -> None:
        if not self.small_memory <= self.medium_memory <= self.large_memory:
            raise ConfigurationError(
                f"'{self.where}': small_memory ({self.small_memory}) <= medium_memory ({self.medium_memory}) "
                f"<= large_memory ({self.large_memory}) must hold: reorder them"
            )
        for size in self.labels:
            normalize_walltime(getattr(self, f"{size}_walltime"), f"{self.where}.{size}_walltime")
        super().validate()

    def get_executors(
        self,
        small_options: Kwargs | None = None,
        medium_options: Kwargs | None = None,
        large_options: Kwargs | None = None,
        **common_options: Any,
    ) -> list[ParslExecutor]:
        """Build the three executors.

        Parameters
        ----------
        small_options, medium_options, large_options : `dict`, optional
            `Slurm.make_executor` arguments of one executor.
        **common_options
            Those of all three.

        Returns
        -------
        executors : `list` [`parsl.executors.base.ParslExecutor`]
            The ``small``, ``medium`` and ``large`` executors.
        """
        each = (small_options, medium_options, large_options)
        return [
            self.make_executor(
                size,
                **{
                    "walltime": getattr(self, f"{size}_walltime"),
                    "mem_per_worker": getattr(self, f"{size}_memory"),
                    **common_options,
                    **(options or {}),
                },
            )
            for size, options in zip(self.labels, each, strict=True)
        ]

    def select_executor(self, job: ParslJob) -> str:
        memory = (job.request_memory or 0) / 1024  # GB
        return next((size for size in self.labels[:2] if memory <= getattr(self, f"{size}_memory")), "large")


def _integer(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
