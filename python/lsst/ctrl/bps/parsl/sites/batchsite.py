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
"""What the batch sites share: `BatchSite` (the ``address``, ``interface``
and heartbeat keys), walltimes, and the resource specifications of Parsl's
HighThroughputExecutor and WorkQueueExecutor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..job import parse_walltime, priority_number
from ..site import SiteConfig

if TYPE_CHECKING:
    from ..job import ParslJob

__all__ = (
    "BatchSite",
    "heartbeat_reserved",
    "htex_defaults",
    "htex_spec",
    "normalize_walltime",
    "require_work_queue",
    "work_queue_spec",
)

_HEARTBEAT_PERIOD = 10
_HEARTBEAT_THRESHOLD = 40


def normalize_walltime(value: Any, name: str) -> str:
    """Return a walltime (``HH:MM:SS``, ``D-HH:MM:SS`` or minutes, as a
    string) as ``HH:MM:SS``; a YAML number is refused (unquoted ``1:00:00``
    is 3600 to YAML).

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


def work_queue_spec(job: ParslJob) -> dict[str, Any]:
    """``parsl_resource_specification`` for a WorkQueueExecutor: cores,
    memory and disk (MB) always (Work Queue wants all three or none),
    running_time_min and priority when set.

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    spec : `dict` [`str`, `~typing.Any`]
        The resource specification.
    """
    return {k: v for k, v in job.get_resources().items() if v is not None or k in ("cores", "memory", "disk")}


def heartbeat_reserved(where: str) -> dict[str, str]:
    """``executor_options`` a site sets from its heartbeat keys, with how to set them.

    Parameters
    ----------
    where : `str`
        The site's key path.

    Returns
    -------
    reserved : `dict` [`str`, `str`]
        What to set instead, by option name.
    """
    return {key: f"use '{where}.{key}'" for key in ("heartbeat_period", "heartbeat_threshold")}


def htex_defaults(site: BatchSite, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """HighThroughputExecutor arguments every batch site sets: the heartbeats
    and a block error handler that does not give up on the executor for a
    lost block (`~.slurm_provider.tolerate_lost_blocks`).

    Parameters
    ----------
    site : `BatchSite`
        The site.
    defaults : `dict` [`str`, `~typing.Any`], optional
        The site class's own heartbeats and block error handler.

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
    ``priority`` (lower first), `None` without one.

    Parameters
    ----------
    job : `ParslJob`
        The job.

    Returns
    -------
    spec : `dict` [`str`, `~typing.Any`] or `None`
        The resource specification.
    """
    priority = priority_number(job.priority)
    return None if priority is None else {"priority": priority}


class BatchSite(SiteConfig):
    """Base of the sites whose workers run elsewhere and call back.

    Keys: ``address``, ``interface``, ``heartbeat_period`` (default 10 s),
    ``heartbeat_threshold`` (default 40 s); see doc/sites.md.
    """

    def heartbeat_options(self, period: int | None = None, threshold: int | None = None) -> dict[str, int]:
        """``heartbeat_period`` and ``heartbeat_threshold`` from the site's keys.

        Parameters
        ----------
        period, threshold : `int`, optional
            The site class's defaults of the keys (default 10 and 40 s).

        Returns
        -------
        options : `dict` [`str`, `int`]
            The two HighThroughputExecutor arguments, in seconds.

        Raises
        ------
        ConfigurationError
            If a key is not whole seconds above 0, or the threshold not above the period.
        """
        period = self.get_positive("heartbeat_period", int, period or _HEARTBEAT_PERIOD)
        threshold = self.get_positive("heartbeat_threshold", int, threshold or _HEARTBEAT_THRESHOLD)
        if threshold <= period:
            raise ConfigurationError(
                f"'{self.where}.heartbeat_threshold' ({threshold}) must be greater than "
                f"'{self.where}.heartbeat_period' ({period}): set it to a few periods, e.g. {4 * period}"
            )
        return {"heartbeat_period": period, "heartbeat_threshold": threshold}

    def _required_walltime(self, default: str | None) -> str:
        """The ``walltime`` key as ``HH:MM:SS``; required unless the class gives a ``default``."""
        found, value = self.site.search("walltime", opt={"default": None})
        if not found or value is None:
            if default is None:
                raise ConfigurationError(
                    f"missing required key '{self.where}.walltime': add it, quoted, e.g. walltime: \"01:00:00\""
                )
            value = default
        return normalize_walltime(value, f"{self.where}.walltime")

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
        """The workers' address of this host without ``address`` or
        ``interface``: the source of the route to `address_targets`, else
        this host's first address that is not loopback.

        Returns
        -------
        address : `str`
            The address.
        """
        from .address import choose_address

        return choose_address(self.address_targets(), self.where)

    def address_targets(self) -> list[str]:
        """Hosts the workers run on, or the batch system's controller (default: none known).

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
    """Raise a one-line `ConfigurationError` if Work Queue (``ndcctools``) is not importable.

    Parameters
    ----------
    key : `str`
        The key that asks for Work Queue.
    instead : `str`, optional
        What the message offers instead.

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
