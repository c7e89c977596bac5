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

"""The run page, a self-contained HTML file (doc/operations.md), and its command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
import urllib.parse
from collections import Counter

from lsst.ctrl.bps import WmsStates

from ..store.recorder import log_paths
from ..store.runindex import resolve_run
from ..store.runstore import DELETED, FAILED, StateStoreError, db_path
from .pagedata import _STATE_COLOURS, MAX_DRAWN_ATTEMPTS, RunData, _duration, _e, _iso, read_run, timeline
from .reports import read_store

__all__ = ("MAX_DRAWN_ATTEMPTS", "PAGE_NAME", "PageWriter", "main", "write_page")

_LOG = logging.getLogger(__name__)

PAGE_NAME = "report.html"
"""File name of the page in the submit directory."""
MAX_TAILS = 50
"""Failures shown with the tail of their stderr log."""
TAIL_BYTES = 4096
TAIL_LINES = 30
_ALWAYS_SHOWN = (WmsStates.SUCCEEDED, WmsStates.RUNNING, WmsStates.FAILED, WmsStates.PRUNED)

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


def _header(data: RunData) -> str:
    colour = _STATE_COLOURS.get(data.state, "#777")
    refresh = ""
    if data.state == WmsStates.RUNNING:
        refresh = ' &nbsp; <label><input type="checkbox" id="autorefresh" checked> reload every 10 s</label>'
    return (
        f"<h1>Run {_e(data.meta.get('run_name') or data.meta.get('run_id', ''))} "
        f'<span class="badge" id="run-state" style="background:{colour}">{_e(data.state.name)}</span></h1>'
        f'<div class="muted">{_e(data.message)} · page written {_iso(data.generated)}{refresh}</div>'
    )


def _summary(data: RunData, out_dir: str) -> str:
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
    for key in ("operator", "project", "campaign", "payload", "output_run", "compute_site"):
        if meta.get(key):
            rows.append((key.replace("_", " "), _e(meta[key])))
    rows.append(("prepared", _iso(meta.get("created"))))
    if data.sessions:
        first, last_end = data.sessions[0].start, data.sessions[-1].end
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
    if sessions:
        sessions = (
            "<h2>Driver sessions</h2><table id='sessions'><thead><tr><th class='n'>#</th><th>kind</th>"
            "<th class='n'>pid</th><th>host</th><th>start</th><th>end</th><th class='n'>duration</th>"
            f"<th>outcome</th></tr></thead><tbody>{sessions}</tbody></table>"
        )
    return f"<h2>Summary</h2><table class='summary' id='summary'>{body}</table>{sessions}"


def _link(path: str, out_dir: str, text: str | None = None) -> str:
    """A link to a local file, relative when below the page's directory."""
    target = os.path.relpath(path, out_dir) if path.startswith(out_dir + os.sep) else path
    href = urllib.parse.quote(target) if not os.path.isabs(target) else "file://" + urllib.parse.quote(target)
    return f'<a href="{_e(href)}" title="{_e(path)}">{_e(text or path)}</a>'


