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

"""Who may write a run: one ``parsl/driver.claim.<N>`` at a time (doc/state.md); the holding driver's
`DriverMonitor`: its heartbeat, cancel-request poll, claim fence and store and disk checks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from ..configuration import MIN_STALE_AFTER
from ..oneline import ShownMessageError
from ..store.runstore import RunStore, StoreLostError, out_of_space_message
from .liveness import (
    CANCEL_NAME,
    HEARTBEAT_NAME,
    HOST,
    STALE_AFTER,
    DriverRecord,
    _file_age,
    _Holder,
    _parsl_dir,
    _read_heartbeat,
    _read_json_stat,
    _same_process,
    _unlink,
    _write_json,
    driver_alive,
    process_start,
)

__all__ = (
    "Claim",
    "ClaimBusyError",
    "ClaimFence",
    "DriverBusyError",
    "DriverMonitor",
    "claim_run",
    "current_claim",
)

_CLAIM_PREFIX = "driver.claim."
_HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a driver."""
_POLL_INTERVAL = 0.5
"""Seconds between two checks of the driver (cancel request, store, disk)."""
_FULL_BELOW = 64 * 1024
"""Free bytes below which the submit directory's file system counts as full."""


class DriverBusyError(ShownMessageError, RuntimeError):
    """Another driver is running this run."""


class ClaimBusyError(RuntimeError):
    """A live process holds the run's claim."""

    def __init__(self, holder: Claim):
        super().__init__(holder.describe())
        self.holder = holder


@dataclass(frozen=True)
class Claim(_Holder):
    """One claim file: who holds the run."""

    number: int
    host: str
    pid: int
    started: int | None
    time: float
    what: str
    released: bool = False
    mtime: float | None = None


def _numbers(directory: str) -> list[int]:
    numbers = (name[len(_CLAIM_PREFIX) :] for name in os.listdir(directory) if name.startswith(_CLAIM_PREFIX))
    return sorted(int(number) for number in numbers if number.isdigit())


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
    number, claim : `tuple` [`int`, `Claim` or `None`]
        Highest claim number (0: none) and that claim (`None`: none, or unreadable).
    """
    directory = _parsl_dir(submit_path)
    numbers = _numbers(directory)
    if not numbers:
        return 0, None
    return numbers[-1], _read_claim(directory, numbers[-1])


def _holder_alive(submit_path: str, claim: Claim, stale_after: float) -> bool:
    """Whether ``claim``'s holder still holds the run (before its first beat: its claim file is fresh)."""
    if claim.released:
        return False
    if claim.host == HOST:
        return _same_process(claim.pid, claim.started) is not False  # None: cannot tell, never take over
    own = _read_heartbeat(submit_path)
    if own is not None and own.identity == claim.identity:
        # It beats (or did): its heartbeat decides, watched before it is called gone.
        beat = driver_alive(submit_path, confirm=True)
        return beat is not None and beat.identity == claim.identity
    # No heartbeat of its own yet (a driver starting, a cancel writing): the claim's own age.
    return _file_age(_parsl_dir(submit_path), claim.mtime, claim.time) <= stale_after


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
    """Hold the run's claim, or raise `ClaimBusyError` naming the live holder (this process included).

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
        self._submit_path = submit_path
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
            number, newer = current_claim(self._submit_path)
            who = f" by {newer.describe()} ('{newer.what}')" if newer is not None else ""
            self.lost = (
                f"{self._submit_path}: the run was taken over{who}, claim {number}, while this "
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
    return _file_age(directory, mtime, mtime) > stale_after


def _release(directory: str, mine: Claim, record: dict) -> None:
    """Mark this process's claim released (the file stays: numbers are never reused)."""
    current = _read_claim(directory, mine.number)
    if current is not None and current.identity == mine.identity:
        _write_json(os.path.join(directory, f"{_CLAIM_PREFIX}{mine.number}"), {**record, "released": True})


