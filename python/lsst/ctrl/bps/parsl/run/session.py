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

"""Start (here or in the background), check and cancel (`cancel_run`) a run's driver; its saved BPS configuration.

``python -m lsst.ctrl.bps.parsl.run.session <submit dir> <kind>`` runs a background driver.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from typing import TYPE_CHECKING

from lsst.ctrl.bps import BpsConfig, BpsError

from ..configuration import RunSettings
from ..control.claim import Claim, ClaimBusyError, ClaimFence, DriverBusyError, DriverMonitor, claim_run
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
from ..oneline import ShownMessageError, open_private, private_dir
from ..records import ENDED, JobState
from ..site import SiteConfig
from ..store.runindex import remove_run
from ..store.runstore import RunStore, StateStoreError, db_path

if TYPE_CHECKING:
    from .driver import RunOutcome

__all__ = (
    "DriverBusyError",
    "RunFailedError",
    "cancel_run",
    "checked_run",
    "driver_alive",
    "load_config",
    "run_driver",
)

_RESERVE_MIN = 1 << 20
_RESERVE_MAX = 64 << 20


class RunFailedError(ShownMessageError, BpsError):
    """Some jobs of the run did not succeed, or the run stopped (``exit_status``: under ``bps``)."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


def _busy(submit_path: str, record: DriverRecord | ClaimBusyError | None) -> DriverBusyError:
    holder = record.holder if isinstance(record, ClaimBusyError) else record
    who = f" ({holder.describe()})" if holder is not None and holder.pid else ""
    return DriverBusyError(
        f"{submit_path}: a driver{who} is still running this run: wait for it or "
        f"'bps cancel --id {submit_path}'"
    )


@contextmanager
def _driver_claim(
    submit_path: str, what: str, wait: float = 0.0, stale_after: float = STALE_AFTER
) -> Iterator[Claim]:
    """Hold the run's claim (`claim.claim_run`); `DriverBusyError` if a live process holds it."""
    try:
        with claim_run(submit_path, what, wait=wait, stale_after=stale_after) as claim:
            yield claim
    except ClaimBusyError as exc:
        raise _busy(submit_path, exc) from None


_CONFIG_NAME = "bps_config.yaml"
"""The run's BPS configuration, in ``<submit>/parsl/``."""


def _pending_config(submit_path: str, run_id: str) -> str:
    return os.path.join(submit_path, "parsl", f"{_CONFIG_NAME}.{run_id}.tmp")


def save_pending_config(config: BpsConfig, submit_path: str, run_id: str) -> str:
    """Save a new run's configuration under a name of its own (0600) until `install_config`.

    Parameters
    ----------
    config, submit_path, run_id : `lsst.ctrl.bps.BpsConfig`, `str`, `str`
        The run's configuration; submit directory; the run being created.

    Returns
    -------
    path : `str`
        Where it was written.
    """
    private_dir(os.path.join(submit_path, "parsl"))
    path = _pending_config(submit_path, run_id)
    with os.fdopen(open_private(path), "w") as stream:
        config.dump(stream)
    return path


def install_config(submit_path: str, run_id: str) -> None:
    """Put run ``run_id``'s configuration in place; remove what submits that lost the directory left.

    Parameters
    ----------
    submit_path, run_id : `str`
        Submit directory; the run whose store the directory holds.
    """
    parsl_dir = os.path.join(submit_path, "parsl")
    os.replace(_pending_config(submit_path, run_id), os.path.join(parsl_dir, _CONFIG_NAME))
    for name in os.listdir(parsl_dir):
        if name.startswith(f"{_CONFIG_NAME}.") and name.endswith(".tmp"):
            # Its run was indexed before its store was to be linked: it never was.
            remove_run(name[len(_CONFIG_NAME) + 1 : -4], submit_path)
            with suppress(OSError):
                os.unlink(os.path.join(parsl_dir, name))


def load_config(submit_path: str) -> BpsConfig:
    """The BPS configuration saved at prepare time (put in place first if its submit was killed).

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    config : `lsst.ctrl.bps.BpsConfig`
        The configuration read from ``parsl/bps_config.yaml`` (`StateStoreError` if there is none).
    """
    path = os.path.join(submit_path, "parsl", _CONFIG_NAME)
    if not os.path.exists(path):
        with closing(RunStore(db_path(submit_path), readonly=True)) as store:
            run_id = store.meta().get("run_id")
        if isinstance(run_id, str) and os.path.exists(_pending_config(submit_path, run_id)):
            install_config(submit_path, run_id)
        else:
            raise StateStoreError(
                f"{path}: the run's configuration is missing: restore it, or submit the run again"
            )
    return BpsConfig(path)


