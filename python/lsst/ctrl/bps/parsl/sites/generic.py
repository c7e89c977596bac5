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

"""A site built entirely from YAML: any Parsl provider, launcher and executor.

Besides the `Generic` site, this module holds the pieces the batch sites
share: checking keyword options against the signature of the Parsl class
they are meant for, the tables of provider and launcher names, walltime and
priority conversion, and `BatchSite` (the ``address`` key).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lsst.ctrl.bps import BpsConfig

from ..configuration import ConfigurationError, parse_walltime
from ..job import priority_number, walltime_minutes
from ..site import ExecutorCapacity, SiteConfig
from .local import local_pool_spec

if TYPE_CHECKING:
    from parsl.executors.base import ParslExecutor

    from ..job import ParslJob

__all__ = (
    "EXECUTORS",
    "LAUNCHERS",
    "PROVIDERS",
    "BatchSite",
    "ExecutorSpec",
    "Generic",
    "build_launcher",
    "check_options",
    "job_priority",
    "job_walltime_minutes",
    "normalize_walltime",
    "plain",
)

_LOG = logging.getLogger(__name__)

PROVIDERS: dict[str, tuple[str, str]] = {
    "slurm": ("lsst.ctrl.bps.parsl.sites.slurm_provider", "SlurmProvider"),
    "pbspro": ("parsl.providers", "PBSProProvider"),
    "torque": ("parsl.providers", "TorqueProvider"),
    "lsf": ("parsl.providers", "LSFProvider"),
    "condor": ("parsl.providers", "CondorProvider"),
    "htcondor": ("parsl.providers", "CondorProvider"),
    "gridengine": ("parsl.providers", "GridEngineProvider"),
    "kubernetes": ("parsl.providers", "KubernetesProvider"),
    "local": ("parsl.providers", "LocalProvider"),
}
"""Provider names accepted by ``provider:`` and the Parsl class each means
(``slurm``: the plugin's `~.slurm_provider.SlurmProvider`, which sees
blocks lost to node failure or requeue)."""

HEARTBEAT_PERIOD = 10
"""Default of the ``heartbeat_period`` key (seconds): how often a worker
pool and the HTEX interchange tell each other they are alive."""

HEARTBEAT_THRESHOLD = 40
"""Default of the ``heartbeat_threshold`` key (seconds): silence after which
the interchange fails a worker pool's tasks with ``ManagerLost`` (a lost
node is noticed 30-40 s after it dies) and a worker pool that hears nothing
from the interchange exits."""


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
"""Launcher names accepted by ``launcher:`` and the Parsl class each means."""

EXECUTORS: dict[str, tuple[str, str]] = {
    "htex": ("parsl.executors", "HighThroughputExecutor"),
    "threads": ("lsst.ctrl.bps.parsl.localpool.executor", "LocalPoolExecutor"),
    "work_queue": ("parsl.executors", "WorkQueueExecutor"),
}
"""Executor kinds accepted by ``executor:`` and the Parsl class each means
(``threads``: jobs on this machine, run by the local site's pool)."""


# ---- helpers shared by the batch sites ------------------------------------------


def plain(value: Any) -> Any:
    """Turn a BPS sub-configuration into plain dicts and lists."""
    if isinstance(value, BpsConfig):
        value = value.toDict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def load_class(table: dict[str, tuple[str, str]], name: Any, where: str, what: str) -> type:
    """Return the Parsl class that ``name`` (a key of ``table`` or the
    class's own name, any case) means in ``table``.
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
_YAML_TYPES = (int, float, bool, str, list, tuple, dict)


def _hint_types(hint: Any) -> tuple[tuple[type, ...], bool, tuple | None] | None:
    """Python types a YAML value may have for a type hint.

    Returns (types, None allowed, literal values) or `None` when anything
    goes (``Any`` or a hint that cannot be checked).
    """
    if hint is Any or hint is _EMPTY:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        found: list[type] = []
        allow_none = False
        literals: list = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                allow_none = True
                continue
            sub = _hint_types(arg)
            if sub is None:
                return None
            found.extend(sub[0])
            allow_none = allow_none or sub[1]
            literals.extend(sub[2] or ())
        return tuple(found), allow_none, tuple(literals) or None
    if origin is typing.Literal:
        args = typing.get_args(hint)
        return tuple({type(a) for a in args}), None in args, args
    base = origin or hint
    if base in (list, tuple, typing.Sequence) or (
        isinstance(base, type) and base.__module__ == "collections.abc" and base.__name__ == "Sequence"
    ):
        return (list, tuple), False, None
    if base in (dict, Mapping) or (
        isinstance(base, type) and base.__module__ == "collections.abc" and base.__name__ == "Mapping"
    ):
        return (dict,), False, None
    if base is float:
        return (int, float), False, None
    if base in (int, str, bool):
        return (base,), False, None
    if base is typing.Callable or (
        isinstance(base, type) and base.__module__ == "collections.abc" and base.__name__ == "Callable"
    ):
        return (), False, None
    if isinstance(base, type):
        return (base,), False, None
    return None


def _default_types(default: Any) -> tuple[tuple[type, ...], bool, None] | None:
    if default is _EMPTY or default is None:
        return None
    if isinstance(default, bool):
        return (bool,), False, None
    if isinstance(default, int):
        return (int,), False, None
    if isinstance(default, float):
        return (int, float), False, None
    if isinstance(default, str):
        return (str,), False, None
    if isinstance(default, list | tuple):
        return (list, tuple), False, None
    if isinstance(default, dict):
        return (dict,), False, None
    return (type(default),), False, None


def _type_names(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "number"
    names = []
    for kind in kinds:
        special: dict[type, str] = {list: "list", tuple: "list", dict: "mapping"}
        name = special.get(kind, kind.__name__)
        if name not in names:
            names.append(name)
    return " or ".join(names) if names else "Python object"


def check_options(
    cls: type, options: Any, where: str, reserved: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check keyword arguments for a Parsl class against its signature.

    Parameters
    ----------
    cls : `type`
        Parsl class the options are for.
    options : `dict`
        Options from the YAML (a mapping; `None` means none).
    where : `str`
        Full name of the mapping, e.g. ``site.hpc.executors.small.provider_options``.
    reserved : `dict` [`str`, `str`], optional
        Options the site sets itself, with how to set them instead.

    Returns
    -------
    options : `dict`
        The options, ready for ``cls(**options)`` (YAML lists turned into
        tuples where the class wants a tuple).

    Raises
    ------
    ConfigurationError
        For an option that is not a parameter of ``cls``, is reserved, or
        has the wrong type.
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
        spec = _hint_types(hints.get(key, _EMPTY)) if key in hints else None
        if spec is None and key not in hints:
            spec = _default_types(param.default)
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
    missing = [
        n
        for n, p in params.items()
        if p.default is _EMPTY
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in result
        and n not in reserved
    ]
    if missing:
        raise ConfigurationError(
            f"'{where}' lacks {', '.join(missing)}, required by Parsl's {cls.__name__}: add "
            + ", ".join(f"'{where}.{n}'" for n in missing)
        )
    return result


def _wants_tuple(hint: Any) -> bool:
    if hint is None:
        return False
    origin = typing.get_origin(hint)
    if origin is tuple:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_wants_tuple(a) for a in typing.get_args(hint))
    return False


def build(cls: type, options: dict[str, Any], where: str) -> Any:
    """Instantiate a Parsl class; its own errors become one-line
    `ConfigurationError` naming ``where``.
    """
    try:
        return cls(**options)
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 (Parsl raises many kinds)
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigurationError(f"'{where}': Parsl's {cls.__name__} rejected the options: {text}") from None


def build_launcher(name: Any, options: Any, where: str) -> Any:
    """Return the Parsl launcher named ``name`` (key ``<where>.launcher``)."""
    cls = load_class(LAUNCHERS, name, f"{where}.launcher", "launcher")
    checked = check_options(cls, options, f"{where}.launcher_options")
    return build(cls, checked, f"{where}.launcher_options")


def normalize_walltime(value: Any, name: str) -> str:
    """Return a walltime as ``HH:MM:SS``.

    Accepts ``HH:MM:SS``, ``D-HH:MM:SS`` and a number of minutes given as a
    string. A YAML integer is refused: unquoted ``1:00:00`` is read by YAML
    as 3600 (sexagesimal), which is almost never what was meant.
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
    """The job's BPS ``priority`` as a number, or `None`."""
    return priority_number(job.priority)


def job_walltime_minutes(job: ParslJob) -> int | None:
    """The job's BPS ``requestWalltime`` in whole minutes, or `None`."""
    return walltime_minutes(job.request_walltime)


def work_queue_spec(job: ParslJob) -> dict[str, Any]:
    """``parsl_resource_specification`` for a WorkQueueExecutor: cores,
    memory (MB) and disk (MB) always (Work Queue wants all three or none),
    running_time_min and priority when the job sets them.
    """
    resources = job.get_resources()
    return {
        key: value
        for key, value in resources.items()
        if value is not None or key in ("cores", "memory", "disk")
    }


def heartbeat_reserved(where: str) -> dict[str, str]:
    """``executor_options`` a site sets from its heartbeat keys, with how to set them."""
    return {key: f"use '{where}.{key}'" for key in ("heartbeat_period", "heartbeat_threshold")}


def htex_defaults(site: BatchSite, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """HighThroughputExecutor arguments every batch site sets: the
    heartbeats (`BatchSite.heartbeat_options`, over the site class's
    ``defaults``) and a block error handler that does not give up on the
    executor for a block lost with its node or worker pool
    (`~.slurm_provider.tolerate_lost_blocks`).
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
        """
        from .address import choose_address

        return choose_address(self.address_targets(), self.where)

    def address_targets(self) -> list[str]:
        """Hosts the workers run on, or the batch system's controller, as
        far as this host can tell (default: none known).
        """
        return []

    def validate(self) -> None:
        self.get("address", str, None)
        self.get("interface", str, None)
        self.heartbeat_options()
        super().validate()


# ---- the generic site ----------------------------------------------------------

_SECTION_KEYS = {
    "executor": "executor kind: htex (default), threads or work_queue",
    "executor_options": "options of the Parsl executor class",
    "provider": "Parsl provider: " + ", ".join(sorted(PROVIDERS)),
    "provider_options": "options of the Parsl provider class",
    "launcher": "Parsl launcher: " + ", ".join(sorted(LAUNCHERS)),
    "launcher_options": "options of the Parsl launcher class",
    "max_memory": "largest job memory (MB) this executor takes",
    "max_cpus": "largest job requestCpus this executor takes",
    "labels": "job labels sent only to this executor",
    "cores": "threads only: cores jobs may use at once",
    "memory": "threads only: memory (MB) jobs may use at once",
}


@dataclass
class ExecutorSpec:
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[float, float, int]:
        """Sort key: smaller limits first, then declaration order."""
        mem = math.inf if self.max_memory is None else self.max_memory
        cpus = math.inf if self.max_cpus is None else self.max_cpus
        return (mem, cpus, self.order)

    def fits(self, job: ParslJob) -> bool:
        """Whether the job's memory and cores are within this executor's limits."""
        if self.max_memory is not None and (job.request_memory or 0) > self.max_memory:
            return False
        return not (self.max_cpus is not None and (job.request_cpus or 1) > self.max_cpus)


def _positive_int(section: dict, key: str, where: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"'{where}.{key}' is {value!r}: it must be an integer greater than 0")
    return value


class Generic(BatchSite):
    """A site described entirely in YAML: one or more executors, each a
    Parsl executor with a provider and a launcher, chosen per job by its
    resources.

    Keys of ``site.<computeSite>``: ``executors`` (mapping, required): one
    section per executor, named by its label; ``address`` (see
    `BatchSite`). Keys of ``executors.<label>``:

    - ``executor`` (`str`): ``htex`` (default), ``threads`` or ``work_queue``.
    - ``executor_options`` (mapping): keyword arguments of the executor class.
    - ``provider`` (`str`): ``slurm``, ``pbspro``, ``torque``, ``lsf``,
      ``condor``, ``gridengine``, ``kubernetes`` or ``local`` (default).
    - ``provider_options`` (mapping): keyword arguments of the provider class.
    - ``launcher`` (`str`) and ``launcher_options`` (mapping): the launcher
      (default: the provider's own).
    - ``max_memory`` (`int`, MB) and ``max_cpus`` (`int`): the largest job
      this executor takes (default: no limit).
    - ``labels`` (list of `str`): job labels that go only to this executor.
    - ``cores``, ``memory`` (`int`): ``threads`` only, what its jobs may
      use at once (default: this machine's). A ``threads`` executor runs
      jobs on this machine through the local site's pool
      (`~lsst.ctrl.bps.parsl.localpool.LocalPoolExecutor`): a job starts
      once its ``request_cpus`` and ``request_memory`` fit.

    A job goes to the smallest executor (by ``max_memory``, then
    ``max_cpus``, then order) that holds its memory and cores; executors
    that list its label in ``labels`` are tried alone first. Options are
    checked against the Parsl class signatures when the site is validated.
    """

    @property
    def specs(self) -> list[ExecutorSpec]:
        """The executors, as configured (parsed and checked once)."""
        cached: list[ExecutorSpec] | None = getattr(self, "_specs", None)
        if cached is None:
            cached = self._parse()
            self._specs: list[ExecutorSpec] | None = cached
        return cached

    def _parse(self) -> list[ExecutorSpec]:
        where = f"{self.where}.executors"
        found, raw = self.site.search("executors", opt={"default": None})
        if not found or raw is None:
            raise ConfigurationError(
                f"missing required key '{where}': add one section per executor, e.g. "
                f"'executors: {{main: {{provider: slurm, provider_options: {{partition: debug}}}}}}'"
            )
        sections = plain(raw)
        if not isinstance(sections, dict) or not sections:
            raise ConfigurationError(
                f"'{where}' is {sections!r}: it must be a non-empty mapping label: settings"
            )
        specs = []
        for order, (label, section) in enumerate(sections.items()):
            here = f"{where}.{label}"
            if section is None:
                section = {}
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
            spec = ExecutorSpec(
                label=str(label),
                kind=kind,
                where=here,
                section=section,
                max_memory=_positive_int(section, "max_memory", here),
                max_cpus=_positive_int(section, "max_cpus", here),
                labels=tuple(labels),
                cores=_positive_int(section, "cores", here),
                memory=_positive_int(section, "memory", here),
                order=order,
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
            specs.append(spec)
        return specs

    def validate(self) -> None:
        self._specs = None
        super().validate()

    # ---- building -------------------------------------------------------------

    def _provider(self, spec: ExecutorSpec) -> Any:
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
        if "launcher" in section or "launcher_options" in section:
            if "launcher" not in section:
                raise ConfigurationError(
                    f"'{spec.where}.launcher_options' is set without '{spec.where}.launcher': name the "
                    "launcher, e.g. 'launcher: srun'"
                )
            options["launcher"] = build_launcher(
                section["launcher"], section.get("launcher_options"), spec.where
            )
        return build(cls, options, f"{spec.where}.provider_options")

    def _executor(self, spec: ExecutorSpec) -> ParslExecutor:
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
            capacity = self.capacity(spec.label)
            assert capacity is not None, "a threads executor always has a capacity"
            budget = {"label": spec.label, "cores": capacity.cores, "memory": capacity.memory}
            return build(LocalPoolExecutor, {**budget, **options}, where)
        if spec.kind == "work_queue":
            require_work_queue(spec.where + ".executor")
        cls = load_class(EXECUTORS, spec.kind, f"{spec.where}.executor", "executor kind")
        reserved = {
            "label": f"it is the section name under {self.where}.executors",
            "provider": f"use '{spec.where}.provider' and '{spec.where}.provider_options'",
            "address": f"use '{self.where}.address'",
        }
        if spec.kind == "htex":
            reserved.update(heartbeat_reserved(self.where))
        options = check_options(cls, section.get("executor_options"), where, reserved=reserved)
        provider = self._provider(spec)
        base: dict[str, Any] = {"label": spec.label, "provider": provider, "address": self.get_address()}
        if spec.kind == "work_queue":
            base.update(shared_fs=True, autolabel=False)
        if spec.kind == "htex":
            base.update(htex_defaults(self))
        base.update(options)
        return build(cls, base, where)

    def get_executors(self) -> list[ParslExecutor]:
        return [self._executor(spec) for spec in self.specs]

    # ---- per job ------------------------------------------------------------------

    def _spec(self, label: str) -> ExecutorSpec:
        for spec in self.specs:
            if spec.label == label:
                return spec
        raise KeyError(label)

    def select_executor(self, job: ParslJob) -> str:
        specs = self.specs
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
        spec = self._spec(label)
        if spec.kind != "threads":
            return None
        from .local import machine_memory_mb

        cores = spec.cores
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return ExecutorCapacity(cores=cores, memory=spec.memory or machine_memory_mb())

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        if self.resource_list is not None:
            return super().resource_specification(job, label)
        kind = self._spec(label).kind
        if kind == "htex":
            return htex_spec(job)
        if kind == "work_queue":
            return work_queue_spec(job)
        capacity = self.capacity(label)
        assert capacity is not None, "a threads executor always has a capacity"
        return local_pool_spec(job, capacity.cores, capacity.memory)


def require_work_queue(key: str, instead: str = "use an htex executor") -> None:
    """Raise a one-line `ConfigurationError` if Work Queue (``ndcctools``)
    is not importable; ``instead`` says what to do otherwise.
    """
    import importlib.util

    if importlib.util.find_spec("ndcctools") is None:
        raise ConfigurationError(
            f"'{key}' needs Work Queue, but the ndcctools package is not installed: install it "
            f"(conda install -c conda-forge ndcctools) or {instead}"
        )
