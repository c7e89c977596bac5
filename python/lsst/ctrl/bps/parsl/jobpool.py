"""`JobPoolExecutor`: the Parsl executor of the local site.

It runs the plugin's job attempts (`runner.run_job` calls) through a small
spawner process (`spawner.py`) that starts each job when its cores and
memory fit. Only `run_job` can be submitted: this executor exists to start
job processes as fast as the machine allows, not to run Python functions.

Besides Parsl's `submit` (one `Future` per job), the driver uses
`submit_attempt`: ended jobs are then handed to one callback in batches, as
the spawner reports them, without a future per job.

If the spawner dies (killed, say), a new one takes over every request not yet
answered: jobs that had started are followed to their end and never started
again, the others are started by it. A spawner dying more than
``_MAX_DEATHS`` times within ``_DEATH_WINDOW`` seconds is not replaced: the
unanswered jobs then end with `PoolLostError` (they may not have started).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parsl.executors.base import ParslExecutor

from . import spawner
from .runner import NotStartedError, _script, run_job

__all__ = ("AttemptResult", "JobPoolExecutor", "NotStartedError", "PoolLostError")

_LOG = logging.getLogger(__name__)
_HOST = socket.gethostname()
_MAX_DEATHS = 3
_DEATH_WINDOW = 60.0

AttemptResult = tuple[int, int | None, float | None, float, str, bool]
"""(exit code, signal, start, end, host, timed out), as `runner.run_job` returns."""


class PoolLostError(NotStartedError):
    """The pool's spawner died and was not replaced: the run must stop (a
    restart settles what ran from the jobs' logs)."""


