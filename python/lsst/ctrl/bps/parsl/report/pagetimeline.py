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


"""The run page's timeline (SVG): a bar per attempt per host and slot, or occupancy for large runs."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from lsst.ctrl.bps import WmsStates

from ..records import SessionRow
from .pagedata import (
    _STATE_COLOURS,
    AGGREGATE_BINS,
    MAX_DRAWN_ATTEMPTS,
    RunData,
    _Attempt,
    _duration,
    _e,
    _iso,
)

__all__ = ("timeline",)

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
