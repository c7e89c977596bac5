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

"""Typed, checked BPS configuration values; the plugin's keys, read once (errors: key and fix)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self, TypeVar, cast, overload

from lsst.ctrl.bps import BpsConfig

from .oneline import ShownMessageError, shown

__all__ = (
    "RUN_KEYS",
    "SITE_KEYS",
    "ConfigurationError",
    "ConfigurationTypeError",
    "Key",
    "MIN_STALE_AFTER",
    "MissingConfigurationError",
    "RunSettings",
    "SiteSettings",
    "default_of",
    "get_bps_config_value",
    "get_workflow_filename",
    "get_workflow_name",
    "set_parsl_logging",
)

T = TypeVar("T")


class ConfigurationError(ShownMessageError, ValueError):
    """A BPS configuration value is missing or invalid (one line: the key and the fix)."""


class MissingConfigurationError(ConfigurationError, KeyError):
    """A required BPS configuration value is missing (a `KeyError`, as the old plugin raised)."""

    def __str__(self) -> str:  # KeyError's would print the message quoted
        return shown(BaseException.__str__(self), limit=4000)


class ConfigurationTypeError(ConfigurationError, RuntimeError):
    """A BPS configuration value has the wrong type (a `RuntimeError`, as the old plugin raised)."""


# The overloads and the ``dataType`` name are the old plugin's, so that site
# code written against it type-checks and runs unchanged.
@overload
def get_bps_config_value(
    config: BpsConfig | dict,
    key: str,
    dataType: type[T],  # noqa: N803
    default: T,
    *,
    where: str | None = None,
) -> T: ...


@overload
def get_bps_config_value(
    config: BpsConfig | dict,
    key: str,
    dataType: type[T],  # noqa: N803
    default: T | None = None,
    *,
    required: Literal[True],
    where: str | None = None,
) -> T: ...


@overload
def get_bps_config_value(
    config: BpsConfig | dict,
    key: str,
    dataType: type[T] | tuple[type, ...],  # noqa: N803
    default: T | None = None,
    *,
    required: bool = False,
    where: str | None = None,
) -> T | None: ...


def get_bps_config_value(
    config: BpsConfig | dict,
    key: str,
    dataType: type[T] | tuple[type, ...],  # noqa: N803
    default: T | None = None,
    *,
    required: bool = False,
    where: str | None = None,
) -> T | None:
    """Look up ``key`` in a BPS configuration and check its type.

    Parameters
    ----------
    config : `BpsConfig` or `dict`
        Configuration to search (environment variables and ``{vars}`` expanded).
    key : `str`
        Key to look up.
    dataType : `type` or `tuple` [`type`]
        Type(s) the value must have (an `int` is taken, as a `float`, for a `float`).
    default : optional
        Value when the key is absent or null.
    required : `bool`, optional
        Whether the value (configured or default) may not be `None`.
    where : `str`, optional
        Prefix for the key in messages, e.g. ``site.local``.

    Returns
    -------
    value
        The configured value, else ``default``.

    Raises
    ------
    MissingConfigurationError
        If the value is ``required`` and missing.
    ConfigurationTypeError
        If the value has the wrong type.
    """
    name = f"{where}.{key}" if where else key
    if isinstance(config, BpsConfig):
        opts: dict[str, Any] = {"expandEnvVars": True, "replaceVars": True, "required": False}
        found, value = config.search(key, opts)
    else:
        found, value = (key in config), config.get(key)
    if not found or value is None:
        if default is None and required:
            raise MissingConfigurationError(f"missing required key '{name}': add it to your submit YAML")
        return default
    wanted = dataType if isinstance(dataType, tuple) else (dataType,)
    kind = " or ".join(t.__name__ for t in wanted)
    if float in wanted and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
        raise ConfigurationTypeError(f"'{name}' is {value!r} ({type(value).__name__}): it must be a {kind}")
    return cast(T, value)


def get_workflow_name(config: BpsConfig) -> str:
    """Workflow name for Parsl monitoring and batch job names (as the old plugin's).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration.

    Returns
    -------
    name : `str`
        ``<project>.<campaign>`` (``campaign`` defaults to ``operator``),
        else ``uniqProcName``, else ``bps.<operator>``.
    """
    project = get_bps_config_value(config, "project", str, None)
    operator = get_bps_config_value(config, "operator", str, "unknown")
    if project is None:
        unique = get_bps_config_value(config, "uniqProcName", str, None)
        return unique if unique else f"bps.{operator}"
    campaign = get_bps_config_value(config, "campaign", str, operator)
    return f"{project}.{campaign}"


def get_workflow_filename(out_prefix: str) -> str:
    """Return the file in which a prepared workflow is kept.

    Parameters
    ----------
    out_prefix : `str`
        Submit directory.

    Returns
    -------
    filename : `str`
        The run-state database (the old plugin kept a pickle).
    """
    from .store.runstore import db_path

    return db_path(out_prefix)


_LOG_LEVELS = ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG")


def set_parsl_logging(config: BpsConfig) -> int:
    """Set the level of Parsl's loggers from ``parsl.log_level``.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration.

    Returns
    -------
    level : `int`
        The level given to ``parsl`` and to its children that had their own.
    """
    level = logging.getLevelNamesMapping()[RunSettings.read(config).parsl_log_level.upper()]
    logging.getLogger("parsl").setLevel(level)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("parsl.") and isinstance(logger, logging.Logger) and logger.level:
            logger.setLevel(level)
    return level


@dataclass(frozen=True)
class Key:
    """One plugin key: YAML ``name``, ``kind``, ``default``, ``check`` (gives the fix)."""

    name: str
    kind: type
    default: Any
    check: Callable[[Any], str | None] | None = None


def _key(name: str, kind: type, default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
    """A settings field read from the key ``name``."""
    return field(default=default, metadata={"key": Key(name, kind, default, check)})


def _at_least(low: float, fix: str) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else fix


def _above_zero(value: Any) -> str | None:
    return None if value > 0 else "it must be greater than 0"


_zero_or_more = _at_least(0, "it must be 0 or more")


MIN_STALE_AFTER = 2.0
"""The shortest ``parslDriverStaleAfter`` (seconds): heartbeats come every second."""


class _Settings:
    @classmethod
    def read(cls, config: BpsConfig | dict, where: str | None = None) -> Self:
        """Read and check the keys (from the ``site.<name>`` section for `SiteSettings`).

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig` or `dict`
            The BPS configuration, or the site's section.
        where : `str`, optional
            The section's name in messages (``site.<name>``).

        Returns
        -------
        settings : `RunSettings` or `SiteSettings`
            The values, one field per key.

        Raises
        ------
        ConfigurationError
            One line naming the first bad key and the fix.
        """
        values = {}
        for name, key in _keys_by_field(cls).items():
            value = get_bps_config_value(config, key.name, key.kind, key.default, where=where)
            fix = key.check(value) if key.check is not None and value is not None else None
            if fix is not None:
                shown_name = key.name if where is None else f"{where}.{key.name}"
                raise ConfigurationError(f"'{shown_name.lstrip('.')}' is {value!r}: {fix}")
            values[name] = value
        return cls(**values)


def _keys_by_field(cls: type) -> dict[str, Key]:
    return {item.name: item.metadata["key"] for item in fields(cls)}


@dataclass(frozen=True)
class RunSettings(_Settings):
    """The plugin's run-wide keys (`RUN_KEYS`), one field per key."""

    detach: bool = _key("parslDetach", bool, False)
    progress_interval: float = _key(
        "parslProgressInterval", float, 30.0, _at_least(0, "use 0 (off) or a number of seconds")
    )
    progress_by_label: bool = _key("parslProgressByLabel", bool, False)
    driver_stale_after: float = _key(
        "parslDriverStaleAfter",
        float,
        30.0,
        _at_least(
            MIN_STALE_AFTER,
            "use at least 2 seconds (default 30); longer than the longest pause of the shared file system",
        ),
    )
    dispatch_order: str = _key(
        "parslDispatchOrder",
        str,
        "priority",
        lambda value: (
            None
            if value in ("priority", "fifo")
            else "use 'priority' (priority, then critical path) or 'fifo'"
        ),
    )
    parsl_log_level: str = _key(
        ".parsl.log_level",
        str,
        "WARNING",
        lambda value: None if value.upper() in _LOG_LEVELS else f"use one of {', '.join(_LOG_LEVELS)}",
    )


@dataclass(frozen=True)
class SiteSettings(_Settings):
    """The keys every site reads (`SITE_KEYS`), one field per key (``retries`` `None`: unset)."""

    retries: int | None = _key("retries", int, None, _zero_or_more)
    infrastructure_retries: int = _key("infrastructureRetries", int, 3, _zero_or_more)
    max_idle_time: float = _key("maxIdleTime", float, 30.0, _above_zero)
    strategy_period: float = _key("strategyPeriod", float, 1.0, _above_zero)
    job_shell: str = _key(
        "jobShell",
        str,
        "/bin/bash",
        lambda value: None if os.path.isabs(value) else "give an absolute path, e.g. /bin/bash",
    )
    command_prefix: str = _key("commandPrefix", str, "")
    environment: bool = _key("environment", bool, False)
    monitor_enable: bool = _key("monitorEnable", bool, False)
    monitor_interval: float = _key("monitorInterval", float, 30.0, _above_zero)
    monitor_filename: str = _key("monitorFilename", str, "monitoring.db")
    run_dir: str | None = _key("run_dir", str, None)
    warm_start: bool = _key("warmStart", bool, True)


RUN_KEYS = tuple(_keys_by_field(RunSettings).values())
"""The plugin's run-wide keys (doc/configuration.md has a row for each)."""

SITE_KEYS = tuple(_keys_by_field(SiteSettings).values())
"""The keys every site reads (doc/configuration.md has a row for each)."""


def default_of(name: str) -> Any:
    """The default of a plugin key (`RUN_KEYS`, `SITE_KEYS`).

    Parameters
    ----------
    name : `str`
        The key's name.

    Returns
    -------
    default : `typing.Any`
        Its default value.
    """
    return next(key.default for key in RUN_KEYS + SITE_KEYS if key.name == name)
