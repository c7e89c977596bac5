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

"""``bps cancel``: stop a run's driver and every job, from any process, within a bound."""

from __future__ import annotations

import os
import signal
import time

from ..control.claim import DriverBusyError
from ..control.liveness import (
    HOST,
    STALE_AFTER,
    DriverRecord,
    driver_alive,
    holds_store,
    process_start,
    write_cancel_request,
)
from ..control.running import kill_running_jobs
from ..records import ENDED, JobState
from ..store.runstore import RunStore, db_path
from .session import _busy, checked_run, driver_claim

__all__ = ("DriverBusyError", "cancel_run")

_ACK_TIMEOUT = 10.0
"""Seconds a driver has to answer a cancel request."""
_STOP_TIMEOUT = 60.0
"""Seconds a driver on this host has to end after it answered (or got SIGTERM) before SIGKILL."""
_LOCK_WAIT = 10.0
"""Seconds to wait for the claim of a driver that just ended."""


def _wait_for_end(submit_path: str, record: DriverRecord, timeout: float, ack: bool = False) -> bool:
    """Wait until the driver has ended (with ``ack``: says it stops); whether it did."""
    deadline = time.monotonic() + timeout
    while True:
        now = driver_alive(submit_path, record.run_id)
        if now is None or now.identity != record.identity or (ack and now.stopping):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal_driver(pid: int, started: int | None, sig: int) -> bool:
    """Send ``sig`` and SIGCONT (a stopped driver acts on nothing) to a proven local driver; if it ran."""
    if process_start(pid) is None or (started is not None and process_start(pid) != started):
        return False
    try:
        group = os.getpgid(pid)
        if sig != signal.SIGCONT:
            os.kill(pid, sig)
        if group > 1 and group != os.getpgrp():
            os.killpg(group, signal.SIGCONT)
        else:
            os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return False
    return True


def cancel_run(submit_path: str, timeout: float | None = None) -> tuple[bool, str]:
    """Stop a run's driver and every job from any process, within a bound (doc/operations.md).

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    timeout : `float`, optional
        Seconds a driver that answered has to end (default `_STOP_TIMEOUT`).

    Returns
    -------
    cancelled : `bool`
        Whether the driver and every job process here ended and all unfinished jobs are DELETED.
    message : `str`
        What happened.

    Raises
    ------
    StateStoreError
        If the directory is not a run this user may act on.
    DriverBusyError
        If another process holds the run while its jobs are recorded.
    """
    stop_timeout = _STOP_TIMEOUT if timeout is None else timeout
    # A stopped driver may hold the store's lock: continue it before the store is read.
    early = driver_alive(submit_path)
    if early is not None and early.host == HOST and holds_store(early.pid, submit_path):
        _signal_driver(early.pid, early.started, signal.SIGCONT)
    run_id = checked_run(submit_path)
    record = driver_alive(submit_path, run_id)
    how = ""
    stale_after = STALE_AFTER
    if record is not None:
        stale_after = record.stale_after
        write_cancel_request(submit_path, record)
        local = record.host == HOST and holds_store(record.pid, submit_path)
        if local:
            _signal_driver(record.pid, record.started, signal.SIGCONT)
        if not _wait_for_end(submit_path, record, _ACK_TIMEOUT, ack=True):
            if local:
                _signal_driver(record.pid, record.started, signal.SIGTERM)
                how = f" (no answer within {_ACK_TIMEOUT:.0f} s: SIGTERM)"
            elif record.host == HOST:
                return False, (
                    f"the driver ({record.describe()}) did not answer the cancel request within "
                    f"{_ACK_TIMEOUT:.0f} s and its process does not hold this run's database: not signalled; "
                    "it stops when it reads the request: try again later"
                )
            else:
                # Another host: no signal reaches it. Silent past its stale_after, the run is taken over.
                stop_timeout = record.stale_after + 2 * record.interval + 2.0
        if not _wait_for_end(submit_path, record, stop_timeout):
            if not local:
                return False, (
                    f"the driver ({record.describe()}) did not stop within {stop_timeout:.0f} s and its "
                    "heartbeat still moves; try again"
                )
            if _signal_driver(record.pid, record.started, signal.SIGKILL):
                how = f" (not ended {stop_timeout:.0f} s after the cancel request: SIGKILL)"
                _wait_for_end(submit_path, record, 5.0)
    with driver_claim(submit_path, "cancel", wait=_LOCK_WAIT, stale_after=stale_after) as claim:
        other = driver_alive(submit_path, run_id)
        if other is not None:
            raise _busy(submit_path, other)
        store = RunStore(db_path(submit_path))
        try:
            store.take_fence(claim.number)
            left = kill_running_jobs(os.path.join(submit_path, "parsl", "running"), run_id)
            unfinished = [row for row in store.statuses() if row.state not in ENDED]
            for row in unfinished:
                store.set_state(row.job, JobState.DELETED, row.attempt)
            store.flush()
        finally:
            store.close()
    if record is None and not unfinished and not left:
        return False, "the run had already ended; nothing to cancel"
    what = f"driver {record.describe()} stopped{how}" if record else "no driver was running"
    return True, f"{what}; {len(unfinished)} unfinished job(s) marked DELETED"
