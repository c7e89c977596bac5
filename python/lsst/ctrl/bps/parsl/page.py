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

"""A self-contained HTML page of a run: progress, timeline, failures, retries.

The page is one file with inline CSS, SVG and a little JavaScript: it needs
no server and no network. Everything shown comes from the run-state database
(read-only, one read transaction) and the tails of the failed jobs' stderr
logs; every name, label, host, path and log line is escaped. Environment
values and command lines are never shown.

``python -m lsst.ctrl.bps.parsl.page <submit dir or run id> [-o out.html]``
writes the page of any run (default ``<submit dir>/report.html``); the
driver rewrites ``<submit dir>/report.html`` as the run goes (`PageWriter`).
"""

from __future__ import annotations

import argparse
import heapq
import html
import logging
import os
import re
import signal
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from lsst.ctrl.bps import WmsStates

from .attemptlogs import log_paths
from .records import SessionRow
from .report import job_state, run_state, running_jobs
from .state import (
    DELETED,
    FAILED,
    PENDING,
    READY,
    RUNNING,
    SUCCEEDED,
    JobKind,
    RunStore,
    db_path,
    store_error,
)

__all__ = ("PAGE_NAME", "PageWriter", "main", "write_page")

_LOG = logging.getLogger(__name__)

PAGE_NAME = "report.html"
"""File name of the page in the submit directory."""

MAX_DRAWN_ATTEMPTS = 5000
"""Above this many attempts the timeline shows jobs running per host over
time instead of one bar per attempt."""
MAX_LISTED = 500
"""Rows listed in the failure table and in the retry table each."""
MAX_TAILS = 50
"""Failures shown with the tail of their stderr log."""
TAIL_BYTES = 4096
TAIL_LINES = 30
AGGREGATE_BINS = 300

_IN_FLIGHT = (PENDING, RUNNING, READY)
_STATE_ORDER = (
    WmsStates.SUCCEEDED,
    WmsStates.RUNNING,
    WmsStates.PENDING,
    WmsStates.READY,
    WmsStates.UNREADY,
    WmsStates.FAILED,
    WmsStates.PRUNED,
    WmsStates.DELETED,
    WmsStates.UNKNOWN,
    WmsStates.HELD,
    WmsStates.MISFIT,
)
_ALWAYS_SHOWN = (WmsStates.SUCCEEDED, WmsStates.RUNNING, WmsStates.FAILED, WmsStates.PRUNED)
_UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def _e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(_UNSAFE_CHARACTERS.sub("\ufffd", str(value)), quote=True)


def _iso(stamp: float | None) -> str:
    """A ``<time>`` element (UTC; the page's script shows it in local time)."""
    if stamp is None:
        return ""
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    return f'<time datetime="{text}">{text.replace("T", " ").replace("Z", " UTC")}</time>'


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _how_it_ended(state: int, exit_code: int | None, sig: int | None) -> str:
    """Why an attempt ended, in words."""
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name} (exit {exit_code})"
    if state == DELETED:
        return "stopped by a cancel or a driver stop"
    if exit_code is None:
        return "no exit status recorded (its driver stopped while it ran)"
    if exit_code == -1:
        return "not run, or lost by the executor (see its stderr)"
    return f"exit code {exit_code}"


def _is_infrastructure(state: int, exit_code: int | None) -> bool:
    """Whether an attempt ended through no fault of the job itself."""
    return state == DELETED or exit_code is None or exit_code == -1


@dataclass
class _Attempt:
    job: int
    attempt: int
    state: int
    exit_code: int | None
    start: float
    end: float | None
    host: str
    retried: bool = False


@dataclass
class _RunData:
    """What the page shows, read in one snapshot of the store."""

    submit_path: str
    meta: dict
    state: WmsStates
    message: str
    sessions: list[SessionRow]
    label_counts: dict[str, dict[WmsStates, int]]
    names: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)
    failures: list[tuple] = field(default_factory=list)
    failure_count: int = 0
    retries: list[tuple] = field(default_factory=list)
    retry_count: int = 0
    infrastructure_count: int = 0
    attempt_count: int = 0
    attempts: list[_Attempt] = field(default_factory=list)
    time_range: tuple[float, float] | None = None
    occupancy: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    generated: float = 0.0


def _read(submit_path: str, this_driver: bool) -> _RunData:
    """Read everything the page shows from the store, in one transaction."""
    store = RunStore(db_path(submit_path), readonly=True)
    try:
        store.conn.execute("BEGIN")
        try:
            data = _read_snapshot(store, submit_path, this_driver)
        except sqlite3.DatabaseError as exc:
            raise store_error(store.path, exc) from None
        store.conn.execute("COMMIT")
    finally:
        store.close()
    return data


