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
"""Turn a run's state database into BPS run reports."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections import Counter
from typing import Any

from lsst.ctrl.bps import WmsJobReport, WmsRunReport, WmsSpecificInfo, WmsStates

from ..control.liveness import driver_alive
from ..control.running import running_job_ids
from ..oneline import shown
from ..records import JobState
from ..store.recorder import log_paths
from ..store.runstore import RunStore, StateStoreError, db_path, store_error
from ..store.schema import JobReports, failed_exit_codes, job_reports, label_counts, pending_labels
from ..store.storefile import READ_ERRORS, damaged

__all__ = ("readable_run", "run_report", "run_state")

_IN_FLIGHT = frozenset({JobState.PENDING, JobState.RUNNING, JobState.READY})
_STATE_VALUES = frozenset(int(state) for state in JobState)
_HAS_SITE = "site" in {f.name for f in dataclasses.fields(WmsRunReport)}
"""`WmsRunReport.site` exists from lsst-ctrl-bps 30.2026.4300 on."""
_SUMMARY_ESCAPES = str.maketrans({";": "\\x3b", ":": "\\x3a"})
"""A label in a run summary, which ctrl_bps splits at ';' and ':'."""


def readable_run(submit_path: str) -> None:
    """Raise `StateStoreError` in one line unless this user may read the run.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    """
    path = db_path(submit_path)
    if not os.access(submit_path, os.R_OK | os.X_OK) or (
        os.path.exists(path) and not os.access(path, os.R_OK)
    ):
        try:
            owner = f"uid {os.stat(submit_path).st_uid}"
        except OSError:
            owner = "another user"
        raise StateStoreError(
            f"{submit_path}: the run of {owner} is not readable by you: its owner may let you read it "
            f"(chmod -R go+rX {submit_path})"
        )


def run_state(store: RunStore, submit_path: str, this_driver: bool = False) -> tuple[WmsStates, str]:
    """State of a whole run and a one-line explanation.

    Parameters
    ----------
    store : `RunStore`
        The run's store.
    submit_path : `str`
        Submit directory.
    this_driver : `bool`, optional
        The caller is the run's driver (holds its lock): the state follows its own session.

    Returns
    -------
    state : `lsst.ctrl.bps.WmsStates`
        The run's state.
    message : `str`
        Why, in one line.
    """
    alive = None if this_driver else driver_alive(submit_path)
    if alive is not None:
        if alive.stopping:
            return WmsStates.RUNNING, f"driver {alive.describe()} is stopping: {alive.stopping}"
        return WmsStates.RUNNING, f"driver {alive.describe()} is running"
    sessions = store.sessions()
    if not sessions:
        return WmsStates.UNREADY, "prepared, never submitted"
    last = sessions[-1]
    if last.end is None and this_driver:
        return WmsStates.RUNNING, f"driver pid {last.pid} is running"
    if last.end is None and not os.access(os.path.join(submit_path, "parsl"), os.R_OK | os.X_OK):
        # Another user's run: the driver's heartbeat is private to its owner.
        return WmsStates.UNKNOWN, (
            f"the driver (pid {last.pid} on {last.host}) recorded no end; whether it still runs is "
            f"only readable by the run's owner ({os.path.join(submit_path, 'parsl')})"
        )
    if last.end is None:
        return WmsStates.FAILED, (
            f"the driver (pid {last.pid} on {last.host}) died without recording an end: "
            f"'bps restart --id {submit_path}' resumes the run"
        )
    state = {"succeeded": WmsStates.SUCCEEDED, "cancelled": WmsStates.DELETED}.get(
        last.outcome or "", WmsStates.FAILED
    )
    return state, f"{last.kind} ended: {last.outcome}"


def running_jobs(submit_path: str) -> set[int]:
    """Ids of the jobs of a run with an attempt said to run now.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    ids : `set` [`int`]
        Job ids.
    """
    return running_job_ids(os.path.join(submit_path, "parsl", "running"))


def job_state(value: int, job_id: int, alive: bool, running: set[int]) -> WmsStates:
    """A job's reported state (in flight with no live driver: UNKNOWN; PENDING but running: RUNNING).

    Parameters
    ----------
    value, job_id : `int`
        The job's stored state (a `JobState` value); job id.
    alive : `bool`
        Whether the run's driver is alive.
    running : `set` [`int`]
        Ids of the jobs with an attempt said to run (`running_jobs`).

    Returns
    -------
    state : `lsst.ctrl.bps.WmsStates`
        The state to report.
    """
    if value in _IN_FLIGHT and not alive:
        return WmsStates.UNKNOWN
    if value == JobState.PENDING and job_id in running:
        return WmsStates.RUNNING
    return WmsStates(value)


def run_report(submit_path: str, detailed: bool, return_exit_codes: bool) -> WmsRunReport:
    """Build the report of one run.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    detailed, return_exit_codes : `bool`
        Include one `WmsJobReport` per job; include non-zero exit codes per label.

    Returns
    -------
    report : `lsst.ctrl.bps.WmsRunReport`
        The run's report.
    """
    store = RunStore(db_path(submit_path), readonly=True)
    try:

        def snapshot() -> tuple:
            # The per-label counts the store keeps (`summary`), not the jobs.
            state, message = run_state(store, submit_path)
            running = running_jobs(submit_path) if state == WmsStates.RUNNING else set()
            labels, stored = label_counts(store.conn)
            _check_counts(store, labels, stored)
            return (
                store.meta(),
                state,
                message,
                running,
                labels,
                stored,
                pending_labels(store.conn, running),
                failed_exit_codes(store.conn) if return_exit_codes else [],
                _infrastructure_losses(store),
                _could_not_start(store),
            )

        # One read transaction: a consistent snapshot while the driver writes, from any host.
        try:
            meta, state, message, running, labels, stored, started, codes, losses, unstarted = (
                store.read_snapshot(snapshot)
            )
        except READ_ERRORS as exc:
            raise store_error(store.path, exc) from None
    finally:
        store.close()
    alive = state == WmsStates.RUNNING
    by_label: dict[str, Counter] = {label: Counter() for label, _ in labels}
    for label, states in stored.items():
        for value, n in states.items():
            by_label.setdefault(label, Counter())[job_state(value, -1, alive, set())] += n
    for label in started:  # PENDING with an attempt said to run now
        by_label[label][WmsStates.PENDING] -= 1
        by_label[label][WmsStates.RUNNING] += 1
    counts: Counter = Counter()
    for label_counts_ in by_label.values():
        counts.update(label_counts_)
    label_totals = dict(labels)
    exit_codes: dict[str, list[int]] = {}
    for label, code in codes:
        if code != -1:  # -1: no exit status
            exit_codes.setdefault(label, []).append(code)
    jobs = None
    if detailed:
        run_id = meta["run_id"]

        def load() -> list[WmsJobReport]:
            reader = RunStore(db_path(submit_path), readonly=True)

            def state_of(value: int, i: int) -> WmsStates:
                if value not in _STATE_VALUES:
                    raise damaged(reader.path, f"job {i!r} has state {value!r}, which is no job state")
                return job_state(value, i, alive, running)

            try:
                found = reader.read_snapshot(lambda: job_reports(reader, run_id, state_of, WmsJobReport))
            except READ_ERRORS as exc:
                raise store_error(reader.path, exc) from None
            finally:
                reader.close()
            # Jobs a batch joined since the counts were read may add to them, never take away.
            per_label = Counter(job.label for job in found)
            if any(per_label[label] < n for label, n in label_totals.items()):
                raise damaged(
                    reader.path, f"{len(found)} jobs read but {sum(label_totals.values())} counted by label"
                )
            for job in found:
                job.name, job.label = _text(job.name), _text(job.label)
            return found

        jobs = JobReports(loader=load)

    info = WmsSpecificInfo()
    info.add_message("Run state: {run_message}", run_message=_text(message, 4096))
    info.add_message("Job logs: {logs}", logs=_text(os.path.join(submit_path, "logs"), 4096))
    info.add_message(
        "Parsl log: {parsl_log}", parsl_log=_text(os.path.join(submit_path, "parsl", "parsl.log"), 4096)
    )
    if meta.get("monitoring_db"):
        info.add_message(
            "Parsl monitoring database: {monitoring_db}", monitoring_db=_text(meta["monitoring_db"], 4096)
        )
    reason = _start_failure_reason(submit_path, unstarted) if unstarted else None
    if unstarted and reason:
        info.add_message(
            "Jobs that could not be started: {unstarted} attempts (exit code 126 or 127); last: job "
            "'{unstarted_job}': {unstarted_reason}",
            unstarted=unstarted[0],
            unstarted_job=_text(unstarted[1], 200),
            unstarted_reason=_text(reason, 1000),
        )
    if losses:
        lost, lost_jobs, last = losses
        info.add_message(
            "Infrastructure losses: {lost} attempts of {lost_jobs} jobs lost with their worker, node or block "
            "(not counted as job retries); last: {last_loss}",
            lost=lost,
            lost_jobs=lost_jobs,
            last_loss=_text(last, 1000),
        )
    site: dict[str, Any] = {"site": _text(meta.get("compute_site") or "")} if _HAS_SITE else {}
    # Labels as shown (`_text`); two long labels shown alike add up.
    shown_totals: Counter = Counter()
    shown_states: dict[str, Counter] = {}
    shown_codes: dict[str, list[int]] = {}
    for label, n in label_totals.items():
        shown_totals[_text(label)] += n
        shown_codes.setdefault(_text(label), []).extend(exit_codes.get(label, []))
    for label, label_states in by_label.items():
        shown_states.setdefault(_text(label), Counter()).update(label_states)
    return WmsRunReport(
        wms_id=meta["run_id"],
        global_wms_id=meta["run_id"],
        path=_text(submit_path, 4096),
        label=_text(meta.get("payload") or ""),
        run=_text(meta.get("output_run") or meta["run_name"]),
        project=_text(meta.get("project") or ""),
        campaign=_text(meta.get("campaign") or ""),
        payload=_text(meta.get("payload") or ""),
        operator=_text(meta.get("operator") or ""),
        run_summary=";".join(f"{label.translate(_SUMMARY_ESCAPES)}:{n}" for label, n in shown_totals.items()),
        state=state,
        jobs=jobs,
        total_number_jobs=sum(label_totals.values()),
        job_state_counts={s: counts.get(s, 0) for s in WmsStates},
        job_summary={label: {s: c.get(s, 0) for s in WmsStates} for label, c in shown_states.items()},
        exit_code_summary=shown_codes if return_exit_codes else None,
        specific_info=info,
        **site,
    )


def _text(value: object, limit: int = 200) -> str:
    """A run's text as a report shows it: ASCII, what a terminal acts on escaped, cut at ``limit``."""
    return shown(value, limit, ascii=True)