def run_driver(submit_path: str, config: BpsConfig | None, kind: str) -> RunOutcome:
    """Run (or resume) a run in this process and raise if jobs failed.

    Parameters
    ----------
    submit_path, kind : `str`
        Submit directory; ``submit`` or ``restart``.
    config : `lsst.ctrl.bps.BpsConfig` or `None`
        The run's configuration; `None` reads the one saved at prepare time.

    Returns
    -------
    outcome : `RunOutcome`
        How the session ended (every job succeeded).

    Raises
    ------
    RunFailedError, DriverBusyError, StateStoreError
        If a job did not succeed or the run stopped; another driver runs it; the store is not writable.
    """
    from .driver import Driver

    config = config if config is not None else load_config(submit_path)
    site = SiteConfig.from_config(config)
    settings = RunSettings.read(config)
    stale_after = settings.driver_stale_after
    with _driver_claim(submit_path, kind, stale_after=stale_after) as claim:
        store = RunStore(db_path(submit_path))
        try:
            run_id = _check_meta(store, submit_path)
            other = driver_alive(submit_path, run_id)
            if other is not None and other.identity != (HOST, os.getpid(), process_start(os.getpid())):
                raise _busy(submit_path, other)
            # From here on, a process that takes the run over (judging this one gone) fences it out.
            store.take_fence(claim.number)
            fence = ClaimFence(submit_path, claim.number)
            # Space for the last commits of a run (grows with the store).
            store.keep_reserve(min(_RESERVE_MAX, _RESERVE_MIN + os.path.getsize(store.path) // 4))
            monitor = DriverMonitor(submit_path, run_id, store, stale_after=stale_after, fence=fence)
            monitor.start()
            # What the caller holds (the GenericWorkflow, the LSST stack) would
            # otherwise be scanned by every full garbage collection of the run.
            gc.freeze()
            try:
                driver = Driver(store, site, kind=kind, settings=settings, fence=fence)
                monitor.attach(driver.request_stop)
                try:
                    outcome = driver.run()
                finally:
                    driver.watchdog.ended()
            finally:
                gc.unfreeze()
                monitor.stop()
        finally:
            store.close()
    if outcome.cancelled:
        reason = outcome.reason
        raise RunFailedError(
            reason if submit_path in reason else f"run {submit_path} stopped: {reason}",
            1 if outcome.abort_status is None else outcome.abort_status,
        )
    if outcome.failed:
        raise RunFailedError(
            f"run {submit_path}: {outcome.failed} job(s) did not succeed (failed, pruned or deleted); "
            f"see 'bps report --id {submit_path}'"
        )
    return outcome


def _check_meta(store: RunStore, submit_path: str) -> str:
    """The store must say it is the run of ``submit_path``; returns its run id."""
    meta = store.meta()
    recorded, run_id = meta.get("submit_path"), meta.get("run_id")
    try:
        same = isinstance(recorded, str) and os.path.samefile(recorded, submit_path)
    except OSError:
        same = False
    if not same or not isinstance(run_id, str):
        store.check_integrity()  # a damaged store says so first
        raise StateStoreError(
            f"{store.path}: this database is the run in {recorded}, not in {submit_path} (a copied or moved "
            f"submit directory?): act on {recorded}, or submit the run again"
        )
    return run_id


def checked_run(submit_path: str) -> str:
    """Check that a submit directory is a run its caller may act on (this user's store, naming it).

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    run_id : `str`
        The run's id (else `StateStoreError`, one line naming the path).
    """
    path = db_path(submit_path)
    owner = os.stat(path).st_uid
    if owner != os.getuid():
        raise StateStoreError(
            f"{submit_path}: the run belongs to uid {owner}, not to you: only its owner may act on it"
        )
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise StateStoreError(
            f"{path}: not a regular file (a symbolic link?): refused; use the submit directory that holds "
            "the run's database itself"
        )
    parsl_dir = os.path.join(submit_path, "parsl")
    if os.path.lexists(parsl_dir) and not stat.S_ISDIR(os.lstat(parsl_dir).st_mode):
        raise StateStoreError(f"{parsl_dir}: not a directory (a symbolic link?): refused")
    with closing(RunStore(path, readonly=True)) as store:
        return _check_meta(store, submit_path)


def start_detached(submit_path: str, kind: str, wait: float = 60.0) -> int:
    """Start a run's driver in the background, detached; return once its heartbeat names it.

    Parameters
    ----------
    submit_path, kind : `str`
        Submit directory; ``submit`` or ``restart``.
    wait : `float`, optional
        Seconds to wait for the driver's first heartbeat.

    Returns
    -------
    pid : `int`
        The background driver's pid (`RuntimeError` if it exits at once or does not beat within ``wait``).
    """
    log = os.path.join(private_dir(os.path.join(submit_path, "parsl")), "driver.log")
    with os.fdopen(open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as stream:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lsst.ctrl.bps.parsl.run.session", submit_path, kind],
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as stream:
                tail = stream.read()[-2000:]
            raise RuntimeError(
                f"the background driver exited at once (code {proc.returncode}); {log}:\n{tail}"
            )
        alive = driver_alive(submit_path)
        if alive is not None and alive.host == HOST and alive.pid == proc.pid:
            return proc.pid
        time.sleep(0.05)
    raise RuntimeError(f"the background driver did not start within {wait:.0f} s: see {log}")


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
    cancelled, message : `bool`, `str`
        Whether the driver and every job process here ended, all unfinished jobs DELETED; what happened.

    Raises
    ------
    StateStoreError, DriverBusyError
        If the directory is not a run this user may act on; another process holds the run meanwhile.
    """
    stop_timeout = _STOP_TIMEOUT if timeout is None else timeout
    # A stopped driver may hold the store's lock: continue it before the store is read.
    early = driver_alive(submit_path)
    if early is not None and early.host == HOST and holds_store(early.pid, submit_path):
        _signal_driver(early.pid, early.started, signal.SIGCONT)
    run_id = checked_run(submit_path)
    record = driver_alive(submit_path, run_id)
    how = ""
    stale_after = STALE_AFTER if record is None else record.stale_after
    if record is not None:
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
    with _driver_claim(submit_path, "cancel", wait=_LOCK_WAIT, stale_after=stale_after) as claim:
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


def main(argv: list[str]) -> int:
    """Run a submit directory's driver (in the background); exit non-zero, with one line, if jobs failed or it stopped.

    Parameters
    ----------
    argv : `list` [`str`]
        Command line: the module, the submit directory, ``submit`` or ``restart``.

    Returns
    -------
    code : `int`
        Exit status: 0 if every job succeeded, else the run's status or 1.
    """
    try:
        run_driver(argv[1], None, kind=argv[2])
    except (RunFailedError, StateStoreError, DriverBusyError) as exc:
        print(exc, flush=True)
        return getattr(exc, "exit_status", 1) or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