class DriverMonitor:
    """A thread that writes the heartbeat and asks the driver to stop on a cancel or a lost store.

    Parameters
    ----------
    submit_path, run_id : `str`
        Submit directory; the run's id.
    store : `RunStore`
        The run's store, open for writing.
    stale_after : `float`
        Silence of its heartbeat after which the driver counts as gone (it beats 4 times as often).
    fence : `ClaimFence`, optional
        The driver's claim: once the run is taken over, stop beating and ask the driver to stop.
    """

    def __init__(
        self,
        submit_path: str,
        run_id: str,
        store: RunStore,
        stale_after: float = STALE_AFTER,
        fence: ClaimFence | None = None,
    ):
        self.fence = fence
        self.submit_path = submit_path
        self.run_id = run_id
        self.store = store
        stale_after = max(MIN_STALE_AFTER, stale_after)
        self.interval = min(_HEARTBEAT_INTERVAL, stale_after / 4)
        self.beats = 0
        me = (HOST, os.getpid(), process_start(os.getpid()))
        self._record = DriverRecord(run_id, *me, 0.0, self.interval, stale_after=stale_after)
        self._identity = list(me)
        self.reason: str | None = None
        self._request_stop: Callable[[str], None] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bps-parsl-monitor", daemon=True)
        self._heartbeat = os.path.join(_parsl_dir(submit_path), HEARTBEAT_NAME)
        self._cancel = os.path.join(_parsl_dir(submit_path), CANCEL_NAME)
        self._last_beat = 0.0

    def start(self) -> None:
        """Forget old cancel requests, write the first heartbeat, start checking."""
        _unlink(self._cancel)
        self._beat()
        self._thread.start()

    def attach(self, request_stop: Callable[[str], None]) -> None:
        """Tell the driver to stop through ``request_stop`` (now, if a reason came already).

        Parameters
        ----------
        request_stop : `~collections.abc.Callable` [[`str`], `None`]
            The driver's stop request, called with the reason.
        """
        self._request_stop = request_stop
        if self.reason:
            request_stop(self.reason)

    def stop(self) -> None:
        """Stop checking; remove the heartbeat and any cancel request meant for this driver."""
        self._done.set()
        self._thread.join()
        if self._cancel_requested():
            _unlink(self._cancel)
        mine = _read_heartbeat(self.submit_path)
        if mine is not None and list(mine.identity) == self._identity:
            _unlink(self._heartbeat)

    def _beat(self) -> None:
        if self.fence is not None and not self.fence.holds():
            # The heartbeat is the new holder's now: never overwrite it.
            if self._request_stop is not None and self.fence.lost:
                self._request_stop(self.fence.lost)
            return
        record = replace(self._record, time=time.time(), stopping=self.reason, beat=self.beats)
        self.beats += 1
        value = {key: value for key, value in asdict(record).items() if key != "mtime"}
        try:
            _write_json(self._heartbeat, value)
        except OSError:
            pass  # a full disk: readers on this host still see the process
        self._last_beat = time.monotonic()

    def _cancel_requested(self) -> str | None:
        found = _read_json_stat(self._cancel)
        value = found[0] if found else {}
        if value.get("run_id") != self.run_id or value.get("target") != self._identity:
            return None
        who = value.get("from")
        where = f" from pid {who[1]} on {who[0]}" if isinstance(who, list) and len(who) == 2 else ""
        return f"cancelled by 'bps cancel'{where}"

    def _disk_full(self) -> bool:
        try:
            info = os.statvfs(self.submit_path)
        except OSError:
            return False
        # Some file systems report no sizes at all (f_blocks 0): never "full".
        return info.f_blocks > 0 and info.f_bavail * info.f_frsize < _FULL_BELOW

    def _check(self) -> None:
        """One round of checks (the thread's work)."""
        if not self.reason:
            reason = self._cancel_requested()
            if reason is None:
                try:
                    self.store.check_identity()
                except StoreLostError as exc:
                    reason = str(exc)
            if reason is None and not self.store.disk_full and self._disk_full():
                # The driver drains: no new job starts, running ones end and are recorded.
                self.store.disk_full = out_of_space_message(self.submit_path)
            if reason is not None:
                self.reason = reason
                if self._request_stop is not None:
                    self._request_stop(reason)
                self._beat()
        if time.monotonic() - self._last_beat >= self.interval:
            self._beat()

    def _loop(self) -> None:
        while not self._done.wait(_POLL_INTERVAL):
            try:
                self._check()
            except Exception:  # noqa: BLE001
                continue  # a check must never end the heartbeat
