"""The function every Parsl worker runs for a job attempt.

It is imported by reference on workers, so it imports nothing heavy.
The job starts as the local pool's spawner starts its jobs (`spawner.Launcher`:
a session of its own, default signal dispositions), and a walltime kill stops
every process carrying its token (`spawner.kill_attempts`). While it runs, a
small file names its host and process group, so that report, cancel, and a
restart after the driver was killed, can find it. Its exit status is also appended to its stderr log by
the job's own shell, so a restart can tell that a job finished even when the
driver died before recording it.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque

from .spawner import (
    ATTEMPT_ENV,
    EXIT_MARKER,
    Launcher,
    append_note,
    exit_code_of,
    job_argv,
    kill_attempts,
)

__all__ = ("ATTEMPT_ENV", "EXIT_MARKER", "GateClosedError", "NotStartedError", "ResourceGate", "run_job")

_HOST = socket.gethostname()


class NotStartedError(RuntimeError):
    """The job attempt was not started (the run is stopping, or its pool was lost)."""


GateClosedError = NotStartedError
"""The run is stopping: an in-process pool's gate started no more jobs."""


class ResourceGate:
    """Cores and memory of an in-process pool, taken by each job while it runs.

    Worker threads wait here, so a finishing job hands its cores to the next
    one without a round trip through the driver.

    Parameters
    ----------
    cores : `int`
        Cores jobs may use at once.
    memory : `int` or `None`
        Memory (MB) jobs may use at once; `None` for no limit.
    """

    def __init__(self, cores: int, memory: int | None):
        self.cores = cores
        self.memory = memory
        self._free_cores = cores
        self._free_memory = memory
        self._closed = False
        self._lock = threading.Lock()
        self._waiters: deque[list] = deque()

    def _fits(self, cores: int, memory: int) -> bool:
        return self._free_cores >= cores and (self._free_memory is None or self._free_memory >= memory)

    def _take(self, cores: int, memory: int) -> None:
        self._free_cores -= cores
        if self._free_memory is not None:
            self._free_memory -= memory

    def acquire(self, cores: int, memory: int) -> tuple[int, int]:
        """Wait until the job fits, take its share; returns what was taken.

        Waiters are served first come, first served, so a large job is
        not overtaken forever by small ones.
        """
        cores = min(cores, self.cores)
        memory = min(memory, self.memory) if self.memory is not None else 0
        with self._lock:
            if self._closed:
                raise GateClosedError("run stopping")
            if not self._waiters and self._fits(cores, memory):
                self._take(cores, memory)
                return cores, memory
            # [cores, memory, event, granted]
            waiter = [cores, memory, threading.Event(), False]
            self._waiters.append(waiter)
        waiter[2].wait()
        if not waiter[3]:
            raise GateClosedError("run stopping")
        return cores, memory

    def release(self, taken: tuple[int, int]) -> None:
        """Give back what `acquire` took and wake the waiters that now fit."""
        with self._lock:
            self._free_cores += taken[0]
            if self._free_memory is not None:
                self._free_memory += taken[1]
            while self._waiters and self._fits(self._waiters[0][0], self._waiters[0][1]):
                waiter = self._waiters.popleft()
                self._take(waiter[0], waiter[1])
                waiter[3] = True
                waiter[2].set()

    def close(self) -> None:
        """Make every waiting and future `acquire` raise `GateClosedError`."""
        with self._lock:
            self._closed = True
            while self._waiters:
                self._waiters.popleft()[2].set()


GATES: dict[str, ResourceGate] = {}
"""Gates of in-process executors, by ``<run id>/<executor label>``."""


def _script(token: str, prefix: str, env: str, command: str) -> str:
    # The token line also makes the shell recognisable by its command line.
    parts = [f"export {ATTEMPT_ENV}={token}"]
    # The EXIT trap also runs when the command calls `exit`.
    parts.append(f"trap 'echo \"{EXIT_MARKER}$?\" >&2' EXIT")
    parts.extend(p for p in (prefix, env) if p)
    parts.append(command)
    return "\n".join(parts) + "\n"


def run_job(
    token: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    time_limit: float | None = None,
    shell: str = "/bin/bash",
    gate: str | None = None,
    cores: int = 1,
    memory: int = 0,
    inputs: list | None = None,
) -> tuple[int, int | None, float, float, str, bool]:
    """Run one attempt of one job.

    Parameters
    ----------
    token : `str`
        ``<run id>/<job id>/<attempt>``, exported to the job and written in
        its shell's command line, so that its processes can be recognised
        later.
    prefix, env, command : `str`
        Site command prefix, job environment exports, job command line.
    out_path, err_path : `str`
        Log files (created with their directories).
    pid_file : `str`
        File naming this attempt's host and process group while it runs.
    time_limit : `float`, optional
        Seconds after which the job is killed (its ``request_walltime``;
        not named ``walltime``, which Parsl would take for itself).
    shell : `str`
        Shell that runs the job's script.
    gate : `str`, optional
        Key of the `ResourceGate` in `GATES` to take ``cores`` and
        ``memory`` from before starting (in-process executors only).
    cores, memory : `int`
        The job's share of the gate.
    inputs : `list`, optional
        Parent futures (Parsl resolves them before this runs).

    Returns
    -------
    result : `tuple`
        (exit code, signal or None, start time, end time, host, whether the
        walltime killed it). A job killed by a signal has exit code
        ``128 + signal``.
    """
    resource_gate = GATES.get(gate) if gate else None
    taken = resource_gate.acquire(cores, memory) if resource_gate else None
    try:
        return _run(token, shell, prefix, env, command, out_path, err_path, pid_file, time_limit)
    finally:
        if taken is not None:
            resource_gate.release(taken)


def _run(
    token: str,
    shell: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    walltime: float | None,
) -> tuple[int, int | None, float, float, str, bool]:
    start = time.time()
    pid = Launcher().spawn(job_argv(shell, out_path, err_path, _script(token, prefix, env, command)))
    _write_pid_file(pid_file, f"{_HOST} {pid} {token}\n")
    timed_out = False
    try:
        status = _wait(pid, walltime)
        if status is None:
            timed_out = True
            kill_attempts((token,), groups=(pid,))
            status = _wait(pid, None)
    except BaseException:
        kill_attempts((token,), groups=(pid,))
        _wait(pid, None)
        raise
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass
    end = time.time()
    returncode, sig = exit_code_of(status)
    if timed_out:
        append_note(err_path, f"[bps-parsl] killed after walltime of {walltime:.0f} s\n")
    return returncode, sig, start, end, _HOST, timed_out


def _write_pid_file(path: str, text: str) -> None:
    """Write the running-attempt file, making its directory again if it vanished."""
    for _ in range(2):
        try:
            with open(path, "w") as stream:
                stream.write(text)
            return
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError:
                return
        except OSError:
            return


def _wait(pid: int, timeout: float | None) -> int | None:
    """Wait status of child ``pid``, or `None` if it still runs after ``timeout`` seconds."""
    if timeout is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            if not ready:
                return None
        else:
            deadline = time.monotonic() + timeout
            while True:
                found, status = os.waitpid(pid, os.WNOHANG)
                if found:
                    return status
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
