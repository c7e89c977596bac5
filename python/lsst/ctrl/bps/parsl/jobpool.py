"""`JobPoolExecutor`: the Parsl executor of the local site.

It runs the plugin's job attempts (`runner.run_job` calls) through a small
spawner process (`spawner.py`) that starts each job when its cores and
memory fit. Only `run_job` can be submitted: this executor exists to start
job processes as fast as the machine allows, not to run Python functions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

from parsl.executors.base import ParslExecutor

from . import spawner
from .runner import _script, run_job

__all__ = ("JobPoolExecutor",)


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
        self._futures: dict[int, Future] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the spawner process and the thread reading its results."""
        # Run as a plain script without site-packages: a lean process starts
        # jobs markedly faster than one that imported the LSST stack.
        self._proc = subprocess.Popen(
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
        self._reader = threading.Thread(target=self._read_results, name=f"JobPool-{self.label}", daemon=True)
        self._reader.start()

    def submit(self, func: Any, resource_specification: dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Queue one job attempt; ``func`` must be `runner.run_job`."""
        if func is not run_job:
            raise TypeError(
                f"{type(self).__name__} runs only lsst.ctrl.bps.parsl.runner.run_job, not {func!r}"
            )
        token, prefix, env, command, out_path, err_path, pid_file = args
        future: Future = Future()
        with self._lock:
            job_id = self._next_id
            self._next_id += 1
            self._futures[job_id] = future
        request = {
            "id": job_id,
            "shell": kwargs.get("shell", "/bin/bash"),
            "script": _script(token, prefix, env, command),
            "out": out_path,
            "err": err_path,
            "pid_file": pid_file,
            "token": token,
            "cores": kwargs.get("cores", 1),
            "memory": kwargs.get("memory", 0),
            "time_limit": kwargs.get("time_limit"),
        }
        self._send(request)
        return future

    def _send(self, request: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        data = (json.dumps(request) + "\n").encode()
        with self._lock:
            self._proc.stdin.write(data)

    def _read_results(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            result = json.loads(line)
            with self._lock:
                future = self._futures.pop(result["id"], None)
            if future is None:
                continue
            if not result["started"]:
                future.set_exception(RuntimeError("the job was not started: the pool is stopping"))
                continue
            future.set_result(
                (
                    result["code"],
                    result["signal"],
                    result["start"],
                    result["end"],
                    result["host"],
                    result["timed_out"],
                )
            )
        with self._lock:
            left, self._futures = self._futures, {}
        for future in left.values():
            if not future.done():
                future.set_exception(RuntimeError("the job pool's spawner exited"))

    def stop_jobs(self) -> None:
        """Fail queued jobs and terminate running ones; the pool stays up."""
        try:
            self._send({"op": "stop"})
        except (OSError, ValueError):
            pass

    def shutdown(self) -> None:
        """Stop every job and the spawner."""
        if self._proc is None:
            return
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
