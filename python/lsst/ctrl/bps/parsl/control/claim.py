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

"""Who may write a run: one ``parsl/driver.claim.<N>`` at a time (doc/state.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..oneline import ShownMessageError
from .liveness import (
    HOST,
    STALE_AFTER,
    _parsl_dir,
    _read_json_stat,
    _unlink,
    _write_json,
    driver_alive,
    file_clock,
    process_start,
    read_heartbeat,
)

__all__ = ("Claim", "ClaimBusyError", "ClaimFence", "DriverBusyError", "claim_run", "current_claim")

_CLAIM_PREFIX = "driver.claim."


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


def _numbers(directory: str) -> list[int]:
    numbers = []
    for name in os.listdir(directory):
        if name.startswith(_CLAIM_PREFIX) and name[len(_CLAIM_PREFIX) :].isdigit():
            numbers.append(int(name[len(_CLAIM_PREFIX) :]))
    return sorted(numbers)


def _read_claim(directory: str, number: int) -> Claim | None:
    found = _read_json_stat(os.path.join(directory, f"{_CLAIM_PREFIX}{number}"))
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
    """The highest claim number of a run and its claim.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    number : `int`
        Highest claim number (0: none).
    claim : `Claim` or `None`
        That claim (`None`: none, or unreadable).
    """
    directory = _parsl_dir(submit_path)
    numbers = _numbers(directory)
    if not numbers:
        return 0, None
    return numbers[-1], _read_claim(directory, numbers[-1])


def _holder_alive(submit_path: str, claim: Claim, stale_after: float = STALE_AFTER) -> bool:
    """Whether ``claim``'s holder still holds the run (before its first beat: its claim file is fresh)."""
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
    target = os.path.join(directory, f"{_CLAIM_PREFIX}{number}")
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
    submit_path, what : `str`
        Submit directory; what the holder does (``submit``, ``restart``, ``cancel``).
    wait, stale_after : `float`
        Seconds to keep trying while the run is held; age of a silent claim whose holder elsewhere is gone.

    Yields
    ------
    claim : `Claim`
        This process's claim, held until the context ends.

    Raises
    ------
    ClaimBusyError
        If a live process holds the run (longer than ``wait``), this one included.
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
        elif holder is not None and _holder_alive(submit_path, holder, stale_after):
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
                        _unlink(os.path.join(directory, f"{_CLAIM_PREFIX}{old}"))
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
    """Whether claim ``N`` is still the run's: its file exists and ``N + 1``'s does not (`take_fence`).

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
        self._mine = os.path.join(directory, f"{_CLAIM_PREFIX}{number}")
        self._next = os.path.join(directory, f"{_CLAIM_PREFIX}{number + 1}")
        self._directory = directory
        self.lost: str | None = None
        """Why the claim is lost, once a check found it lost (never cleared)."""

    def holds(self) -> bool:
        """Whether the claim is still the run's.

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
    path = os.path.join(directory, f"{_CLAIM_PREFIX}{number}")
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
        _write_json(os.path.join(directory, f"{_CLAIM_PREFIX}{mine.number}"), {**record, "released": True})
