"""SLAC's Shared Scientific Data Facility (S3DF/SDF), Rubin partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .slurm import Slurm, environment_script

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

__all__ = ("Sdf",)


class Sdf(Slurm):
    """SLAC's SDF cluster, ``rubin`` partition (Slurm).

    Defaults, all overridable by the `Slurm` keys: blocks of 1 node of 100
    cores and 400 GB, walltime 02:00:00, QoS ``normal``, partition
    ``rubin``, one block running at a time (``singleton``) with another
    queued (``max_blocks`` 2, ``init_blocks``/``min_blocks`` 1), workers
    started by ``srun -K0 -k --slurmd-debug=verbose`` with the submitting
    environment exported.
    """

    label = "sdf"

    def get_executors(self) -> list[ParslExecutor]:
        from parsl.launchers import SrunLauncher

        return [
            self.make_executor(
                self.label,
                nodes=1,
                cores_per_node=100,
                walltime="02:00:00",
                mem_per_node=400,
                qos="normal",
                singleton=True,
                partition="rubin",
                provider_options={
                    "init_blocks": 1,
                    "min_blocks": 1,
                    "max_blocks": 2,
                    "parallelism": 1.0,
                    "worker_init": environment_script(),
                    "launcher": SrunLauncher(overrides="-K0 -k --slurmd-debug=verbose"),
                },
            )
        ]