def _read_snapshot(store: RunStore, submit_path: str, this_driver: bool) -> _RunData:
    conn = store.conn
    now = time.time()
    state, message = run_state(store, submit_path, this_driver=this_driver)
    alive = state == WmsStates.RUNNING
    running = running_jobs(submit_path) if alive else set()
    label_counts: dict[str, dict[WmsStates, int]] = {}
    for label, value, count in conn.execute(
        "SELECT j.label, s.state, COUNT(*) FROM jobs j JOIN status s ON s.job = j.id "
        f"WHERE j.kind = {JobKind.PAYLOAD} GROUP BY j.label, s.state ORDER BY MIN(j.id)"
    ):
        if value in _IN_FLIGHT:
            continue  # counted one by one below
        counts = label_counts.setdefault(label, {})
        counts[job_state(value, -1, alive, running)] = count
    in_flight = ",".join(str(v) for v in _IN_FLIGHT)
    for job_id, label, value in conn.execute(
        "SELECT j.id, j.label, s.state FROM jobs j JOIN status s ON s.job = j.id "
        f"WHERE j.kind = {JobKind.PAYLOAD} AND s.state IN ({in_flight}) ORDER BY j.id"
    ):
        counts = label_counts.setdefault(label, {})
        shown = job_state(value, job_id, alive, running)
        counts[shown] = counts.get(shown, 0) + 1
    data = _RunData(
        submit_path=submit_path,
        meta=store.meta(),
        state=state,
        message=message,
        sessions=store.sessions(),
        label_counts=label_counts,
        generated=now,
    )
    data.failure_count = conn.execute(
        f"SELECT COUNT(*) FROM status s JOIN jobs j ON j.id = s.job WHERE s.state = {FAILED} "
        f"AND j.kind = {JobKind.PAYLOAD}"
    ).fetchone()[0]
    data.failures = conn.execute(
        "SELECT j.id, j.name, j.label, j.log_dir, s.attempt, s.exit_code, s.signal, s.start, s.end, s.host "
        f"FROM status s JOIN jobs j ON j.id = s.job WHERE s.state = {FAILED} AND j.kind = {JobKind.PAYLOAD} "
        "ORDER BY s.end IS NULL, s.end, j.id LIMIT ?",
        (MAX_LISTED,),
    ).fetchall()
    # An attempt that did not succeed and is followed by another one: a
    # retry, or a rerun by a restart after a loss.
    retried = f"a.state != {SUCCEEDED} AND a.attempt < s.attempt"
    data.retry_count, data.infrastructure_count = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(a.state = {DELETED} OR a.exit_code IS NULL OR a.exit_code = -1), 0) "
        f"FROM attempts a JOIN status s ON s.job = a.job WHERE {retried}"
    ).fetchone()
    data.retries = conn.execute(
        "SELECT a.job, j.name, j.label, j.log_dir, a.attempt, a.session, a.state, a.exit_code, a.signal, "
        "a.executor, a.start, a.end, a.host FROM attempts a JOIN status s ON s.job = a.job "
        f"JOIN jobs j ON j.id = a.job WHERE {retried} ORDER BY a.end IS NULL, a.end, a.job LIMIT ?",
        (MAX_LISTED,),
    ).fetchall()
    count, first, last_start, last_end = conn.execute(
        "SELECT COUNT(*), MIN(start), MAX(start), MAX(end) FROM attempts WHERE start IS NOT NULL"
    ).fetchone()
    flights = []
    if alive:
        flights = conn.execute(
            "SELECT job, attempt, start FROM status WHERE state IN (?, ?) AND start IS NOT NULL",
            (PENDING, RUNNING),
        ).fetchall()
    data.attempt_count = count + len(flights)
    starts = [t for t in (first, *(f[2] for f in flights)) if t is not None]
    if starts:
        ends = [t for t in (last_start, last_end, now if flights else None) if t is not None]
        data.time_range = (min(starts), max(max(ends), min(starts) + 1.0))
    rows = conn.execute(
        "SELECT a.job, a.attempt, a.state, a.exit_code, a.start, a.end, a.host, a.attempt < s.attempt "
        "FROM attempts a JOIN status s ON s.job = a.job WHERE a.start IS NOT NULL"
    )
    if data.attempt_count <= MAX_DRAWN_ATTEMPTS:
        data.attempts = [
            _Attempt(
                job, attempt, st, code, start, end if end is not None else start, host or "?", bool(again)
            )
            for job, attempt, st, code, start, end, host, again in rows
        ]
        data.attempts.extend(
            _Attempt(job, attempt, RUNNING, None, start, None, "in flight") for job, attempt, start in flights
        )
        wanted = {a.job for a in data.attempts}
    else:
        assert data.time_range is not None
        data.occupancy = _occupancy(rows, data.time_range)
        wanted = set()
    wanted.update(row[0] for row in data.failures)
    if wanted:
        if len(wanted) > 900:
            found = conn.execute("SELECT id, name, label, log_dir FROM jobs")
            data.names = {i: (name, label, log_dir) for i, name, label, log_dir in found if i in wanted}
        else:
            marks = ",".join("?" * len(wanted))
            found = conn.execute(
                f"SELECT id, name, label, log_dir FROM jobs WHERE id IN ({marks})", tuple(wanted)
            )
            data.names = {i: (name, label, log_dir) for i, name, label, log_dir in found}
    return data


