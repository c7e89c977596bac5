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

"""What the batch sites share: `BatchSite` (the ``address`` and heartbeat
keys), walltime and priority conversion, and the resource specifications of
Parsl's HighThroughputExecutor and WorkQueueExecutor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..job import parse_walltime, priority_number, walltime_minutes
from ..site import SiteConfig

if TYPE_CHECKING:
    from ..job import ParslJob

__all__ = (
    "HEARTBEAT_PERIOD",
    "HEARTBEAT_THRESHOLD",
    "BatchSite",
    "heartbeat_reserved",
    "htex_defaults",
    "htex_spec",
    "job_priority",
    "job_walltime_minutes",
    "normalize_walltime",
    "require_work_queue",
    "work_queue_spec",
)

HEARTBEAT_PERIOD = 10
"""Default of the ``heartbeat_period`` key (seconds): how often a worker
pool and the HTEX interchange tell each other they are alive."""

HEARTBEAT_THRESHOLD = 40
"""Default of the ``heartbeat_threshold`` key (seconds): silence after which
the interchange fails a worker pool's tasks with ``ManagerLost`` (a lost
node is noticed 30-40 s after it dies) and a worker pool that hears nothing
from the interchange exits."""


def normalize_walltime(value: Any, name: str) -> str:
    """Return a walltime as ``HH:MM:SS``.

    Accepts ``HH:MM:SS``, ``D-HH:MM:SS`` and a number of minutes given as a
    string. A YAML integer is refused: unquoted ``1:00:00`` is read by YAML
    as 3600 (sexagesimal), which is almost never what was meant.

    Parameters
    ----------
    value : `~typing.Any`
        The key's value from the YAML.
    name : `str`
        Full name of the key, for the error message.

    Returns
    -------
    walltime : `str`
        The walltime as ``HH:MM:SS`` (hours may exceed 24).

    Raises
    ------
    ConfigurationError
        If the value is not a string or not a walltime.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ConfigurationError(
            f"'{name}' is {value!r} ({type(value).__name__}): quote it in YAML, e.g. \"01:00:00\" "
            "(unquoted H:MM:SS is read as a number of seconds)"
        )
    seconds = parse_walltime(value, name)
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def job_priority(job: ParslJob) -> int | float | None:
    """The job's BPS ``priority`` as a number, or `None`.

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    priority : `int`, `float` or `None`
        The priority.
    """
    return priority_number(job.priority)


def job_walltime_minutes(job: ParslJob) -> int | None:
    """The job's BPS ``requestWalltime`` in whole minutes, or `None`.

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    minutes : `int` or `None`
        The walltime, rounded up.
    """
    return walltime_minutes(job.request_walltime)


def work_queue_spec(job: ParslJob) -> dict[str, Any]:
    """``parsl_resource_specification`` for a WorkQueueExecutor: cores,
    memory (MB) and disk (MB) always (Work Queue wants all three or none),
    running_time_min and priority when the job sets them.

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    spec : `dict` [`str`, `~typing.Any`]
        The resource specification.
    """
    resources = job.get_resources()
    return {
        key: value
        for key, value in resources.items()
        if value is not None or key in ("cores", "memory", "disk")
    }


def heartbeat_reserved(where: str) -> dict[str, str]:
    """``executor_options`` a site sets from its heartbeat keys, with how to set them.

    Parameters
    ----------
    where : `str`
        The site's key path.

    Returns
    -------
    reserved : `dict` [`str`, `str`]
        What to set instead, by reserved option name.
    """
    return {key: f"use '{where}.{key}'" for key in ("heartbeat_period", "heartbeat_threshold")}


