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

"""Run a prepared workflow: walk the DAG, feed Parsl, record every transition.

`Driver` is the loop of one driver session. It hands each ready job to
Parsl as an app future (`dispatch`), with its parents' futures as
``inputs``; Parsl's executors admit and run them (the local pool's spawner
starts a job once its cores and memory fit). The parts it drives:

- `graphwalk`: which jobs are ready, pruned, waiting;
- `retrypolicy`: whether a failed attempt runs again, with what memory, on
  which executor;
- `recorder`: every transition written to the run's store;
- `dispatch`: Parsl's data-flow kernel and the queue of ended attempts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .attemptlogs import exit_status_from_log, log_paths
from .commands import fill_wms
from .dispatch import Dispatch
from .graphwalk import GraphWalk
from .jobattrs import ConcurrencyGate, abort_status, concurrency_limits, route
from .losses import LostAttempts, infrastructure_cause, stops_run
from .ordering import dispatch_order, in_flight_limit
from .page import PageWriter
from .recorder import AttemptResult, Recorder
from .records import ENDED, JobKind, JobState
from .retrypolicy import ExecutorChoiceError, RetryPolicy
from .runner import NotStartedError
from .running import kill_running_jobs
from .site import SiteConfig
from .state import RunStore, StateStoreError, StoreLostError

__all__ = ("Driver", "RunOutcome")

_LOG = logging.getLogger(__name__)
_HOST = socket.gethostname()
_FLUSH_INTERVAL = 0.05
"""Seconds between commits of the state: transitions of that window are
committed together (a restart recovers finished jobs from their logs)."""


@dataclass
class RunOutcome:
    """How a driver session ended."""

    counts: dict[int, int] = field(default_factory=dict)
    """Jobs per state (`JobState` values)."""
    cancelled: bool = False
    reason: str = ""
    abort_status: int | None = None
    """Status of a run a job's ``abortOnValue`` aborted (`None`: not aborted)."""

    @property
    def failed(self) -> int:
        """Jobs that failed, were pruned or were deleted."""
        return sum(self.counts.get(s, 0) for s in (JobState.FAILED, JobState.PRUNED, JobState.DELETED))