def _check_counts(store: RunStore, labels: list[tuple[str, int]], stored: dict[str, dict[int, int]]) -> None:
    """Raise `StateStoreError` (damaged) unless the per-label counts read back are consistent."""
    totals: dict[str, int] = {}
    for label, jobs in labels:
        if not isinstance(label, str) or not isinstance(jobs, int) or jobs < 0:
            raise damaged(store.path, f"label {label!r} counts {jobs!r} jobs")
        totals[label] = jobs
    for label, states in stored.items():
        for state, count in states.items():
            if state not in _STATE_VALUES or not isinstance(count, int) or count < 0:
                raise damaged(store.path, f"label {label!r} counts {count!r} jobs in state {state!r}")
        if label not in totals or sum(states.values()) != totals[label]:
            raise damaged(
                store.path,
                f"label {label!r} has {totals.get(label, 0)} jobs but {sum(states.values())} by state",
            )
    (last_job,) = store.conn.execute("SELECT max(id) FROM jobs").fetchone()
    (last_status,) = store.conn.execute("SELECT max(job) FROM status").fetchone()
    if last_job != last_status or not isinstance(last_job, int | None):
        raise damaged(
            store.path, f"the last job is {last_job!r} but the last status is of job {last_status!r}"
        )
    if sum(totals.values()) > (last_job + 1 if last_job is not None else 0):
        raise damaged(store.path, f"{sum(totals.values())} jobs counted but {last_job!r} is the last job id")


