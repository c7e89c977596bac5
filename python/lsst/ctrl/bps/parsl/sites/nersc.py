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

"""NERSC's Cori KNL nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsl.launchers import SrunLauncher

from .slurm import TripleSlurm

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

__all__ = ("CoriKnl",)

Kwargs = dict[str, Any]


class CoriKnl(TripleSlurm):
    """NERSC's Cori, KNL nodes: `TripleSlurm` with Cori's defaults (doc/sites.md, C),
    which its keys override.
    """

    def get_executors(
        self,
        small_options: Kwargs | None = None,
        medium_options: Kwargs | None = None,
        large_options: Kwargs | None = None,
        **common_options: Any,
    ) -> list[ParslExecutor]:
        defaults: Kwargs = {
            "nodes": 1,
            "constraint": "knl",
            "exclusive": True,
            "scheduler_options": "\n".join(
                ("#SBATCH --module=cvmfs", "#SBATCH --licenses=cvmfs", "#SBATCH --time-min=2:00:00")
            ),
            "provider_options": {
                "init_blocks": 0,
                "min_blocks": 0,
                "max_blocks": 1,
                "parallelism": 0,
                "cmd_timeout": 300,
                "launcher": SrunLauncher(overrides="-K0 -k --slurmd-debug=verbose"),
            },
            "executor_options": {"worker_debug": False, "heartbeat_period": 60, "heartbeat_threshold": 180},
        }
        defaults.update(common_options)
        return super().get_executors(small_options, medium_options, large_options, **defaults)
