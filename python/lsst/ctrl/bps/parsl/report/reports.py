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
"""What ``bps report``, ``bps status`` and ``bps cancel`` see: the runs (one by
id, or from the run index) and their reports, read from their state databases.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import pwd
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from typing import TypeVar

from lsst.ctrl.bps import WmsJobReport, WmsRunReport, WmsSpecificInfo, WmsStates

from ..control.liveness import driver_alive
from ..control.running import running_job_ids
from ..oneline import shown
from ..records import ENDED, JobState
from ..store.recorder import log_paths
from ..store.runindex import INDEX_SUBDIR, list_runs, resolve_run
from ..store.runstore import RunStore, StateStoreError, db_path, store_error
from ..store.schema import JobReports, failed_exit_codes, job_reports, label_counts, pending_labels
from ..store.storefile import READ_ERRORS, damaged

__all__ = (
    "cancellable_runs",
    "listed_reports",
    "read_store",
    "readable_run",
    "run_counts",
    "run_report",
    "run_status",
)

_T = TypeVar("_T")
_IN_FLIGHT = frozenset({JobState.PENDING, JobState.RUNNING, JobState.READY})
_STATE_VALUES = frozenset(int(state) for state in JobState)
_HAS_SITE = "site" in {f.name for f in dataclasses.fields(WmsRunReport)}
"""`WmsRunReport.site` exists from lsst-ctrl-bps 30.2026.4300 on."""
_SUMMARY_ESCAPES = str.maketrans({";": "\\x3b", ":": "\\x3a"})
"""A label in a run summary, which ctrl_bps splits at ';' and ':'."""


def read_store(submit_path: str, read: Callable[[RunStore], _T]) -> _T:
    """``read(store)`` in one read transaction: a consistent snapshot while the driver writes, from any host.

    Parameters
    ----------
    submit_path, read : `str`, `~collections.abc.Callable` [[`RunStore`], ``_T``]
        Submit directory; reads the store (called again on a retry).

    Returns
    -------
    value : ``_T``
        What ``read`` returned.
    """
    with closing(RunStore(db_path(submit_path), readonly=True)) as store:
        try:
            return store.read_snapshot(lambda: read(store))
        except READ_ERRORS as exc:
            raise store_error(store.path, exc) from None


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


def _run_state(store: RunStore, submit_path: str, this_driver: bool = False) -> tuple[WmsStates, str]:
    """The run's state and why, in one line (``this_driver``: the caller is its driver, holding its lock)."""
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


def run_counts(
    store: RunStore, submit_path: str, this_driver: bool = False
) -> tuple[WmsStates, str, set[int], dict[str, Counter]]:
    """The run's state and why, its jobs said to run now, and its payload jobs
    by label (in the order of their first jobs) and reported state.

    Parameters
    ----------
    store, submit_path : `RunStore`, `str`
        The run's store, in a read transaction (`read_store`); submit directory.
    this_driver : `bool`, optional
        The caller is the run's driver (holds its lock): the state follows its own session.

    Returns
    -------
    state, message, running, counts : `tuple`
        The run's `lsst.ctrl.bps.WmsStates` and why, in one line; ids of the jobs said to run
        (none unless the run is running); jobs by label, then by state.
    """
    state, message = _run_state(store, submit_path, this_driver)
    alive = state == WmsStates.RUNNING
    running = running_job_ids(os.path.join(submit_path, "parsl", "running")) if alive else set()
    # The per-label counts the store keeps (`summary`), not the jobs.
    labels, stored = label_counts(store.conn)
    _check_counts(store, labels, stored)
    counts: dict[str, Counter] = {label: Counter() for label, _ in labels}
    for label, states in stored.items():
        for value, n in states.items():
            counts[label][_job_state(value, -1, alive, set())] += n
    for label in pending_labels(store.conn, running):  # PENDING with an attempt said to run now
        counts[label][WmsStates.PENDING] -= 1
        counts[label][WmsStates.RUNNING] += 1
    return state, message, running, counts