def _occupancy(
    rows: Iterable[tuple], time_range: tuple[float, float]
) -> dict[str, tuple[list[float], list[float]]]:
    """Average number of attempts running per host in each time bin, as
    (did not fail, failed) series.
    """
    t0, t1 = time_range
    width = (t1 - t0) / AGGREGATE_BINS
    series: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {}
    bins = AGGREGATE_BINS
    for _, _, state, _, start, end, host, _ in rows:
        key = host or "?"
        if key not in series:
            series[key] = ([0.0] * bins, [0.0] * (bins + 1), [0.0] * bins, [0.0] * (bins + 1))
        part, whole = (
            (series[key][2], series[key][3]) if state == FAILED else (series[key][0], series[key][1])
        )
        begin = (start - t0) / width
        finish = ((end if end is not None else start) - t0) / width
        first, last = min(int(begin), bins - 1), min(int(finish), bins - 1)
        if first == last:
            part[first] += finish - begin
            continue
        part[first] += first + 1 - begin
        part[last] += finish - last
        whole[first + 1] += 1.0
        whole[last] -= 1.0
    result = {}
    for host, (ok_part, ok_whole, bad_part, bad_whole) in series.items():
        done = []
        for part, whole in ((ok_part, ok_whole), (bad_part, bad_whole)):
            running = 0.0
            values = []
            for k in range(bins):
                running += whole[k]
                values.append(part[k] + running)
            done.append(values)
        result[host] = (done[0], done[1])
    return result


