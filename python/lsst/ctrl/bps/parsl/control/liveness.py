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

"""Whether a run's driver is alive, and how other processes reach it.

Everything goes through two small files in ``<submit>/parsl/``, so that it
works from any host that sees the submit directory and never depends on a
lock or a signal:

* ``driver.heartbeat``: written by the driver (atomically replaced, mode
  0600) when it starts and every `HEARTBEAT_INTERVAL` seconds: run id, host,
  pid, the process's start time, a counter of beats, the time of writing,
  the interval, the silence after which it counts as gone, and why it is
  stopping once it is. Removed when the driver ends.
* ``cancel.request``: written by ``bps cancel``, naming the run and the
  driver it is meant for; the driver polls for it every `POLL_INTERVAL`
  seconds and stops.

A driver on this host is alive while its process runs. One on another host
is alive while its heartbeat file is younger than its ``stale_after``,
measured against the file system's own clock (the modification time of a
probe file), never against this host's clock; taking over a run (`driver_alive`
with ``confirm``) also watches the heartbeat for a few intervals and counts
the driver alive if its counter moves. Readers only read (and create the
probe): checking liveness never takes a lock a driver needs.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from ..configuration import MIN_STALE_AFTER, default_of
from ..store.runstore import DB_NAME, StoreLostError, out_of_space_message

if TYPE_CHECKING:
    from ..store.runstore import RunStore

__all__ = (
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
    "DriverMonitor",
    "DriverRecord",
    "driver_alive",
    "file_clock",
    "holds_store",
    "read_heartbeat",
    "write_cancel_request",
)

HOST = socket.gethostname()
HEARTBEAT_NAME = "driver.heartbeat"
CANCEL_NAME = "cancel.request"
HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a driver."""
POLL_INTERVAL = 0.5
"""Seconds between two checks of the driver (cancel request, store, disk)."""
STALE_AFTER: float = default_of("parslDriverStaleAfter")
"""Default silence (seconds) of its heartbeat after which a driver on another
host counts as gone (``parslDriverStaleAfter``)."""
FULL_BELOW = 64 * 1024
"""Free bytes below which the submit directory's file system counts as full."""


class Fence(Protocol):
    """What a driver's monitor checks at each heartbeat: whether the run's
    claim is still this driver's (`~.claim.ClaimFence`).

    Parameters
    ----------
    *args : `typing.Any`
        Unused: a protocol describes objects, it makes none.
    **kwargs : `typing.Any`
        Unused.
    """

    lost: str | None
    """Why the claim is lost, once a check found it lost."""

    def holds(self) -> bool:
        """Whether the claim is still the run's.

        Returns
        -------
        holds : `bool`
            `False` once another holder took the run over.
        """
        ...


@dataclass(frozen=True)
class DriverRecord:
    """What a driver's heartbeat says about it."""

    run_id: str
    host: str
    pid: int
    started: int | None
    """Start time of the process (clock ticks since boot), `None` if unknown."""
    time: float
    interval: float
    stopping: str | None = None
    """Why the driver is stopping, once it is."""
    beat: int = 0
    """How many heartbeats the driver wrote before this one."""
    stale_after: float = STALE_AFTER
    """Silence of the heartbeat after which the driver counts as gone."""
    mtime: float | None = None
    """Modification time of the heartbeat file, as read (not written)."""

    def describe(self) -> str:
        """``pid N on HOST``.

        Returns
        -------
        text : `str`
            The driver's process id and host, for messages.
        """
        return f"pid {self.pid} on {self.host}"

    @property
    def identity(self) -> tuple[str, int, int | None]:
        """What tells this driver process from any other."""
        return self.host, self.pid, self.started


def _parsl_dir(submit_path: str) -> str:
    return os.path.join(submit_path, "parsl")


def process_start(pid: int) -> int | None:
    """Start time of a process on this host (clock ticks since boot), or
    `None` if there is no such process or no ``/proc``.

    Parameters
    ----------
    pid : `int`
        Process id.

    Returns
    -------
    start : `int` or `None`
        Its start time in clock ticks since boot.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read()
    except OSError:
        return None
    try:
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _read_json(path: str) -> dict | None:
    """A small JSON object from a regular file (no symlink followed), or `None`."""
    found = _read_json_stat(path)
    return None if found is None else found[0]


def _read_json_stat(path: str) -> tuple[dict, os.stat_result] | None:
    """A small JSON object from a regular file and the file's status, or `None`."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            time.sleep(0.01)  # e.g. ESTALE on a network file system while it is replaced
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        try:
            value = json.loads(data)
        except ValueError:
            time.sleep(0.01)
            continue
        return (value, info) if isinstance(value, dict) else None
    return None


