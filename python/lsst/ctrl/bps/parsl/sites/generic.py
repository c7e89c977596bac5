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

"""A site built from YAML alone: any Parsl provider, launcher and executor."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..site import ExecutorCapacity
from .batchsite import (
    BatchSite,
    normalize_walltime,
    require_work_queue,
    work_queue_spec,
)
from .local import local_pool_spec, machine_memory_mb, usable_cores
from .options import EXECUTORS, PROVIDERS, build, build_launcher, check_options, load_class, plain

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = ("Generic",)

_LOG = logging.getLogger(__name__)

_SECTION_KEYS = (
    "executor executor_options provider provider_options launcher launcher_options "
    "max_memory max_cpus labels cores memory"
).split()


@dataclass
class _ExecutorSpec:
    """One executor of a `Generic` site, as configured."""

    label: str
    kind: str
    where: str
    section: dict[str, Any]
    max_memory: int | None = None
    max_cpus: int | None = None
    labels: tuple[str, ...] = ()
    cores: int | None = None
    memory: int | None = None
    order: int = 0

    @property
    def size(self) -> tuple[float, float, int]:
        """Sort key: smaller limits first, then declaration order."""
        mem = math.inf if self.max_memory is None else self.max_memory
        cpus = math.inf if self.max_cpus is None else self.max_cpus
        return (mem, cpus, self.order)

    def fits(self, job: ParslJob) -> bool:
        """Whether the job's memory and cores are within this executor's limits."""
        memory, cpus, _ = self.size
        return (job.request_memory or 0) <= memory and (job.request_cpus or 1) <= cpus


class Generic(BatchSite):
    """A site described in YAML: executors, each a Parsl executor with a
    provider and a launcher, chosen per job by its label and resources
    (keys, and how a job's executor is chosen: doc/sites.md).
    """

    @functools.cached_property
    def specs(self) -> dict[str, _ExecutorSpec]:
        """The executors by label, as configured (parsed and checked once)."""
        where = f"{self.where}.executors"
        raw = self.site.search("executors", opt={"default": None})[1]
        if raw is None:
            raise ConfigurationError(
                f"missing required key '{where}': add one section per executor, e.g. "
                f"'executors: {{main: {{provider: slurm, provider_options: {{partition: debug}}}}}}'"
            )
        sections = plain(raw)
        if not isinstance(sections, dict) or not sections:
            raise ConfigurationError(
                f"'{where}' is {sections!r}: it must be a non-empty mapping label: settings"
            )
        specs = {}
        for order, (label, section) in enumerate(sections.items()):
            here = f"{where}.{label}"
            section = {} if section is None else section
            if not isinstance(section, dict):
                raise ConfigurationError(
                    f"'{here}' is {section!r}: it must be a mapping of executor settings"
                )
            for key in section:
                if key not in _SECTION_KEYS:
                    raise ConfigurationError(
                        f"'{here}.{key}' is not a setting of an executor: remove it or use one of "
                        + ", ".join(_SECTION_KEYS)
                    )
            kind = section.get("executor", "htex")
            load_class(EXECUTORS, kind, f"{here}.executor", "executor kind")
            kind = kind.lower()
            labels = section.get("labels") or ()
            if isinstance(labels, str):
                labels = (labels,)
            if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
                raise ConfigurationError(f"'{here}.labels' is {labels!r}: it must be a list of job labels")
            numbers = {key: section.get(key) for key in ("max_memory", "max_cpus", "cores", "memory")}
            for key, value in numbers.items():
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value <= 0
                ):
                    raise ConfigurationError(
                        f"'{here}.{key}' is {value!r}: it must be an integer greater than 0"
                    )
            spec = _ExecutorSpec(
                str(label), kind, here, section, labels=tuple(labels), order=order, **numbers
            )
            if kind == "threads":
                for key in ("provider", "provider_options", "launcher", "launcher_options"):
                    if key in section:
                        raise ConfigurationError(
                            f"'{here}.{key}' is set but a threads executor runs jobs on this machine: "
                            f"remove it or set '{here}.executor: htex'"
                        )
            else:
                for key in ("cores", "memory"):
                    if key in section:
                        raise ConfigurationError(
                            f"'{here}.{key}' only applies to 'executor: threads': remove it (limit jobs "
                            "with max_cpus/max_memory, size workers with executor_options)"
                        )
            specs[spec.label] = spec
        return specs

    def validate(self) -> None:
        self.__dict__.pop("specs", None)
        super().validate()

    def _provider(self, spec: _ExecutorSpec) -> Any:
        section = spec.section
        name = section.get("provider", "local")
        cls = load_class(PROVIDERS, name, f"{spec.where}.provider", "provider")
        options = check_options(
            cls,
            section.get("provider_options"),
            f"{spec.where}.provider_options",
            reserved={"launcher": f"use '{spec.where}.launcher' and '{spec.where}.launcher_options'"},
        )
        if isinstance(options.get("walltime"), str | int):
            # Parsl providers read HH:MM:SS; a bad value would only fail
            # when the first block is submitted.
            options["walltime"] = normalize_walltime(
                options["walltime"], f"{spec.where}.provider_options.walltime"
            )
        launcher = build_launcher(section.get("launcher"), section.get("launcher_options"), spec.where)
        if launcher is not None:
            options["launcher"] = launcher
        return build(cls, options, f"{spec.where}.provider_options")

    def _executor(self, spec: _ExecutorSpec) -> ParslExecutor:
        section = spec.section
        where = f"{spec.where}.executor_options"
        if spec.kind == "threads":
            from ..localpool import LocalPoolExecutor

            options = check_options(
                LocalPoolExecutor,
                section.get("executor_options"),
                where,
                reserved={
                    "label": f"it is the section name under {self.where}.executors",
                    "cores": f"use '{spec.where}.cores'",
                    "memory": f"use '{spec.where}.memory'",
                },
            )
            budget = {"cores": spec.cores or usable_cores(), "memory": spec.memory or machine_memory_mb()}
            return build(LocalPoolExecutor, {"label": spec.label, **budget, **options}, where)
        if spec.kind == "work_queue":
            require_work_queue(spec.where + ".executor")
        cls = load_class(EXECUTORS, spec.kind, f"{spec.where}.executor", "executor kind")
        reserved = {
            "label": f"it is the section name under {self.where}.executors",
            "provider": f"use '{spec.where}.provider' and '{spec.where}.provider_options'",
            "address": f"use '{self.where}.address'",
        }
        if spec.kind == "htex":
            reserved.update(self._heartbeat_reserved())
        options = check_options(cls, section.get("executor_options"), where, reserved=reserved)
        provider = self._provider(spec)
        base: dict[str, Any] = {"label": spec.label, "provider": provider, "address": self.get_address()}
        if spec.kind == "work_queue":
            base.update(shared_fs=True, autolabel=False)
        if spec.kind == "htex":
            base.update(self._htex_defaults())
        base.update(options)
        return build(cls, base, where)

    def get_executors(self) -> list[ParslExecutor]:
        return [self._executor(spec) for spec in self.specs.values()]

    def select_executor(self, job: ParslJob) -> str:
        specs = self.specs.values()
        dedicated = [s for s in specs if job.label in s.labels]
        candidates = dedicated or [s for s in specs if not s.labels]
        if not candidates:
            raise ConfigurationError(
                f"job '{job.name}' has label '{job.label}', which no executor of {self.where}.executors "
                "takes (each lists other 'labels'): add it to one executor's labels, or add an executor "
                "without labels"
            )
        fitting = sorted((s for s in candidates if s.fits(job)), key=lambda s: s.size)
        if fitting:
            return fitting[0].label
        largest = max(candidates, key=lambda s: s.size)
        if job.final:
            # The final job runs alone after all others: give it the largest.
            return largest.label
        if job.attempt > 1:
            # A retry whose memory was scaled beyond every executor: run it on
            # the largest rather than stop the whole run.
            _LOG.warning(
                "job %s attempt %d asks for %s MB and %s cores, more than any executor of %s takes; "
                "running it on '%s'",
                job.name,
                job.attempt,
                job.request_memory,
                job.request_cpus,
                self.where,
                largest.label,
            )
            return largest.label
        limits = ", ".join(
            f"{s.label}: max_memory={s.max_memory}, max_cpus={s.max_cpus}"
            for s in sorted(candidates, key=lambda s: s.size)
        )
        raise ConfigurationError(
            f"job '{job.name}' (label '{job.label}') asks for {job.request_memory} MB and "
            f"{job.request_cpus} cores, which no executor of {self.where}.executors takes ({limits}): raise "
            f"'{largest.where}.max_memory'/'max_cpus' (or drop them for no limit), or lower requestMemory/"
            f"requestCpus for label '{job.label}'"
        )

    def capacity(self, label: str) -> ExecutorCapacity | None:
        spec = self.specs[label]
        if spec.kind != "threads":
            return None
        return ExecutorCapacity(cores=spec.cores or usable_cores(), memory=spec.memory or machine_memory_mb())

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        if self._resource_list is not None or (kind := self.specs[label].kind) == "htex":
            return super().resource_specification(job, label)
        if kind == "work_queue":
            return work_queue_spec(job)
        capacity = self.capacity(label)
        assert capacity is not None, "a threads executor always has a capacity"
        return local_pool_spec(job, capacity.cores, capacity.memory)