def _infrastructure_losses(store: RunStore) -> tuple[int, int, str] | None:
    """(attempts the infrastructure lost, their jobs, the last one's cause), or `None` if none."""
    try:
        found = store.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job), MAX(end) FROM attempts WHERE lost IS NOT NULL"
        ).fetchone()
    except sqlite3.OperationalError:  # a store written before losses were recorded
        return None
    if not found or not found[0]:
        return None
    (last,) = store.conn.execute(
        "SELECT lost FROM attempts WHERE lost IS NOT NULL ORDER BY end DESC LIMIT 1"
    ).fetchone()
    return int(found[0]), int(found[1]), str(last)


def _could_not_start(store: RunStore) -> tuple[int, str, str | None, int] | None:
    """(count; last job, log directory, attempt) of attempts that exited 126/127 unstarted, or `None`."""
    try:
        (count,) = store.conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE start IS NULL AND lost IS NULL AND exit_code IN (126, 127)"
        ).fetchone()
        if not count:
            return None
        name, log_dir, attempt = store.conn.execute(
            "SELECT jobs.name, jobs.log_dir, attempts.attempt FROM attempts JOIN jobs ON jobs.id = attempts.job "
            "WHERE start IS NULL AND lost IS NULL AND exit_code IN (126, 127) ORDER BY end DESC LIMIT 1"
        ).fetchone()
    except (sqlite3.OperationalError, TypeError, ValueError):
        return None
    return int(count), str(name), log_dir, int(attempt)


def _start_failure_reason(submit_path: str, unstarted: tuple[int, str, str | None, int]) -> str | None:
    """Why the attempt `_could_not_start` names did not start, from its stderr log, or `None`."""
    _, name, log_dir, attempt = unstarted
    marker = "[bps-parsl] the job could not be started"
    try:
        with open(log_paths(submit_path, log_dir, name, attempt)[1], "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - 4096))
            tail = stream.read().decode(errors="replace")
    except OSError:
        return None
    pos = tail.rfind(marker)
    if pos < 0:
        return None
    line = tail[pos + len(marker) :].split("\n", 1)[0].lstrip(": ")
    return "".join(ch if ch.isprintable() else "?" for ch in line)[:300]


def last_activity(submit_path: str) -> tuple[float, bool]:
    """Time of the run's last session end or start, and whether a driver is alive.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.

    Returns
    -------
    when : `float`
        Seconds since the epoch (now, while a driver is alive).
    alive : `bool`
        Whether a driver is alive.
    """
    if driver_alive(submit_path) is not None:
        return time.time(), True
    store = RunStore(db_path(submit_path), readonly=True)
    try:
        sessions = store.sessions()
        meta_created = store.meta().get("created", 0.0)
    finally:
        store.close()
    if not sessions:
        return meta_created, False
    return (sessions[-1].end or sessions[-1].start), False
