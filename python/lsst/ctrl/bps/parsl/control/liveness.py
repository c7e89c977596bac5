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

"""Whether a run's driver is alive, and how other processes reach it (doc/operations.md)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass

from ..configuration import MIN_STALE_AFTER, default_of
from ..store.runstore import DB_NAME

HOST = socket.gethostname()
HEARTBEAT_NAME = "driver.heartbeat"
CANCEL_NAME = "cancel.request"
STALE_AFTER: float = default_of("parslDriverStaleAfter")
"""Default silence (s) of its heartbeat after which a driver on another host is gone."""


class _Holder:
    """A process that holds or drives a run: ``host``, ``pid`` and ``started``."""

    host: str
    pid: int
    started: int | None
    """Start time of the process (clock ticks since boot), `None` if unknown."""

    @property
    def identity(self) -> tuple[str, int, int | None]:
        """What tells this process from any other: (host, pid, start time)."""
        return self.host, self.pid, self.started

    def describe(self) -> str:
        """``pid N on HOST``, for messages."""
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class DriverRecord(_Holder):
    """What a driver's heartbeat says about it."""

    run_id: str
    host: str
    pid: int
    started: int | None
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


def _parsl_dir(submit_path: str) -> str:
    return os.path.join(submit_path, "parsl")


def process_start(pid: int) -> int | None:
    """Start time of a process on this host (clock ticks since boot).

    Parameters
    ----------
    pid : `int`
        Process id.

    Returns
    -------
    start : `int` or `None`
        Its start time; `None` if there is no such process or no ``/proc``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read()
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _read_json_stat(path: str) -> tuple[dict, os.stat_result] | None:
    """A small JSON object from a regular file (no symlink followed) and the file's status, or `None`."""
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


def _file_age(directory: str, mtime: float | None, written: float) -> float:
    """Seconds since a file in ``directory`` was written: from its ``mtime`` by the file system's clock
    (a new probe file's mtime) if it can, else from ``written`` by this host's.
    """
    probe = os.path.join(directory, f".clock.{HOST}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return time.time() - written
    try:
        now = os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        _unlink(probe)
    return now - (written if mtime is None else mtime)


def _same_process(pid: int, started: int | None) -> bool | None:
    """Whether process ``pid`` here is the one started at ``started`` (`None`: no ``/proc`` to tell)."""
    start = process_start(pid)
    if start is None and not os.path.isdir("/proc"):
        return None
    return start is not None and (started is None or start == started)


def _pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists here (without ``/proc``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


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


def _read_heartbeat(submit_path: str) -> DriverRecord | None:
    """The heartbeat of a run's driver as written, fresh or not; `None` if missing or unreadable."""
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


def _fresh(record: DriverRecord, submit_path: str) -> bool:
    """Whether the heartbeat is younger than its ``stale_after`` by the file system's clock."""
    age = _file_age(_parsl_dir(submit_path), record.mtime, record.time)
    return age <= max(record.stale_after, 2 * record.interval)


def driver_alive(submit_path: str, run_id: str | None = None, confirm: bool = False) -> DriverRecord | None:
    """The live driver of a run: its process runs (this host) or its heartbeat is fresh (`_fresh`).

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    run_id : `str`, optional
        The run's id: a heartbeat of another run is ignored.
    confirm : `bool`
        Watch a seemingly gone remote driver's heartbeat first (to take a run over).

    Returns
    -------
    record : `DriverRecord` or `None`
        The live driver's heartbeat, `None` if there is none.
    """
    record = _read_heartbeat(submit_path)
    if record is None or (run_id is not None and record.run_id != run_id):
        return None
    if record.host == HOST:
        same = _same_process(record.pid, record.started)
        if same is None:  # no /proc: the pid exists, and the heartbeat must be fresh
            same = _pid_exists(record.pid) and _fresh(record, submit_path)
        return record if same else None
    if _fresh(record, submit_path):
        return record
    if confirm:  # watch a stale-looking heartbeat for two beats and a second: whether it moves
        deadline = time.monotonic() + min(record.stale_after, 2 * record.interval + 1.0)
        while time.monotonic() < deadline:
            time.sleep(min(0.2, record.interval / 4))
            moved = _read_heartbeat(submit_path)
            if moved is None:
                return None
            if (moved.beat, moved.mtime, moved.identity) != (record.beat, record.mtime, record.identity):
                return moved if run_id is None or moved.run_id == run_id else None
    return None


def holds_store(pid: int, submit_path: str) -> bool:
    """Whether process ``pid`` (here) has the run's database open: proof it is the driver.

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
    fd_dir = f"/proc/{pid}/fd"
    try:
        target = os.lstat(os.path.join(submit_path, DB_NAME))
        names = os.listdir(fd_dir) if stat.S_ISREG(target.st_mode) else []
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
