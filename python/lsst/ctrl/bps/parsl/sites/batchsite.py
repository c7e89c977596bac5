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
"""What the batch sites share: `BatchSite`, their block error handlers
(reliability.md C18), the address workers reach this host at (the source of
this host's route to the compute nodes), walltimes.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import socket
import subprocess
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..configuration import ConfigurationError
from ..job import parse_walltime, priority_number
from ..parslcompat import hold_block
from ..site import SiteConfig
from .options import build, build_launcher, check_options

if TYPE_CHECKING:
    from parsl.executors.status_handling import BlockProviderExecutor
    from parsl.jobs.states import JobStatus

    from ..job import ParslJob

__all__ = (
    "BLOCK_SUBMIT_FAILURES",
    "SRUN_OVERRIDES",
    "BatchSite",
    "BlockSubmitError",
    "choose_address",
    "give_up_if_blocks_refused",
    "normalize_walltime",
    "require_work_queue",
    "slurm_node_addresses",
    "tolerate_lost_blocks",
    "work_queue_spec",
)

_LOG = logging.getLogger(__name__)
_BLOCK_KEYS = dict(init_blocks=int, min_blocks=int, max_blocks=int, parallelism=float, cmd_timeout=int)

SRUN_OVERRIDES = "-K0 -k --cpu-bind=none"
"""``srun`` options of the Slurm sites' launcher: a worker pool that exits does
not end the others (``-K0``), the job step survives a lost node (``-k``),
workers are not pinned to their task's cores."""


def normalize_walltime(value: Any, name: str) -> str:
    """A walltime key (a string, doc/sites.md) as ``HH:MM:SS``; a YAML number is refused.

    Parameters
    ----------
    value : `~typing.Any`
        The key's value.
    name : `str`
        Full name of the key.

    Returns
    -------
    walltime : `str`
        The walltime (hours may exceed 24).
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
    """``parsl_resource_specification`` for a WorkQueueExecutor (cores, memory and disk always: all or none).

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


BLOCK_SUBMIT_FAILURES = 3
"""Block submissions in a row the scheduler refused after which an executor
with no block pending or running gives up (reliability.md C18)."""

_HELD_BLOCKS: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
"""Blocks of each executor whose worker pools `tolerate_lost_blocks` held."""


class BlockSubmitError(RuntimeError):
    """The scheduler refused every block of an executor (`tolerate_lost_blocks`)."""


