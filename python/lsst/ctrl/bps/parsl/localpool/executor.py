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

"""`LocalPoolExecutor`, the Parsl executor of the local site (design.md, "Local pools"): the
spawner starts a `run_job` call as its shell script, any other function in a fresh Python process.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

from lsst_ctrl_bps_parsl_worker import spawner
from lsst_ctrl_bps_parsl_worker.job import NotStartedError, run_job

from parsl.app.errors import wrap_error
from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.monitoring.radios.multiprocessing import MultiprocessingQueueRadio
from parsl.utils import RepresentationMixin

from ..parslcompat import try_message_type, unwrap_monitoring
from ..records import AttemptResult
from .tasks import PythonTasks, TaskProcessError, job_request, parse_reply

__all__ = ("LocalPoolExecutor", "NotStartedError", "PoolLostError", "TaskProcessError")

_LOG = logging.getLogger(__name__)
_MAX_DEATHS = 3
"""More spawner deaths than this within ``_DEATH_WINDOW`` seconds end the
unanswered tasks with `PoolLostError` (they may not have started)."""
_DEATH_WINDOW = 60.0
_STOP = b'{"op": "stop"}\n'
"""The request that fails queued jobs and kills running ones."""
_DRAIN = b'{"op": "drain"}\n'
"""The request that fails queued jobs (and any later one) and lets running ones end."""
_WRAP_ERROR_CODE = wrap_error(run_job).__code__
"""Code of the wrapper Parsl's ``python_app`` puts around its function."""


class PoolLostError(NotStartedError):
    """The pool's spawner died and was not replaced: the run must stop (a restart settles what ran)."""


class _Task(NamedTuple):
    """A submitted task: its future, its files' base path (Python tasks), its monitoring (task, try) ids."""

    future: Future
    files: str | None
    monitoring: tuple[int, int] | None


