"""Which job attempts of a run are running now, and how to stop them.

Two sources, both in ``<submit>/parsl/running/``: a file per running attempt
(``<job>.<attempt>``, holding ``<host> <pid> <token>``) written by
`runner.run_job` on Parsl workers, and the journals of the local pool's
spawners (``spawner.<host>.<pid>``, see `spawner`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

from .runner import ATTEMPT_ENV
from .spawner import JOURNAL_PREFIX, read_journal

__all__ = ("kill_running_jobs", "running_attempts", "running_job_ids")

_HOST = socket.gethostname()


def _journals(names: list[str]) -> Iterator[tuple[str, str, int]]:
    """(file name, host, spawner pid) of each journal among ``names``."""
    for name in names:
        if not name.startswith(JOURNAL_PREFIX) or name.endswith(".tmp"):
            continue
        host, _, pid = name[len(JOURNAL_PREFIX) :].rpartition(".")
        if pid.isdigit():
            yield name, host, int(pid)


def running_attempts(running_dir: str) -> Iterator[tuple[str, int, str]]:
    """Yield ``(host, process group, token)`` of each attempt said to run."""
    try:
        names = os.listdir(running_dir)
    except OSError:
        return
    for name, host, _ in _journals(names):
        for pid, token in read_journal(os.path.join(running_dir, name)).items():
            yield host, pid, token
    for name in names:
        if name.startswith(JOURNAL_PREFIX):
            continue
        try:
            with open(os.path.join(running_dir, name)) as stream:
                host, pid_text, token = stream.read().split()
            yield host, int(pid_text), token
        except (OSError, ValueError):
            continue


def running_job_ids(running_dir: str) -> set[int]:
    """Ids of the jobs with an attempt said to run."""
    try:
        names = os.listdir(running_dir)
    except OSError:
        return set()
    ids = {int(name.split(".", 1)[0]) for name in names if name.split(".", 1)[0].isdigit()}
    for name, _, _ in _journals(names):
        for token in read_journal(os.path.join(running_dir, name)).values():
            job = token.rsplit("/", 2)
            if len(job) == 3 and job[1].isdigit():
                ids.add(int(job[1]))
    return ids


def kill_running_jobs(running_dir: str, run_id: str) -> int:
    """Terminate the process groups of this run's jobs running on this host.

    A process group is killed only if its leader carries this run's token in
    its command line, so a reused pid is never hit. Journals of spawners that
    are gone are removed afterwards. Returns how many groups were signalled.
    """
    killed = 0
    for host, pid, token in list(running_attempts(running_dir)):
        if host != _HOST or not token.startswith(run_id + "/") or not _has_token(pid, token):
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if sig == signal.SIGTERM:
                time.sleep(0.2)
        killed += 1
    try:
        names = os.listdir(running_dir)
    except OSError:
        names = []
    for name, host, pid in _journals(names):
        if host == _HOST and not _alive(pid):
            try:
                os.unlink(os.path.join(running_dir, name))
            except OSError:
                pass
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_token(pid: int, token: str) -> bool:
    """Whether process ``pid`` is the shell of the job attempt ``token``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            cmdline = stream.read()
    except OSError:
        return False
    return f"{ATTEMPT_ENV}={token}\n".encode() in cmdline
