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

"""Base class of site configurations: BPS configuration in, Parsl executors out."""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lsst.ctrl.bps import BpsConfig
from lsst.utils import doImport

from .configuration import (
    ConfigurationError,
    RunSettings,
    SiteSettings,
    get_bps_config_value,
    get_workflow_name,
)
from .job import RESOURCE_NAMES

if TYPE_CHECKING:
    import parsl.config
    from parsl.executors.base import ParslExecutor
    from parsl.monitoring import MonitoringHub

    from .job import ParslJob

__all__ = ("EXECUTOR_RESOURCES", "ExecutorCapacity", "SiteConfig")

EXECUTOR_RESOURCES: dict[str, tuple[str, ...]] = {
    "HighThroughputExecutor": ("priority",),
    "WorkQueueExecutor": ("memory", "cores", "disk", "running_time_min", "priority"),
    "TaskVineExecutor": ("memory", "cores", "disk", "running_time_min", "priority"),
    "LocalPoolExecutor": ("cores", "memory", "running_time_min"),
    "ThreadPoolExecutor": (),
}
"""The job resources each executor type takes in a task's
``parsl_resource_specification``: the old plugin's table plus the local pool
and Parsl's thread pool (doc/sites.md)."""


@dataclass(frozen=True, slots=True)
class ExecutorCapacity:
    """What one executor that runs jobs on this machine can run at once: ``cores`` and ``memory`` (MB;
    `None`: not limited); `prepare` refuses a job that asks for more (batch executors have none).
    """

    cores: int
    memory: int | None = None