# ---- rendering ------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:13px}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600} tr:nth-child(even) td{background:#fafafa}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.summary td:first-child{color:#666;white-space:nowrap}
.bar{display:flex;height:14px;width:360px;background:#eee;border-radius:3px;overflow:hidden}
.bar span{display:block;height:100%}
.muted{color:#777} .note{color:#555;font-size:13px;margin:4px 0}
pre{background:#f6f6f6;border:1px solid #e3e3e3;padding:6px;margin:4px 0 10px;max-height:260px;overflow:auto;
font-size:12px;white-space:pre-wrap;word-break:break-all}
.failure{margin:0 0 8px} .failure b{font-weight:600}
input[type=search]{width:280px;margin:4px 0}
svg text{font:11px system-ui,sans-serif;fill:#333} svg .axis{stroke:#bbb;stroke-width:0.5}
svg rect{stroke:#fff;stroke-width:0.6} time,.why,td.n{white-space:nowrap} .wide{overflow-x:auto}
#retries td,#retries th{padding:2px 5px;font-size:13px}
svg .session{stroke:#444;stroke-dasharray:4 3;stroke-width:1}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:-1px}
"""

_STATE_COLOURS = {
    WmsStates.SUCCEEDED: "#2e8b57",
    WmsStates.RUNNING: "#1f77b4",
    WmsStates.PENDING: "#9ecae1",
    WmsStates.READY: "#f2c14e",
    WmsStates.UNREADY: "#d9d9d9",
    WmsStates.FAILED: "#d62728",
    WmsStates.PRUNED: "#9467bd",
    WmsStates.DELETED: "#555555",
    WmsStates.UNKNOWN: "#ff7f0e",
    WmsStates.HELD: "#8c564b",
    WmsStates.MISFIT: "#e377c2",
}
_ATTEMPT_CLASSES = {
    "ok": ("succeeded", _STATE_COLOURS[WmsStates.SUCCEEDED]),
    "fail": ("failed", _STATE_COLOURS[WmsStates.FAILED]),
    "retry": ("did not succeed, retried", "#f28e2b"),
    "del": ("stopped (cancel, driver stop)", _STATE_COLOURS[WmsStates.DELETED]),
    "run": ("running or queued now", _STATE_COLOURS[WmsStates.RUNNING]),
}

_SCRIPT = """
(function () {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.title = el.textContent; el.textContent = when.toLocaleString(); el.dataset.local = "1"; }
  }
  for (const input of document.querySelectorAll("input[data-filter]")) {
    const box = document.getElementById(input.dataset.filter);
    input.addEventListener("input", function () {
      const wanted = input.value.toLowerCase();
      for (const item of box.querySelectorAll("[data-item]")) {
        item.hidden = wanted !== "" && !item.textContent.toLowerCase().includes(wanted);
      }
    });
  }
  const refresh = document.getElementById("autorefresh");
  if (refresh) {
    const key = "bps-parsl-norefresh";
    try { refresh.checked = sessionStorage.getItem(key) === null; } catch (e) { /* storage is off */ }
    refresh.addEventListener("change", function () {
      try {
        if (refresh.checked) { sessionStorage.removeItem(key); } else { sessionStorage.setItem(key, "1"); }
      } catch (e) { /* storage is off: the switch holds for this page only */ }
    });
    setTimeout(function () { if (refresh.checked) { location.reload(); } }, 10000);
  }
  document.documentElement.dataset.script = "ran";
})();
"""


def _header(data: _RunData) -> str:
    meta = data.meta
    colour = _STATE_COLOURS.get(data.state, "#777")
    refresh = ""
    if data.state == WmsStates.RUNNING:
        refresh = ' &nbsp; <label><input type="checkbox" id="autorefresh" checked> reload every 10 s</label>'
    return (
        f"<h1>Run {_e(meta.get('run_name') or meta.get('run_id', ''))} "
        f'<span class="badge" id="run-state" style="background:{colour}">{_e(data.state.name)}</span></h1>'
        f'<div class="muted">{_e(data.message)} · page written {_iso(data.generated)}{refresh}</div>'
    )


def _summary(data: _RunData, out_dir: str) -> str:
    meta = data.meta
    submit = data.submit_path
    rows: list[tuple[str, str]] = [
        ("run id", _e(meta.get("run_id", ""))),
        ("run name", _e(meta.get("run_name", ""))),
        ("submit directory", _link(submit, out_dir)),
        ("run-state database", _e(db_path(submit))),
        ("job logs", _link(os.path.join(submit, "logs"), out_dir)),
        ("Parsl log", _link(os.path.join(submit, "parsl", "parsl.log"), out_dir)),
    ]
    if meta.get("monitoring_db"):
        rows.append(("Parsl monitoring database", _e(meta["monitoring_db"])))
    for key, title in (
        ("operator", "operator"),
        ("project", "project"),
        ("campaign", "campaign"),
        ("payload", "payload"),
        ("output_run", "output run"),
        ("compute_site", "compute site"),
    ):
        if meta.get(key):
            rows.append((title, _e(meta[key])))
    rows.append(("prepared", _iso(meta.get("created"))))
    if data.sessions:
        first = data.sessions[0][4]
        last_end = data.sessions[-1][5]
        rows.append(("first driver start", _iso(first)))
        if last_end is not None:
            rows.append(("last driver end", _iso(last_end)))
        rows.append(("elapsed", _e(_duration((last_end or data.generated) - first))))
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    sessions = "".join(
        f"<tr><td class='n'>{sid}</td><td>{_e(kind)}</td><td class='n'>{pid}</td><td>{_e(host)}</td>"
        f"<td>{_iso(start)}</td><td>{_iso(end)}</td>"
        f"<td class='n'>{_e(_duration((end or data.generated) - start))}</td>"
        f"<td>{_e(outcome or ('running' if data.state == WmsStates.RUNNING else 'no end recorded'))}</td></tr>"
        for sid, kind, pid, host, start, end, outcome in data.sessions
    )
    sessions_table = ""
    if sessions:
        sessions_table = (
            "<h2>Driver sessions</h2><table id='sessions'><thead><tr><th class='n'>#</th><th>kind</th>"
            "<th class='n'>pid</th><th>host</th><th>start</th><th>end</th><th class='n'>duration</th>"
            f"<th>outcome</th></tr></thead><tbody>{sessions}</tbody></table>"
        )
    return f"<h2>Summary</h2><table class='summary' id='summary'>{body}</table>{sessions_table}"


def _link(path: str, out_dir: str, text: str | None = None) -> str:
    """A link to a local file, relative to the page when it is below the
    page's directory.
    """
    target = os.path.relpath(path, out_dir) if path.startswith(out_dir + os.sep) else path
    href = urllib.parse.quote(target) if not os.path.isabs(target) else "file://" + urllib.parse.quote(target)
    return f'<a href="{_e(href)}" title="{_e(path)}">{_e(text or path)}</a>'


def _progress(data: _RunData) -> str:
    totals: dict[WmsStates, int] = {}
    for counts in data.label_counts.values():
        for state, n in counts.items():
            totals[state] = totals.get(state, 0) + n
    states = [s for s in _STATE_ORDER if totals.get(s) or s in _ALWAYS_SHOWN]
    head = "".join(
        f"<th class='n'><span style='color:{_STATE_COLOURS[s]}'>■</span> {s.name}</th>" for s in states
    )

    def row(name: str, counts: dict[WmsStates, int], attrs: str) -> str:
        total = sum(counts.values())
        segments = "".join(
            f"<span style='width:{100.0 * counts[s] / total:.3f}%;background:{_STATE_COLOURS[s]}' "
            f"title='{s.name}: {counts[s]}'></span>"
            for s in _STATE_ORDER
            if counts.get(s)
        )
        cells = "".join(f"<td class='n' data-state='{s.name}'>{counts.get(s, 0)}</td>" for s in states)
        done = sum(
            counts.get(s, 0)
            for s in (WmsStates.SUCCEEDED, WmsStates.FAILED, WmsStates.PRUNED, WmsStates.DELETED)
        )
        percent = f"{100.0 * done / total:.0f}% ended" if total else ""
        return (
            f"<tr {attrs}><td>{name}</td><td><div class='bar'>{segments}</div></td>"
            f"<td class='n muted'>{percent}</td><td class='n' data-state='TOTAL'>{total}</td>{cells}</tr>"
        )

    body = "".join(
        row(_e(label), counts, f"data-label='{_e(label)}'") for label, counts in data.label_counts.items()
    )
    foot = row("<b>all jobs</b>", totals, "id='totals'") if len(data.label_counts) != 1 else ""
    return (
        "<h2>Progress by label</h2><table id='labels'><thead><tr><th>label</th><th>jobs by state</th><th></th>"
        f"<th class='n'>total</th>{head}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>"
    )


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if span / step <= 10:
            return float(step)
    return 86400.0 * max(1, int(span / 86400 / 10) + 1)


def _elapsed_label(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds % 60 else f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


_WIDTH = 1160
_LEFT = 170
_RIGHT = 12
_TOP = 22


def _axis(t0: float, t1: float, height: float, sessions: list[SessionRow]) -> list[str]:
    scale = (_WIDTH - _LEFT - _RIGHT) / (t1 - t0)
    parts = []
    step = _tick_step(t1 - t0)
    k = 0
    while k * step <= t1 - t0 + 1e-9:
        x = _LEFT + k * step * scale
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{_TOP - 4}" x2="{x:.1f}" y2="{height:.1f}"/>'
            f'<text x="{x:.1f}" y="{_TOP - 8}" text-anchor="middle">+{_elapsed_label(k * step)}</text>'
        )
        k += 1
    for sid, kind, _, _, start, _, _ in sessions:
        if t0 <= start <= t1 and sid > 1:
            x = _LEFT + (start - t0) * scale
            parts.append(
                f'<line class="session" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{height:.1f}">'
                f"<title>driver session {sid} ({_e(kind)}) started</title></line>"
            )
    return parts


def _legend(classes: Iterable[str]) -> str:
    return (
        "<div class='legend note'>"
        + "".join(
            f"<span style='background:{_ATTEMPT_CLASSES[c][1]}'></span>{_ATTEMPT_CLASSES[c][0]}"
            for c in classes
        )
        + "</div>"
    )


def _timeline(data: _RunData) -> str:
    title = "<h2>Timeline of job attempts</h2>"
    if data.time_range is None:
        return title + "<p class='muted' id='timeline'>No attempt has started yet.</p>"
    if data.occupancy:
        return title + _timeline_aggregated(data)
    t0, t1 = data.time_range
    now = data.generated
    by_host: dict[str, list[_Attempt]] = {}
    for attempt in data.attempts:
        by_host.setdefault(attempt.host, []).append(attempt)
    lanes: list[tuple[str, int, list[tuple[_Attempt, int]]]] = []
    for host in sorted(by_host, key=lambda h: (h == "in flight", h)):
        placed = _pack(by_host[host], now)
        lanes.append((host, 1 + max(slot for _, slot in placed), placed))
    rows = sum(n for _, n, _ in lanes)
    row_height = max(2.0, min(16.0, 900.0 / rows))
    gap = 6.0
    height = _TOP + rows * row_height + gap * len(lanes) + 4
    scale = (_WIDTH - _LEFT - _RIGHT) / (t1 - t0)
    parts = _axis(t0, t1, height, data.sessions)
    y = float(_TOP)
    used = set()
    for host, slots, placed in lanes:
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + min(slots * row_height, 24) / 2 + 4:.1f}" text-anchor="end">'
            f"{_e(host[:28])}<title>{_e(host)}: {len(placed)} attempts, {slots} slots</title></text>"
        )
        for attempt, slot in placed:
            kind = _attempt_class(attempt)
            used.add(kind)
            end = attempt.end if attempt.end is not None else now
            x = _LEFT + (attempt.start - t0) * scale
            width = max(0.6, (end - attempt.start) * scale)
            name, label, _ = data.names.get(attempt.job, ("?", "?", None))
            top = y + slot * row_height
            parts.append(
                f'<rect class="{kind}" x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{row_height * 0.85:.1f}">'
                f"<title>{_e(name)} ({_e(label)}) attempt {attempt.attempt}: {_ATTEMPT_CLASSES[kind][0]}, "
                f"{_e(_duration(end - attempt.start))} on {_e(host)}</title></rect>"
            )
        y += slots * row_height + gap
    styles = "".join(f"rect.{c}{{fill:{colour}}}" for c, (_, colour) in _ATTEMPT_CLASSES.items())
    note = (
        f"<p class='note'>{data.attempt_count} attempts, one bar each; a row is one slot of its host "
        f"(attempts that overlap in time take separate slots); time from {_iso(t0)}; dashed lines: a driver "
        "restart.</p>"
    )
    return (
        title
        + note
        + _legend(k for k in _ATTEMPT_CLASSES if k in used)
        + f'<svg id="timeline" data-mode="attempts" data-attempts="{len(data.attempts)}" '
        f'viewBox="0 0 {_WIDTH} {height:.0f}" width="100%" role="img"><style>{styles}</style>'
        + "".join(parts)
        + "</svg>"
    )


def _pack(attempts: list[_Attempt], now: float) -> list[tuple[_Attempt, int]]:
    """Give each attempt the lowest slot free at its start."""
    busy: list[tuple[float, int]] = []
    free: list[int] = []
    slots = 0
    placed = []
    for attempt in sorted(attempts, key=lambda a: (a.start, a.job)):
        while busy and busy[0][0] <= attempt.start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            slot = heapq.heappop(free)
        else:
            slot = slots
            slots += 1
        heapq.heappush(busy, (attempt.end if attempt.end is not None else now, slot))
        placed.append((attempt, slot))
    return placed


def _attempt_class(attempt: _Attempt) -> str:
    if attempt.end is None:
        return "run"
    if attempt.state == SUCCEEDED:
        return "ok"
    if attempt.retried:
        return "retry"
    if attempt.state == DELETED:
        return "del"
    return "fail"


def _timeline_aggregated(data: _RunData) -> str:
    assert data.time_range is not None
    t0, t1 = data.time_range
    hosts = sorted(data.occupancy)
    band = max(12.0, min(60.0, 1500.0 / len(hosts)))
    gap = 14.0
    height = _TOP + len(hosts) * (band + gap) + 4
    parts = _axis(t0, t1, height, data.sessions)
    step = (_WIDTH - _LEFT - _RIGHT) / AGGREGATE_BINS
    y = float(_TOP)
    for host in hosts:
        ok, bad = data.occupancy[host]
        peak = max(max(a + b for a, b in zip(ok, bad, strict=True)), 1e-9)
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + band / 2:.1f}" text-anchor="end">{_e(host[:28])}'
            f"<title>{_e(host)}</title></text>"
            f'<text x="{_LEFT - 6}" y="{y + band / 2 + 13:.1f}" text-anchor="end" class="muted">'
            f"up to {peak:.1f} at once</text>"
        )
        base = y + band
        for series, lower, kind in ((ok, None, "ok"), (bad, ok, "fail")):
            if not any(series):
                continue
            top_points = []
            bottom_points = []
            for k in range(AGGREGATE_BINS):
                below = lower[k] if lower is not None else 0.0
                x0, x1 = _LEFT + k * step, _LEFT + (k + 1) * step
                top = base - (below + series[k]) / peak * band
                bottom = base - below / peak * band
                top_points += [f"{x0:.1f},{top:.1f}", f"{x1:.1f},{top:.1f}"]
                bottom_points += [f"{x1:.1f},{bottom:.1f}", f"{x0:.1f},{bottom:.1f}"]
            points = " ".join(top_points + bottom_points[::-1])
            parts.append(f'<polygon class="{kind}" points="{points}"/>')
        y += band + gap
    styles = "".join(f"polygon.{c}{{fill:{colour}}}" for c, (_, colour) in _ATTEMPT_CLASSES.items())
    note = (
        f"<p class='note' id='timeline-aggregated'>{data.attempt_count} attempts: more than "
        f"{MAX_DRAWN_ATTEMPTS}, so the timeline shows how many attempts ran at once on each host over time "
        f"({AGGREGATE_BINS} time bins, from {_iso(t0)}) instead of one bar per attempt.</p>"
    )
    return (
        note
        + _legend(("ok", "fail"))
        + f'<svg id="timeline" data-mode="aggregated" viewBox="0 0 {_WIDTH} {height:.0f}" width="100%" '
        f'role="img"><style>{styles}</style>' + "".join(parts) + "</svg>"
    )


def _stderr_path(data: _RunData, log_dir: str | None, name: str, attempt: int) -> str:
    return log_paths(data.submit_path, log_dir, name, attempt)[1]


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - TAIL_BYTES))
            raw = stream.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    text = raw.decode(errors="replace")
    lines = text.splitlines()
    if size > TAIL_BYTES and lines:
        lines = lines[1:]
    return "\n".join(lines[-TAIL_LINES:]) if lines else "(empty)"


def _failures(data: _RunData, out_dir: str) -> str:
    title = f"<h2>Failures ({data.failure_count})</h2>"
    if not data.failure_count:
        return title + "<p class='muted' id='failures'>No job failed.</p>"
    items = []
    for k, (_, name, label, log_dir, attempt, code, sig, start, end, host) in enumerate(data.failures):
        stderr = _stderr_path(data, log_dir, name, attempt)
        tail = f"<pre>{_e(_tail(stderr))}</pre>" if k < MAX_TAILS else ""
        ran = f", ran {_e(_duration(end - start))}" if start is not None and end is not None else ""
        items.append(
            f"<div class='failure' data-item data-job='{_e(name)}'><b>{_e(name)}</b> "
            f"<span class='muted'>({_e(label)})</span> attempt {attempt}: "
            f"<span class='why'>{_e(_how_it_ended(FAILED, code, sig))}</span> on {_e(host or 'no host')}, "
            f"ended {_iso(end)}{ran} · {_link(stderr, out_dir, os.path.relpath(stderr, data.submit_path))}{tail}</div>"
        )
    more = ""
    if data.failure_count > len(data.failures):
        more = f"<p class='note'>{data.failure_count - len(data.failures)} more failures are not listed.</p>"
    if len(data.failures) > MAX_TAILS:
        more += f"<p class='note'>Log tails are shown for the first {MAX_TAILS} failures.</p>"
    return (
        title
        + "<input type='search' placeholder='filter failures' data-filter='failures'>"
        + f"<div id='failures'>{''.join(items)}</div>{more}"
    )


def _retries(data: _RunData, out_dir: str) -> str:
    title = f"<h2>Retries and infrastructure losses ({data.retry_count})</h2>"
    if not data.retry_count:
        return title + "<p class='muted' id='retries'>No attempt was retried.</p>"
    body = []
    for (
        _,
        name,
        label,
        log_dir,
        attempt,
        session,
        state,
        code,
        sig,
        executor,
        start,
        end,
        host,
    ) in data.retries:
        stderr = _stderr_path(data, log_dir, name, attempt)
        kind = "infrastructure" if _is_infrastructure(state, code) else "job"
        body.append(
            f"<tr data-item data-kind='{kind}'><td>{_e(name)}</td><td>{_e(label)}</td><td class='n'>{attempt}</td>"
            f"<td class='n'>{session}</td><td class='why'>{_e(_how_it_ended(state, code, sig))}</td><td>{kind}</td>"
            f"<td>{_e(host or '')}</td><td>{_e(executor or '')}</td><td>{_iso(end)}</td>"
            f"<td class='n'>{_e(_duration(end - start) if start is not None and end is not None else '')}</td>"
            f"<td>{_link(stderr, out_dir, os.path.relpath(stderr, data.submit_path))}</td></tr>"
        )
    more = ""
    if data.retry_count > len(data.retries):
        more = f"<p class='note'>{data.retry_count - len(data.retries)} more are not listed.</p>"
    note = (
        f"<p class='note'>Attempts that did not succeed and were followed by another attempt of the same job: "
        f"{data.infrastructure_count} lost through no fault of the job (executor lost, driver stopped or "
        f"died), {data.retry_count - data.infrastructure_count} failed by themselves.</p>"
    )
    return (
        title
        + note
        + "<input type='search' placeholder='filter retries' data-filter='retries'>"
        + "<div class='wide'><table id='retries'><thead><tr><th>job</th><th>label</th><th class='n'>attempt</th>"
        "<th class='n'>session</th><th>how it ended</th><th>cause</th><th>host</th><th>executor</th>"
        f"<th>ended</th><th class='n'>ran</th><th>stderr</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def _render(data: _RunData, out_dir: str) -> str:
    """Render the page of a run read by `_read`.

    Parameters
    ----------
    data : `_RunData`
        What the page shows.
    out_dir : `str`
        Directory the page is written to (links to logs are relative to it).

    Returns
    -------
    page : `str`
        The HTML document.
    """
    title = _e(f"bps-parsl run {data.meta.get('run_name') or data.meta.get('run_id', '')}")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        + _header(data)
        + _progress(data)
        + _timeline(data)
        + _failures(data, out_dir)
        + _retries(data, out_dir)
        + _summary(data, out_dir)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_page(submit_path: str, out: str | None = None, this_driver: bool = False) -> str:
    """Write the page of a run, atomically.

    Parameters
    ----------
    submit_path : `str`
        The run's submit directory.
    out : `str`, optional
        Page file (default ``<submit_path>/report.html``).
    this_driver : `bool`
        The caller is the run's driver (see `report.run_state`).

    Returns
    -------
    path : `str`
        The file written.
    """
    out = os.path.abspath(out or os.path.join(submit_path, PAGE_NAME))
    data = _read(os.path.abspath(submit_path), this_driver)
    text = _render(data, os.path.dirname(out))
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


class PageWriter:
    """Rewrite a run's page from its driver, now and then.

    The page is written at most every ``interval`` seconds, and less often
    when writing it takes long (it never takes more than ``budget`` of the
    driver's time), and always when ``final``.

    Parameters
    ----------
    submit_path : `str`
        The run's submit directory.
    interval : `float`
        Least number of seconds between two pages.
    budget : `float`
        Largest fraction of the driver's time spent writing pages.
    """

    def __init__(self, submit_path: str, interval: float = 5.0, budget: float = 0.02):
        self.submit_path = submit_path
        self.interval = interval
        self.budget = budget
        self._next = time.monotonic() + interval
        self._warned = False

    def update(self, final: bool = False) -> None:
        """Write the page if it is due (or ``final``); never raises."""
        started = time.monotonic()
        if not final and started < self._next:
            return
        try:
            write_page(self.submit_path, this_driver=True)
        except Exception as exc:  # noqa: BLE001
            if not self._warned:
                self._warned = True
                _LOG.warning("run page %s not written: %s", os.path.join(self.submit_path, PAGE_NAME), exc)
        spent = time.monotonic() - started
        self._next = time.monotonic() + max(self.interval, spent / self.budget)


def main(argv: list[str] | None = None) -> int:
    """Write the page of a run: ``python -m lsst.ctrl.bps.parsl.page RUN [-o OUT]``.

    Parameters
    ----------
    argv : `list` [`str`], optional
        Arguments (default: the command line's).

    Returns
    -------
    status : `int`
        0 when the page was written, 1 with a one-line error otherwise.
    """
    from .runindex import resolve_run
    from .state import StateStoreError

    parser = argparse.ArgumentParser(
        prog="python -m lsst.ctrl.bps.parsl.page",
        description="Write a self-contained HTML page of a run (progress, timeline, failures, retries).",
    )
    parser.add_argument("run", help="submit directory or run id")
    parser.add_argument("-o", "--output", help=f"page file (default: <submit dir>/{PAGE_NAME})")
    args = parser.parse_args(argv)
    try:
        submit_path = resolve_run(args.run)
        path = write_page(submit_path, args.output)
    except (StateStoreError, OSError) as exc:
        print(f"bps-parsl page: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
