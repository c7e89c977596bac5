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

"""`Driver`, the loop of one driver session (doc/design.md)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lsst_ctrl_bps_parsl_worker.job import NotStartedError, worker_notes

from ..configuration import RunSettings
from ..control.claim import ClaimFence
from ..control.running import forget_journals, kill_running_jobs, spawners_elsewhere
from ..oneline import one_line, shown
from ..prepare.jobattrs import concurrency_limits
from ..records import AttemptResult, JobKind, JobRow, JobState
from ..report.page import PageWriter
from ..site import SiteConfig
from ..sites.losses import LostAttempts, infrastructure_cause
from ..store.recorder import Recorder, log_paths
from ..store.runstore import RunStore, RunTakenOverError, StateStoreError, StoreLostError
from ..store.storefile import damaged
from .dispatch import Dispatch
from .scheduling import (
    ConcurrencyGate,
    ExecutorChoiceError,
    GraphWalk,
    RetryPolicy,
    abort_status,
    walltime_seconds,
)
from .stopping import InFlight, StopHandling, StopWatchdog

__all__ = ("Driver", "RunOutcome")

_LOG = logging.getLogger(__name__)
_HOST = socket.gethostname()
_NO_CGROUP = (
    "no cgroup per job: processes a job leaves behind are ended through its process group and its "
    "BPS_PARSL_ATTEMPT token; one that drops the token and leaves the group is ended only when the "
    "local pool ends, and not at all on Parsl workers (doc/reliability.md, J3)"
)
_IN_FLIGHT_MARGIN = 4
"""Jobs handed to an executor beyond its slots, so a slot that frees up is filled at once."""
_FLUSH_INTERVAL = 0.05
"""Seconds between commits of the state: that window's transitions are committed together."""


_SHOWN = (
    (JobState.SUCCEEDED, "succeeded"),
    (JobState.RUNNING, "running"),
    (JobState.PENDING, "pending"),
    (JobState.FAILED, "failed"),
    (JobState.PRUNED, "pruned"),
    (JobState.DELETED, "deleted"),
)
"""The states a progress line counts (a label's line: all but the last)."""


def _counted(counts: Counter[int], states: Sequence[tuple[JobState, str]]) -> str:
    return ", ".join(f"{counts[state]} {name}" for state, name in states) + f", of {counts.total()}"


class _ProgressLines:
    """Print a run's job counts (as ``bps report``) every ``progress_interval`` s (0: none, forced ones too)."""

    def __init__(self, run_id: str, settings: RunSettings):
        self.run_id = run_id
        self.interval = settings.progress_interval
        self.by_label = settings.progress_by_label
        self.last = time.monotonic()

    def print(self, rows: Sequence[JobRow], states: Sequence[int], force: bool = False) -> None:
        """Print the counts once per interval, or now if ``force``; with ``by_label``, a line per label."""
        now = time.monotonic()
        if not self.interval or (not force and now - self.last < self.interval):
            return
        self.last = now
        print(f"bps-parsl {self.run_id}: {_counted(Counter(states), _SHOWN)}", flush=True)
        if self.by_label:
            by_label: dict[str, Counter[int]] = {}
            for row, state in zip(rows, states, strict=True):
                if row.kind == JobKind.PAYLOAD:
                    by_label.setdefault(row.label, Counter())[state] += 1
            for label, counts in by_label.items():
                print(f"  {shown(label)}: {_counted(counts, _SHOWN[:-1])}", flush=True)


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