class JobPoolExecutor(ParslExecutor):
    """Run job attempts on this machine within a core and memory budget.

    Parameters
    ----------
    label : `str`
        Executor label.
    cores : `int`
        Cores jobs may use at once (each takes its ``request_cpus``).
    memory : `int` or `None`
        Memory (MB) jobs may use at once (each takes its ``request_memory``).
    """

    def __init__(self, label: str = "local", cores: int = 1, memory: int | None = None):
        super().__init__()
        self.label = label
        self.cores = cores
        self.memory = memory
        self._proc: subprocess.Popen | None = None
        # Job id -> (a Future (`submit`) or the key given to `submit_attempt`, its request).
        self._waiting: dict[int, tuple[Any, dict]] = {}
        self._next_id = 0
        self._lock = threading.Lock()  # guards _waiting and _next_id
        # One writer on the spawner's stdin; the reader takes it only to replace a spawner that died.
        self._write_lock = threading.Lock()
        self._outbox: list[bytes] = []  # requests of `submit_attempt` not yet sent
        self._closing = False  # shutdown: the spawner's end of input is expected
        self._stop_sent = False
        self._lost: PoolLostError | None = None
        self._deaths: list[float] = []
        self._reader: threading.Thread | None = None
        self._on_results: Callable[[list[tuple[Any, AttemptResult | BaseException]]], None] | None = None

    def start(self) -> None:
        """Start the spawner process and the thread reading its results."""
        self._proc = self._start_spawner()
        self._reader = threading.Thread(target=self._read_results, name=f"JobPool-{self.label}", daemon=True)
        self._reader.start()

    def _start_spawner(self) -> subprocess.Popen:
        # Run as a plain script without site-packages: a lean process starts
        # jobs markedly faster than one that imported the LSST stack.
        return subprocess.Popen(
            [
                sys.executable,
                "-S",
                spawner.__file__,
                str(self.cores),
                "none" if self.memory is None else str(self.memory),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )

    def on_results(self, callback: Callable[[list[tuple[Any, AttemptResult | BaseException]]], None]) -> None:
        """Set the function that receives ``[(key, result or error), ...]``
        for the jobs given to `submit_attempt`, from the reader thread."""
        self._on_results = callback

    def submit(self, func: Any, resource_specification: dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Queue one job attempt; ``func`` must be `runner.run_job`."""
        if func is not run_job:
            raise TypeError(
                f"{type(self).__name__} runs only lsst.ctrl.bps.parsl.runner.run_job, not {func!r}"
            )
        future: Future = Future()
        self._queue(future, *args, **kwargs)
        self.send_queued()
        return future

    def submit_attempt(self, key: Any, *args: Any, **kwargs: Any) -> None:
        """Queue one job attempt (the arguments of `runner.run_job`); its
        result goes to the `on_results` callback under ``key``.

        The request is sent by the next `send_queued`, so that the jobs
        handed over in one pass of the caller go to the spawner in one write.
        """
        if self._on_results is None:
            raise RuntimeError("call on_results() before submit_attempt()")
        self._queue(key, *args, **kwargs)

    def send_queued(self) -> None:
        """Send the queued requests to the spawner."""
        with self._write_lock:
            if self._outbox:
                data = b"".join(self._outbox)
                self._outbox.clear()
                self._write(data)

    def _write(self, data: bytes) -> None:
        """Write to the spawner (holding the write lock). If it died, the
        requests stay unanswered in ``_waiting``: its successor gets them."""
        try:
            self._proc.stdin.write(data)
        except (AttributeError, OSError, ValueError):
            pass

    def _queue(
        self,
        waiter: Any,
        token: str,
        prefix: str,
        env: str,
        command: str,
        out_path: str,
        err_path: str,
        pid_file: str,
        *,
        shell: str = "/bin/bash",
        cores: int = 1,
        memory: int = 0,
        time_limit: float | None = None,
        **_: Any,
    ) -> None:
        request = {
            "shell": shell,
            "script": _script(token, prefix, env, command),
            "out": out_path,
            "err": err_path,
            "pid_file": pid_file,
            "token": token,
            "cores": cores,
            "memory": memory,
            "time_limit": time_limit,
        }
        with self._write_lock:
            with self._lock:
                request["id"] = job_id = self._next_id
                self._next_id += 1
                self._waiting[job_id] = (waiter, request)
            if self._lost is None:
                self._outbox.append((json.dumps(request) + "\n").encode())
                return
        self._deliver([(job_id, self._lost)])

    def _read_results(self) -> None:
        proc = self._proc
        while proc is not None:
            self._read_from(proc)
            proc = self._take_over(proc)
        with self._lock:
            left, self._waiting = self._waiting, {}
        error = self._lost or NotStartedError("the job was not started: the pool is shut down")
        self._hand_over([(waiter, error) for waiter, _ in left.values()])

    def _read_from(self, proc: subprocess.Popen) -> None:
        """Deliver the replies of one spawner until it exits."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            self._deliver([_parse(line) for line in lines])

    def _take_over(self, dead: subprocess.Popen) -> subprocess.Popen | None:
        """Replace a spawner whose output ended (`None`: none expected or
        possible); the new one gets every unanswered request (see
        `spawner.Spawner.resume`)."""
        if self._closing:
            return None
        try:
            code = dead.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dead.kill()
            code = dead.wait()
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < _DEATH_WINDOW] + [now]
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        with self._write_lock:
            if self._closing:
                return None
            self._outbox.clear()  # every request in it is unanswered: the new spawner gets it below
            with self._lock:
                jobs = [request for _, (_, request) in sorted(self._waiting.items())]
            if len(self._deaths) > _MAX_DEATHS:
                self._lost = PoolLostError(
                    f"the local job pool's spawner died {len(self._deaths)} times within "
                    f"{_DEATH_WINDOW:.0f} s (last: pid {dead.pid}, {how}); stopping the run: "
                    "'bps restart' runs what did not finish"
                )
                return None
            try:
                proc = self._start_spawner()
            except OSError as exc:
                self._lost = PoolLostError(
                    f"the local job pool's spawner (pid {dead.pid}) died ({how}) and a new one could not "
                    f"be started: {exc}; stopping the run: 'bps restart' runs what did not finish"
                )
                return None
            self._proc = proc
            resume = {"op": "resume", "spawner": dead.pid, "jobs": jobs}
            self._write(
                (json.dumps(resume) + "\n").encode() + (b'{"op": "stop"}\n' if self._stop_sent else b"")
            )
        _LOG.warning(
            "the local job pool's spawner (pid %d) died (%s); a new one (pid %d) took over its %d "
            "unfinished job(s)",
            dead.pid,
            how,
            proc.pid,
            len(jobs),
        )
        return proc

    def _deliver(self, parsed: list[tuple[int, AttemptResult | BaseException]]) -> None:
        with self._lock:
            found = [(self._waiting.pop(job_id, None), result) for job_id, result in parsed]
        self._hand_over([(entry[0], result) for entry, result in found if entry is not None])

    def _hand_over(self, results: list[tuple[Any, AttemptResult | BaseException]]) -> None:
        batch = []
        for waiter, result in results:
            if isinstance(waiter, Future):
                if waiter.done():
                    continue
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)
            else:
                batch.append((waiter, result))
        if batch and self._on_results is not None:
            self._on_results(batch)

    def stop_jobs(self) -> None:
        """Fail queued jobs and terminate running ones; the pool stays up."""
        with self._write_lock:
            self._stop_sent = True
            # Queued requests go first: the spawner fails them, so their results arrive.
            data = b"".join(self._outbox) + b'{"op": "stop"}\n'
            self._outbox.clear()
            self._write(data)

    def shutdown(self) -> None:
        """Stop every job and the spawner."""
        if self._proc is None:
            return
        # Closing its input alone would let running jobs finish (that is for
        # a driver that died); a shut-down pool stops them.
        self.stop_jobs()
        with self._write_lock:
            self._closing = True
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._proc = None

    def monitor_resources(self) -> bool:
        """Parsl's resource monitoring cannot wrap these jobs."""
        return False


def _parse(line: bytes) -> tuple[int, AttemptResult | BaseException]:
    """Decode one spawner reply (see `spawner`)."""
    job_id, code, sig, start, end, timed_out = line.split()
    if start == b"-":
        return int(job_id), NotStartedError("the job was not started: the pool is stopping")
    return int(job_id), (
        int(code),
        None if sig == b"-" else int(sig),
        None if start == b"?" else float(start),
        float(end),
        _HOST,
        timed_out == b"1",
    )