def file_clock(directory: str) -> float | None:
    """The current time by the clock of the file system holding
    ``directory`` (the modification time of a new probe file), or `None` if
    no file can be created there.

    Parameters
    ----------
    directory : `str`
        A directory this user may write.

    Returns
    -------
    now : `float` or `None`
        Seconds since the epoch by the file system's clock.
    """
    probe = os.path.join(directory, f".clock.{HOST}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        _unlink(probe)


def _write_json(path: str, value: dict) -> None:
    """Replace ``path`` atomically by a 0600 file holding ``value``."""
    tmp = f"{path}.{HOST}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps(value).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_heartbeat(submit_path: str) -> DriverRecord | None:
    """The heartbeat of a run's driver as written, fresh or not, or `None`.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    record : `DriverRecord` or `None`
        The heartbeat, `None` if missing or unreadable.
    """
    found = _read_json_stat(os.path.join(_parsl_dir(submit_path), HEARTBEAT_NAME))
    if found is None:
        return None
    value, info = found
    try:
        record = DriverRecord(
            run_id=str(value["run_id"]),
            host=str(value["host"]),
            pid=int(value["pid"]),
            started=None if value.get("started") is None else int(value["started"]),
            time=float(value["time"]),
            interval=float(value["interval"]),
            stopping=None if value.get("stopping") is None else str(value["stopping"]),
            beat=int(value.get("beat", 0)),
            stale_after=max(MIN_STALE_AFTER, float(value.get("stale_after", STALE_AFTER))),
            mtime=info.st_mtime,
        )
    except (KeyError, TypeError, ValueError):
        return None
    return record if record.pid > 0 else None


def _is_running(record: DriverRecord, submit_path: str) -> bool:
    """Whether the heartbeat's process, on this host, is still the one that wrote it."""
    start = process_start(record.pid)
    if start is not None:
        return record.started is None or start == record.started
    if os.path.isdir("/proc"):
        return False  # no such process
    try:  # no /proc: the pid exists, and the heartbeat must be fresh
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _fresh(record, submit_path)


def _fresh(record: DriverRecord, submit_path: str) -> bool:
    """Whether the heartbeat file is younger than its ``stale_after`` by the
    file system's clock (this host's clock if no probe file can be made).
    """
    now = file_clock(_parsl_dir(submit_path))
    written = record.mtime if now is not None and record.mtime is not None else record.time
    age = (now if now is not None else time.time()) - written
    return age <= max(record.stale_after, 2 * record.interval)


def _progress(submit_path: str, record: DriverRecord) -> DriverRecord | None:
    """Watch a heartbeat that looks stale for two intervals and a second
    (this host's monotonic clock only); the record that shows it moved on
    (another beat, or another writer), or `None` if it did not.
    """
    deadline = time.monotonic() + min(record.stale_after, 2 * record.interval + 1.0)
    while time.monotonic() < deadline:
        time.sleep(min(0.2, record.interval / 4))
        now = read_heartbeat(submit_path)
        if now is None:
            return None
        if (now.beat, now.mtime, now.identity) != (record.beat, record.mtime, record.identity):
            return now
    return None


def driver_alive(submit_path: str, run_id: str | None = None, confirm: bool = False) -> DriverRecord | None:
    """The live driver of a run, or `None`.

    A driver on this host is alive while its process (same pid and start
    time) runs; one on another host while its heartbeat file is younger
    than the heartbeat's ``stale_after`` by the file system's clock.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    run_id : `str`, optional
        The run's id: a heartbeat of another run is ignored.
    confirm : `bool`
        Before calling a driver on another host gone, watch its heartbeat
        for a few intervals: alive if it moves (for taking over a run; a
        clock or a file attribute cache that lags cannot make a live driver
        look dead).

    Returns
    -------
    record : `DriverRecord` or `None`
        The live driver's heartbeat.
    """
    record = read_heartbeat(submit_path)
    if record is None or (run_id is not None and record.run_id != run_id):
        return None
    if record.host == HOST:
        return record if _is_running(record, submit_path) else None
    if _fresh(record, submit_path):
        return record
    if confirm:
        moved = _progress(submit_path, record)
        if moved is not None and (run_id is None or moved.run_id == run_id):
            return moved
    return None


def holds_store(pid: int, submit_path: str) -> bool:
    """Whether process ``pid`` (on this host) has the run-state database of
    ``submit_path`` open: the proof that it is this run's driver.

    Parameters
    ----------
    pid : `int`
        Process id on this host.
    submit_path : `str`
        Submit directory.

    Returns
    -------
    holds : `bool`
        `True` if one of its open files is the run's database.
    """
    try:
        target = os.lstat(os.path.join(submit_path, DB_NAME))
    except OSError:
        return False
    if not stat.S_ISREG(target.st_mode):
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            info = os.stat(os.path.join(fd_dir, name))
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def write_cancel_request(submit_path: str, record: DriverRecord) -> None:
    """Ask the driver ``record`` describes to stop.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    record : `DriverRecord`
        The driver's heartbeat: the request names that driver.
    """
    _write_json(
        os.path.join(_parsl_dir(submit_path), CANCEL_NAME),
        {
            "run_id": record.run_id,
            "target": list(record.identity),
            "from": [HOST, os.getpid()],
            "time": time.time(),
        },
    )


class DriverMonitor:
    """The running driver's side: heartbeat, cancel requests, and the checks
    that stop it when its store or its disk fails.

    A small thread wakes every `POLL_INTERVAL` seconds: it asks the driver to
    stop (``request_stop(reason)``) when a cancel request names it, when the
    run-state database was deleted, replaced or truncated, or when the
    submit directory's file system is full; and it rewrites the heartbeat
    every `HEARTBEAT_INTERVAL` seconds.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    run_id : `str`
        The run's id.
    store : `RunStore`
        The run's store, open for writing.
    interval : `float`
        Seconds between heartbeats (at most a quarter of ``stale_after``).
    stale_after : `float`
        Silence of the heartbeat after which readers on other hosts may
        count this driver as gone (written into the heartbeat).
    fence : `Fence`, optional
        The run's claim the driver holds: once another process took the
        run over, no heartbeat is written any more and the driver is asked
        to stop.
    """

    def __init__(
        self,
        submit_path: str,
        run_id: str,
        store: RunStore,
        interval: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
        fence: Fence | None = None,
    ):
        self.fence = fence
        self.submit_path = submit_path
        self.run_id = run_id
        self.store = store
        self.stale_after = max(MIN_STALE_AFTER, stale_after)
        self.interval = min(interval, self.stale_after / 4)
        self.beats = 0
        self.started = process_start(os.getpid())
        self.reason: str | None = None
        self._request_stop: Callable[[str], None] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bps-parsl-monitor", daemon=True)
        self._heartbeat = os.path.join(_parsl_dir(submit_path), HEARTBEAT_NAME)
        self._cancel = os.path.join(_parsl_dir(submit_path), CANCEL_NAME)
        self._last_beat = 0.0

    @property
    def identity(self) -> list:
        """(host, pid, start time) of the driver this monitor runs in."""
        return [HOST, os.getpid(), self.started]

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
        mine = read_heartbeat(self.submit_path)
        if mine is not None and list(mine.identity) == self.identity:
            _unlink(self._heartbeat)

    def _beat(self) -> None:
        if self.fence is not None and not self.fence.holds():
            # The heartbeat is the new holder's now: never overwrite it.
            if self._request_stop is not None and self.fence.lost:
                self._request_stop(self.fence.lost)
            return
        record = DriverRecord(
            self.run_id,
            HOST,
            os.getpid(),
            self.started,
            time.time(),
            self.interval,
            self.reason,
            self.beats,
            self.stale_after,
        )
        self.beats += 1
        value = asdict(record)
        del value["mtime"]
        try:
            _write_json(self._heartbeat, value)
        except OSError:
            pass  # a full disk: readers on this host still see the process
        self._last_beat = time.monotonic()

    def _cancel_requested(self) -> str | None:
        value = _read_json(self._cancel)
        if value is None or value.get("run_id") != self.run_id or value.get("target") != self.identity:
            return None
        who = value.get("from")
        where = f" from pid {who[1]} on {who[0]}" if isinstance(who, list) and len(who) == 2 else ""
        return f"cancelled by 'bps cancel'{where}"

    def _stop_with(self, reason: str) -> None:
        if self.reason:
            return
        self.reason = reason
        if self._request_stop is not None:
            self._request_stop(reason)
        self._beat()

    def _disk_full(self) -> bool:
        try:
            info = os.statvfs(self.submit_path)
        except OSError:
            return False
        # Some file systems report no sizes at all (f_blocks 0): never "full".
        return info.f_blocks > 0 and info.f_bavail * info.f_frsize < FULL_BELOW

    def check(self) -> None:
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
                self._stop_with(reason)
        if time.monotonic() - self._last_beat >= self.interval:
            self._beat()

    def _loop(self) -> None:
        while not self._done.wait(POLL_INTERVAL):
            try:
                self.check()
            except Exception:  # noqa: BLE001
                continue  # a check must never end the heartbeat