class Driver(StopHandling):
    """Run the jobs of one submit directory until all have ended.

    Parameters
    ----------
    store, site, kind : `RunStore`, `SiteConfig`, `str`
        The run's state database, open for writing; site that builds the executors; ``submit`` or ``restart``.
    settings, fence : `RunSettings`, `ClaimFence`, optional
        The run's keys (default: the site configuration's); the claim held, checked before each dispatch.
    """

    def __init__(
        self,
        store: RunStore,
        site: SiteConfig,
        kind: str = "submit",
        settings: RunSettings | None = None,
        fence: ClaimFence | None = None,
    ):
        self.settings = settings if settings is not None else RunSettings.read(site.config)
        self.store = store
        self.fence = fence
        self.site = site
        self.kind = kind
        meta = store.meta()
        self.submit_path: str = meta["submit_path"]
        self.run_id: str = meta["run_id"]
        site.submit_path = self.submit_path
        self.running_dir = os.path.join(self.submit_path, "parsl", "running")
        self.stop_reason: str | None = None
        self.rows = store.jobs()
        self.recorder = Recorder(store, self.rows, self.submit_path)
        self.attempt: list[int] = []
        self.session_tries: list[int] = []
        self._build_tables()
        self.in_flight_cap: int | None = None
        self.draining = False
        """Whether the run drains (its disk is full, `_drained`)."""
        self.abort: tuple[int, str] | None = None
        """Status and reason of a run a job's ``abortOnValue`` aborted."""
        statuses = store.statuses()
        if len(statuses) != len(self.rows):
            raise damaged(store.path, f"{len(self.rows)} jobs but {len(statuses)} job statuses")
        for status in statuses:
            self.state[status.job] = status.state
            self.attempt[status.job] = status.attempt
        self.losses = LostAttempts(site.settings.infrastructure_retries)
        self.dispatch = Dispatch(site)
        self.in_flight: dict[int, InFlight] = {}
        self.page = PageWriter(self.submit_path)
        self.progress = _ProgressLines(self.run_id, self.settings)
        self.watchdog = StopWatchdog(self.run_id, self.submit_path)

    def _build_tables(self) -> None:
        """Build the walk and the per-job tables over ``self.rows``, keeping known states."""
        known = len(self.attempt)
        added = len(self.rows) - known
        old_state = self.walk.state if known else []
        self.envs = self.store.envs()
        self.walk = GraphWalk(
            self.rows, self.store.edges(), self._pruned, self.settings.dispatch_order == "fifo"
        )
        self.walk.state[:known] = old_state
        self.state = self.walk.state
        self.gate = ConcurrencyGate(self.rows, concurrency_limits(self.site.config, self.site.compute_site))
        self.attempt.extend([0] * added)
        self.session_tries.extend([0] * added)
        self.policy = RetryPolicy(self.rows, self.site, self.submit_path)

    def _reset_for_run(self) -> None:
        """Keep succeeded jobs, run the others, after settling what a dead driver left."""
        if self.store.sessions():
            stale = spawners_elsewhere(self.running_dir, self.settings.driver_stale_after, self.recorder)
            kill_running_jobs(self.running_dir, self.run_id)
            self.recorder.settle_leftovers(self.state, self.attempt)
            forget_journals(stale, self.recorder)
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
                    self.store.set_state(i, JobState.UNREADY, self.attempt[i])
                self.state[i] = JobState.UNREADY
        self.store.flush()

    def run(self) -> RunOutcome:
        """Run until every job ended or a stop was requested (one that cannot go on: ``cancelled``).

        Returns
        -------
        outcome : `RunOutcome`
            Jobs per state and, for a run that stopped, why.
        """
        self._reset_for_run()
        if self.kind == "restart":  # said once the restart was not refused (jobs running elsewhere)
            print(f"bps-parsl: restarting run {self.run_id} in {self.submit_path}", flush=True)
        os.makedirs(self.running_dir, exist_ok=True)
        self.store.begin_session(self.kind, os.getpid(), _HOST)
        _LOG.info(_NO_CGROUP)
        self._install_signals()
        try:
            self.prefix = self.site.get_command_prefix()
            self.shell = self.site.settings.job_shell
            self.warm = self.site.settings.warm_start
            if monitoring_db := self.site.monitoring_filename():
                self.store.set_meta("monitoring_db", monitoring_db)
            self.dispatch.start()
        except BaseException as exc:
            self._restore_signals()
            self._quietly(lambda: self.store.end_session("error"))
            if not isinstance(exc, Exception):
                raise
            site = type(self.site).__name__
            reason = f"Parsl could not start the executors of site {site}: {one_line(exc)}"
            return RunOutcome(counts=dict(Counter(self.state)), cancelled=True, reason=reason)
        # A job's walltime is enforced by `run_job` where jobs run on this
        # machine; batch executors have their own limits.
        slots = {label: self.site.capacity(label) for label in self.dispatch.labels}
        self.walltime_labels = {label for label, capacity in slots.items() if capacity is not None}
        if len(self.walltime_labels) == len(slots):  # no limit if an executor's slots are not known (batch)
            self.in_flight_cap = sum(c.cores + _IN_FLIGHT_MARGIN for c in slots.values() if c) or None
        store_failed = taken_over = False
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
        except RunTakenOverError as exc:
            taken_over = True
            lost = self.fence is not None and not self.fence.holds()
            self.stop_reason = self.fence.lost if lost and self.fence is not None else str(exc)
            self._stop_own_attempts()
        except StateStoreError as exc:
            # The store cannot take more, or is no longer this run's: stop
            # every job and say why in one line.
            store_failed = True
            if isinstance(exc, StoreLostError) or not self.stop_reason:
                self.stop_reason = str(exc)
            self._quietly(self._stop_everything)
        except BaseException as exc:
            self.stop_reason = self.stop_reason or f"driver error: {exc!r}"
            self._quietly(self._stop_everything)
            self._quietly(lambda: self.store.end_session("error"))
            raise
        finally:
            self._restore_signals()
            self.dispatch.shutdown()
        outcome = RunOutcome(dict(Counter(self.state)), bool(self.stop_reason), self.stop_reason or "")
        if self.abort is not None and not taken_over:
            outcome.cancelled = True
            outcome.abort_status, outcome.reason = self.abort
        if taken_over:
            self.watchdog.ended()
            return outcome  # the run is another driver's now: nothing more is written
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
        self.watchdog.ended()
        self.progress.print(self.rows, self.state, force=True)
        self.page.update(final=True)
        return outcome

    def _run_phase(self, final: bool) -> None:
        walk = self.walk
        walk.start_phase(final)
        self.progress.last = time.monotonic()
        last_flush = time.monotonic()
        while (walk.ready or self.in_flight or self.losses) and not self.stop_reason:
            if self.store.disk_full and self._drained():
                break
            for i in self.losses.due(time.monotonic()):
                walk.ready.append(i)
            self._dispatch_ready()
            if not self.in_flight and not walk.ready and not self.losses:
                break
            next_flush = max(last_flush + _FLUSH_INTERVAL, self.store.retry_at)
            wait = max(0.0, next_flush - time.monotonic()) if self.store.dirty else 0.5
            if self.losses:
                wait = min(wait, max(0.0, (self.losses.next_due() or 0.0) - time.monotonic()))
            self.dispatch.tick()
            for (i, attempt), future in self.dispatch.wait(wait):
                self._complete(i, attempt, future)
            now = time.monotonic()
            if now - last_flush >= _FLUSH_INTERVAL:
                # A reader's lock or a full disk leaves the changes queued: the run goes on.
                self.store.flush(wait=False)
                last_flush = now
            self.progress.print(self.rows, self.state)
            self.page.update()
        self.store.flush()

    def _dispatch_ready(self) -> None:
        """Hand ready jobs to Parsl, best first, within ``in_flight_cap`` and concurrency limits."""
        ready, cap = self.walk.ready, self.in_flight_cap
        while ready and not self.stop_reason and not self.store.disk_full:
            if cap is not None and len(self.in_flight) >= cap:
                return
            i = ready.popleft()
            if self.rows[i].kind != JobKind.PAYLOAD:
                self.store.set_state(i, JobState.SUCCEEDED, self.attempt[i])
                self.walk.finish(i, JobState.SUCCEEDED)
                continue
            if self.gate.acquire(i):
                self._submit(i)

    def _submit(self, i: int) -> None:
        """Hand the next attempt of a job to Parsl (if this driver still holds the run)."""
        self._check_fence()
        row = self.rows[i]
        attempt = self.attempt[i] + 1
        try:
            pjob, label = self.policy.next_attempt(i, attempt, self.session_tries[i], self.dispatch.labels)
        except ExecutorChoiceError as exc:
            self.attempt[i] = attempt
            self.recorder.rejected(i, attempt, str(exc), time.time())
            self._release_limits(i)
            self.walk.finish(i, JobState.FAILED)
            return
        self.attempt[i] = attempt
        self.session_tries[i] += 1
        stdout, stderr = log_paths(self.submit_path, row.log_dir, row.name, attempt)
        env = self.envs[row.env_id] if row.env_id is not None else ""
        command = row.command or ""
        if "<WMS:" in command or "<WMS:" in env:  # attemptNum counts from 0, as HTCondor's NumJobStarts
            number = str(attempt - 1)
            command = command.replace("<WMS:attemptNum>", number)
            env = env.replace("<WMS:attemptNum>", number)
        token = f"{self.run_id}/{i}/{attempt}"
        pid_file = os.path.join(self.running_dir, f"{i}.{attempt}")
        walltime = walltime_seconds(row.request_walltime) if label in self.walltime_labels else None
        args = (token, self.prefix, env, command, stdout, stderr, pid_file)
        kwargs: dict[str, Any] = {"time_limit": walltime, "shell": self.shell, "warm": self.warm}
        if spec := self.site.resource_specification(pjob, label):
            kwargs["parsl_resource_specification"] = spec
        self.in_flight[i] = InFlight(label, attempt, pjob.request_memory)
        self.state[i] = JobState.PENDING
        self.store.set_state(i, JobState.PENDING, attempt, start=time.time())
        future = self.dispatch.submit(
            (i, attempt),
            label,
            args,
            kwargs,
            self.walk.parent_futures(i),
            walltime_seconds(row.request_walltime),
        )
        self.walk.keep_future(i, future)

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
        if error is not None and (cause := infrastructure_cause(error)) is not None:
            self._lost(i, attempt, flight, error, cause)
            return
        if error is not None:
            result = self.recorder.lost(i, attempt, error, time.time())
        else:
            raw = future.result()
            for note in worker_notes(raw):  # warm starts on a Parsl worker (lsst_ctrl_bps_parsl_worker.warm)
                _LOG.info("Parsl worker: %s", note)
            result = AttemptResult._make(raw)
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

    def _release_limits(self, i: int) -> None:
        """A job gave back its concurrency limits: the jobs waiting for them are ready again."""
        for waiting in self.gate.release(i):
            self.walk.ready.append(waiting)

    def _aborted_by(self, i: int, attempt: int, result: AttemptResult, flight: InFlight, status: int) -> None:
        """Job ``i`` exited with its ``abortOnValue``: record it and stop the run."""
        state = JobState.SUCCEEDED if result.exit_code == 0 else JobState.FAILED
        self.recorder.ended(i, attempt, state, result, flight.memory, flight.label)
        self.state[i] = state
        row = self.rows[i]
        reason = (
            f"job '{shown(row.name)}' (label '{shown(row.label)}') exited with {result.exit_code}, its abortOnValue: the run "
            f"was aborted with status {status}; jobs not ended were stopped and recorded DELETED"
        )
        self.abort = (status, reason)
        if not self.stop_reason:
            self.stop_reason = reason  # not request_stop: the final job still runs, unbounded

    def _pruned(self, i: int) -> None:
        self.store.set_state(i, JobState.PRUNED, self.attempt[i])

    def _join_added_jobs(self) -> bool:
        """Load the jobs a batch payload added to the store; whether there were any."""
        rows = self.store.jobs(start=len(self.rows))
        if not rows:
            return False
        self.rows.extend(rows)  # the recorder shares this list
        self._build_tables()
        _LOG.info("%d jobs joined the run", len(rows))
        return True