def _progress(data: RunData) -> str:
    totals: Counter = sum(data.label_counts.values(), Counter())
    states = [s for s in _STATE_COLOURS if totals.get(s) or s in _ALWAYS_SHOWN]
    head = "".join(
        f"<th class='n'><span style='color:{_STATE_COLOURS[s]}'>■</span> {s.name}</th>" for s in states
    )

    def row(name: str, counts: Counter, attrs: str) -> str:
        total = sum(counts.values())
        segments = "".join(
            f"<span style='width:{100.0 * counts[s] / total:.3f}%;background:{_STATE_COLOURS[s]}' "
            f"title='{s.name}: {counts[s]}'></span>"
            for s in _STATE_COLOURS
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


def _stderr_link(
    data: RunData, out_dir: str, log_dir: str | None, name: str, attempt: int
) -> tuple[str, str]:
    """The stderr log of a job's attempt, and a link to it named by its path in the submit directory."""
    path = log_paths(data.submit_path, log_dir, name, attempt)[1]
    return path, _link(path, out_dir, os.path.relpath(path, data.submit_path))


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            stream.seek(max(0, size - TAIL_BYTES))
            lines = stream.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first may be cut
    return "\n".join(lines[-TAIL_LINES:]) if lines else "(empty)"


def _listing(key: str, title: str, count: int, listed: int, empty: str, note: str, body: str) -> str:
    """A section of up to `pagedata.MAX_LISTED` items (of ``count``) the page's script filters."""
    head = f"<h2>{title} ({count})</h2>"
    if not count:
        return head + f"<p class='muted' id='{key}'>{empty}</p>"
    more = f"<p class='note'>{count - listed} more are not listed.</p>" if count > listed else ""
    return head + note + f"<input type='search' placeholder='filter {key}' data-filter='{key}'>" + body + more


def _failures(data: RunData, out_dir: str) -> str:
    items = []
    for k, (_, name, label, log_dir, attempt, code, sig, start, end, host) in enumerate(data.failures):
        stderr, link = _stderr_link(data, out_dir, log_dir, name, attempt)
        tail = f"<pre>{_e(_tail(stderr))}</pre>" if k < MAX_TAILS else ""
        ran = f", ran {_e(_duration(end - start))}" if start is not None and end is not None else ""
        items.append(
            f"<div class='failure' data-item data-job='{_e(name)}'><b>{_e(name)}</b> "
            f"<span class='muted'>({_e(label)})</span> attempt {attempt}: "
            f"<span class='why'>{_e(_how_it_ended(FAILED, code, sig))}</span> on {_e(host or 'no host')}, "
            f"ended {_iso(end)}{ran} · {link}{tail}</div>"
        )
    note = ""
    if len(data.failures) > MAX_TAILS:
        note = f"<p class='note'>Log tails are shown for the first {MAX_TAILS} failures.</p>"
    body = f"<div id='failures'>{''.join(items)}</div>"
    return _listing(
        "failures", "Failures", data.failure_count, len(data.failures), "No job failed.", note, body
    )


def _retries(data: RunData, out_dir: str) -> str:
    body = []
    for row in data.retries:
        _, name, label, log_dir, attempt, session, state, code, sig, executor, start, end, host = row
        # Ended through no fault of the job: stopped, or no exit status (its driver or executor lost it).
        kind = "infrastructure" if state == DELETED or code is None or code == -1 else "job"
        body.append(
            f"<tr data-item data-kind='{kind}'><td>{_e(name)}</td><td>{_e(label)}</td><td class='n'>{attempt}</td>"
            f"<td class='n'>{session}</td><td class='why'>{_e(_how_it_ended(state, code, sig))}</td><td>{kind}</td>"
            f"<td>{_e(host or '')}</td><td>{_e(executor or '')}</td><td>{_iso(end)}</td>"
            f"<td class='n'>{_e(_duration(end - start) if start is not None and end is not None else '')}</td>"
            f"<td>{_stderr_link(data, out_dir, log_dir, name, attempt)[1]}</td></tr>"
        )
    table = (
        "<div class='wide'><table id='retries'><thead><tr><th>job</th><th>label</th><th class='n'>attempt</th>"
        "<th class='n'>session</th><th>how it ended</th><th>cause</th><th>host</th><th>executor</th>"
        f"<th>ended</th><th class='n'>ran</th><th>stderr</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    note = (
        f"<p class='note'>Attempts that did not succeed and were followed by another attempt of the same job: "
        f"{data.infrastructure_count} lost through no fault of the job (executor lost, driver stopped or "
        f"died), {data.retry_count - data.infrastructure_count} failed by themselves.</p>"
    )
    title = "Retries and infrastructure losses"
    return _listing(
        "retries", title, data.retry_count, len(data.retries), "No attempt was retried.", note, table
    )


def write_page(submit_path: str, out: str | None = None, this_driver: bool = False) -> str:
    """Write the page of a run, atomically.

    Parameters
    ----------
    submit_path, out : `str`
        The run's submit directory; page file (default ``<submit_path>/report.html``).
    this_driver : `bool`
        The caller is the run's driver (`reports.run_counts`).

    Returns
    -------
    path : `str`
        The file written.
    """
    out = os.path.abspath(out or os.path.join(submit_path, PAGE_NAME))
    submit_path = os.path.abspath(submit_path)
    data = read_store(submit_path, lambda store: read_run(store, submit_path, this_driver))
    out_dir = os.path.dirname(out)  # links to logs are relative to it
    title = _e(f"bps-parsl run {data.meta.get('run_name') or data.meta.get('run_id', '')}")
    text = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        + _header(data)
        + _progress(data)
        + timeline(data)
        + _failures(data, out_dir)
        + _retries(data, out_dir)
        + _summary(data, out_dir)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


class PageWriter:
    """Rewrite a run's page from its driver, within ``interval`` and ``budget``, and when ``final``.

    Parameters
    ----------
    submit_path : `str`
        The run's submit directory.
    interval, budget : `float`
        Least number of seconds between two pages; largest fraction of the driver's time spent writing pages.
    """

    def __init__(self, submit_path: str, interval: float = 5.0, budget: float = 0.02):
        self.submit_path = submit_path
        self.interval = interval
        self.budget = budget
        self._next = time.monotonic() + interval
        self._warned = False

    def update(self, final: bool = False) -> None:
        """Write the page if it is due (or ``final``); never raises.

        Parameters
        ----------
        final : `bool`, optional
            Write now whatever the interval (the run's last page).
        """
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
    """Write the page of a run: ``python -m lsst.ctrl.bps.parsl.report.page RUN [-o OUT]``.

    Parameters
    ----------
    argv : `list` [`str`], optional
        Arguments (default: the command line's).

    Returns
    -------
    status : `int`
        0 when the page was written, 1 with a one-line error otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lsst.ctrl.bps.parsl.report.page",
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