def tolerate_lost_blocks(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Block error handler of the batch sites' HighThroughputExecutors (doc/sites.md, "Lost nodes"):
    Parsl's `~parsl.jobs.error_handlers.simple_error_handler` over the blocks
    that never had workers, after `give_up_if_blocks_refused`; the worker pools
    of a block that ended are held at once (else they get tasks until their heartbeats expire).

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.
    """
    from parsl.jobs.error_handlers import simple_error_handler
    from parsl.jobs.states import JobState

    held = _HELD_BLOCKS.setdefault(executor, set())
    for block, block_status in status.items():
        if block_status.terminal and block_status.state != JobState.SCALED_IN and block not in held:
            held.add(block)
            try:
                hold_block(executor, block)
            except Exception as exc:  # noqa: BLE001 (the interchange may be gone; the heartbeat still works)
                _LOG.warning("Could not hold the worker pools of ended block %s: %s", block, exc)
    if give_up_if_blocks_refused(executor, status):
        return
    lost = getattr(executor.provider, "lost_blocks", {})
    kept = {
        block: s
        for block, s in status.items()
        if s.state != JobState.FAILED and executor.blocks_to_job_id.get(block) not in lost
    }
    simple_error_handler(executor, kept)


def give_up_if_blocks_refused(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> bool:
    """Block error handler (Ccin2p3's): give the executor up (`BlockSubmitError`)
    if the scheduler refused its last `BLOCK_SUBMIT_FAILURES` blocks and none is active.

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor.
    status : `dict` [`str`, `parsl.jobs.states.JobStatus`]
        Status of each of its blocks.

    Returns
    -------
    gave_up : `bool`
        Whether it gave the executor up.
    """
    from parsl.jobs.states import JobState

    if any(s.state in (JobState.PENDING, JobState.RUNNING, JobState.HELD) for s in status.values()):
        return False
    recent = sorted(status, key=lambda block: int(block) if block.isdigit() else -1)[-BLOCK_SUBMIT_FAILURES:]
    refused = [b for b in recent if status[b].state == JobState.FAILED and b not in executor.blocks_to_job_id]
    if len(refused) < BLOCK_SUBMIT_FAILURES:
        return False
    said = " ".join(str(status[recent[-1]].message or "no error message").split())
    provider = type(executor.provider).__name__
    executor.set_bad_state_and_fail_all(
        BlockSubmitError(
            f"{provider} could not submit a block {BLOCK_SUBMIT_FAILURES} times in a row, giving up: {said}"
        )
    )
    return True


class BatchSite(SiteConfig):
    """Base of the sites whose workers run elsewhere and call back (keys: doc/sites.md)."""

    label: str
    """The label of the site's executor, when it has one (each job goes to it)."""

    def select_executor(self, job: ParslJob) -> str:
        return self.label

    def _required_walltime(self, default: str | None) -> str:
        """The ``walltime`` key as ``HH:MM:SS``; required unless the class gives a ``default``."""
        value = self.site.search("walltime", opt={"default": None})[1]
        value = default if value is None else value
        if value is None:
            raise ConfigurationError(
                f"missing required key '{self.where}.walltime': add it, quoted, e.g. walltime: \"01:00:00\""
            )
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
            addresses = _host_addresses()
            if interface not in addresses:
                raise ConfigurationError(
                    f"'{self.where}.interface' is {interface!r}, which is not an interface of this host with an "
                    f"IPv4 address that is up: use one of {', '.join(sorted(addresses)) or 'none'}, or set "
                    f"'{self.where}.address'"
                )
            return addresses[interface][0]
        if "_default_address" not in self.__dict__:
            self._default_address = self.default_address()
        return self._default_address

    def default_address(self) -> str:
        """The workers' address of this host without ``address`` or ``interface`` (`choose_address`).

        Returns
        -------
        address : `str`
            The address.
        """
        return choose_address([], self.where)

    def resource_specification(self, job: ParslJob, label: str) -> dict[str, Any] | None:
        # A HighThroughputExecutor's: the priority only (lower first), unless the site has a resource_list.
        if self._resource_list is not None:
            return super().resource_specification(job, label)
        priority = priority_number(job.priority)
        return None if priority is None else {"priority": priority}

    def _heartbeat_reserved(self) -> dict[str, str]:
        """The ``executor_options`` set from the heartbeat keys, with how to set them."""
        return {key: f"use '{self.where}.{key}'" for key in ("heartbeat_period", "heartbeat_threshold")}

    def _htex_defaults(self, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """HTEX arguments every batch site sets over the class's ``defaults``: the keys
        ``heartbeat_period`` and ``heartbeat_threshold`` (else 10 and 40), the block error handler.
        """
        defaults = defaults or {}
        period = self.get("heartbeat_period", int, defaults.get("heartbeat_period") or 10, positive=True)
        threshold = self.get(
            "heartbeat_threshold", int, defaults.get("heartbeat_threshold") or 40, positive=True
        )
        if threshold <= period:
            raise ConfigurationError(
                f"'{self.where}.heartbeat_threshold' ({threshold}) must be greater than "
                f"'{self.where}.heartbeat_period' ({period}): set it to a few periods, e.g. {4 * period}"
            )
        handler = defaults.get("block_error_handler", tolerate_lost_blocks)
        return {"heartbeat_period": period, "heartbeat_threshold": threshold, "block_error_handler": handler}

    def _provider_options(self, cls: type, options: dict[str, Any]) -> dict[str, Any]:
        """The class's ``options`` with the block, ``provider_options`` and launcher keys applied."""
        options = dict(options)
        for key, kind in _BLOCK_KEYS.items():
            value = self.get(key, kind, None)
            if value is None:
                continue
            least = 1 if key in ("max_blocks", "cmd_timeout") else 0
            if value < least or (key == "parallelism" and value > 1):
                bound = "between 0 and 1" if key == "parallelism" else f"{least} or more"
                raise ConfigurationError(f"'{self.where}.{key}' is {value!r}: it must be {bound}")
            options[key] = value
        raw = self.site.search("provider_options", opt={"default": None})[1]
        reserved = {"launcher": "use the site's 'launcher' and 'launcher_options' keys"}
        options.update(check_options(cls, raw, f"{self.where}.provider_options", reserved))
        name = self.get("launcher", str, None)
        launcher_options = self.site.search("launcher_options", opt={"default": None})[1]
        if name and name.lower() in ("srun", "srunlauncher") and launcher_options is None:
            launcher_options = {"overrides": SRUN_OVERRIDES}
        launcher = build_launcher(name, launcher_options, self.where)
        if launcher is not None:
            options["launcher"] = launcher
        return options

    def _htex(self, label: str, provider: Any, mem_per_worker: float | None, options: dict[str, Any]) -> Any:
        """A HighThroughputExecutor on ``provider``: the class's ``options``, `_htex_defaults`, then the
        site's ``executor_options``.
        """
        from parsl.executors import HighThroughputExecutor

        options = {**options, "label": label, "provider": provider, "mem_per_worker": mem_per_worker}
        options.update(address=self.get_address(), **self._htex_defaults(options))
        raw = self.site.search("executor_options", opt={"default": None})[1]
        if raw is not None:
            reserved = {
                "label": "the site names its executors",
                "provider": "the site builds the provider from its keys",
                "address": "use the site's 'address' key",
                **self._heartbeat_reserved(),
            }
            where = f"{self.where}.executor_options"
            options.update(check_options(HighThroughputExecutor, raw, where, reserved))
        return build(HighThroughputExecutor, options, self.where)

    def validate(self) -> None:
        self.get("address", str, None)
        self.get("interface", str, None)
        self._htex_defaults()
        super().validate()


def require_work_queue(key: str, instead: str = "use an htex executor") -> None:
    """Raise a one-line `ConfigurationError` if Work Queue (``ndcctools``) is not importable.

    Parameters
    ----------
    key : `str`
        The key that asks for Work Queue.
    instead : `str`, optional
        What the message offers instead.
    """
    import importlib.util

    if importlib.util.find_spec("ndcctools") is None:
        raise ConfigurationError(
            f"'{key}' needs Work Queue, but the ndcctools package is not installed: install it "
            f"(conda install -c conda-forge ndcctools) or {instead}"
        )


def _host_addresses() -> dict[str, list[str]]:
    """IPv4 addresses of this host's interfaces that are up, by interface name."""
    import psutil

    stats = psutil.net_if_stats()
    found = {
        name: [a.address for a in addrs if a.family == socket.AF_INET]
        for name, addrs in psutil.net_if_addrs().items()
        if name not in stats or stats[name].isup
    }
    return {name: ipv4 for name, ipv4 in found.items() if ipv4}


def _route_source(target: str) -> str | None:
    """The address this host sends from to reach ``target`` (`None`: no route; no packet is sent)."""
    try:
        infos = socket.getaddrinfo(target, 9, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sockaddr)  # UDP: chooses a route, sends nothing
            except OSError:
                continue
            return probe.getsockname()[0]
    return None


def _slurm_conf_controllers() -> list[str]:
    """Controller addresses (else names) from the local ``slurm.conf``."""
    path = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        key, _, value = line.split("#", 1)[0].strip().partition("=")
        if key.strip().lower() in ("slurmctldhost", "controlmachine") and value.strip():
            host, _, rest = value.strip().partition("(")
            found.append(rest.rstrip(")").strip() or host.strip())
    return found


def slurm_node_addresses(partition: str | None = None, limit: int = 4) -> list[str]:
    """Addresses of a few nodes of ``partition`` as Slurm reaches them, then its controllers'.

    Parameters
    ----------
    partition : `str`, optional
        Slurm partition (the first of a list); default: the default partition.
    limit : `int`, optional
        Most nodes.

    Returns
    -------
    addresses : `list` [`str`]
        The addresses (none when no Slurm answers here).
    """
    cmd = ["sinfo", "-h", "-N", "-o", "%o"]
    if partition:
        cmd[1:1] = ["-p", partition.split(",")[0]]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        res = None
    nodes = list(dict.fromkeys(res.stdout.split()))[:limit] if res is not None and res.returncode == 0 else []
    return nodes + _slurm_conf_controllers()


def choose_address(targets: Iterable[str], where: str) -> str:
    """The address workers on ``targets`` use to reach this host (doc/sites.md, ``address``).

    Parameters
    ----------
    targets : `~collections.abc.Iterable` [`str`]
        Host names or addresses of the batch system's hosts.
    where : `str`
        The site's key path.

    Returns
    -------
    address : `str`
        The address.
    """
    targets = list(targets)
    local_only = bool(targets)
    for target in targets:
        source = _route_source(target)
        if source is None:
            local_only = False
            continue
        if not ipaddress.ip_address(source).is_loopback:
            _LOG.debug("Workers reach this host at %s (route to %s)", source, target)
            return source
    for address in itertools.chain(*_host_addresses().values()):
        if not ipaddress.ip_address(address).is_loopback:
            return address
    if local_only:
        return "127.0.0.1"
    raise ConfigurationError(
        f"cannot determine the address workers use to reach this host (no interface other than loopback"
        f"{', no route to ' + ', '.join(targets) if targets else ''}): set '{where}.address' or "
        f"'{where}.interface'"
    )