@dataclass(slots=True)
class _InFlight:
    """An attempt handed to Parsl that has not ended."""

    label: str
    attempt: int
    memory: int | None


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
        self.rows = store.jobs()
        self.envs = store.envs()
        self.recorder = Recorder(store, self.rows, self.submit_path)
        self.walk = GraphWalk(self.rows, store.edges(), self._pruned, dispatch_order(site.config) == "fifo")
        self.gate = ConcurrencyGate(self.rows, concurrency_limits(site.config, site.compute_site))
        self.in_flight_cap: int | None = None
        self.abort: tuple[int, str] | None = None
        """Status and reason of a run a job's ``abortOnValue`` aborted."""
        self.state = self.walk.state
        self.attempt = [0] * len(self.rows)
        for status in store.statuses():
            self.state[status.job] = status.state
            self.attempt[status.job] = status.attempt
        self.session_tries = [0] * len(self.rows)
        self.policy = RetryPolicy(self.rows, site, self.submit_path)
        self.losses = LostAttempts(site.infrastructure_retries)
        self.dispatch = Dispatch(site)
        self.in_flight: dict[int, _InFlight] = {}
        self.page = PageWriter(self.submit_path)

    # ---- set-up -----------------------------------------------------------

    def _reset_for_run(self) -> None:
        """Keep succeeded jobs; every other job (and the final jobs) runs.

        What a driver that died may have left is settled first: leftover job
        processes are killed, and every attempt that was launched but not
        recorded is settled from its log (`Recorder.settle_leftovers`).
        """
        if self.store.sessions():
            kill_running_jobs(self.running_dir, self.run_id)
            self.recorder.settle_leftovers(self.state, self.attempt)
        # The final job runs again when other jobs will run (their outputs need
        # it), and of course when it did not succeed.
        rerun_final = any(
            self.state[i] != JobState.SUCCEEDED
            for i, row in enumerate(self.rows)
            if not row.final and row.kind == JobKind.PAYLOAD
        )
        for i, row in enumerate(self.rows):
            again = row.final and rerun_final
            if self.state[i] != JobState.SUCCEEDED or again or row.kind != JobKind.PAYLOAD:
                if self.state[i] != JobState.UNREADY:
                    self.recorder.state(i, JobState.UNREADY, self.attempt[i])
                self.state[i] = JobState.UNREADY
        self.recorder.flush()

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
            monitoring_db = self.site.monitoring_filename()
            if monitoring_db:
                self.store.set_meta("monitoring_db", monitoring_db)
            self.dispatch.start()
        except BaseException as exc:
            self._restore_signal_handlers()
            self._end_session_quietly("error")
            if not isinstance(exc, Exception):
                raise
            site = type(self.site).__name__
            reason = f"Parsl could not start the executors of site {site}: {_one_line(exc)}"
            return RunOutcome(counts=self._counts(), cancelled=True, reason=reason)
        # A job's walltime is enforced by `run_job` where jobs run on this
        # machine; batch executors have their own limits.
        self.walltime_labels = {
            label for label in self.dispatch.labels if self.site.capacity(label) is not None
        }
        self.in_flight_cap = in_flight_limit(self.site, self.dispatch.labels)
        outcome = RunOutcome()
        store_failed = False
        try:
            for final in (False, True):
                if self.stop_reason:
                    break
                self._run_phase(final)
                while not final and not self.stop_reason and self.abort is None and self._join_added_jobs():
                    self._run_phase(False)
                if self.abort is not None and not final:
                    self._abort_to_final_phase()
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
            self.dispatch.shutdown()
        if self.stop_reason:
            outcome.cancelled = True
            outcome.reason = self.stop_reason
        if self.abort is not None:
            outcome.cancelled = True
            outcome.abort_status, outcome.reason = self.abort
        outcome.counts = self._counts()
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
        self.page.update(final=True)
        return outcome

    def _counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for s in self.state:
            counts[s] = counts.get(s, 0) + 1
        return counts

    def _run_phase(self, final: bool) -> None:
        walk = self.walk
        walk.start_phase(final)
        self._last_progress = last_flush = time.monotonic()
        while (walk.ready or self.in_flight or self.losses) and not self.stop_reason:
            for i in self.losses.due(time.monotonic()):
                walk.ready.append(i)
            self._dispatch_ready()
            if not self.in_flight and not walk.ready and not self.losses:
                break
            wait = max(0.0, last_flush + _FLUSH_INTERVAL - time.monotonic()) if self.store.dirty else 0.5
            if self.losses:
                wait = min(wait, max(0.0, (self.losses.next_due() or 0.0) - time.monotonic()))
            self.dispatch.tick()
            for (i, attempt), future in self.dispatch.wait(wait):
                self._complete(i, attempt, future)
            now = time.monotonic()
            if now - last_flush >= _FLUSH_INTERVAL:
                self.recorder.flush()
                last_flush = now
                if self.store.disk_full:
                    self.request_stop(self.store.disk_full)
            self._print_progress()
            self.page.update()
        self.recorder.flush()

    # ---- dispatch -------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        """Hand ready jobs to Parsl, best first (`ordering`), while fewer
        than ``in_flight_cap`` are in flight; a job whose concurrency limit
        is full waits for a holder to end.
        """
        ready = self.walk.ready
        cap = self.in_flight_cap
        while ready and not self.stop_reason:
            if cap is not None and len(self.in_flight) >= cap:
                return
            i = ready.popleft()
            if self.rows[i].kind != JobKind.PAYLOAD:
                self.recorder.state(i, JobState.SUCCEEDED, self.attempt[i])
                self.walk.finish(i, JobState.SUCCEEDED)
                continue
            if self.gate.acquire(i):
                self._submit(i)

    def _submit(self, i: int) -> None:
        """Hand the next attempt of a job to Parsl."""
        row = self.rows[i]
        tries = self.session_tries[i]
        attempt = self.attempt[i] + 1
        try:
            nxt = self.policy.next_attempt(i, attempt, tries, self.dispatch.labels)
        except ExecutorChoiceError as exc:
            self.attempt[i] = attempt
            self.recorder.rejected(i, attempt, str(exc), time.time())
            self._release_limits(i)
            self.walk.finish(i, JobState.FAILED)
            return
        label = route(row, self.dispatch.labels) or nxt.label
        self.attempt[i] = attempt
        self.session_tries[i] = tries + 1
        stdout, stderr = log_paths(self.submit_path, row.log_dir, row.name, attempt)
        env = self.envs[row.env_id] if row.env_id is not None else ""
        command = row.command or ""
        if "<WMS:" in command or "<WMS:" in env:  # attemptNum counts from 0, as HTCondor's NumJobStarts
            command, env = fill_wms(command, attempt - 1), fill_wms(env, attempt - 1)
        token = f"{self.run_id}/{i}/{attempt}"
        pid_file = os.path.join(self.running_dir, f"{i}.{attempt}")
        walltime = _walltime_seconds(row.request_walltime) if label in self.walltime_labels else None
        args = (token, self.prefix, env, command, stdout, stderr, pid_file)
        kwargs: dict[str, Any] = {"time_limit": walltime, "shell": self.shell}
        spec = self.site.resource_specification(nxt.job, label)
        self.in_flight[i] = _InFlight(label, attempt, nxt.memory)
        self.state[i] = JobState.PENDING
        self.recorder.submitted(i, attempt, time.time())
        future = self.dispatch.submit(
            (i, attempt),
            label,
            args,
            kwargs,
            self.walk.parent_futures(i),
            spec,
            walltime=_walltime_seconds(row.request_walltime),
        )
        self.walk.keep_future(i, future)

    # ---- completion -----------------------------------------------------------

    def _complete(self, i: int, attempt: int, future: Any) -> None:
        """Record an ended attempt and decide what follows."""
        flight = self.in_flight.get(i)
        if flight is None or flight.attempt != attempt:
            return
        del self.in_flight[i]
        self._release_limits(i)
        error = future.exception()
        if isinstance(error, NotStartedError):
            self._never_started(i, attempt, error)
            return
        cause = infrastructure_cause(error)
        if error is not None and cause is not None:
            self._lost(i, attempt, flight, error, cause)
            return
        if error is not None:
            result = self.recorder.lost(i, attempt, error, time.time())
        else:
            result = AttemptResult._make(future.result())
        status = abort_status(self.rows[i], result.exit_code, result.signal)
        if status is not None:
            self._aborted_by(i, attempt, result, flight, status)
            return
        if result.exit_code == 0:
            self.recorder.ended(i, attempt, JobState.SUCCEEDED, result, flight.memory, flight.label)
            self.walk.finish(i, JobState.SUCCEEDED)
            return
        retry = self.policy.retry(
            i, result.exit_code, result.timed_out, self.session_tries[i], bool(self.stop_reason)
        )
        if retry:
            self.recorder.ended(
                i, attempt, JobState.FAILED, result, flight.memory, flight.label, job_state=JobState.READY
            )
            self.state[i] = JobState.READY
            self.walk.ready.append(i)
            return
        self.recorder.ended(i, attempt, JobState.FAILED, result, flight.memory, flight.label)
        self.walk.finish(i, JobState.FAILED)

    def _lost(self, i: int, attempt: int, flight: _InFlight, error: BaseException, cause: str) -> None:
        """The infrastructure lost an attempt (`losses`): record it as such;
        the job runs again, once the lost attempt's processes are gone,
        unless its ``infrastructureRetries`` are used up or the run stops.
        The attempt is no try of the job's: its ``numberOfRetries`` and
        memory stay as they were.
        """
        self.session_tries[i] -= 1
        result = self.recorder.lost(i, attempt, error, time.time(), cause)
        try:  # a lost worker did not remove its running-attempt file
            os.unlink(os.path.join(self.running_dir, f"{i}.{attempt}"))
        except OSError:
            pass
        if stops_run(error):
            self.request_stop(f"executor {flight.label} can run nothing more: {cause}")
        again = self.losses.lost(i)
        if self.stop_reason or again:
            # Stopping: the job is recorded DELETED with the others, and a restart runs it.
            self.recorder.ended(
                i, attempt, JobState.FAILED, result, flight.memory, flight.label, JobState.READY, cause
            )
            self.state[i] = JobState.READY
            if not self.stop_reason:
                self.losses.hold(i, time.monotonic() + self.dispatch.settle_seconds(flight.label))
            return
        self.recorder.note(
            i, attempt, f"infrastructureRetries ({self.losses.budget}) used up: the job failed"
        )
        self.recorder.ended(i, attempt, JobState.FAILED, result, flight.memory, flight.label, lost=cause)
        self.walk.finish(i, JobState.FAILED)

    def _never_started(self, i: int, attempt: int, error: NotStartedError) -> None:
        """An attempt that never started is no attempt: its number is given
        back. The pool only stops starting jobs when the run stops or the pool
        was lost; the run stops then (the job is recorded DELETED, and a
        restart runs it).
        """
        self.attempt[i] = attempt - 1
        self.session_tries[i] -= 1
        if self.stop_reason:
            return
        stderr = self.recorder.stderr_of(i, attempt)
        if os.path.exists(stderr):
            # It did start (a pool that was lost cannot always tell): settle it from its log.
            self.attempt[i] = attempt
            self.session_tries[i] += 1
            if exit_status_from_log(stderr) == 0:
                self.recorder.ended(
                    i, attempt, JobState.SUCCEEDED, AttemptResult(0, None, None, None, None, False)
                )
                self.walk.finish(i, JobState.SUCCEEDED)
            elif (cause := infrastructure_cause(error)) is not None:
                # Started, then lost with its pool: an infrastructure loss (the job is recorded DELETED).
                result = self.recorder.lost(i, attempt, error, time.time(), cause)
                self.recorder.ended(i, attempt, JobState.DELETED, result, lost=cause)
        self.request_stop(str(error))

    def _release_limits(self, i: int) -> None:
        """A job gave back its concurrency limits: the jobs waiting for them are ready again."""
        for waiting in self.gate.release(i):
            self.walk.ready.append(waiting)

    def _aborted_by(
        self, i: int, attempt: int, result: AttemptResult, flight: _InFlight, status: int
    ) -> None:
        """Job ``i`` exited with its ``abortOnValue``: record it and stop the run."""
        state = JobState.SUCCEEDED if result.exit_code == 0 else JobState.FAILED
        self.recorder.ended(i, attempt, state, result, flight.memory, flight.label)
        self.state[i] = state
        row = self.rows[i]
        reason = (
            f"job '{row.name}' (label '{row.label}') exited with {result.exit_code}, its abortOnValue: the run "
            f"was aborted with status {status}; jobs not ended were stopped and recorded DELETED"
        )
        self.abort = (status, reason)
        self.request_stop(reason)

    def _abort_to_final_phase(self) -> None:
        """After an abort in the main phase, stop every job and run the final
        job, as DAGMan runs its FINAL node after an ``ABORT-DAG-ON``.
        """
        self._stop_everything()
        finals = [i for i, row in enumerate(self.rows) if row.final]
        if not finals or self.stop_reason != (self.abort[1] if self.abort else None):
            return
        for i in finals:
            self.state[i] = JobState.UNREADY
            self.recorder.state(i, JobState.UNREADY, self.attempt[i])
        self.recorder.flush()
        self.stop_reason = None
        self.dispatch = Dispatch(self.site)
        self.dispatch.start()

    def _pruned(self, i: int) -> None:
        self.recorder.state(i, JobState.PRUNED, self.attempt[i])

    def _join_added_jobs(self) -> bool:
        """Load the jobs added to the store since this session loaded it (a
        batch submission's payload, see `batch`); whether there were any.

        Called between main phases, when nothing is in flight: the walk and
        the per-job tables are rebuilt over all jobs, keeping the states.
        """
        rows = self.store.jobs(start=len(self.rows))
        if not rows:
            return False
        added = len(rows)
        self.rows.extend(rows)  # the recorder shares this list
        self.envs = self.store.envs()
        old_state = self.state
        self.walk = GraphWalk(
            self.rows, self.store.edges(), self._pruned, dispatch_order(self.site.config) == "fifo"
        )
        self.walk.state[: len(old_state)] = old_state
        self.state = self.walk.state
        self.gate = ConcurrencyGate(self.rows, concurrency_limits(self.site.config, self.site.compute_site))
        self.attempt.extend([0] * added)
        self.session_tries.extend([0] * added)
        self.policy = RetryPolicy(self.rows, self.site, self.submit_path)
        _LOG.info("%d jobs joined the run", added)
        return True

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
        """Stop every attempt, record how those in flight ended, mark the
        rest DELETED.

        Parsl is shut down first: its executors start nothing more and end
        the futures they can (the local pool fails its queued attempts as
        never started and stops its running ones). Whatever of this run
        still runs on this host is then killed by its token, and an attempt
        whose future did not end is settled from its log.
        """
        self.dispatch.shutdown()
        kill_running_jobs(self.running_dir, self.run_id)
        for (i, attempt), future in self.dispatch.wait(0):
            self._stopped(i, attempt, future)
        for i, flight in list(self.in_flight.items()):
            self._stopped(i, flight.attempt, None)
        for i, s in enumerate(self.state):
            if s not in ENDED:
                self.state[i] = JobState.DELETED
                self.recorder.state(i, JobState.DELETED, self.attempt[i])
        self.in_flight.clear()
        self.recorder.flush()

    def _stopped(self, i: int, attempt: int, future: Any) -> None:
        """Record an attempt that ended while the run stops (``future``:
        `None` if it did not end).
        """
        flight = self.in_flight.get(i)
        if flight is None or flight.attempt != attempt:
            return
        del self.in_flight[i]
        error = None if future is None else future.exception()
        if isinstance(error, NotStartedError):
            self.attempt[i] = attempt - 1  # never started: no attempt to record
            return
        if future is not None and error is None:
            result = AttemptResult._make(future.result())
        else:
            # The executor lost it or was shut down first: if it ran to its end, its shell logged how.
            logged = exit_status_from_log(self.recorder.stderr_of(i, attempt))
            result = AttemptResult(-1 if logged is None else logged, None, None, time.time(), None, False)
        state = JobState.SUCCEEDED if result.exit_code == 0 else JobState.DELETED
        self.recorder.ended(i, attempt, state, result, flight.memory, flight.label)
        self.state[i] = state

    # ---- output ---------------------------------------------------------------

    def _print_progress(self, force: bool = False) -> None:
        if not self.progress_interval and not force:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_interval:
            return
        self._last_progress = now
        counts = self._counts()
        running = counts.get(JobState.PENDING, 0) + counts.get(JobState.RUNNING, 0)
        print(
            f"bps-parsl {self.run_id}: {counts.get(JobState.SUCCEEDED, 0)} succeeded, {running} running, "
            f"{counts.get(JobState.FAILED, 0)} failed, {counts.get(JobState.PRUNED, 0)} pruned, "
            f"{counts.get(JobState.DELETED, 0)} deleted, of {len(self.state)}",
            file=sys.stdout,
            flush=True,
        )
        if self.progress_by_label:
            by_label: dict[str, dict[int, int]] = {}
            for row, s in zip(self.rows, self.state, strict=True):
                if row.kind == JobKind.PAYLOAD:
                    label_counts = by_label.setdefault(row.label, {})
                    label_counts[s] = label_counts.get(s, 0) + 1
            for label, label_counts in by_label.items():
                in_flight = label_counts.get(JobState.PENDING, 0) + label_counts.get(JobState.RUNNING, 0)
                print(
                    f"  {label}: {label_counts.get(JobState.SUCCEEDED, 0)} succeeded, {in_flight} running, "
                    f"{label_counts.get(JobState.FAILED, 0)} failed, "
                    f"{label_counts.get(JobState.PRUNED, 0)} pruned, of {sum(label_counts.values())}",
                    flush=True,
                )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _walltime_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value) * 60.0
    except ValueError:
        from .configuration import parse_walltime

        return float(parse_walltime(value, "requestWalltime"))
