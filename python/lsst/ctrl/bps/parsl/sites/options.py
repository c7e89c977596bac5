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

"""Parsl classes from YAML: the tables of provider, launcher and executor
names, and keyword options checked against a class's signature before anything is built.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from lsst.ctrl.bps import BpsConfig

from ..configuration import ConfigurationError
from ..oneline import one_line

__all__ = (
    "EXECUTORS",
    "LAUNCHERS",
    "PROVIDERS",
    "build",
    "build_launcher",
    "check_options",
    "load_class",
    "plain",
)

PROVIDERS: dict[str, tuple[str, str]] = {
    "slurm": ("lsst.ctrl.bps.parsl.sites.slurm", "SlurmProvider"),
    "pbspro": ("parsl.providers", "PBSProProvider"),
    "torque": ("parsl.providers", "TorqueProvider"),
    "lsf": ("parsl.providers", "LSFProvider"),
    "condor": ("parsl.providers", "CondorProvider"),
    "htcondor": ("parsl.providers", "CondorProvider"),
    "gridengine": ("parsl.providers", "GridEngineProvider"),
    "kubernetes": ("parsl.providers", "KubernetesProvider"),
    "local": ("parsl.providers", "LocalProvider"),
}
"""The Parsl class of each ``provider:`` name (``slurm``: the plugin's `~.slurm.SlurmProvider`)."""

LAUNCHERS: dict[str, tuple[str, str]] = {
    "single_node": ("parsl.launchers", "SingleNodeLauncher"),
    "simple": ("parsl.launchers", "SimpleLauncher"),
    "srun": ("parsl.launchers", "SrunLauncher"),
    "srun_mpi": ("parsl.launchers", "SrunMPILauncher"),
    "mpiexec": ("parsl.launchers", "MpiExecLauncher"),
    "mpirun": ("parsl.launchers", "MpiRunLauncher"),
    "aprun": ("parsl.launchers", "AprunLauncher"),
    "jsrun": ("parsl.launchers", "JsrunLauncher"),
    "gnu_parallel": ("parsl.launchers", "GnuParallelLauncher"),
    "wrapped": ("parsl.launchers", "WrappedLauncher"),
}
"""The Parsl class of each ``launcher:`` name."""

EXECUTORS: dict[str, tuple[str, str]] = {
    "htex": ("parsl.executors", "HighThroughputExecutor"),
    "threads": ("lsst.ctrl.bps.parsl.localpool.executor", "LocalPoolExecutor"),
    "work_queue": ("parsl.executors", "WorkQueueExecutor"),
}
"""The class of each ``executor:`` kind (``threads``: the local site's pool)."""


def plain(value: Any) -> Any:
    """Turn a BPS sub-configuration into plain dicts and lists.

    Parameters
    ----------
    value : `~typing.Any`
        A value read from the configuration.

    Returns
    -------
    value : `~typing.Any`
        The value, every `BpsConfig` and mapping a `dict`, every sequence a `list`.
    """
    if isinstance(value, BpsConfig):
        value = value.toDict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def load_class(table: dict[str, tuple[str, str]], name: Any, where: str, what: str) -> type:
    """Return the Parsl class ``name`` (a key of ``table`` or a class name, any case) means.

    Parameters
    ----------
    table : `dict` [`str`, `tuple` [`str`, `str`]]
        (module, class name) by short name.
    name : `~typing.Any`
        The name from the YAML.
    where, what : `str`
        Full name of the key; what kind of class it is (``provider``, ``launcher``, ...).

    Returns
    -------
    cls : `type`
        The class.
    """
    by_class = {attr.lower(): (module, attr) for module, attr in table.values()}
    key = name.lower() if isinstance(name, str) else None
    entry = (table.get(key) or by_class.get(key)) if key else None
    if entry is None:
        choices = ", ".join(sorted(table))
        classes = ", ".join(sorted(attr for _, attr in set(table.values())))
        raise ConfigurationError(
            f"'{where}' is {name!r}, which is not a known {what}: use one of {choices} (or a class name: "
            f"{classes})"
        )
    module, attr = entry
    return getattr(importlib.import_module(module), attr)


_EMPTY = inspect.Parameter.empty
_YAML_TYPES = (bool, int, float, str, list, tuple, dict)  # bool first: a bool is an int too


def _hint_types(hint: Any) -> tuple[tuple[type, ...], bool, tuple | None] | None:
    """(types a YAML value may have for ``hint``, None allowed, literal values); `None`: anything goes."""
    if hint is Any or hint is _EMPTY:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        subs = [_hint_types(arg) for arg in args if arg is not type(None)]
        known = [sub for sub in subs if sub is not None]
        if len(known) < len(subs):
            return None
        return (
            tuple(kind for sub in known for kind in sub[0]),
            type(None) in args or any(sub[1] for sub in known),
            tuple(value for sub in known for value in sub[2] or ()) or None,
        )
    if origin is typing.Literal:
        args = typing.get_args(hint)
        return tuple({type(a) for a in args}), None in args, args
    base = origin or hint
    if base in (list, tuple, typing.Sequence, collections.abc.Sequence):
        return (list, tuple), False, None
    if base in (dict, Mapping):
        return (dict,), False, None
    if base is float:
        return (int, float), False, None
    if base in (typing.Callable, collections.abc.Callable):
        return (), False, None
    if isinstance(base, type):
        return (base,), False, None
    return None


_KIND_NAMES: dict[type, str] = {list: "list", tuple: "list", dict: "mapping"}


def _type_names(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "number"
    return " or ".join(dict.fromkeys(_KIND_NAMES.get(k, k.__name__) for k in kinds)) or "Python object"


def check_options(
    cls: type, options: Any, where: str, reserved: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check keyword arguments for a Parsl class against its signature.

    Parameters
    ----------
    cls : `type`
        Parsl class the options are for.
    options : `dict`
        Options from the YAML (`None`: none).
    where : `str`
        Full name of the mapping, e.g. ``site.hpc.executors.small.provider_options``.
    reserved : `dict` [`str`, `str`], optional
        Options the site sets itself, with how to set them instead.

    Returns
    -------
    options : `dict`
        The options for ``cls(**options)`` (lists made tuples where it wants a tuple).
    """
    if options is None:
        return {}
    options = plain(options)
    if not isinstance(options, dict):
        raise ConfigurationError(
            f"'{where}' is {options!r}: it must be a mapping of {cls.__name__} options (name: value)"
        )
    reserved = reserved or {}
    params = inspect.signature(cls).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:  # noqa: BLE001 (unresolvable annotations: fall back to defaults)
        hints = {}
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    result: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{where}.{key}"
        if key in reserved:
            raise ConfigurationError(f"'{name}' cannot be set here: {reserved[key]}")
        if key not in valid:
            choices = ", ".join(n for n in valid if n not in reserved)
            raise ConfigurationError(
                f"'{name}' is not an option of Parsl's {cls.__name__}: remove it or use one of {choices}"
            )
        param = params[key]
        spec = _hint_types(hints[key]) if key in hints else None
        if key not in hints and param.default is not _EMPTY and param.default is not None:
            # Unannotated: the type of its default.
            spec = _hint_types(
                next((k for k in _YAML_TYPES if isinstance(param.default, k)), type(param.default))
            )
        if spec is not None:
            kinds, allow_none, literals = spec
            allow_none = allow_none or param.default is None
            if value is None:
                if not allow_none:
                    raise ConfigurationError(f"'{name}' is null: it must be a {_type_names(kinds)}")
            elif literals is not None and value not in literals:
                raise ConfigurationError(f"'{name}' is {value!r}: it must be one of {list(literals)}")
            elif not kinds:
                raise ConfigurationError(
                    f"'{name}' needs a Python object, which YAML cannot express: remove it, or set it in "
                    "a SiteConfig subclass"
                )
            elif (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                if not any(k in _YAML_TYPES for k in kinds):
                    raise ConfigurationError(
                        f"'{name}' needs a {_type_names(kinds)} object, which YAML cannot express: remove "
                        "it, or set it in a SiteConfig subclass"
                    )
                raise ConfigurationError(
                    f"'{name}' is {value!r} ({type(value).__name__}): it must be a {_type_names(kinds)}"
                )
            if isinstance(value, list) and _wants_tuple(hints.get(key)):
                value = tuple(value)
        result[key] = value
    missing = [n for n in valid if params[n].default is _EMPTY and n not in result and n not in reserved]
    if missing:
        raise ConfigurationError(
            f"'{where}' lacks {', '.join(missing)}, required by Parsl's {cls.__name__}: add "
            + ", ".join(f"'{where}.{n}'" for n in missing)
        )
    return result


def _wants_tuple(hint: Any) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(arg) is tuple for arg in args)


def build(cls: type, options: dict[str, Any], where: str) -> Any:
    """Instantiate a Parsl class; its errors become one-line `ConfigurationError` naming ``where``.

    Parameters
    ----------
    cls : `type`
        The Parsl class.
    options : `dict` [`str`, `~typing.Any`]
        Its keyword arguments.
    where : `str`
        Full name of the key the options come from.

    Returns
    -------
    instance : `~typing.Any`
        The new instance.
    """
    try:
        return cls(**options)
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 (Parsl raises many kinds)
        text = one_line(exc)
        raise ConfigurationError(f"'{where}': Parsl's {cls.__name__} rejected the options: {text}") from None


def build_launcher(name: Any, options: Any, where: str) -> Any:
    """Return the Parsl launcher named ``name`` (key ``<where>.launcher``; none without a name).

    Parameters
    ----------
    name : `~typing.Any`
        The launcher's name from the YAML.
    options : `~typing.Any`
        The ``launcher_options`` mapping, or `None`.
    where : `str`
        The site's key path.

    Returns
    -------
    launcher : `parsl.launchers.base.Launcher` or `None`
        The launcher.
    """
    if not name:
        if options:
            raise ConfigurationError(
                f"'{where}.launcher_options' is set without '{where}.launcher': name the launcher, "
                "e.g. 'launcher: srun'"
            )
        return None
    cls = load_class(LAUNCHERS, name, f"{where}.launcher", "launcher")
    checked = check_options(cls, options, f"{where}.launcher_options")
    return build(cls, checked, f"{where}.launcher_options")
