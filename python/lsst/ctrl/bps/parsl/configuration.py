"""Typed, validated access to BPS configuration values.

Every lookup that fails says which key is wrong and how to fix it, so a bad
submit YAML stops ``bps submit`` before anything runs.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from lsst.ctrl.bps import BpsConfig

__all__ = (
    "ConfigurationError",
    "get_bps_config_value",
    "get_workflow_name",
    "parse_walltime",
    "site_key",
)

T = TypeVar("T")

_MISSING = object()


class ConfigurationError(ValueError):
    """A BPS configuration value is missing or invalid.

    The message is a single line naming the key and the fix.
    """


def site_key(config: BpsConfig, key: str) -> str:
    """Return the full name of a site key, for messages."""
    found, site = config.search("computeSite", opt={"default": None})
    return f"site.{site}.{key}" if found and site else key


def _type_name(data_type: type | tuple[type, ...]) -> str:
    if isinstance(data_type, tuple):
        return " or ".join(t.__name__ for t in data_type)
    return data_type.__name__


def get_bps_config_value(
    config: BpsConfig | dict,
    key: str,
    data_type: type[T] | tuple[type, ...],
    default: Any = _MISSING,
    *,
    required: bool = False,
    where: str | None = None,
) -> T:
    """Look up ``key`` in a BPS configuration and check its type.

    Parameters
    ----------
    config : `BpsConfig` or `dict`
        Configuration to search (a site sub-configuration, or the whole
        BPS configuration).
    key : `str`
        Key to look up.
    data_type : `type` or `tuple` [`type`]
        Type(s) the value must have. An `int` is accepted where a `float` is
        asked for.
    default : optional
        Value used when the key is absent. `None` is a valid default.
    required : `bool`, optional
        Raise if the key is absent (and no default is given).
    where : `str`, optional
        Prefix for the key in messages, e.g. ``site.local``.

    Returns
    -------
    value
        The configured value, or the default.

    Raises
    ------
    ConfigurationError
        If the value is required and missing, or has the wrong type.
    """
    name = f"{where}.{key}" if where else key
    if isinstance(config, BpsConfig):
        opts: dict[str, Any] = {"expandEnvVars": True, "replaceVars": True, "required": False}
        found, value = config.search(key, opts)
    else:
        found, value = (key in config), config.get(key)
    if not found or value is None:
        if default is not _MISSING and not (required and default is None):
            return default
        if required or default is _MISSING:
            raise ConfigurationError(f"missing required key '{name}': add it to your submit YAML")
        return default
    wanted = data_type if isinstance(data_type, tuple) else (data_type,)
    if float in wanted and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if bool not in wanted and isinstance(value, bool):
        raise ConfigurationError(f"'{name}' is {value!r} (a bool): it must be a {_type_name(data_type)}")
    if not isinstance(value, wanted):
        raise ConfigurationError(
            f"'{name}' is {value!r} ({type(value).__name__}): it must be a {_type_name(data_type)}"
        )
    return value


def get_positive(config: BpsConfig | dict, key: str, data_type: type, default: Any, where: str) -> Any:
    """Like `get_bps_config_value`, but the value must be > 0 when set."""
    value = get_bps_config_value(config, key, data_type, default, where=where)
    if value is not None and value <= 0:
        raise ConfigurationError(f"'{where}.{key}' is {value!r}: it must be greater than 0")
    return value


def get_workflow_name(config: BpsConfig) -> str:
    """Name of the workflow for Parsl monitoring: ``<project>.<campaign>``."""
    project = get_bps_config_value(config, "project", str, "bps")
    operator = get_bps_config_value(config, "operator", str, "unknown")
    campaign = get_bps_config_value(config, "campaign", str, operator)
    return f"{project}.{campaign}"


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
