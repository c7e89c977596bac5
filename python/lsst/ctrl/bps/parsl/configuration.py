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

"""Typed, validated access to BPS configuration values.

Every lookup that fails says which key is wrong and how to fix it, so a bad
submit YAML stops ``bps submit`` before anything runs.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, TypeVar, cast, overload

from lsst.ctrl.bps import BpsConfig

from .oneline import ShownMessageError, shown

__all__ = (
    "ConfigurationError",
    "ConfigurationTypeError",
    "MissingConfigurationError",
    "get_bps_config_value",
    "get_workflow_filename",
    "get_workflow_name",
    "parse_walltime",
    "set_parsl_logging",
    "site_key",
)

T = TypeVar("T")


class ConfigurationError(ShownMessageError, ValueError):
    """A BPS configuration value is missing or invalid.

    The message is a single line naming the key and the fix.
    """


class MissingConfigurationError(ConfigurationError, KeyError):
    """A required BPS configuration value is missing (also a `KeyError`,
    as the old plugin raised).
    """

    def __str__(self) -> str:  # KeyError's would print the message quoted
        return shown(BaseException.__str__(self), limit=4000)


class ConfigurationTypeError(ConfigurationError, RuntimeError):
    """A BPS configuration value has the wrong type (also a
    `RuntimeError`, as the old plugin raised).
    """


def site_key(config: BpsConfig, key: str) -> str:
    """Return the full name of a site key, for messages."""
    found, site = config.search("computeSite", opt={"default": None})
    return f"site.{site}.{key}" if found and site else key


def _type_name(data_type: type | tuple[type, ...]) -> str:
    if isinstance(data_type, tuple):
        return " or ".join(t.__name__ for t in data_type)
    return data_type.__name__


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
        Configuration to search (a site sub-configuration, or the whole
        BPS configuration); environment variables and ``{vars}`` in the
        value are expanded.
    key : `str`
        Key to look up.
    dataType : `type` or `tuple` [`type`]
        Type(s) the value must have. An `int` is accepted where a `float` is
        asked for (and returned as a `float`).
    default : optional
        Value returned when the key is absent or null; `None` means no
        default.
    required : `bool`, optional
        The value (from the configuration or the default) may not be
        `None`.
    where : `str`, optional
        Prefix for the key in messages, e.g. ``site.local``.

    Returns
    -------
    value
        The configured value, else ``default``, else `None` (when not
        ``required``).

    Raises
    ------
    MissingConfigurationError
        If the value is ``required`` and neither configured nor defaulted
        (a `ConfigurationError` and a `KeyError`).
    ConfigurationTypeError
        If the value has the wrong type (a `ConfigurationError` and a
        `RuntimeError`).
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
    if float in wanted and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if bool not in wanted and isinstance(value, bool):
        raise ConfigurationTypeError(f"'{name}' is {value!r} (a bool): it must be a {_type_name(dataType)}")
    if not isinstance(value, wanted):
        raise ConfigurationTypeError(
            f"'{name}' is {value!r} ({type(value).__name__}): it must be a {_type_name(dataType)}"
        )
    return cast(T, value)


def get_positive(config: BpsConfig | dict, key: str, data_type: type, default: Any, where: str) -> Any:
    """Like `get_bps_config_value`, but the value must be > 0 when set."""
    value = get_bps_config_value(config, key, data_type, default, where=where)
    if value is not None and value <= 0:
        raise ConfigurationError(f"'{where}.{key}' is {value!r}: it must be greater than 0")
    return value


def get_workflow_name(config: BpsConfig) -> str:
    """Name of the workflow for Parsl monitoring and batch job names:
    ``<project>.<campaign>``.

    ``project`` defaults to ``bps``, ``campaign`` to ``operator`` (the user
    name BPS sets).
    """
    project = get_bps_config_value(config, "project", str, "bps")
    operator = get_bps_config_value(config, "operator", str, "unknown")
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
        The run-state database ``<out_prefix>/bps_parsl.sqlite3`` (the
        old plugin kept a pickle; this plugin keeps the whole prepared
        workflow and its state in that database).
    """
    from .state import db_path

    return db_path(out_prefix)


_LOG_LEVELS = ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG")


def parsl_log_level(config: BpsConfig) -> int:
    """Return the level of Parsl's log from ``parsl.log_level``.

    Raises
    ------
    ConfigurationError
        If the level is not a logging level name.
    """
    name = get_bps_config_value(config, ".parsl.log_level", str, "WARNING")
    if name.upper() not in _LOG_LEVELS:
        raise ConfigurationError(f"'parsl.log_level' is {name!r}: use one of {', '.join(_LOG_LEVELS)}")
    return logging.getLevelNamesMapping()[name.upper()]


def set_parsl_logging(config: BpsConfig) -> int:
    """Set the level of Parsl's loggers from ``parsl.log_level``.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration; ``parsl.log_level`` (default ``WARNING``) is one
        of ``CRITICAL``, ``FATAL``, ``ERROR``, ``WARNING``, ``WARN``,
        ``INFO``, ``DEBUG``.

    Returns
    -------
    level : `int`
        The level given to the ``parsl`` logger and to those of its
        children that had a level of their own.
    """
    level = parsl_log_level(config)
    logging.getLogger("parsl").setLevel(level)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("parsl.") and isinstance(logger, logging.Logger) and logger.level:
            logger.setLevel(level)
    return level


_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_walltime(value: str | int | float, name: str) -> int:
    """Convert a walltime to seconds.

    Parameters
    ----------
    value : `str`, `int` or `float`
        ``HH:MM:SS``, ``D-HH:MM:SS`` or a number of minutes.
    name : `str`
        Key name for messages.

    Returns
    -------
    seconds : `int`
        Walltime in seconds.

    Raises
    ------
    ConfigurationError
        If the value has another format.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"'{name}' is {value!r}: use HH:MM:SS or a number of minutes")
    if isinstance(value, int | float):
        if value <= 0:
            raise ConfigurationError(f"'{name}' is {value!r}: it must be greater than 0")
        return int(value * 60)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_walltime(float(text), name)
    match = _WALLTIME.match(text)
    if not match:
        raise ConfigurationError(f"'{name}' is {value!r}: use HH:MM:SS, D-HH:MM:SS or a number of minutes")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    if minutes >= 60 or seconds >= 60:
        raise ConfigurationError(f"'{name}' is {value!r}: minutes and seconds must be below 60")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
