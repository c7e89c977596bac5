"""Start a driver on a submit directory, holding the run's lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from lsst.ctrl.bps import BpsConfig

from .driver import Driver, RunOutcome
from .site import SiteConfig
from .state import RunStore, db_path

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
    from .service import RunFailedError, _progress_interval

    config = config if config is not None else load_config(submit_path)
    site = SiteConfig.from_config(config)
    with driver_lock(submit_path):
        store = RunStore(db_path(submit_path))
        try:
            driver = Driver(store, site, kind=kind, progress_interval=_progress_interval(config))
            outcome = driver.run()
        finally:
            store.close()
    if outcome.cancelled:
        raise RunFailedError(f"run {submit_path} stopped: {outcome.reason}")
    if outcome.failed:
        raise RunFailedError(
            f"run {submit_path}: {outcome.failed} job(s) did not succeed (failed, pruned or deleted); "
            f"see 'bps report --id {submit_path}'"
        )
    return outcome