class LocalPoolExecutor(ParslExecutor, RepresentationMixin):
    """Run Parsl tasks as processes on this machine within a core and memory budget.

    Parameters
    ----------
    label, cores : `str`, `int`
        Executor label; cores tasks may use at once (each takes its ``cores``, default 1).
    memory : `int` or `None`
        Memory (MB) tasks may use at once (each its ``memory``, default 0); `None`: no limit.
    storage_access, working_dir : `list`, `str`, optional
        Parsl staging providers (`None`: Parsl's default ones) and where they put files (`None`: they choose).
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
        self._waiting: dict[int, tuple[_Task, dict]] = {}
        self._ids = itertools.count()
        # Guards everything below and the spawner's stdin; held only for
        # non-blocking work, so a done callback of a future (run by the
        # reader thread) may submit more tasks.
        self._lock = threading.Lock()
        self._pending = bytearray()  # bytes for the spawner's stdin, not yet written
        # Shut down: stop sent, the spawner's stdin closed once all is written, its end of output expected.
        self._closing = False
        self._lost: PoolLostError | None = None
        self._deaths: list[float] = []
        self._wake_r, self._wake_w = -1, -1
        self._reader: threading.Thread | None = None
        self._python = PythonTasks(label)

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
        """Start no more tasks: queued and later ones fail with `NotStartedError`; running ones end."""
        if self._proc is not None:
            with self._lock:
                self._pending += _DRAIN
                self._flush_locked()

    def shutdown(self) -> None:
        """Stop every task and the spawner (running tasks are killed, queued
        ones fail with `NotStartedError`), then Parsl's own shutdown.
        """
        if self._proc is not None:
            with self._lock:
                # Closing its input alone would let running jobs finish (that
                # is for a driver that died); a shut-down pool stops them.
                self._pending += _STOP
                self._closing = True
                self._flush_locked()
            if self._reader is not None:
                self._reader.join(timeout=30)
            # The spawner ended (its output did); its keeper ends with the last
            # process the jobs left behind, not waited for beyond a moment.
            for keeper in (self._proc, *self._keepers):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    keeper.wait(timeout=0.5)
            self._proc = None
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        self._python.close()
        super().shutdown()

    def monitor_resources(self) -> bool:
        # Parsl's per-task sampling has no worker process here: `_finish` reports each try itself.
        return False

    # ---- submitting ----

    def submit(
        self, func: Callable, resource_specification: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Future:
        """Queue one task; returns its future.

        Parameters
        ----------
        func : `~collections.abc.Callable`
            `run_job` (the spawner runs it as a job) or any other (run in a Python process of its own).
        resource_specification : `dict` [`str`, `~typing.Any`]
            The task's `RESOURCE_KEYS`; by default 1 core, no memory, a `run_job` call's ``time_limit``.
        *args, **kwargs : `~typing.Any`
            Arguments of ``func``.

        Returns
        -------
        future : `concurrent.futures.Future`
            The task's future.

        Raises
        ------
        parsl.executors.errors.InvalidResourceSpecification
            A key other than `RESOURCE_KEYS`, a value not a positive number, more than the pool has.
        parsl.serialize.errors.SerializationError
            The function or an argument of a Python task cannot be serialized.
        """
        resources = self._resources(resource_specification)
        # Parsl monitoring's wrapper: run what it wraps, report the try here.
        func, kwargs, monitoring = unwrap_monitoring(func, kwargs)
        future: Future = Future()
        number = next(self._ids)
        files = None
        # `run_job`, bare or as ``python_app`` wraps it, is run by the spawner as a job.
        wrapped = (
            getattr(func, "__wrapped__", None)
            if getattr(func, "__code__", None) is _WRAP_ERROR_CODE
            else None
        )
        if func is run_job or wrapped is run_job:
            request = job_request(*args, **kwargs)
        else:
            request, files = self._python.request(number, func, args, kwargs)
        request.update(resources, id=number)
        future.parsl_executor_task_id = number  # type: ignore[attr-defined]
        with self._lock:
            if self._proc is None and self._lost is None:
                raise RuntimeError(f"executor '{self.label}' is not started, or was shut down")
            self._waiting[number] = (_Task(future, files, monitoring), request)
            if self._lost is None:
                self._pending += (json.dumps(request) + "\n").encode()
                self._flush_locked()
                return future
        self._deliver([(number, self._lost)])  # the pool is lost: fail the task at once
        return future

    def _resources(self, spec: dict[str, Any] | None) -> dict[str, Any]:
        """The request's ``cores``, ``memory`` and ``time_limit`` (seconds) a resource specification sets."""
        if not spec:
            return {}
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
        found: dict[str, Any] = {key: math.ceil(spec[key]) for key in ("cores", "memory") if key in spec}
        if found.get("cores", 0) > self.cores:
            raise InvalidResourceSpecification(
                {"cores"},
                f"the task asks for {found['cores']} cores but {where} has {self.cores}: ask for fewer",
            )
        if self.memory is not None and found.get("memory", 0) > self.memory:
            raise InvalidResourceSpecification(
                {"memory"},
                f"the task asks for {found['memory']} MB but {where} has {self.memory} MB: ask for less",
            )
        if "walltime" in spec:
            found["time_limit"] = spec["walltime"]
        if "running_time_min" in spec:
            found["time_limit"] = spec["running_time_min"] * 60.0
        return found

    # ---- talking to the spawner ----

    def _flush_locked(self) -> None:
        """Write what the spawner's stdin takes without blocking (holding the lock); the reader thread the rest."""
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
                with contextlib.suppress(OSError):  # the reader is awake already
                    os.write(self._wake_w, b"w")
        if self._closing and not self._pending and self._proc is not None:
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
        """Read one spawner's replies until its output ends; write the requests its input did not take."""
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
        """Parse reply lines, taking note of the spawner's first line and its keeper's last."""
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
        """Replace a spawner whose output ended (`None`: none expected or possible); the new one gets
        every unanswered request. At shutdown, one that exited by itself (status 0: it answered every
        job it started) is not replaced; one that died is, so its running jobs are followed to their end.
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
            with contextlib.suppress(OSError):
                dead.stdin.close()  # type: ignore[union-attr]
            self._set_proc(proc)
            self._pending += (json.dumps({"op": "resume", "spawner": dead_pid, "jobs": jobs}) + "\n").encode()
            if self._closing:
                self._pending += _STOP
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

    def _finish(self, task: _Task, result: AttemptResult | BaseException) -> None:
        """Set a task's future from its spawner reply; tell Parsl monitoring the try's start and end."""
        if task.future.done():
            return
        queue = self.monitoring_messages
        if not isinstance(result, BaseException) and task.monitoring is not None and queue is not None:
            # What the worker wrapper of Parsl's other executors reports.
            end = result.end if result.end is not None else time.time()
            for first, when in ((True, result.start if result.start is not None else end), (False, end)):
                message: dict[str, Any] = {"run_id": self.run_id, "try_id": task.monitoring[1]}
                message["task_id"] = task.monitoring[0]
                message.update(hostname=result.host, block_id=None, first_msg=first, last_msg=not first)
                message["timestamp"] = datetime.datetime.fromtimestamp(when)
                queue.put((try_message_type(), message))
        if task.files is not None:
            outcome = self._python.outcome(task.files, result)
        else:
            outcome = result if isinstance(result, BaseException) else (result,)
        if isinstance(outcome, BaseException):
            task.future.set_exception(outcome)
        else:
            task.future.set_result(outcome[0])