def run_report(submit_path: str, detailed: bool, return_exit_codes: bool) -> WmsRunReport:
    """Build the report of one run.

    Parameters
    ----------
    submit_path, detailed, return_exit_codes : `str`, `bool`, `bool`
        Submit directory; include one `WmsJobReport` per job; include non-zero exit codes per label.

    Returns
    -------
    report : `lsst.ctrl.bps.WmsRunReport`
        The run's report.
    """

    def snapshot(store: RunStore) -> tuple:
        return (
            store.meta(),
            *run_counts(store, submit_path),
            failed_exit_codes(store.conn) if return_exit_codes else [],
            _infrastructure_losses(store),
            _could_not_start(store, submit_path),
        )

    meta, state, message, running, by_label, codes, losses, unstarted = read_store(submit_path, snapshot)
    alive = state == WmsStates.RUNNING
    # Labels as shown (`_text`); two long labels shown alike add up.
    shown_states: dict[str, Counter] = {}
    exit_codes: dict[str, list[int]] = {}
    for label, states in by_label.items():
        shown_states.setdefault(_text(label), Counter()).update(states)
        exit_codes.setdefault(_text(label), [])
    totals = {label: sum(states.values()) for label, states in shown_states.items()}
    for label, code in codes:
        if code != -1 and label in by_label:  # -1: no exit status
            exit_codes[_text(label)].append(code)
    counts: Counter = sum(shown_states.values(), Counter())
    jobs = None
    if detailed:
        run_id, path = meta["run_id"], db_path(submit_path)

        def load() -> list[WmsJobReport]:
            def state_of(value: int, i: int) -> WmsStates:
                if value not in _STATE_VALUES:
                    raise damaged(path, f"job {i!r} has state {value!r}, which is no job state")
                return _job_state(value, i, alive, running)

            found = read_store(submit_path, lambda store: job_reports(store, run_id, state_of, WmsJobReport))
            # Jobs a batch joined since the counts were read may add to them, never take away.
            per_label = Counter(job.label for job in found)
            if any(per_label[label] < sum(states.values()) for label, states in by_label.items()):
                raise damaged(path, f"{len(found)} jobs read but {sum(totals.values())} counted by label")
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
    if unstarted:
        info.add_message(
            "Jobs that could not be started: {unstarted} attempts (exit code 126 or 127); last: job "
            "'{unstarted_job}': {unstarted_reason}",
            unstarted=unstarted[0],
            unstarted_job=_text(unstarted[1], 200),
            unstarted_reason=_text(unstarted[2], 1000),
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
        run_summary=";".join(f"{label.translate(_SUMMARY_ESCAPES)}:{n}" for label, n in totals.items()),
        state=state,
        jobs=jobs,
        total_number_jobs=sum(totals.values()),
        job_state_counts={s: counts.get(s, 0) for s in WmsStates},
        job_summary={label: {s: c.get(s, 0) for s in WmsStates} for label, c in shown_states.items()},
        exit_code_summary=exit_codes if return_exit_codes else None,
        specific_info=info,
        **({"site": _text(meta.get("compute_site") or "")} if _HAS_SITE else {}),
    )


def _job_state(value: int, job_id: int, alive: bool, running: set[int]) -> WmsStates:
    """A job's reported state: in flight with no live driver, UNKNOWN; PENDING but ``running``, RUNNING."""
    if value in _IN_FLIGHT and not alive:
        return WmsStates.UNKNOWN
    if value == JobState.PENDING and job_id in running:
        return WmsStates.RUNNING
    return WmsStates(value)


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
    last_job, last_status = store.conn.execute(
        "SELECT (SELECT max(id) FROM jobs), (SELECT max(job) FROM status)"
    ).fetchone()
    if last_job != last_status or not isinstance(last_job, int | None):
        raise damaged(
            store.path, f"the last job is {last_job!r} but the last status is of job {last_status!r}"
        )
    if sum(totals.values()) > (last_job + 1 if last_job is not None else 0):
        raise damaged(store.path, f"{sum(totals.values())} jobs counted but {last_job!r} is the last job id")


def _infrastructure_losses(store: RunStore) -> tuple[int, int, str] | None:
    """(attempts the infrastructure lost, their jobs, the last one's cause), or `None` if none."""
    try:
        count, jobs, last = store.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job), (SELECT lost FROM attempts WHERE lost IS NOT NULL "
            "ORDER BY end DESC LIMIT 1) FROM attempts WHERE lost IS NOT NULL"
        ).fetchone()
    except sqlite3.OperationalError:  # a store written before losses were recorded
        return None
    return (int(count), int(jobs), str(last)) if count else None


