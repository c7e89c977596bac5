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

"""Who may write a run: one claim file at a time, from any host.

A process that writes the run's store (a driver, or ``bps cancel`` marking
jobs DELETED once the driver ended) first claims the run: it creates
``<submit>/parsl/driver.claim.<N>`` with ``link()`` (atomic on local disks
and on NFS, Lustre and GPFS, unlike ``flock``), where ``N`` is one more than
the highest claim there. Whoever creates ``N`` holds the run; the others see
the file exist and check its holder. Numbers are never reused (the highest
claim is never removed, only marked released), so a process that judged
claim ``N`` abandoned can only ever take ``N + 1``, never a newer holder's
claim.

A claim's holder is gone when it released it, when (on this host) its
process ended, or (on another host) when its heartbeat (or, before it beats,
the claim file itself) is stale and stays still while watched
(`liveness.driver_alive` with ``confirm``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..oneline import ShownMessageError
from .liveness import (
    HOST,
    STALE_AFTER,
    _read_json_stat,
    _unlink,
    _write_json,
    driver_alive,
    file_clock,
    process_start,
    read_heartbeat,
)

if TYPE_CHECKING:
    pass

__all__ = (
    "Claim",
    "ClaimBusyError",
    "ClaimFence",
    "DriverBusyError",
    "claim_run",
    "current_claim",
)

CLAIM_PREFIX = "driver.claim."


class DriverBusyError(ShownMessageError, RuntimeError):
    """Another driver is running this run."""


class ClaimBusyError(RuntimeError):
    """A live process holds the run's claim."""

    def __init__(self, holder: Claim):
        super().__init__(f"pid {holder.pid} on {holder.host}")
        self.holder = holder


@dataclass(frozen=True)
class Claim:
    """One claim file: who holds the run."""

    number: int
    host: str
    pid: int
    started: int | None
    time: float
    what: str
    released: bool = False
    mtime: float | None = None

    @property
    def identity(self) -> tuple[str, int, int | None]:
        """(host, pid, start time) of the holder."""
        return self.host, self.pid, self.started

    def describe(self) -> str:
        """``pid N on HOST``.

        Returns
        -------
        text : `str`
            The holder's process id and host, for messages.
        """
        return f"pid {self.pid} on {self.host}"


def _parsl_dir(submit_path: str) -> str:
    return os.path.join(submit_path, "parsl")


def _numbers(directory: str) -> list[int]:
    numbers = []
    for name in os.listdir(directory):
        if name.startswith(CLAIM_PREFIX) and name[len(CLAIM_PREFIX) :].isdigit():
            numbers.append(int(name[len(CLAIM_PREFIX) :]))
    return sorted(numbers)


def _read_claim(directory: str, number: int) -> Claim | None:
    found = _read_json_stat(os.path.join(directory, f"{CLAIM_PREFIX}{number}"))
    if found is None:
        return None
    value, info = found
    try:
        return Claim(
            number,
            str(value["host"]),
            int(value["pid"]),
            None if value.get("started") is None else int(value["started"]),
            float(value["time"]),
            str(value.get("what", "")),
            bool(value.get("released", False)),
            info.st_mtime,
        )
    except (KeyError, TypeError, ValueError):
        return None


def current_claim(submit_path: str) -> tuple[int, Claim | None]:
    """The highest claim number of a run and its claim (`None`: no claim
    yet, or one that cannot be read).

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    number : `int`
        Highest claim number (0: none).
    claim : `Claim` or `None`
        That claim.
    """
    directory = _parsl_dir(submit_path)
    numbers = _numbers(directory)
    if not numbers:
        return 0, None
    return numbers[-1], _read_claim(directory, numbers[-1])


def holder_alive(submit_path: str, claim: Claim, stale_after: float = STALE_AFTER) -> bool:
    """Whether the holder of ``claim`` still holds the run.

    On this host: its process runs. On another host: the run's heartbeat
    names it and is not stale (confirmed by watching it), or, before its
    first heartbeat, the claim file is younger than ``stale_after`` by the
    file system's clock.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    claim : `Claim`
        The claim read.
    stale_after : `float`, optional
        Age (seconds) after which a claim with no heartbeat, held on another
        host, counts as gone.

    Returns
    -------
    alive : `bool`
        `True` if the holder still holds the run.
    """
    if claim.released:
        return False
    if claim.host == HOST:
        start = process_start(claim.pid)
        if start is None and not os.path.isdir("/proc"):
            return True  # cannot tell: never take over
        return start is not None and (claim.started is None or start == claim.started)
    own = read_heartbeat(submit_path)
    if own is not None and own.identity == claim.identity:
        # It beats (or did): its heartbeat decides, watched before it is called gone.
        beat = driver_alive(submit_path, confirm=True)
        return beat is not None and beat.identity == claim.identity
    now = file_clock(_parsl_dir(submit_path))
    written = claim.mtime if now is not None and claim.mtime is not None else claim.time
    # No heartbeat of its own yet (a driver starting, a cancel writing): the claim's own age.
    return (now if now is not None else time.time()) - written <= stale_after


