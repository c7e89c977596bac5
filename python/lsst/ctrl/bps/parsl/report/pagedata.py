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


"""The run page's data, read from the run's store in one read transaction, its formatting and its
timeline (SVG): a bar per attempt per host and slot, or occupancy for large runs.
"""

from __future__ import annotations

import heapq
import html
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from lsst.ctrl.bps import WmsStates

from ..records import SessionRow
from ..store.runstore import DELETED, FAILED, PENDING, RUNNING, SUCCEEDED, JobKind, RunStore
from .reports import run_counts

__all__ = ("MAX_DRAWN_ATTEMPTS", "RunData", "read_run", "timeline")

MAX_DRAWN_ATTEMPTS = 5000
"""Above this many attempts the timeline shows jobs running per host over
time instead of one bar per attempt."""
MAX_LISTED = 500
"""Rows listed in the failure table and in the retry table each."""
AGGREGATE_BINS = 300

_UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
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


def _e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(_UNSAFE_CHARACTERS.sub("\ufffd", str(value)), quote=True)


def _iso(stamp: float | None) -> str:
    """A ``<time>`` element (UTC; the page's script shows it in local time)."""
    if stamp is None:
        return ""
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    return f'<time datetime="{text}">{text.replace("T", " ").replace("Z", " UTC")}</time>'


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class _Attempt:
    job: int
    attempt: int
    kind: str  # a key of `_ATTEMPT_CLASSES`
    start: float
    end: float | None  # `None`: in flight
    host: str


@dataclass
class RunData:
    """What the page shows, read in one snapshot of the store."""

    submit_path: str
    meta: dict
    state: WmsStates
    message: str
    sessions: list[SessionRow]
    label_counts: dict[str, Counter]
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


