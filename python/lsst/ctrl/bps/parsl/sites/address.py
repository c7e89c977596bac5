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

"""The address batch workers use to reach the submitting host.

Workers started by a batch system connect back to the HighThroughputExecutor
interchange in the submitting process. The address they need is the one of
this host's interface that leads to the compute nodes: found by asking the
kernel which source address it would use towards them (no packet is sent).
Loopback is never chosen unless the nodes are this host and it has no other
address.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from ..configuration import ConfigurationError

__all__ = ("choose_address", "host_addresses", "interface_address", "slurm_node_addresses")

_LOG = logging.getLogger(__name__)


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def host_addresses() -> dict[str, list[str]]:
    """IPv4 addresses of this host's interfaces that are up, by interface.

    Returns
    -------
    addresses : `dict` [`str`, `list` [`str`]]
        IPv4 addresses by interface name.
    """
    import psutil

    stats = psutil.net_if_stats()
    found: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        ipv4 = [a.address for a in addrs if a.family == socket.AF_INET]
        if ipv4:
            found[name] = ipv4
    return found


def interface_address(interface: str, where: str) -> str:
    """The first IPv4 address of ``interface`` (key ``<where>.interface``).

    Parameters
    ----------
    interface : `str`
        Name of the network interface.
    where : `str`
        The site's key path, for the error message.

    Returns
    -------
    address : `str`
        The interface's first IPv4 address.

    Raises
    ------
    ConfigurationError
        If the interface is not up or has no IPv4 address.
    """
    addresses = host_addresses()
    if interface not in addresses:
        choices = ", ".join(sorted(addresses)) or "none"
        raise ConfigurationError(
            f"'{where}.interface' is {interface!r}, which is not an interface of this host with an IPv4 "
            f"address that is up: use one of {choices}, or set '{where}.address'"
        )
    return addresses[interface][0]


def route_source(target: str) -> str | None:
    """The address this host would send from to reach ``target`` (a host
    name or address), or `None` if it cannot be resolved or routed.

    Parameters
    ----------
    target : `str`
        Host name or address.

    Returns
    -------
    address : `str` or `None`
        The local source address of the route.
    """
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
    """Addresses of a few nodes of ``partition`` (default: the default
    partition) as Slurm reaches them, then its controllers'. Empty when no
    Slurm answers here.

    Parameters
    ----------
    partition : `str`, optional
        Slurm partition (the first of a comma-separated list is used).
    limit : `int`, optional
        Most nodes to return.

    Returns
    -------
    addresses : `list` [`str`]
        Node addresses, then the controllers' (from ``slurm.conf``).
    """
    cmd = ["sinfo", "-h", "-N", "-o", "%o"]
    if partition:
        cmd[1:1] = ["-p", partition.split(",")[0]]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        res = None
    nodes: list[str] = []
    if res is not None and res.returncode == 0:
        for addr in res.stdout.split():
            if addr not in nodes:
                nodes.append(addr)
            if len(nodes) >= limit:
                break
    return nodes + _slurm_conf_controllers()


def choose_address(targets: Iterable[str], where: str) -> str:
    """The address workers on ``targets`` (the batch system's hosts) use to
    reach this host.

    The source address of the route to the first target reached through a
    real interface; when every target is this host (or none is known),
    this host's first address that is not loopback; loopback only when the
    targets are this host and it has no other address.

    Parameters
    ----------
    targets : `~collections.abc.Iterable` [`str`]
        Host names or addresses of the batch system's hosts.
    where : `str`
        The site's key path, for the error message.

    Returns
    -------
    address : `str`
        The address.

    Raises
    ------
    ConfigurationError
        When no such address exists; the message names the keys to set.
    """
    targets = list(targets)
    local_only = bool(targets)
    for target in targets:
        source = route_source(target)
        if source is None:
            local_only = False
            continue
        if not _is_loopback(source):
            _LOG.debug("Workers reach this host at %s (route to %s)", source, target)
            return source
    for addresses in host_addresses().values():
        for address in addresses:
            if not _is_loopback(address):
                return address
    if local_only:
        return "127.0.0.1"
    raise ConfigurationError(
        f"cannot determine the address workers use to reach this host (no interface other than loopback"
        f"{', no route to ' + ', '.join(targets) if targets else ''}): set '{where}.address' or "
        f"'{where}.interface'"
    )
