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

"""The run page, a self-contained HTML file (doc/operations.md): `write_page`,
the driver's `PageWriter`, and ``python -m lsst.ctrl.bps.parsl.report.page RUN [-o OUT]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .pagedata import MAX_DRAWN_ATTEMPTS, read_run
from .pagehtml import render

__all__ = ("MAX_DRAWN_ATTEMPTS", "PAGE_NAME", "PageWriter", "main", "write_page")

_LOG = logging.getLogger(__name__)

PAGE_NAME = "report.html"
"""File name of the page in the submit directory."""


def write_page(submit_path: str, out: str | None = None, this_driver: bool = False) -> str:
    """Write the page of a run, atomically.

    Parameters
    ----------
    submit_path : `str`
        The run's submit directory.
    out : `str`, optional
        Page file (default ``<submit_path>/report.html``).
    this_driver : `bool`
        The caller is the run's driver (`reports.run_state`).

    Returns
    -------
    path : `str`
        The file written.
    """
    out = os.path.abspath(out or os.path.join(submit_path, PAGE_NAME))
    data = read_run(os.path.abspath(submit_path), this_driver)
    text = render(data, os.path.dirname(out))
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
    """Rewrite a run's page from its driver: at most every ``interval``
    seconds and for at most ``budget`` of its time, and when ``final``.

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
    from ..store.runindex import resolve_run
    from ..store.runstore import StateStoreError

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
