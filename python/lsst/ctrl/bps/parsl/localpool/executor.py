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

"""`LocalPoolExecutor`: the Parsl executor of the local site (design.md,
"Local pools"; the wire protocol is in `spawner`'s docstring, `wire` is this
side of it). A job attempt (`lsst.ctrl.bps.parsl.run.runner.run_job`) is
started as its shell script and its future gets what `run_job` would have
returned; any other function runs in a fresh Python process (`tasks`).

A task without a resource specification takes 1 core and no memory; a
`run_job` call's own ``time_limit`` applies when the specification sets none.
After ``_MAX_DEATHS`` spawner deaths within ``_DEATH_WINDOW`` seconds the
unanswered tasks end with `PoolLostError` (they may not have started).
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lsst_ctrl_bps_parsl_worker import spawner
from lsst_ctrl_bps_parsl_worker.job import NotStartedError

from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.monitoring.radios.multiprocessing import MultiprocessingQueueRadio
from parsl.utils import RepresentationMixin

from ..parslcompat import unwrap_monitoring
from ..records import AttemptResult
from .tasks import PythonTasks, Task, TaskProcessError, is_run_job, report_try
from .wire import DRAIN, STOP, encode, job_request, parse_reply, resume_request

__all__ = ("LocalPoolExecutor", "NotStartedError", "PoolLostError", "TaskProcessError")

_LOG = logging.getLogger(__name__)
_HOST = socket.gethostname()
_MAX_DEATHS = 3
_DEATH_WINDOW = 60.0


class PoolLostError(NotStartedError):
    """The pool's spawner died and was not replaced: the run must stop (a
    restart settles what ran from the jobs' logs).
    """


class LocalPoolExecutor(ParslExecutor, RepresentationMixin):
    """Run Parsl tasks as processes on this machine within a core and memory
    budget.

    Parameters
    ----------
    label : `str`
        Executor label.
    cores : `int`
        Cores tasks may use at once (each takes its ``cores``, default 1).
    memory : `int` or `None`
        Memory (MB) tasks may use at once (each its ``memory``, default 0); `None`: no limit.
    storage_access : `list`, optional
        Parsl staging providers (Parsl's default ones if `None`).
    working_dir : `str`, optional
        Where Parsl's staging providers put staged files; `None`: each chooses.
    """

    RESOURCE_KEYS = frozenset({"cores", "memory", "running_time_min", "walltime"})  # the specification's

    def __init__(
        self,
        label: str = "local",
        cores: int = 1,
        memory: int | None = None,
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
    ):
        super().__init__()
        self.label = label
        self.working_dir = working_dir
        self.cores = cores
        self.memory = memory
        self.storage_access = storage_access
        # Monitoring messages go from this process to Parsl's queue.
        self.remote_monitoring_radio = MultiprocessingQueueRadio()
        self._proc: subprocess.Popen | None = None  # the spawner's keeper (the spawner is its child)
        self._spawner_pid = 0  # its first line says it
        self._spawner_exit: int | None = None  # its keeper's last line says it
        self._keepers: list[subprocess.Popen] = []  # of spawners that died: may still wait for jobs
        self._stdin_fd = -1
        # Request id -> (its task, its request).
        self._waiting: dict[int, tuple[Task, dict]] = {}
        self._next_id = 0
        # Guards everything below and the spawner's stdin; held only for
        # non-blocking work, so a done callback of a future (run by the
        # reader thread) may submit more tasks.
        self._lock = threading.Lock()
        self._pending = bytearray()  # bytes for the spawner's stdin, not yet written
        self._close_input = False  # shutdown: close the spawner's stdin once all is written
        self._closing = False  # shutdown: the spawner's end of output is expected
        self._stop_sent = False
        self._lost: PoolLostError | None = None
        self._deaths: list[float] = []
        self._wake_r, self._wake_w = -1, -1
        self._reader: threading.Thread | None = None
        self._python = PythonTasks(f"localpool.{_HOST}.{os.getpid()}.{''.join(label.split())}/", label)

    # ---- life cycle ----

    def start(self) -> None:
        """Start the spawner process and the thread that talks to it."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._set_proc(self._start_spawner())
        self._reader = threading.Thread(target=self._serve, name=f"LocalPool-{self.label}", daemon=True)
        self._reader.start()

    def _start_spawner(self) -> subprocess.Popen:  # without site-packages: lean, so it starts jobs fast
        memory = "none" if self.memory is None else str(self.memory)
        return subprocess.Popen(
            [sys.executable, "-S", spawner.__file__, str(self.cores), memory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )

    def _set_proc(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None
        self._proc = proc
        self._spawner_pid = 0
        self._spawner_exit = None
        self._stdin_fd = proc.stdin.fileno()
        os.set_blocking(self._stdin_fd, False)

    def drain(self) -> None:
        """Start no more tasks: queued and later ones fail with
        `NotStartedError`; running ones are left to end.
        """
        if self._proc is not None:
            with self._lock:
                self._pending += DRAIN
                self._flush_locked()

    def shutdown(self) -> None:
        """Stop every task and the spawner (running tasks are killed, queued
        ones fail with `NotStartedError`), then Parsl's own shutdown.
        """
        if self._proc is not None:
            with self._lock:
                # Closing its input alone would let running jobs finish (that
                # is for a driver that died); a shut-down pool stops them.
                self._stop_sent = True
                self._pending += STOP
                self._closing = True
                self._close_input = True
                self._flush_locked()
            if self._reader is not None:
                self._reader.join(timeout=30)
            # The spawner ended (its output did); its keeper ends with the last
            # process the jobs left behind, not waited for beyond a moment.
            for keeper in (self._proc, *self._keepers):
                try:
                    keeper.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            self._proc = None
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        self._python.close()
        super().shutdown()

    def monitor_resources(self) -> bool:
        """`False`: no worker process calls the task's function here, so
        Parsl's per-task sampling has nowhere to run; this executor reports
        each try's start and end (``running``, ``running_ended``) itself.

        Returns
        -------
        monitor : `bool`
            Always `False`.
        """
        return False

    # ---- submitting ----

    def submit(
        self, func: Callable, resource_specification: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Future:
        """Queue one task; returns its future.

        Parameters
        ----------
        func : `~collections.abc.Callable`
            The task's function: `run_job` (run by the spawner as a job) or any
            other (run in a Python process of its own).
        resource_specification : `dict` [`str`, `~typing.Any`]
            Parsl's resource specification of the task (`RESOURCE_KEYS`).
        *args, **kwargs : `~typing.Any`
            Arguments of ``func``.

        Returns
        -------
        future : `concurrent.futures.Future`
            The task's future.

        Raises
        ------
        parsl.executors.errors.InvalidResourceSpecification
            A key other than `RESOURCE_KEYS`, a value that is not a positive
            number, or more cores or memory than the pool has.
        parsl.serialize.errors.SerializationError
            The function or an argument of a Python task cannot be serialized.
        """
        cores, memory, time_limit = self._resources(resource_specification)
        # Parsl monitoring's wrapper: run what it wraps, report the try here.
        func, kwargs, monitoring = unwrap_monitoring(func, kwargs)
        future: Future = Future()
        with self._lock:
            number = self._next_id
            self._next_id += 1
        if is_run_job(func):
            request = job_request(*args, **kwargs)
            task = Task(future, None, monitoring)
        else:
            request, files = self._python.request(number, func, args, kwargs)
            task = Task(future, files, monitoring)
        if cores is not None:
            request["cores"] = cores
        if memory is not None:
            request["memory"] = memory
        if time_limit is not None:
            request["time_limit"] = time_limit
        request["id"] = number
        future.parsl_executor_task_id = number  # type: ignore[attr-defined]
        self._queue(task, request)
        return future

    def _resources(self, spec: dict[str, Any] | None) -> tuple[int | None, int | None, float | None]:
        """(cores, memory, time limit in seconds) of a resource specification."""
        if not spec:
            return None, None, None
        where = f"executor '{self.label}' ({type(self).__name__})"
        unknown = set(spec) - self.RESOURCE_KEYS
        if unknown:
            raise InvalidResourceSpecification(
                unknown, f"{where} takes only {', '.join(sorted(self.RESOURCE_KEYS))}: remove the others"
            )
        for key, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise InvalidResourceSpecification({key}, f"{key} is {value!r}: it must be a positive number")
        if "walltime" in spec and "running_time_min" in spec:
            raise InvalidResourceSpecification(
                {"walltime", "running_time_min"}, "both set the time limit: give one"
            )
        cores = math.ceil(spec["cores"]) if "cores" in spec else None
        memory = math.ceil(spec["memory"]) if "memory" in spec else None
        if cores is not None and cores > self.cores:
            raise InvalidResourceSpecification(
                {"cores"}, f"the task asks for {cores} cores but {where} has {self.cores}: ask for fewer"
            )
        if memory is not None and self.memory is not None and memory > self.memory:
            raise InvalidResourceSpecification(
                {"memory"}, f"the task asks for {memory} MB but {where} has {self.memory} MB: ask for less"
            )
        time_limit = spec.get("walltime")
        if "running_time_min" in spec:
            time_limit = spec["running_time_min"] * 60.0
        return cores, memory, time_limit

    def _queue(self, task: Task, request: dict[str, Any]) -> None:
        """Send a numbered request to the spawner (or fail its task at once
        if the pool is lost).
        """
        number = request["id"]
        with self._lock:
            if self._proc is None and self._lost is None:
                raise RuntimeError(f"executor '{self.label}' is not started, or was shut down")
            self._waiting[number] = (task, request)
            if self._lost is None:
                self._pending += encode(request)
                self._flush_locked()
                return
        self._deliver([(number, self._lost)])

    # ---- talking to the spawner ----

    def _flush_locked(self) -> None:
        """Write what the spawner's stdin takes without blocking (holding the
        lock); the reader thread writes the rest (a dead spawner's successor
        gets the unanswered requests in ``_waiting``).
        """
        if self._stdin_fd < 0:
            return
        if self._pending:
            try:
                del self._pending[: os.write(self._stdin_fd, self._pending)]
            except BlockingIOError:
                pass
            except OSError:
                self._pending.clear()
            if self._pending:
                try:
                    os.write(self._wake_w, b"w")
                except OSError:
                    pass  # the reader is awake already
        if self._close_input and not self._pending and self._proc is not None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            self._stdin_fd = -1

    def _serve(self) -> None:
        proc = self._proc
        while proc is not None:
            self._serve_one(proc)
            proc = self._take_over(proc)
        with self._lock:
            left, self._waiting = self._waiting, {}
        error = self._lost or NotStartedError("the job was not started: the pool is shut down")
        for task, _ in left.values():
            self._finish(task, error)

    def _serve_one(self, proc: subprocess.Popen) -> None:
        """Read one spawner's replies until its output ends, and write the
        requests that did not fit in its input when they were sent.
        """
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
        pending = b""
        while True:
            with self._lock:
                writable = [self._stdin_fd] if self._pending and self._stdin_fd >= 0 else []
            try:
                readable, writable, _ = select.select([out_fd, self._wake_r], writable, [])
            except OSError:  # stdin closed by shutdown meanwhile
                continue
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if writable:
                with self._lock:
                    self._flush_locked()
            if out_fd in readable:
                try:
                    data = os.read(out_fd, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    return
                *lines, pending = (pending + data).split(b"\n")
                self._deliver(self._replies(lines))

    def _replies(self, lines: list[bytes]) -> list[tuple[int, AttemptResult | BaseException]]:
        """Parse reply lines; the spawner's first line and its keeper's last
        one are taken note of.
        """
        replies = []
        for line in lines:
            if line.startswith(b"spawner "):
                self._spawner_pid = int(line.split()[1])
            elif line.startswith(b"exit "):
                self._spawner_exit = int(line.split()[1])
            elif line.startswith(b"note "):
                _LOG.info("local job pool: %s", line[5:].decode(errors="replace"))
            elif line:
                try:
                    replies.append(parse_reply(line))
                except ValueError:
                    _LOG.warning("ignored a garbled reply of the local job pool's spawner: %r", line)
        return replies

    def _take_over(self, dead: subprocess.Popen) -> subprocess.Popen | None:
        """Replace a spawner whose output ended (`None`: none expected or
        possible); the new one gets every unanswered request (`spawner`).
        At shutdown, one that exited by itself (status 0: it answered every
        job it started) is not replaced; one that died is, so its running
        jobs are followed to their end.
        """
        code, dead_pid = self._spawner_exit, self._spawner_pid or dead.pid
        if code is None:  # no keeper (see keeper.keep): the spawner was the process started
            code = dead.wait()
            code = 128 - code if code < 0 else code
        if self._closing and (code == 0 or not self._waiting):
            return None
        self._keepers.append(dead)  # it may keep jobs the dead spawner started: not waited for
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < _DEATH_WINDOW] + [now]
        how = f"signal {code - 128}" if code > 128 else f"exit status {code}"
        with self._lock:
            # Every request not written, or written to the dead one, is unanswered: the new one gets it.
            self._pending.clear()
            jobs = [request for _, (_, request) in sorted(self._waiting.items())]
            if len(self._deaths) > _MAX_DEATHS:
                self._lost = PoolLostError(
                    f"the local job pool's spawner died {len(self._deaths)} times within "
                    f"{_DEATH_WINDOW:.0f} s (last: pid {dead_pid}, {how}); stopping the run: "
                    "'bps restart' runs what did not finish"
                )
                return None
            try:
                proc = self._start_spawner()
            except OSError as exc:
                self._lost = PoolLostError(
                    f"the local job pool's spawner (pid {dead_pid}) died ({how}) and a new one could not "
                    f"be started: {exc}; stopping the run: 'bps restart' runs what did not finish"
                )
                return None
            try:
                dead.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            self._set_proc(proc)
            self._pending += resume_request(dead_pid, jobs)
            if self._stop_sent:
                self._pending += STOP
            self._flush_locked()
        _LOG.warning(
            "the local job pool's spawner (pid %d) died (%s); a new one (pid %d) took over its %d "
            "unfinished job(s)",
            dead_pid,
            how,
            proc.pid,
            len(jobs),
        )
        return proc

    # ---- results ----

    def _deliver(self, parsed: list[tuple[int, AttemptResult | BaseException]]) -> None:
        with self._lock:
            found = [(self._waiting.pop(number, None), result) for number, result in parsed]
        for entry, result in found:
            if entry is not None:
                self._finish(entry[0], result)

    def _finish(self, task: Task, result: AttemptResult | BaseException) -> None:
        """Set a task's future from its spawner reply."""
        if task.future.done():
            return
        if not isinstance(result, BaseException) and task.monitoring is not None:
            report_try(self.monitoring_messages, self.run_id, task.monitoring, result)
        if task.files is not None:
            outcome = self._python.outcome(task.files, result)
            if isinstance(outcome, BaseException):
                task.future.set_exception(outcome)
            else:
                task.future.set_result(outcome[0])
        elif isinstance(result, BaseException):
            task.future.set_exception(result)
        else:
            task.future.set_result(result)