def read_run(store: RunStore, submit_path: str, this_driver: bool) -> RunData:
    """Read everything the page shows from the store (`reports.read_store` calls it in one transaction).

    Parameters
    ----------
    store, submit_path, this_driver : `RunStore`, `str`, `bool`
        The run's store; submit directory; the caller is the run's driver (`reports.run_counts`).

    Returns
    -------
    data : `RunData`
        What the page shows.
    """
    conn = store.conn
    now = time.time()
    state, message, _, label_counts = run_counts(store, submit_path, this_driver)
    alive = state == WmsStates.RUNNING
    data = RunData(
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
    in_flight = (
        f"SELECT job, attempt, start FROM status WHERE state IN ({PENDING}, {RUNNING}) AND start IS NOT NULL"
    )
    flights = conn.execute(in_flight).fetchall() if alive else []
    data.attempt_count = count + len(flights)
    starts = [t for t in (first, *(f[2] for f in flights)) if t is not None]
    if starts:
        ends = [t for t in (last_start, last_end, now if flights else None) if t is not None]
        data.time_range = (min(starts), max(max(ends), min(starts) + 1.0))
    rows = conn.execute(
        f"SELECT a.job, a.attempt, a.state, CASE WHEN a.state = {SUCCEEDED} THEN 'ok' WHEN a.attempt < s.attempt "
        f"THEN 'retry' WHEN a.state = {DELETED} THEN 'del' ELSE 'fail' END, a.start, a.end, a.host "
        "FROM attempts a JOIN status s ON s.job = a.job WHERE a.start IS NOT NULL"
    )
    if data.attempt_count <= MAX_DRAWN_ATTEMPTS:
        data.attempts = [
            _Attempt(job, attempt, kind, start, end if end is not None else start, host or "?")
            for job, attempt, _, kind, start, end, host in rows
        ]
        data.attempts += [
            _Attempt(job, attempt, "run", start, None, "in flight") for job, attempt, start in flights
        ]
        wanted = {a.job for a in data.attempts}
    else:
        assert data.time_range is not None
        data.occupancy = _occupancy(rows, data.time_range)
        wanted = set()
    wanted.update(row[0] for row in data.failures)
    found = conn.execute(
        "SELECT id, name, label, log_dir FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(wanted)),),
    )
    data.names = {i: (name, label, log_dir) for i, name, label, log_dir in found}
    return data


def _occupancy(
    rows: Iterable[tuple], time_range: tuple[float, float]
) -> dict[str, tuple[list[float], list[float]]]:
    """Mean attempts running per host per time bin, as (did not fail, failed) series."""
    t0, t1 = time_range
    width = (t1 - t0) / AGGREGATE_BINS
    # Per host: for attempts that did not fail, then failed, the fraction of its
    # first and last bin each attempt ran, and +1/-1 where its whole bins begin/end.
    series: dict[str, list[list[float]]] = {}
    for _, _, state, _, start, end, host in rows:
        lists = series.setdefault(host or "?", [[0.0] * (AGGREGATE_BINS + 1) for _ in range(4)])
        part, whole = lists[2:] if state == FAILED else lists[:2]
        begin = (start - t0) / width
        finish = ((end if end is not None else start) - t0) / width
        first, last = min(int(begin), AGGREGATE_BINS - 1), min(int(finish), AGGREGATE_BINS - 1)
        if first == last:
            part[first] += finish - begin
            continue
        part[first] += first + 1 - begin
        part[last] += finish - last
        whole[first + 1] += 1.0
        whole[last] -= 1.0

    def means(part: list[float], whole: list[float]) -> list[float]:
        return [p + n for p, n in zip(part, itertools.accumulate(whole), strict=True)][:AGGREGATE_BINS]

    return {host: (means(*lists[:2]), means(*lists[2:])) for host, lists in series.items()}


_ATTEMPT_CLASSES = {
    "ok": ("succeeded", _STATE_COLOURS[WmsStates.SUCCEEDED]),
    "fail": ("failed", _STATE_COLOURS[WmsStates.FAILED]),
    "retry": ("did not succeed, retried", "#f28e2b"),
    "del": ("stopped (cancel, driver stop)", _STATE_COLOURS[WmsStates.DELETED]),
    "run": ("running or queued now", _STATE_COLOURS[WmsStates.RUNNING]),
}


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
    for k in range(int((t1 - t0 + 1e-9) // step) + 1):
        x = _LEFT + k * step * scale
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{_TOP - 4}" x2="{x:.1f}" y2="{height:.1f}"/>'
            f'<text x="{x:.1f}" y="{_TOP - 8}" text-anchor="middle">+{_elapsed_label(k * step)}</text>'
        )
    for sid, kind, _, _, start, _, _ in sessions:
        if t0 <= start <= t1 and sid > 1:
            x = _LEFT + (start - t0) * scale
            parts.append(
                f'<line class="session" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{height:.1f}">'
                f"<title>driver session {sid} ({_e(kind)}) started</title></line>"
            )
    return parts


def _svg(note: str, classes: Iterable[str], element: str, attrs: str, height: float, parts: list[str]) -> str:
    """The note, legend and SVG of a timeline whose ``element`` shapes are coloured by their class."""
    legend = "".join(
        f"<span style='background:{_ATTEMPT_CLASSES[c][1]}'></span>{_ATTEMPT_CLASSES[c][0]}" for c in classes
    )
    styles = "".join(f"{element}.{c}{{fill:{colour}}}" for c, (_, colour) in _ATTEMPT_CLASSES.items())
    return (
        f"{note}<div class='legend note'>{legend}</div><svg id=\"timeline\" {attrs} "
        f'viewBox="0 0 {_WIDTH} {height:.0f}" width="100%" role="img"><style>{styles}</style>{"".join(parts)}</svg>'
    )


def timeline(data: RunData) -> str:
    """The timeline section of the page (SVG).

    Parameters
    ----------
    data : `RunData`
        What the page shows.

    Returns
    -------
    html : `str`
        The section's HTML, with the SVG inline.
    """
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
            kind = attempt.kind
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
    note = (
        f"<p class='note'>{data.attempt_count} attempts, one bar each; a row is one slot of its host "
        f"(attempts that overlap in time take separate slots); time from {_iso(t0)}; dashed lines: a driver "
        "restart.</p>"
    )
    classes = [k for k in _ATTEMPT_CLASSES if k in used]
    attrs = f'data-mode="attempts" data-attempts="{len(data.attempts)}"'
    return title + _svg(note, classes, "rect", attrs, height, parts)


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


def _timeline_aggregated(data: RunData) -> str:
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
        for series, lower, kind in ((ok, [0.0] * AGGREGATE_BINS, "ok"), (bad, ok, "fail")):
            if not any(series):
                continue
            top, bottom = [], []  # the band's outline left to right, then right to left
            for k in range(AGGREGATE_BINS):
                x0, x1 = _LEFT + k * step, _LEFT + (k + 1) * step
                high, low = base - (lower[k] + series[k]) / peak * band, base - lower[k] / peak * band
                top += [f"{x0:.1f},{high:.1f}", f"{x1:.1f},{high:.1f}"]
                bottom += [f"{x0:.1f},{low:.1f}", f"{x1:.1f},{low:.1f}"]
            parts.append(f'<polygon class="{kind}" points="{" ".join(top + bottom[::-1])}"/>')
        y += band + gap
    note = (
        f"<p class='note' id='timeline-aggregated'>{data.attempt_count} attempts: more than "
        f"{MAX_DRAWN_ATTEMPTS}, so the timeline shows how many attempts ran at once on each host over time "
        f"({AGGREGATE_BINS} time bins, from {_iso(t0)}) instead of one bar per attempt.</p>"
    )
    return _svg(note, ("ok", "fail"), "polygon", 'data-mode="aggregated"', height, parts)