def _could_not_start(store: RunStore, submit_path: str) -> tuple[int, str, str] | None:
    """(count, last job, why: from its stderr log) of attempts that exited 126/127 unstarted, or `None`."""
    try:
        found = store.conn.execute(
            "SELECT COUNT(*) OVER (), jobs.name, jobs.log_dir, attempts.attempt FROM attempts "
            "JOIN jobs ON jobs.id = attempts.job WHERE start IS NULL AND lost IS NULL "
            "AND exit_code IN (126, 127) ORDER BY end DESC LIMIT 1"
        ).fetchone()
        if not found:
            return None
        count, name, log_dir, attempt = int(found[0]), str(found[1]), found[2], int(found[3])
        with open(log_paths(submit_path, log_dir, name, attempt)[1], "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - 4096))
            tail = stream.read().decode(errors="replace")
    except (sqlite3.OperationalError, TypeError, ValueError, OSError):
        return None
    _, marker, after = tail.rpartition("[bps-parsl] the job could not be started")
    reason = "".join(ch if ch.isprintable() else "?" for ch in after.split("\n", 1)[0].lstrip(": "))[:300]
    return (count, name, reason) if marker and reason else None


def listed_reports(user: str | None, hist: float, return_exit_codes: bool) -> tuple[list[WmsRunReport], str]:
    """Short reports of the runs ``bps report`` lists (active, or ended within ``hist`` days).

    Parameters
    ----------
    user : `str` or `None`
        Only this operator's runs (read from their run index if another user).
    hist, return_exit_codes : `float`, `bool`
        Days of history; include non-zero exit codes per label.

    Returns
    -------
    reports, message : `tuple`
        The reports and the problems, one per line.
    """
    runs, problems = _runs_of(user)
    reports = []
    since = time.time() - (hist or 0) * 86400
    for submit_path in runs:
        try:
            if not user and not _is_owner(submit_path):
                continue
            readable_run(submit_path)
            if driver_alive(submit_path) is None:
                sessions, created = read_store(
                    submit_path, lambda store: (store.sessions(), store.meta().get("created", 0.0))
                )
                if ((sessions[-1].end or sessions[-1].start) if sessions else created) < since:
                    continue  # ended before the history asked for
            report = run_report(submit_path, False, return_exit_codes)
        except (StateStoreError, OSError) as exc:
            problems.append(str(exc))
            continue
        if not user or report.operator == user:
            reports.append(report)
    return reports, "\n".join(problems)


def run_status(wms_workflow_id: str) -> tuple[WmsStates, str]:
    """The state of a run, without per-job work.

    Parameters
    ----------
    wms_workflow_id : `str`
        Submit directory or run id.

    Returns
    -------
    state, message : `tuple`
        The run's `WmsStates` (``UNKNOWN`` if unreadable) and a message.
    """
    try:
        submit_path = resolve_run(wms_workflow_id)
        readable_run(submit_path)
        state, message = read_store(submit_path, lambda store: _run_state(store, submit_path))
        return state, shown(message, 4000)
    except (StateStoreError, OSError) as exc:
        return WmsStates.UNKNOWN, str(exc)


def cancellable_runs(wms_id: str | None, user: str | None) -> list[str]:
    """Submit directories ``bps cancel`` can act on (a live driver or unfinished jobs).

    Parameters
    ----------
    wms_id, user : `str` or `None`
        A run's submit directory or id (none: this user's runs with a live driver); only this operator's.

    Returns
    -------
    ids : `list` [`str`]
        Submit directories.
    """
    if wms_id:
        try:
            submit_path = resolve_run(wms_id)
            readable_run(submit_path)  # another user's run: `cancel` says why it refuses
        except (StateStoreError, OSError):
            return []
        try:
            # A live driver, or a submitted run with unfinished jobs.
            cancellable = driver_alive(submit_path) is not None or read_store(
                submit_path,
                lambda store: (
                    store.sessions() != [] and any(row.state not in ENDED for row in store.statuses())
                ),
            )
            return [submit_path] if cancellable else []
        except (StateStoreError, OSError):
            return [submit_path]  # unreadable or damaged: `cancel` says so in one line
    ids = []
    for run_id, submit_path in list_runs():
        with suppress(StateStoreError, OSError):
            if (
                _is_owner(submit_path)
                and driver_alive(submit_path, run_id) is not None
                and (not user or read_store(submit_path, RunStore.meta).get("operator") == user)
            ):
                ids.append(submit_path)
    return ids


def _runs_of(user: str | None) -> tuple[list[str], list[str]]:
    """Submit directories in this user's index and ``user``'s (if readable); the problems met."""
    runs = [path for _, path in list_runs()]
    problems: list[str] = []
    if user and user != getpass.getuser():
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            return runs, [f"user '{user}' does not exist on this host: check --user"]
        other_index = Path(home) / INDEX_SUBDIR
        if not os.access(other_index, os.R_OK | os.X_OK):
            problems.append(
                f"{other_index}: the run index of user '{user}' is not readable by you: pass --id with the "
                "run's submit directory, or ask them to let you read it"
            )
        runs.extend(path for _, path in list_runs(other_index) if path not in runs)
    return runs, problems


def _is_owner(submit_path: str) -> bool:
    return os.stat(db_path(submit_path)).st_uid == os.getuid()
