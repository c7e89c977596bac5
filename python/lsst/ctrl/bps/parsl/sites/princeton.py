"""Princeton's Tiger cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .slurm import Slurm, environment_script

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

__all__ = ("Tiger",)


class Tiger(Slurm):
    """Princeton's Tiger cluster (Slurm).

    Defaults, all overridable by the `Slurm` keys: blocks of 4 nodes of 40
    cores and 187 GB, walltime 05:00:00 (the ``tiger-vshort`` QoS), one
    block running at a time (``singleton``) with another queued
    (``max_blocks`` 2, ``init_blocks``/``min_blocks`` 1), ``cmd_timeout``
    300 s, workers started by ``srun -K0 -k`` with the submitting
    environment exported. Workers reach the driver over the InfiniBand
    interface (``ib*``/``op*``) unless ``address`` or ``interface`` is set.

    Run from ``/scratch/gpfs``: the other file systems are slow on the nodes.
    """

    label = "tiger"

    def get_executors(self) -> list[ParslExecutor]:
        from parsl.launchers import SrunLauncher

        return [
            self.make_executor(
                self.label,
                nodes=4,
                cores_per_node=40,
                walltime="05:00:00",
                mem_per_node=187,
                singleton=True,
                provider_options={
                    "init_blocks": 1,
                    "min_blocks": 1,
                    "max_blocks": 2,
                    "parallelism": 1.0,
                    "cmd_timeout": 300,
                    "worker_init": environment_script(),
                    "launcher": SrunLauncher(overrides="-K0 -k"),
                },
            )
        ]

    def default_address(self) -> str:
        from psutil import net_if_addrs

        from parsl.addresses import address_by_interface

        interfaces = [name for name in net_if_addrs() if name[:2] in ("ib", "op")]
        if not interfaces:
            raise RuntimeError(
                f"no InfiniBand interface (ib*, op*) on this host: set '{self.where}.address' to the "
                "address the Tiger nodes can reach"
            )
        return address_by_interface(interfaces[0])
