"""Run a prepared workflow: walk the DAG, feed Parsl, record every transition.

The driver keeps the DAG as integer arrays. A job is handed to Parsl as an
app future once all its parents succeeded (the parents' futures are passed
as its ``inputs``), so the walk is iterative and a chain of any depth works.
Local executors with a capacity only get jobs that fit in their free cores
and memory. Failures are retried per the job's policy, with more memory each
time if the job asks for it; jobs below a failure are pruned; the final job
runs once everything else ended.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from parsl.app.python import PythonApp

from .commands import fill_wms
from .files import safe_component, safe_subdir
from .job import ParslJob
from .runner import GATES, NotStartedError, ResourceGate, run_job
from .running import kill_running_jobs
from .site import SiteConfig
from .spawner import logged_exit_status
from .state import (
    DELETED,
    ENDED,
    FAILED,
    PENDING,
    PRUNED,
    READY,
    RUNNING,
    SUCCEEDED,
    UNREADY,
    JobKind,
    RunStore,
    StateStoreError,
    StoreLostError,
)

__all__ = ("Driver", "RunOutcome", "log_paths")

_LOG = logging.getLogger(__name__)
_HOST = socket.gethostname()
_FLUSH_INTERVAL = 0.05
"""Seconds between commits of the state: transitions of that window are
committed together (a restart recovers finished jobs from their logs)."""


def log_paths(submit_path: str, log_dir: str | None, name: str, attempt: int) -> tuple[str, str]:
    """Return the stdout and stderr files of one attempt of one job, always
    under ``<submit>/logs`` whatever the job's name and log directory hold
    (see `files.safe_component`)."""
    base = os.path.join(submit_path, "logs", safe_subdir(log_dir), f"{safe_component(name)}.{attempt}")
    return base + ".out", base + ".err"


@dataclass
class RunOutcome:
    """How a driver session ended."""

    counts: dict[int, int] = field(default_factory=dict)
    """Jobs per state (`WmsStates` values)."""
    cancelled: bool = False
    reason: str = ""

    @property
    def failed(self) -> int:
        """Jobs that failed, were pruned or were deleted."""
        return sum(self.counts.get(s, 0) for s in (FAILED, PRUNED, DELETED))


class Driver:
    """Run the jobs of one submit directory until all have ended.

    Parameters
    ----------
    store : `RunStore`
        The run's state database, open for writing.
    site : `SiteConfig`
        Site that builds the executors.
    kind : `str`
        ``submit`` or ``restart``.
    progress_interval : `float`
        Seconds between progress lines (0: none).
    progress_by_label : `bool`
        Follow each progress line with one line per label.
    """

    def __init__(
        self,
        store: RunStore,
        site: SiteConfig,
        kind: str = "submit",
        progress_interval: float = 30.0,
        progress_by_label: bool = False,
    ):
        self.store = store
        self.site = site
        self.kind = kind
        self.progress_interval = progress_interval
        self.progress_by_label = progress_by_label
        meta = store.meta()
        self.submit_path: str = meta["submit_path"]
        self.run_id: str = meta["run_id"]
        site.submit_path = self.submit_path
        self.running_dir = os.path.join(self.submit_path, "parsl", "running")
        self.stop_reason: str | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._load()

    # ---- set-up -----------------------------------------------------------

    def _load(self) -> None:
        rows = self.store.jobs()
        n = len(rows)
        self.rows = rows
        self.envs = self.store.envs()
        self.children: list[list[int]] = [[] for _ in range(n)]
        self.parents: list[list[int]] = [[] for _ in range(n)]
        for parent, child in self.store.edges():
            self.children[parent].append(child)
            self.parents[child].append(parent)
        self.state = [UNREADY] * n
        self.attempt = [0] * n
        for job, state, attempt, *_ in self.store.statuses():
            self.state[job] = state
            self.attempt[job] = attempt
        self.session_tries = [0] * n
        self.retry_codes: list[frozenset[int]] = [
            frozenset(json.loads(r.retry_unless_exit)) if r.retry_unless_exit else frozenset() for r in rows
        ]

    def _reset_for_run(self) -> None:
        """Keep succeeded jobs; every other job (and the final jobs) runs.

        What a driver that died may have left is settled first: leftover job
        processes are killed, and every attempt that was launched (its log
        exists, as `run_job` creates it before starting the job) but not
        recorded is read from its log: if its shell logged exit status 0,
        the job counts as succeeded and is not run again.
        """
        resumed = bool(self.store.sessions())
        if resumed:
            kill_running_jobs(self.running_dir, self.run_id)
        for i, row in enumerate(self.rows):
            if not resumed:
                break
            if self.state[i] == SUCCEEDED or row.kind != JobKind.PAYLOAD:
                continue
            attempt = self.attempt[i]
            if self.state[i] not in (PENDING, RUNNING):
                attempt += 1  # a launch the driver did not get to record
            last = None
            while attempt > 0:
                _, stderr = log_paths(self.submit_path, row.log_dir, row.name, attempt)
                if not os.path.exists(stderr):
                    break
                last = (attempt, stderr)
                attempt += 1
            if last is None:
                continue
            attempt, stderr = last
            self.attempt[i] = attempt
            code = exit_status_from_log(stderr)
            state = SUCCEEDED if code == 0 else FAILED
            self.store.record_attempt(i, attempt, state, code, memory=row.request_memory)
            self.store.set_state(i, state, attempt, code)
            self.state[i] = state
        # The final job runs again when other jobs will run (their outputs need
        # it), and of course when it did not succeed.
        rerun_final = any(
            self.state[i] != SUCCEEDED
            for i, row in enumerate(self.rows)
            if not row.final and row.kind == JobKind.PAYLOAD
        )
        for i, row in enumerate(self.rows):
            again = row.final and rerun_final
            if self.state[i] != SUCCEEDED or again or row.kind != JobKind.PAYLOAD:
                if self.state[i] != UNREADY:
                    self.store.set_state(i, UNREADY, self.attempt[i])
                self.state[i] = UNREADY
        self.store.flush()

    def _blocking_parents(self, i: int) -> int:
        if self.rows[i].kind == JobKind.TOLERANT_JOIN:
            return sum(1 for p in self.parents[i] if self.state[p] not in ENDED)
        return sum(1 for p in self.parents[i] if self.state[p] != SUCCEEDED)

    # ---- main loop ----------------------------------------------------------

    def run(self) -> RunOutcome:
        """Run until every job ended or a stop was requested.

        A run that cannot go on (Parsl does not start, the store cannot be
        written or is no longer this run's, the disk is full) ends with
        ``outcome.cancelled`` and a one-line ``outcome.reason``; whatever
        was started is stopped and the signal handlers are restored.
        """
        self._reset_for_run()
        os.makedirs(self.running_dir, exist_ok=True)
        self.store.begin_session(self.kind, os.getpid(), _HOST)
        self._install_signal_handlers()
        try:
            self.prefix = self.site.get_command_prefix()
            self.shell = self.site.job_shell
            config = self.site.get_parsl_config()
            monitoring_db = self.site.monitoring_filename()
            if monitoring_db:
                self.store.set_meta("monitoring_db", monitoring_db)
            self._setup_parsl_logging()
            self.dfk = _start_parsl(config)
        except BaseException as exc:
            self._restore_signal_handlers()
            self._end_session_quietly("error")
            if not isinstance(exc, Exception):
                raise
            site = type(self.site).__name__
            reason = f"Parsl could not start the executors of site {site}: {_one_line(exc)}"
            outcome = RunOutcome(cancelled=True, reason=reason)
            for s in self.state:
                outcome.counts[s] = outcome.counts.get(s, 0) + 1
            return outcome
        labels = [label for label in self.dfk.executors if label != "_parsl_internal"]
        self.capacity = {label: self.site.capacity(label) for label in labels}
        # In-process pools take jobs straight through Parsl's executor API:
        # the data-flow kernel's per-task bookkeeping would cost more than
        # the job's own process start. With monitoring on, every job goes
        # through the kernel so that monitoring sees it.
        self.apps = {}
        self.direct: set[str] = set()
        self.send_queued: list[Any] = []  # executors whose requests wait for one write per pass
        for label in labels:
            executor = self.dfk.executors[label]
            if self.capacity[label] is not None and config.monitoring is None:
                if hasattr(executor, "submit_attempt"):
                    executor.on_results(self._events.put)
                    self.apps[label] = executor.submit_attempt
                    self.send_queued.append(executor.send_queued)
                    self.direct.add(label)
                else:
                    self.apps[label] = functools.partial(executor.submit, run_job, {})
            else:
                self.apps[label] = PythonApp(run_job, data_flow_kernel=self.dfk, executors=[label])
        self.gates = {}
        for label, cap in self.capacity.items():
            if cap is not None:
                self.gates[label] = f"{self.run_id}/{label}"
                GATES[self.gates[label]] = ResourceGate(cap.cores, cap.memory)
        self.queued = dict.fromkeys(self.apps, 0)
        self.chosen: dict[int, str] = {}
        self.blocked: dict[str, deque[int]] = {k: deque() for k in self.apps}
        self.in_flight: dict[int, tuple[str, int, int]] = {}  # job -> (label, attempt, memory)
        self.futures: dict[int, Any] = {}
        self.waiting_children: dict[int, int] = {}
        outcome = RunOutcome()
        store_failed = False
        try:
            for final in (False, True):
                if self.stop_reason:
                    break
                self._run_phase(final)
            if self.stop_reason:
                self._stop_everything()
        except StateStoreError as exc:
            # The store cannot take more, or is no longer this run's: stop
            # every job and say why in one line.
            store_failed = True
            if isinstance(exc, StoreLostError) or not self.stop_reason:
                self.stop_reason = str(exc)
            self._stop_quietly()
        except BaseException as exc:
            self.stop_reason = self.stop_reason or f"driver error: {exc!r}"
            self._stop_quietly()
            self._end_session_quietly("error")
            raise
        finally:
            self._restore_signal_handlers()
            for key in self.gates.values():
                GATES.pop(key, None)
            try:
                self.dfk.cleanup()
            except Exception as exc:  # noqa: BLE001
                _LOG.warning("Parsl cleanup failed: %s", exc)
        if self.stop_reason:
            outcome.cancelled = True
            outcome.reason = self.stop_reason
        for s in self.state:
            outcome.counts[s] = outcome.counts.get(s, 0) + 1
        if store_failed or self.store.disk_full or self.store.lost:
            ended = "error"
        else:
            ended = "cancelled" if outcome.cancelled else ("failed" if outcome.failed else "succeeded")
        try:
            self.store.end_session(ended)
            self.store.flush()
        except StateStoreError as exc:
            outcome.cancelled = True
            outcome.reason = outcome.reason or str(exc)
        self._print_progress(force=True)
        return outcome

    def _run_phase(self, final: bool) -> None:
        self.ready: deque[int] = deque()
        members = [i for i, r in enumerate(self.rows) if bool(r.final) == final]
        self.remaining = {}
        for i in members:
            if self.state[i] in ENDED:
                continue
            count = self._blocking_parents(i)
            if count == 0 and not self._parent_failed(i):
                self.ready.append(i)
            elif self._parent_failed(i):
                self._prune(i)
            else:
                self.remaining[i] = count
        self._last_progress = last_flush = time.monotonic()
        while (self.ready or self.in_flight or any(self.blocked.values())) and not self.stop_reason:
            self._dispatch()
            if not self.in_flight and not self.ready:
                if any(self.blocked.values()):
                    raise RuntimeError("jobs are held back but nothing runs: capacity bookkeeping is broken")
                break
            now = time.monotonic()
            wait = max(0.0, last_flush + _FLUSH_INTERVAL - now) if self.store.dirty else 0.5
            for send in self.send_queued:
                send()
            try:
                batch = self._events.get(timeout=wait)
            except queue.Empty:
                batch = None
            while batch is not None:
                for key, outcome in batch:
                    self._complete(key[0], key[1], outcome)
                try:
                    batch = self._events.get_nowait()
                except queue.Empty:
                    batch = None
            now = time.monotonic()
            if now - last_flush >= _FLUSH_INTERVAL:
                self.store.flush()
                last_flush = now
                if self.store.disk_full:
                    self.request_stop(self.store.disk_full)
            self._print_progress()
        self.store.flush()

    def _parent_failed(self, i: int) -> bool:
        if self.rows[i].kind == JobKind.TOLERANT_JOIN:
            return False
        return any(self.state[p] in (FAILED, PRUNED, DELETED) for p in self.parents[i])

    # ---- dispatch -------------------------------------------------------------

    def _dispatch(self) -> None:
        ready = self.ready
        while ready and not self.stop_reason:
            i = ready.popleft()
            kind = self.rows[i].kind
            if kind != JobKind.PAYLOAD:
                self._finish(i, SUCCEEDED)
                continue
            self._submit(i)

    def _drain_blocked(self, label: str) -> None:
        """Submit held-back jobs of an executor, in order, while they fit."""
        blocked = self.blocked[label]
        depth = self.capacity[label].queue_depth
        while blocked and not self.stop_reason and self.queued[label] < depth:
            i = blocked.popleft()
            if not self._submit(i, held=True):
                blocked.appendleft(i)
                return

    def _memory_for(self, i: int, tries: int) -> int | None:
        row = self.rows[i]
        memory = row.request_memory
        if memory is None or not row.memory_multiplier or tries == 0:
            return memory
        scaled = int(memory * row.memory_multiplier**tries)
        return min(scaled, row.request_memory_max) if row.request_memory_max else scaled

    def _submit(self, i: int, held: bool = False) -> bool:
        """Hand a job to Parsl; returns False if it was held back for lack
        of room on its executor."""
        row = self.rows[i]
        tries = self.session_tries[i]
        attempt = self.attempt[i] + 1
        memory = self._memory_for(i, tries)
        cpus = row.request_cpus or 1
        pjob = ParslJob.from_row(row, attempt, memory, self.site.config, self.submit_path)
        # A held-back job keeps the executor chosen for this attempt.
        label = self.chosen.pop(i, None) if held else None
        if label is None:
            try:
                label = self.site.select_executor(pjob)
                if label not in self.apps:
                    raise ValueError(
                        f"it returned '{label}', which is not one of the executors {sorted(self.apps)}"
                    )
            except Exception as exc:  # noqa: BLE001
                self._reject(
                    i, attempt, f"{type(self.site).__name__}.select_executor failed for this job: {exc}"
                )
                return True
        cap = self.capacity[label]
        if cap is not None:
            if (not held and self.blocked[label]) or self.queued[label] >= cap.queue_depth:
                self.chosen[i] = label
                if not held:
                    self.blocked[label].append(i)
                return False
            self.queued[label] += 1
        self.attempt[i] = attempt
        self.session_tries[i] = tries + 1
        stdout, stderr = log_paths(self.submit_path, row.log_dir, row.name, attempt)
        env = self.envs[row.env_id] if row.env_id is not None else ""
        token = f"{self.run_id}/{i}/{attempt}"
        pid_file = os.path.join(self.running_dir, f"{i}.{attempt}")
        walltime = _walltime_seconds(row.request_walltime) if self._enforce_walltime(label) else None
        kwargs: dict[str, Any] = {"time_limit": walltime, "shell": self.shell}
        if isinstance(self.apps[label], PythonApp):
            kwargs["inputs"] = [self.futures[p] for p in self.parents[i] if p in self.futures]
        if label in self.gates:
            kwargs.update(gate=self.gates[label], cores=cpus, memory=memory or 0)
        spec = self.site.resource_specification(pjob, label)
        if spec:
            kwargs["parsl_resource_specification"] = spec
        submitted = time.time()
        command = row.command
        if "<WMS:" in command or "<WMS:" in env:  # attemptNum counts from 0, as HTCondor's NumJobStarts
            command, env = fill_wms(command, attempt - 1), fill_wms(env, attempt - 1)
        args = (token, self.prefix, env, command, stdout, stderr, pid_file)
        self.in_flight[i] = (label, attempt, memory or 0)
        self.state[i] = PENDING
        self.store.set_state(i, PENDING, attempt, start=submitted)
        if tries == 0:
            self._release_parent_futures(i)
        if label in self.direct:
            self.apps[label]((i, attempt), *args, **kwargs)
            return True
        future = self.apps[label](*args, **kwargs)
        if self.children[i] and i not in self.futures:
            self.waiting_children[i] = len(self.children[i])
        self.futures[i] = future
        future.add_done_callback(lambda f, key=(i, attempt): self._events.put([(key, f)]))
        return True

    def _reject(self, i: int, attempt: int, reason: str) -> None:
        """Fail an attempt that could not be handed to any executor."""
        row = self.rows[i]
        self.attempt[i] = attempt
        _, stderr = log_paths(self.submit_path, row.log_dir, row.name, attempt)
        _append(stderr, f"[bps-parsl] {reason}\n")
        _LOG.warning("job %s: %s", row.name, reason)
        now = time.time()
        self.store.record_attempt(i, attempt, FAILED, -1, None, None, None, None, now, now, None)
        self.store.set_state(i, FAILED, attempt, -1, None, now, now, None)
        self._finish(i, FAILED, record=False)

    def _enforce_walltime(self, label: str) -> bool:
        return self.capacity.get(label) is not None

    # ---- completion -----------------------------------------------------------

    def _complete(self, i: int, attempt: int, outcome: Any) -> None:
        """Record an ended attempt; ``outcome`` is its future, its result
        tuple or the exception that lost it."""
        flight = self.in_flight.get(i)
        if flight is None or flight[1] != attempt:
            return
        del self.in_flight[i]
        label, _, memory = flight
        if label in self.gates:
            self.queued[label] -= 1
            self._drain_blocked(label)
        not_started = _not_started(outcome)
        if not_started is not None:
            self._never_started(i, attempt, not_started)
            return
        try:
            code, sig, start, end, host, timed_out = _result_of(outcome)
        except Exception as exc:  # noqa: BLE001
            _LOG.warning("job %s attempt %d: executor error %r", self.rows[i].name, attempt, exc)
            code, sig, start, end, host, timed_out = -1, None, None, time.time(), None, False
            _, stderr = log_paths(self.submit_path, self.rows[i].log_dir, self.rows[i].name, attempt)
            _append(stderr, f"[bps-parsl] the executor lost this attempt: {exc!r}\n")
        state = SUCCEEDED if code == 0 else FAILED
        self.store.record_attempt(i, attempt, state, code, sig, memory or None, label, None, start, end, host)
        if state == SUCCEEDED:
            self.store.set_state(i, SUCCEEDED, attempt, 0, None, start, end, host)
            self._finish(i, SUCCEEDED, record=False)
            return
        row = self.rows[i]
        if (
            not self.stop_reason
            and not timed_out
            and code not in self.retry_codes[i]
            and self.session_tries[i] <= (row.retries or 0)
        ):
            self.state[i] = READY
            self.store.set_state(i, READY, attempt, code, sig, start, end, host)
            self.ready.append(i)
            return
        self.store.set_state(i, FAILED, attempt, code, sig, start, end, host)
        self._finish(i, FAILED, record=False)

    def _never_started(self, i: int, attempt: int, error: NotStartedError) -> None:
        """An attempt that never started is no attempt: its number is given
        back. The pool only stops starting jobs when the run stops or the pool
        was lost; the run stops then (the job is recorded DELETED, and a
        restart runs it)."""
        self.attempt[i] = attempt - 1
        self.session_tries[i] -= 1
        if self.stop_reason:
            return
        _, stderr = log_paths(self.submit_path, self.rows[i].log_dir, self.rows[i].name, attempt)
        if os.path.exists(stderr):
            # It did start (a pool that was lost cannot always tell): settle it from its log.
            self.attempt[i] = attempt
            self.session_tries[i] += 1
            code = exit_status_from_log(stderr)
            if code == 0:
                self.store.record_attempt(i, attempt, SUCCEEDED, 0, None, None, None, None, None, None, None)
                self.store.set_state(i, SUCCEEDED, attempt, 0)
                self._finish(i, SUCCEEDED, record=False)
        self.request_stop(str(error))

    def _finish(self, i: int, state: int, record: bool = True) -> None:
        """Mark a job ended and release or prune its children."""
        self.state[i] = state
        if record:
            self.store.set_state(i, state, self.attempt[i])
        failed = state != SUCCEEDED
        for c in self.children[i]:
            if self.state[c] in ENDED:
                continue
            tolerant = self.rows[c].kind == JobKind.TOLERANT_JOIN
            if failed and not tolerant:
                self._prune(c)
                continue
            left = self.remaining.get(c, 0) - 1
            if left <= 0:
                self.remaining.pop(c, None)
                self.ready.append(c)
            else:
                self.remaining[c] = left
        if self.rows[i].kind != JobKind.PAYLOAD:
            self._release_parent_futures(i)

    def _release_parent_futures(self, i: int) -> None:
        """Drop parents' futures once no child of theirs still needs them."""
        for p in self.parents[i]:
            left = self.waiting_children.get(p)
            if left is not None:
                if left <= 1:
                    del self.waiting_children[p]
                    self.futures.pop(p, None)
                else:
                    self.waiting_children[p] = left - 1

    def _prune(self, start: int) -> None:
        stack = [start]
        while stack:
            i = stack.pop()
            if self.state[i] in ENDED:
                continue
            self.state[i] = PRUNED
            self.remaining.pop(i, None)
            self.store.set_state(i, PRUNED, self.attempt[i])
            self._release_parent_futures(i)
            for c in self.children[i]:
                if self.rows[c].kind == JobKind.TOLERANT_JOIN:
                    left = self.remaining.get(c, 0) - 1
                    if left <= 0 and self.state[c] not in ENDED:
                        self.remaining.pop(c, None)
                        self.ready.append(c)
                    else:
                        self.remaining[c] = left
                else:
                    stack.append(c)

    # ---- stopping -------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop: no new job starts, running ones are killed."""
        if not self.stop_reason:
            self.stop_reason = reason

    def _stop_quietly(self) -> None:
        """`_stop_everything`, when the store may refuse the record of it."""
        try:
            self._stop_everything()
        except StateStoreError as exc:
            _LOG.warning("%s", exc)

    def _end_session_quietly(self, outcome: str) -> None:
        try:
            self.store.end_session(outcome)
        except StateStoreError as exc:
            _LOG.warning("%s", exc)

    def _install_signal_handlers(self) -> None:
        self._old_handlers: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            self.request_stop(f"received {signal.Signals(signum).name}")

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)

    def _stop_everything(self) -> None:
        """Kill running job processes, wait for their futures, mark the rest DELETED."""
        for key in getattr(self, "gates", {}).values():
            GATES[key].close()
        for label in getattr(self, "gates", {}):
            stop_jobs = getattr(self.dfk.executors[label], "stop_jobs", None)
            if stop_jobs is not None:
                stop_jobs()
        kill_running_jobs(self.running_dir, self.run_id)
        deadline = time.monotonic() + 30
        while self.in_flight and time.monotonic() < deadline:
            try:
                batch = self._events.get(timeout=0.5)
            except queue.Empty:
                kill_running_jobs(self.running_dir, self.run_id)
                continue
            for (i, attempt), outcome in batch:
                flight = self.in_flight.get(i)
                if flight is None or flight[1] != attempt:
                    continue
                del self.in_flight[i]
                if _not_started(outcome) is not None:
                    self.attempt[i] = attempt - 1  # never started: no attempt to record
                    continue
                try:
                    code, sig, start, end, host, _ = _result_of(outcome)
                except Exception:  # noqa: BLE001
                    # The executor lost it: if it ran to its end, its shell logged how.
                    _, stderr = log_paths(self.submit_path, self.rows[i].log_dir, self.rows[i].name, attempt)
                    logged = exit_status_from_log(stderr)
                    code = -1 if logged is None else logged
                    sig, start, end, host = None, None, time.time(), None
                state = SUCCEEDED if code == 0 else DELETED
                self.store.record_attempt(
                    i, attempt, state, code, sig, flight[2] or None, flight[0], None, start, end, host
                )
                self.state[i] = state
                self.store.set_state(i, state, attempt, code, sig, start, end, host)
        for i, s in enumerate(self.state):
            if s not in ENDED:
                self.state[i] = DELETED
                self.store.set_state(i, DELETED, self.attempt[i])
        self.in_flight.clear()
        self.store.flush()

    # ---- output ---------------------------------------------------------------

    def _setup_parsl_logging(self) -> None:
        found, level = self.site.config.search(".parsl.log_level", opt={"default": "WARNING"})
        logger = logging.getLogger("parsl")
        logger.propagate = False
        path = os.path.join(self.submit_path, "parsl", "parsl.log")
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for old in list(logger.handlers):
            if isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(str(level).upper() if found else "WARNING")

    def _print_progress(self, force: bool = False) -> None:
        if not self.progress_interval and not force:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_interval:
            return
        self._last_progress = now
        counts: dict[int, int] = {}
        for s in self.state:
            counts[s] = counts.get(s, 0) + 1
        running = counts.get(PENDING, 0) + counts.get(RUNNING, 0)
        print(
            f"bps-parsl {self.run_id}: {counts.get(SUCCEEDED, 0)} succeeded, {running} running, "
            f"{counts.get(FAILED, 0)} failed, {counts.get(PRUNED, 0)} pruned, "
            f"{counts.get(DELETED, 0)} deleted, of {len(self.state)}",
            file=sys.stdout,
            flush=True,
        )
        if self.progress_by_label:
            by_label: dict[str, dict[int, int]] = {}
            for row, s in zip(self.rows, self.state, strict=True):
                if row.kind == JobKind.PAYLOAD:
                    counts = by_label.setdefault(row.label, {})
                    counts[s] = counts.get(s, 0) + 1
            for label, counts in by_label.items():
                print(
                    f"  {label}: {counts.get(SUCCEEDED, 0)} succeeded, "
                    f"{counts.get(PENDING, 0) + counts.get(RUNNING, 0)} running, {counts.get(FAILED, 0)} failed, "
                    f"{counts.get(PRUNED, 0)} pruned, of {sum(counts.values())}",
                    flush=True,
                )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _start_parsl(config: Any) -> Any:
    """Start Parsl's data-flow kernel; if that fails, stop what it had
    started (executors, the status poller) before raising."""
    from parsl.dataflow.dflow import DataFlowKernel

    dfk = DataFlowKernel.__new__(DataFlowKernel)
    try:
        DataFlowKernel.__init__(dfk, config)
    except BaseException:
        steps = []
        poller = getattr(dfk, "job_status_poller", None)
        if poller is not None:
            steps.append(poller.close)
        steps.extend(executor.shutdown for executor in getattr(dfk, "executors", {}).values())
        for name in ("memoizer", "usage_tracker"):
            part = getattr(dfk, name, None)
            if part is not None:
                steps.append(part.close)
        monitoring = getattr(dfk, "monitoring", None)
        if monitoring is not None:
            steps.append(monitoring.close)
        if getattr(dfk, "_logging_unregister_callback", None) is not None:
            steps.append(dfk._logging_unregister_callback)
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001
                _LOG.warning("stopping what Parsl had started failed: %r", exc)
        raise
    return dfk


def _result_of(outcome: Any) -> tuple:
    """The result tuple of an attempt from its future, tuple or exception."""
    if isinstance(outcome, BaseException):
        raise outcome
    if isinstance(outcome, tuple):
        return outcome
    return outcome.result()


def _not_started(outcome: Any) -> NotStartedError | None:
    """The error saying an attempt never started, if ``outcome`` is one."""
    if isinstance(outcome, NotStartedError):
        return outcome
    if isinstance(outcome, (BaseException, tuple)) or not outcome.done():
        return None
    error = outcome.exception()
    return error if isinstance(error, NotStartedError) else None


def _walltime_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value) * 60.0
    except ValueError:
        from .configuration import parse_walltime

        return float(parse_walltime(value, "requestWalltime"))


def _append(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as stream:
            stream.write(text)
    except OSError:
        pass


def exit_status_from_log(stderr: str) -> int | None:
    """Exit status a job's shell appended to its stderr log, if any."""
    return logged_exit_status(stderr)
