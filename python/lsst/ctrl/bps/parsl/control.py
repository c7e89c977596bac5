"""Start a driver on a submit directory, holding the run's lock."""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lsst.ctrl.bps import BpsConfig

from .configuration import get_bps_config_value
from .site import SiteConfig
from .state import RunStore, db_path

if TYPE_CHECKING:
    from .driver import RunOutcome

__all__ = ("DriverBusyError", "driver_lock", "load_config", "run_driver")


class DriverBusyError(RuntimeError):
    """Another driver holds the run's lock."""


def lock_path(submit_path: str) -> str:
    """The lock file a live driver holds."""
    return os.path.join(submit_path, "parsl", "driver.lock")


@contextmanager
def driver_lock(submit_path: str) -> Iterator[None]:
    """Hold the run's driver lock, or raise `DriverBusyError`."""
    path = lock_path(submit_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise DriverBusyError(
                f"{submit_path}: a driver (pid {other or '?'}) is still running this run: wait for it or "
                f"'bps cancel --id {submit_path}'"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def driver_alive(submit_path: str) -> int | None:
    """Return the pid of the live driver of a run, or `None`."""
    path = lock_path(submit_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def load_config(submit_path: str) -> BpsConfig:
    """The BPS configuration saved at prepare time."""
    return BpsConfig(os.path.join(submit_path, "parsl", "bps_config.yaml"))


def run_driver(submit_path: str, config: BpsConfig | None, kind: str) -> RunOutcome:
    """Run (or resume) a run in this process and raise if jobs failed."""
    from .driver import Driver
    from .service import RunFailedError, _progress_interval

    config = config if config is not None else load_config(submit_path)
    site = SiteConfig.from_config(config)
    with driver_lock(submit_path):
        store = RunStore(db_path(submit_path))
        # What the caller holds (the GenericWorkflow, the LSST stack) would
        # otherwise be scanned by every full garbage collection of the run.
        gc.freeze()
        try:
            driver = Driver(
                store,
                site,
                kind=kind,
                progress_interval=_progress_interval(config),
                progress_by_label=get_bps_config_value(config, "parslProgressByLabel", bool, False),
            )
            outcome = driver.run()
        finally:
            gc.unfreeze()
            store.close()
    if outcome.cancelled:
        raise RunFailedError(f"run {submit_path} stopped: {outcome.reason}")
    if outcome.failed:
        raise RunFailedError(
            f"run {submit_path}: {outcome.failed} job(s) did not succeed (failed, pruned or deleted); "
            f"see 'bps report --id {submit_path}'"
        )
    return outcome


def _owned(submit_path: str) -> None:
    """Raise unless the calling user owns the run."""
    from .state import StateStoreError

    owner = os.stat(db_path(submit_path)).st_uid
    if owner != os.getuid():
        raise StateStoreError(
            f"{submit_path}: the run belongs to uid {owner}, not to you: only its owner may act on it"
        )


def cancel_run(submit_path: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Stop a run from any process: its driver stops and every job ends.

    Returns
    -------
    cancelled : `bool`
        True only if the driver exited, no job process is left and every
        unfinished job is recorded DELETED.
    message : `str`
        What happened.
    """
    import signal
    import time

    from .running import kill_running_jobs
    from .state import DELETED, ENDED

    _owned(submit_path)
    pid = driver_alive(submit_path)
    if pid is not None and pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while driver_alive(submit_path) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if driver_alive(submit_path) is not None:
            return False, f"the driver (pid {pid}) did not stop within {timeout:.0f} s; try again or kill it"
    with driver_lock(submit_path):
        store = RunStore(db_path(submit_path))
        try:
            run_id = store.meta()["run_id"]
            left = kill_running_jobs(os.path.join(submit_path, "parsl", "running"), run_id)
            unfinished = [
                (job, attempt) for job, state, attempt, *_ in store.statuses() if state not in ENDED
            ]
            for job, attempt in unfinished:
                store.set_state(job, DELETED, attempt)
            store.flush()
        finally:
            store.close()
    if pid is None and not unfinished and not left:
        return False, "the run had already ended; nothing to cancel"
    what = f"driver pid {pid} stopped" if pid else "no driver was running"
    return True, f"{what}; {len(unfinished)} unfinished job(s) marked DELETED"


def start_detached(submit_path: str, kind: str, wait: float = 60.0) -> int:
    """Start the driver of a run in the background, detached from the terminal.

    Returns once the driver holds the run's lock.

    Returns
    -------
    pid : `int`
        The background driver's pid.
    """
    import subprocess
    import sys
    import time

    from .files import open_private, private_dir

    log = os.path.join(private_dir(os.path.join(submit_path, "parsl")), "driver.log")
    with os.fdopen(open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as stream:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lsst.ctrl.bps.parsl.detached", submit_path, kind],
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
        if driver_alive(submit_path) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    raise RuntimeError(f"the background driver did not start within {wait:.0f} s: see {log}")