def htex_defaults(site: BatchSite, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """HighThroughputExecutor arguments every batch site sets: the
    heartbeats (`BatchSite.heartbeat_options`, over the site class's
    ``defaults``) and a block error handler that does not give up on the
    executor for a block lost with its node or worker pool
    (`~.slurm_provider.tolerate_lost_blocks`).

    Parameters
    ----------
    site : `BatchSite`
        The site.
    defaults : `dict` [`str`, `~typing.Any`], optional
        The site class's own heartbeat defaults and block error handler.

    Returns
    -------
    options : `dict` [`str`, `~typing.Any`]
        Executor arguments.
    """
    from .slurm_provider import tolerate_lost_blocks

    defaults = defaults or {}
    options: dict[str, Any] = site.heartbeat_options(
        defaults.get("heartbeat_period"), defaults.get("heartbeat_threshold")
    )
    options["block_error_handler"] = defaults.get("block_error_handler", tolerate_lost_blocks)
    return options


def htex_spec(job: ParslJob) -> dict[str, Any] | None:
    """``parsl_resource_specification`` for a HighThroughputExecutor: only
    ``priority`` (the interchange hands out lower values first).

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    spec : `dict` [`str`, `~typing.Any`] or `None`
        The resource specification, `None` when the job has no priority.
    """
    priority = job_priority(job)
    return None if priority is None else {"priority": priority}


class BatchSite(SiteConfig):
    """Base of the sites whose workers run elsewhere and call back.

    Keys ``address`` (`str`): the address workers use to reach the
    submitting host; ``interface`` (`str`): take it from this network
    interface instead. Default: `default_address`. ``heartbeat_period`` and
    ``heartbeat_threshold`` (`int`, seconds; defaults `HEARTBEAT_PERIOD`,
    `HEARTBEAT_THRESHOLD`): the heartbeats of its HighThroughputExecutors
    (`heartbeat_options`).
    """

    def heartbeat_options(self, period: int | None = None, threshold: int | None = None) -> dict[str, int]:
        """HighThroughputExecutor arguments ``heartbeat_period`` and
        ``heartbeat_threshold`` from the site's keys of the same names.

        Parameters
        ----------
        period, threshold : `int`, optional
            Defaults of the keys (a site class's own choice); default
            `HEARTBEAT_PERIOD` and `HEARTBEAT_THRESHOLD`.

        Returns
        -------
        options : `dict` [`str`, `int`]
            ``heartbeat_period`` and ``heartbeat_threshold`` in seconds.

        Raises
        ------
        ConfigurationError
            If a key is not a whole number of seconds above 0, or the
            threshold is not above the period.
        """
        period = self.get_positive("heartbeat_period", int, period or HEARTBEAT_PERIOD)
        threshold = self.get_positive("heartbeat_threshold", int, threshold or HEARTBEAT_THRESHOLD)
        if threshold <= period:
            raise ConfigurationError(
                f"'{self.where}.heartbeat_threshold' ({threshold}) must be greater than "
                f"'{self.where}.heartbeat_period' ({period}): set it to a few periods, e.g. {4 * period}"
            )
        return {"heartbeat_period": period, "heartbeat_threshold": threshold}

    def get_address(self) -> str:
        address = self.get("address", str, None)
        interface = self.get("interface", str, None)
        if address and interface:
            raise ConfigurationError(
                f"'{self.where}.address' and '{self.where}.interface' are both set: keep one"
            )
        if address:
            return address
        if interface:
            from .address import interface_address

            return interface_address(interface, self.where)
        cached = getattr(self, "_default_address", None)
        if cached is None:
            cached = self.default_address()
            self._default_address = cached
        return cached

    def default_address(self) -> str:
        """The address workers reach this host at when neither ``address``
        nor ``interface`` is set: the source address of the route to the
        batch system's hosts (`address_targets`), else this host's first
        address that is not loopback.

        Returns
        -------
        address : `str`
            The address.
        """
        from .address import choose_address

        return choose_address(self.address_targets(), self.where)

    def address_targets(self) -> list[str]:
        """Hosts the workers run on, or the batch system's controller, as
        far as this host can tell (default: none known).

        Returns
        -------
        targets : `list` [`str`]
            Host names or addresses.
        """
        return []

    def validate(self) -> None:
        self.get("address", str, None)
        self.get("interface", str, None)
        self.heartbeat_options()
        super().validate()


def require_work_queue(key: str, instead: str = "use an htex executor") -> None:
    """Raise a one-line `ConfigurationError` if Work Queue (``ndcctools``)
    is not importable; ``instead`` says what to do otherwise.

    Parameters
    ----------
    key : `str`
        The key that asks for Work Queue, for the message.
    instead : `str`, optional
        The alternative the message offers.

    Raises
    ------
    ConfigurationError
        If ``ndcctools`` is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("ndcctools") is None:
        raise ConfigurationError(
            f"'{key}' needs Work Queue, but the ndcctools package is not installed: install it "
            f"(conda install -c conda-forge ndcctools) or {instead}"
        )