class SiteConfig(ABC):
    """Configuration of a compute site: which Parsl executors run the jobs.

    Subclasses implement `get_executors` and `select_executor`; the site's
    keys are ``site.<computeSite>`` of the BPS configuration.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration.
    resource_list : `list` [`str`], optional
        Names of `ParslJob.get_resources` sent with each job as its
        ``parsl_resource_specification`` (doc/sites.md); `None`: the site's default.
    """

    default_resource_list: tuple[str, ...] | None = None
    """``resource_list`` when the constructor is given none (`None`: send nothing)."""

    def __init__(self, config: BpsConfig, resource_list: list[str] | None = None):
        self.config = config
        self.compute_site = get_bps_config_value(config, "computeSite", str, required=True)
        self.site = self.get_site_subconfig(config)
        self.where = f"site.{self.compute_site}"
        self.resource_list = resource_list
        self.submit_path: str | None = None
        """Submit directory of the run; set before `get_parsl_config`."""

    @property
    def resource_list(self) -> list[str] | None:
        """Names of the job resources sent with each job (else `default_resource_list`)."""
        if self._resource_list is not None:
            return self._resource_list
        default = type(self).default_resource_list
        return None if default is None else list(default)

    @resource_list.setter
    def resource_list(self, value: list[str] | None) -> None:
        if value is not None:
            names = ", ".join(RESOURCE_NAMES)
            passes = f"site class {type(self).__name__} passes resource_list"
            if isinstance(value, str) or not all(isinstance(key, str) for key in value):
                raise ConfigurationError(f"{passes} {value!r}: it must be a list of names among {names}")
            unknown = [key for key in value if key not in RESOURCE_NAMES]
            if unknown:
                raise ConfigurationError(
                    f"{passes} {list(value)}: {unknown} are not job resources; use names among {names}"
                )
            value = list(value)
        self._resource_list = value

    @staticmethod
    def get_site_subconfig(config: BpsConfig) -> BpsConfig:
        """Return the ``site.<computeSite>`` section of the configuration.

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration.

        Returns
        -------
        site : `lsst.ctrl.bps.BpsConfig`
            The site's section.

        Raises
        ------
        ConfigurationError
            If ``computeSite`` is missing or names no section.
        """
        compute_site = get_bps_config_value(config, "computeSite", str, required=True)
        found, site = config.search(f".site.{compute_site}", opt={"default": None})
        if not found or site is None:
            raise ConfigurationError(
                f"no section 'site.{compute_site}' for computeSite '{compute_site}': add "
                f"'site: {{{compute_site}: {{class: lsst.ctrl.bps.parsl.sites.Local}}}}' or change computeSite"
            )
        if not isinstance(site, BpsConfig | dict):
            raise ConfigurationError(
                f"'site.{compute_site}' is {site!r}: it must be a mapping of site settings"
            )
        return site if isinstance(site, BpsConfig) else BpsConfig(site)

    @classmethod
    def from_config(cls, config: BpsConfig) -> SiteConfig:
        """Build the site configuration named by ``site.<computeSite>.class``.

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration.

        Returns
        -------
        site : `SiteConfig`
            The site configuration.

        Raises
        ------
        ConfigurationError
            If the class is missing, cannot be imported or is no `SiteConfig`.
        """
        site = cls.get_site_subconfig(config)
        where = f"site.{config['computeSite']}"
        key = f"{where}.class"
        name = get_bps_config_value(site, "class", str, required=True, where=where)
        try:
            site_class = doImport(name)
        except (ImportError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(
                f"'{key}' is {name!r}, which cannot be imported ({exc}): use e.g. "
                "lsst.ctrl.bps.parsl.sites.Local"
            ) from None
        if not (isinstance(site_class, type) and issubclass(site_class, SiteConfig)):
            raise ConfigurationError(
                f"'{key}' is {name!r}, which is not a SiteConfig subclass: use e.g. "
                "lsst.ctrl.bps.parsl.sites.Local"
            )
        return site_class(config)

    @functools.cached_property
    def settings(self) -> SiteSettings:
        """The keys every site reads (`SiteSettings`), read and checked once."""
        return SiteSettings.read(self.site, self.where)

    def get(
        self, key: str, data_type: Any, default: Any = None, required: bool = False, positive: bool = False
    ) -> Any:
        """Typed lookup of a key of this site's section (`get_bps_config_value`).

        Parameters
        ----------
        key, data_type, default, required
            As `get_bps_config_value`'s ``key``, ``dataType``, ``default``, ``required``.
        positive : `bool`, optional
            Whether a value must be greater than zero.

        Returns
        -------
        value : `~typing.Any`
            The value, else ``default``.
        """
        value = get_bps_config_value(self.site, key, data_type, default, required=required, where=self.where)
        if positive and value is not None and value <= 0:
            raise ConfigurationError(f"'{self.where}.{key}' is {value!r}: it must be greater than 0")
        return value

    @abstractmethod
    def get_executors(self) -> list[ParslExecutor]:
        """Build the Parsl executors of this site, each with a unique label."""
        raise NotImplementedError

    @abstractmethod
    def select_executor(self, job: ParslJob) -> str:
        """Return the label of the executor that runs ``job`` (asked again for each retry).

        Parameters
        ----------
        job : `ParslJob`
            The job's attempt.

        Returns
        -------
        label : `str`
            Label of one of the site's executors.
        """
        raise NotImplementedError

    def executor_labels(self) -> list[str]:
        """Labels of this site's executors (built once per site object).

        Returns
        -------
        labels : `list` [`str`]
            The labels, in the order of `get_executors`.
        """
        if "_executor_labels" not in vars(self):
            self._executor_labels = [executor.label for executor in self.get_executors()]
        return self._executor_labels

    def capacity(self, label: str) -> ExecutorCapacity | None:
        """Return what the executor ``label`` can run at once (`None`: its batch system decides).

        Parameters
        ----------
        label : `str`
            Label of the executor.

        Returns
        -------
        capacity : `ExecutorCapacity` or `None`
            The executor's cores and memory.
        """
        return None

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        """Return Parsl's ``parsl_resource_specification`` for a job: its values of ``resource_list``'s names.

        Parameters
        ----------
        job : `ParslJob`
            The job's attempt.
        label : `str`
            Label of the executor chosen for it.

        Returns
        -------
        spec : `dict` [`str`, `~typing.Any`] or `None`
            The resource specification; `None` sends none.
        """
        if not self.resource_list:
            return None
        resources = job.get_resources()
        spec = {key: resources[key] for key in self.resource_list if resources.get(key) is not None}
        return spec or None

    def get_address(self) -> str:
        """Return the address workers use to reach the submitting host.

        Returns
        -------
        address : `str`
            Address or host name.
        """
        from parsl.addresses import address_by_hostname

        return address_by_hostname()

    def get_command_prefix(self) -> str:
        """Return shell commands run before each job's command line:
        ``commandPrefix``, then with ``environment`` a copy of the submitting
        process's environment, written once in the submit directory.

        Returns
        -------
        prefix : `str`
            Shell lines (may be empty).
        """
        prefix = self.settings.command_prefix
        if self.settings.environment:
            import shlex

            from .oneline import write_private
            from .prepare.commands import environment_script

            if self.submit_path is None:
                raise RuntimeError("submit_path must be set before get_command_prefix")
            env_file = write_private(
                os.path.join(self.submit_path, "parsl", "environment.sh"), environment_script()
            )
            source = f". {shlex.quote(env_file)}"
            prefix = f"{prefix}\n{source}" if prefix else source
        return prefix

    default_retries = 1
    """Retries of a job when neither ``retries`` nor ``numberOfRetries`` is set."""

    @property
    def run_dir(self) -> str:
        """Parsl's run directory (key ``run_dir``), from the submit directory."""
        run_dir = self.settings.run_dir
        return os.path.join(
            self.submit_path or ".", os.path.expanduser(run_dir) if run_dir else "parsl/runinfo"
        )

    def monitoring_filename(self) -> str | None:
        """Path of the Parsl monitoring database, or `None` if monitoring is off.

        Returns
        -------
        path : `str` or `None`
            The path (relative to ``<submit>/parsl`` unless absolute).
        """
        if not self.settings.monitor_enable:
            return None
        filename = self.settings.monitor_filename
        if not os.path.isabs(filename) and self.submit_path:
            filename = os.path.join(self.submit_path, "parsl", filename)
        return filename

    def get_monitor(self) -> MonitoringHub | None:
        """Return a Parsl monitoring hub, if ``monitorEnable`` is true.

        Returns
        -------
        monitor : `parsl.monitoring.MonitoringHub` or `None`
            The hub writing to `monitoring_filename`.
        """
        filename = self.monitoring_filename()
        if filename is None:
            return None
        from parsl.monitoring import MonitoringHub

        os.makedirs(os.path.dirname(filename), exist_ok=True)
        return MonitoringHub(
            workflow_name=get_workflow_name(self.config),
            resource_monitoring_interval=self.settings.monitor_interval,
            logging_endpoint=f"sqlite:///{filename}",
        )

    def get_parsl_config(self) -> parsl.config.Config:
        """Return the Parsl configuration: executors, monitoring, run dir (no retries: the plugin's).

        Returns
        -------
        config : `parsl.config.Config`
            The configuration the driver starts Parsl with.
        """
        import parsl.config

        return parsl.config.Config(
            executors=self.get_executors(),
            monitoring=self.get_monitor(),
            retries=0,
            run_dir=self.run_dir,
            strategy="simple",  # reliability.md W2 says why not htex_auto_scale
            strategy_period=self.settings.strategy_period,
            max_idletime=self.settings.max_idle_time,
            initialize_logging=False,
        )

    def validate(self) -> None:
        """Check the site's settings, executors and common keys without starting anything."""
        labels = self.executor_labels()
        if len(set(labels)) != len(labels):
            raise ConfigurationError(f"'{self.where}': executor labels must be unique, got {labels}")
        self.settings  # noqa: B018
        RunSettings.read(self.config)
        resource_list = self.resource_list or []
        for executor in self.get_executors() if resource_list else ():
            kind = type(executor).__name__
            accepted = EXECUTOR_RESOURCES.get(kind)
            if accepted is None or (
                kind == "HighThroughputExecutor" and getattr(executor, "enable_mpi_mode", False)
            ):
                continue  # not known: anything is passed on
            refused = [key for key in resource_list if key not in accepted]
            if refused:
                raise ConfigurationError(
                    f"site class {type(self).__name__} passes resource_list {resource_list}, but its "
                    f"executor '{executor.label}' ({kind}) does not take {refused} (it takes: "
                    f"{', '.join(sorted(accepted)) or 'none'}): drop them from resource_list or use another executor"
                )
