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

"""A Parsl `SlurmProvider` that sees blocks lost to node failure or requeue
(doc/sites.md, "Lost nodes"), and the block error handlers of the sites'
HighThroughputExecutors.
"""

from __future__ import annotations

from ..parslcompat import hold_block

__all__ = (
    "BLOCK_SUBMIT_FAILURES",
    "BlockSubmitError",
    "SlurmProvider",
    "give_up_if_blocks_refused",
    "tolerate_lost_blocks",
)

import inspect
import logging
import typing
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from parsl.jobs.error_handlers import simple_error_handler
from parsl.jobs.states import JobState, JobStatus
from parsl.providers import SlurmProvider as ParslSlurmProvider
from parsl.providers.slurm.slurm import sacct_translate_table

if TYPE_CHECKING:
    from parsl.executors.status_handling import BlockProviderExecutor

_LOG = logging.getLogger(__name__)

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

BLOCK_SUBMIT_FAILURES = 3
"""Block submissions in a row the scheduler refused after which an executor
with no block pending or running gives up (reliability.md C18)."""


class BlockSubmitError(RuntimeError):
    """The scheduler refused every block of an executor (`tolerate_lost_blocks`)."""


_LOST_TO_NODE = ("NODE_FAIL",)

_STILL_ACTIVE = (JobState.PENDING, JobState.HELD)

_HELD_BLOCKS: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
"""Blocks of each executor whose worker pools `tolerate_lost_blocks` held."""


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
        self.requeue = requeue
        self._polling_interval = status_polling_interval
        if not requeue:
            self.scheduler_options += "#SBATCH --no-requeue\n"
        self.accounting = self._translate_table is sacct_translate_table
        """Whether ``sacct`` works here (Slurm accounting)."""
        clusters = f" --clusters={self.clusters}" if self.clusters else ""
        fields = "JobID:|,State:|,Reason:|,RestartCnt:"
        self._queue_cmd = f"squeue{clusters} --noheader --states=all --Format='{fields}' --job {{0}}"
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
        for batch in _batches(active, self.status_batch_size):
            retcode, stdout, stderr = self.execute_wait(self._queue_cmd.format(",".join(batch)))
            if retcode != 0 and not stdout.strip():
                # squeue refuses the whole list when it knows none of them.
                _LOG.debug("squeue failed (%s): %s", retcode, stderr.strip())
            found.update(_parse_squeue(stdout))
        for job_id in active:
            record = found.get(job_id) or self._forgotten(job_id)
            self.resources[job_id]["status"] = self._read(job_id, record)

    def _forgotten(self, job_id: str) -> tuple[str, int, str] | None:
        """State, restart count and reason of a job squeue did not list, from
        scontrol or sacct; `None` if Slurm no longer knows it.
        """
        clusters = f" --clusters={self.clusters}" if self.clusters else ""
        retcode, stdout, _ = self.execute_wait(f"scontrol{clusters} show job -o {job_id}")
        if retcode == 0 and "JobState=" in stdout:
            fields = dict(word.split("=", 1) for word in stdout.split() if "=" in word)
            return fields["JobState"], _integer(fields.get("Restarts")), fields.get("Reason", "")
        if self.accounting:
            retcode, stdout, _ = self.execute_wait(
                f"sacct{clusters} -X --noheader --parsable2 --format=JobID,State,Restart --job {job_id}"
            )
            for line in stdout.splitlines():
                parts = line.split("|")
                if retcode == 0 and len(parts) >= 2 and parts[0] == job_id:
                    return parts[1].split()[0], _integer(parts[2] if len(parts) > 2 else None), ""
        return None

    def _read(self, job_id: str, record: tuple[str, int, str] | None) -> JobStatus:
        """The Parsl status of a job from its Slurm record; a requeued block is cancelled here."""
        paths = {
            "stdout_path": self.resources[job_id]["job_stdout_path"],
            "stderr_path": self.resources[job_id]["job_stderr_path"],
        }
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
        if state in _STILL_ACTIVE and (restarts > 0 or slurm_state.startswith("REQUEUE")):
            why = (
                f"Slurm requeued block job {job_id} ({slurm_state}, reason {reason or 'none'}, "
                f"{restarts} restart(s)): cancelled so that a new block replaces it"
            )
            if job_id not in self.lost_blocks:
                _LOG.warning("%s", why)
                self.execute_wait(
                    f"scancel{' --clusters=' + self.clusters if self.clusters else ''} {job_id}"
                )
                self.lost_blocks[job_id] = why
            return JobStatus(JobState.FAILED, message=why, **paths)
        if slurm_state in _LOST_TO_NODE:
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
    parent = inspect.signature(ParslSlurmProvider.__init__)
    own = inspect.signature(init).parameters
    extra = [
        own[name].replace(annotation=hint)
        for name, hint in (("requeue", bool), ("status_polling_interval", int))
    ]
    init.__signature__ = parent.replace(parameters=[*parent.parameters.values(), *extra])
    init.__annotations__ = {
        **typing.get_type_hints(ParslSlurmProvider.__init__),
        "requeue": bool,
        "status_polling_interval": int,
        "return": None,
    }


