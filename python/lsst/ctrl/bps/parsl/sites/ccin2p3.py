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

"""The CC-IN2P3 Slurm farm."""

from __future__ import annotations

import functools
import platform
from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError, get_bps_config_value
from ..site import EXECUTOR_RESOURCES
from .batchsite import BatchSite, give_up_if_blocks_refused, normalize_walltime
from .options import build, plain

if TYPE_CHECKING:
    import parsl.config
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = ("Ccin2p3",)

_SLOTS: dict[str, dict[str, Any]] = {
    "small": {"memory": 4, "max_blocks": 3_000},
    "medium": {"memory": 10, "max_blocks": 1_000},
    "large": {"memory": 50, "max_blocks": 100},
    "xlarge": {"memory": 150, "max_blocks": 10},
}
"""Slot sizes: memory per block (GB) and most blocks at once."""

_PARTITIONS: dict[str, dict[str, str]] = {
    "x86_64": {"small": "lsst,htc", "medium": "lsst", "large": "lsst", "xlarge": "lsst"},
    "aarch64": {"small": "htc_arm", "medium": "htc_arm", "large": "htc_arm", "xlarge": "htc_arm"},
}
"""Default partitions per CPU architecture of the submitting host (the workers')."""


class Ccin2p3(BatchSite):
    """CC-IN2P3's Slurm farm: executors ``small``, ``medium``, ``large`` and
    ``xlarge``, each block one core with the slot's memory; a job goes to the
    smallest slot that holds its (scaled) memory (keys: doc/sites.md).
    """

    default_resource_list = EXECUTOR_RESOURCES["HighThroughputExecutor"]

    DEFAULT_ACCOUNT = "lsst"
    DEFAULT_WALLTIME = "72:00:00"
    DEFAULT_SCHEDULER_OPTIONS = ("--licenses=sps",)

    def _section(self, slot: str) -> dict[str, Any]:
        """The slot's own settings that are set (``<slot>.<key>``), checked."""
        section = plain(self.site.search(slot, opt={"default": None})[1])
        if section is None:
            return {}
        if not isinstance(section, dict):
            raise ConfigurationError(
                f"'{self.where}.{slot}' is {section!r}: it must be a mapping of slot settings"
            )
        unknown = set(section) - {"memory", "max_blocks", "partition", "walltime", "scheduler_options"}
        if unknown:
            raise ConfigurationError(
                f"'{self.where}.{slot}.{sorted(unknown)[0]}' is not a slot setting: use memory, max_blocks, "
                "partition, walltime or scheduler_options"
            )
        for key, kind in (("memory", int), ("max_blocks", int), ("partition", str), ("walltime", str)):
            get_bps_config_value(section, key, kind, where=f"{self.where}.{slot}")
        return {key: value for key, value in section.items() if value is not None}

    def slot(self, slot: str) -> dict[str, Any]:
        """Settings of one slot size, with the defaults applied.

        Parameters
        ----------
        slot : `str`
            ``small``, ``medium``, ``large`` or ``xlarge``.

        Returns
        -------
        settings : `dict` [`str`, `~typing.Any`]
            ``memory`` (GB), ``max_blocks``, ``partition``, ``walltime``, ``scheduler_options``.
        """
        arch = platform.machine()
        section = self._section(slot)
        partition = section.get("partition", self.get("partition", str, _PARTITIONS.get(arch, {}).get(slot)))
        if partition is None:
            raise ConfigurationError(
                f"this host's architecture {arch} has no default partition at CC-IN2P3: set "
                f"'{self.where}.partition'"
            )
        key = f"{slot}.scheduler_options" if "scheduler_options" in section else "scheduler_options"
        raw = section.get(
            "scheduler_options", self.site.search("scheduler_options", opt={"default": None})[1]
        )
        options = list(self.DEFAULT_SCHEDULER_OPTIONS) if raw is None else plain(raw)
        options = [options] if isinstance(options, str) else options
        if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
            raise ConfigurationError(
                f"'{self.where}.{key}' is {options!r}: it must be a list of sbatch options"
            )
        settings = {**_SLOTS[slot], **section, "partition": partition, "scheduler_options": options}
        for key in ("memory", "max_blocks"):
            if settings[key] <= 0:
                raise ConfigurationError(
                    f"'{self.where}.{slot}.{key}' is {settings[key]}: it must be greater than 0"
                )
        walltime = section.get("walltime") or self.get("walltime", str, self.DEFAULT_WALLTIME)
        settings["walltime"] = normalize_walltime(walltime, f"{self.where}.{slot}.walltime")
        return settings

    @functools.cached_property
    def _memories(self) -> dict[str, int]:
        return {name: self.slot(name)["memory"] for name in _SLOTS}

    def get_executors(self) -> list[ParslExecutor]:
        from parsl.executors import HighThroughputExecutor

        from .slurm import SlurmProvider

        account = self.get("account", str, self.DEFAULT_ACCOUNT)
        executors = []
        for label in _SLOTS:
            slot = self.slot(label)
            provider = build(
                SlurmProvider,
                {
                    "partition": slot["partition"],
                    "account": account,
                    "nodes_per_block": 1,
                    "cores_per_node": 1,
                    "mem_per_node": slot["memory"],
                    "init_blocks": 0,
                    "min_blocks": 0,
                    "max_blocks": slot["max_blocks"],
                    "walltime": slot["walltime"],
                    "scheduler_options": "\n".join(f"#SBATCH {opt}" for opt in slot["scheduler_options"]),
                    "worker_init": "ulimit -n hard && ulimit -u hard",
                    "exclusive": False,
                },
                f"{self.where}.{label}",
            )
            executors.append(
                build(
                    HighThroughputExecutor,
                    {
                        "label": label,
                        "provider": provider,
                        "address": self.get_address(),
                        "max_workers_per_node": 1,
                        "poll_period": 1_000,
                        **self._htex_defaults({"block_error_handler": give_up_if_blocks_refused}),
                    },
                    f"{self.where}.{label}",
                )
            )
        return executors

    def default_address(self) -> str:
        from . import batchsite  # its functions looked up when called: tests replace them

        return batchsite.choose_address(
            batchsite.slurm_node_addresses(self.slot("small")["partition"]), self.where
        )

    def select_executor(self, job: ParslJob) -> str:
        memory = (job.request_memory or 0) / 1024  # GB
        return next((label for label, most in self._memories.items() if memory <= most), "xlarge")

    def get_parsl_config(self) -> parsl.config.Config:
        config = super().get_parsl_config()
        config.strategy = self.get("strategy", str, "htex_auto_scale")
        return config

    def validate(self) -> None:
        strategy = self.get("strategy", str, "htex_auto_scale")
        if strategy not in ("simple", "htex_auto_scale", "none"):
            raise ConfigurationError(
                f"'{self.where}.strategy' is {strategy!r}: use htex_auto_scale, simple or none"
            )
        super().validate()
