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

"""Princeton's Tiger cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parsl.launchers import SrunLauncher

from ..configuration import ConfigurationError
from ..prepare.commands import environment_script
from .slurm import Slurm

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

__all__ = ("Tiger",)


class Tiger(Slurm):
    """Princeton's Tiger cluster: `Slurm` with Tiger's defaults (doc/sites.md,
    Ti), which its keys override; workers reach the driver over InfiniBand.
    """

    label = "tiger"

    def get_executors(self) -> list[ParslExecutor]:
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
            raise ConfigurationError(
                f"no InfiniBand interface (ib*, op*) on this host: set '{self.where}.address' to the "
                "address the Tiger nodes can reach"
            )
        return address_by_interface(interfaces[0])