_own_signature()


def tolerate_lost_blocks(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Block error handler of a HighThroughputExecutor: Parsl's
    `~parsl.jobs.error_handlers.simple_error_handler` over the blocks that
    never had workers (HTEX says MISSING; a FAILED block had workers and
    lost them: a new block may replace it), giving up when the scheduler
    refuses `BLOCK_SUBMIT_FAILURES` blocks in a row; the worker pools of a
    block that ended are put on hold at once (the interchange would send them
    tasks until their heartbeats expire).

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.
    """
    held = _HELD_BLOCKS.setdefault(executor, set())
    for block, block_status in status.items():
        if block_status.terminal and block_status.state != JobState.SCALED_IN and block not in held:
            held.add(block)
            try:
                hold_block(executor, block)
            except Exception as exc:  # noqa: BLE001 (the interchange may be gone; the heartbeat still works)
                _LOG.warning("Could not hold the worker pools of ended block %s: %s", block, exc)
    if _refused_blocks(executor, status):
        return
    lost = getattr(executor.provider, "lost_blocks", {})
    kept = {
        block: s
        for block, s in status.items()
        if s.state != JobState.FAILED and executor.blocks_to_job_id.get(block) not in lost
    }
    simple_error_handler(executor, kept)


def give_up_if_blocks_refused(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Block error handler that gives up only when the scheduler refuses
    every block (`BLOCK_SUBMIT_FAILURES`; Ccin2p3's).

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.
    """
    _refused_blocks(executor, status)


def _refused_blocks(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> bool:
    """Give the executor up if the scheduler refused its last blocks and none is active; whether it did."""
    if any(s.state in (JobState.PENDING, JobState.RUNNING, JobState.HELD) for s in status.values()):
        return False
    recent = sorted(status, key=lambda block: int(block) if block.isdigit() else -1)[-BLOCK_SUBMIT_FAILURES:]
    refused = [
        block
        for block in recent
        if status[block].state == JobState.FAILED and block not in executor.blocks_to_job_id
    ]
    if len(recent) < BLOCK_SUBMIT_FAILURES or len(refused) < len(recent):
        return False
    said = " ".join(str(status[recent[-1]].message or "no error message").split())
    provider = type(executor.provider).__name__
    executor.set_bad_state_and_fail_all(
        BlockSubmitError(
            f"{provider} could not submit a block {BLOCK_SUBMIT_FAILURES} times in a row, giving up: {said}"
        )
    )
    return True


def _parse_squeue(stdout: str) -> Iterator[tuple[str, tuple[str, int, str]]]:
    for line in stdout.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) == 4 and parts[0]:
            yield parts[0], (parts[1], _integer(parts[3]), parts[2])


def _integer(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]
