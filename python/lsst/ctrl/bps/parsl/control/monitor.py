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

"""The driver's side of its liveness: heartbeat, cancel requests, store or disk failures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from ..configuration import MIN_STALE_AFTER
from ..store.runstore import StoreLostError, out_of_space_message
from .claim import ClaimFence
from .liveness import (
    CANCEL_NAME,
    HEARTBEAT_NAME,
    HOST,
    STALE_AFTER,
    DriverRecord,
    _parsl_dir,
    _read_json,
    _unlink,
    _write_json,
    process_start,
    read_heartbeat,
)

if TYPE_CHECKING:
    from ..store.runstore import RunStore

_HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a driver."""
_POLL_INTERVAL = 0.5
"""Seconds between two checks of the driver (cancel request, store, disk)."""
_FULL_BELOW = 64 * 1024
"""Free bytes below which the submit directory's file system counts as full."""


class DriverMonitor:
    """A thread that writes the heartbeat and asks the driver to stop on a cancel or a lost store.

    Parameters
    ----------
    submit_path, run_id : `str`
        Submit directory; the run's id.
    store : `RunStore`
        The run's store, open for writing.
    interval, stale_after : `float`
        Seconds between heartbeats (at most ``stale_after / 4``); silence after which it counts as gone.
    fence : `ClaimFence`, optional
        The driver's claim: once the run is taken over, stop beating and ask the driver to stop.
    """

    def __init__(
        self,
        submit_path: str,
        run_id: str,
        store: RunStore,
        interval: float = _HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
        fence: ClaimFence | None = None,
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
        return info.f_blocks > 0 and info.f_bavail * info.f_frsize < _FULL_BELOW

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
        while not self._done.wait(_POLL_INTERVAL):
            try:
                self.check()
            except Exception:  # noqa: BLE001
                continue  # a check must never end the heartbeat