def _try_create(directory: str, number: int, record: dict) -> bool:
    """Create claim ``number`` atomically (``link()`` of a private file); whether this process did."""
    tmp = os.path.join(directory, f".claim.{HOST}.{os.getpid()}.{number}.tmp")
    _write_json(tmp, record)
    target = os.path.join(directory, f"{CLAIM_PREFIX}{number}")
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS may lose the reply of a link that succeeded: the link count tells.
        try:
            return os.stat(tmp).st_nlink == 2
        except OSError:
            return False
    finally:
        _unlink(tmp)


@contextmanager
def claim_run(
    submit_path: str, what: str, wait: float = 0.0, stale_after: float = STALE_AFTER
) -> Iterator[Claim]:
    """Hold the run's claim, or raise `ClaimBusyError` naming the live holder.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    what : `str`
        What the holder does (``submit``, ``restart``, ``cancel``).
    wait : `float`
        Seconds to keep trying while a live process holds the run.
    stale_after : `float`
        Age of a claim with no heartbeat after which its holder on another
        host counts as gone.

    Yields
    ------
    claim : `Claim`
        This process's claim, held until the context ends.

    Raises
    ------
    ClaimBusyError
        If a live process holds the run (for longer than ``wait``), or this
        process holds it already.
    """
    directory = _parsl_dir(submit_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    started = process_start(os.getpid())
    deadline = time.monotonic() + wait
    while True:
        number, holder = current_claim(submit_path)
        if holder is not None and holder.identity == (HOST, os.getpid(), started) and not holder.released:
            raise ClaimBusyError(holder)  # this process already holds it: never twice
        if holder is None and number and not _unreadable_for_long(directory, number, stale_after):
            busy: Claim | None = Claim(number, "?", 0, None, 0.0, "")
        elif holder is not None and holder_alive(submit_path, holder, stale_after):
            busy = holder
        else:
            busy = None
        if busy is None:
            now = time.time()
            record = {"host": HOST, "pid": os.getpid(), "started": started, "time": now, "what": what}
            if _try_create(directory, number + 1, record):
                mine = Claim(number + 1, HOST, os.getpid(), started, now, what)
                for old in _numbers(directory):
                    if old < mine.number:
                        _unlink(os.path.join(directory, f"{CLAIM_PREFIX}{old}"))
                try:
                    yield mine
                finally:
                    _release(directory, mine, record)
                return
            continue  # another process took number + 1 first: look at it
        if time.monotonic() >= deadline:
            raise ClaimBusyError(busy)
        time.sleep(0.1)


class ClaimFence:
    """A fast check that a holder's claim is still the run's, for a driver
    to make before each dispatch and each heartbeat.

    A newer holder creates claim ``N + 1`` and then removes every older
    claim, so claim ``N`` is still the run's exactly while its file exists
    and claim ``N + 1`` does not: two ``stat`` calls, no lock, no store read.
    (Commits check the store's own copy of the claim, `RunStore.take_fence`.)

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    number : `int`
        The number of the claim held.
    """

    def __init__(self, submit_path: str, number: int):
        directory = _parsl_dir(submit_path)
        self.number = number
        self._mine = os.path.join(directory, f"{CLAIM_PREFIX}{number}")
        self._next = os.path.join(directory, f"{CLAIM_PREFIX}{number + 1}")
        self._directory = directory
        self.lost: str | None = None
        """Why the claim is lost, once a check found it lost (never cleared)."""

    def holds(self) -> bool:
        """Whether the claim is still the run's (once lost, lost for good).

        Returns
        -------
        holds : `bool`
            `False` once a newer holder took the run (`lost` says who).
        """
        if self.lost is None and (not os.path.lexists(self._mine) or os.path.lexists(self._next)):
            number, newer = current_claim(os.path.dirname(self._directory))
            who = f" by {newer.describe()} ('{newer.what}')" if newer is not None else ""
            self.lost = (
                f"{os.path.dirname(self._directory)}: the run was taken over{who}, claim {number}, while this "
                f"driver (claim {self.number}) could not run (stopped or frozen longer than "
                "parslDriverStaleAfter): it stopped its jobs and recorded nothing more"
            )
        return self.lost is None


def _unreadable_for_long(directory: str, number: int, stale_after: float) -> bool:
    """Whether an unreadable (empty, damaged) claim file is older than ``stale_after``."""
    path = os.path.join(directory, f"{CLAIM_PREFIX}{number}")
    try:
        mtime = os.lstat(path).st_mtime
    except FileNotFoundError:
        return True
    except OSError:
        return False
    now = file_clock(directory)
    return (now if now is not None else time.time()) - mtime > stale_after


def _release(directory: str, mine: Claim, record: dict) -> None:
    """Mark this process's claim released (the file stays: numbers are never reused)."""
    current = _read_claim(directory, mine.number)
    if current is not None and current.identity == mine.identity:
        _write_json(os.path.join(directory, f"{CLAIM_PREFIX}{mine.number}"), {**record, "released": True})
