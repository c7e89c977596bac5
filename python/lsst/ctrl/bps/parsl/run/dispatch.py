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

"""The driver's one way to run a job attempt: a task of the run's Parsl kernel (doc/design.md)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from lsst.ctrl.bps import BpsConfig
from lsst_ctrl_bps_parsl_worker.job import run_job

from ..configuration import set_parsl_logging
from ..parslcompat import start_kernel
from ..site import SiteConfig
from ..sites.losses import BlockWatch, fail_if_interchange_lost

__all__ = ("Dispatch",)

_LOG = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 60.0
"""Seconds Parsl's shutdown may take before the driver goes on without it."""


class Dispatch:
    """Parsl's data-flow kernel of one driver session, and the queue of ended attempts.

    Parameters
    ----------
    site : `SiteConfig`
        The site that builds the executors (its ``submit_path`` set).
    """

    def __init__(self, site: SiteConfig):
        self.site = site
        self.dfk: Any = None
        self.labels: list[str] = []
        self._apps: dict[str, Any] = {}
        # Not a SimpleQueue: its get(timeout) can block until the next put when a signal
        # (the driver's SIGTERM/SIGINT) interrupts it near its deadline (CPython 3.11, 3.12).
        self._ended: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._closed = False
        self.blocks: BlockWatch | None = None

    def start(self) -> None:
        """Start the site's Parsl kernel (on failure, stop what it started, then raise)."""
        from parsl.app.python import PythonApp

        config = self.site.get_parsl_config()
        _setup_parsl_logging(self.site.config, self.site.submit_path or ".")
        self.dfk = start_kernel(
            config, lambda name, exc: _LOG.warning("stopping Parsl's %s failed: %r", name, exc)
        )
        self.labels = [label for label in self.dfk.executors if label != "_parsl_internal"]
        self._apps = {
            label: PythonApp(run_job, data_flow_kernel=self.dfk, executors=[label]) for label in self.labels
        }
        running_dir = os.path.join(self.site.submit_path or ".", "parsl", "running")
        self.blocks = BlockWatch(
            {label: self.dfk.executors[label] for label in self.labels},
            running_dir,
            max_idle=self.dfk.config.max_idletime,
        )

    def submit(
        self,
        key: Any,
        label: str,
        args: tuple,
        kwargs: dict[str, Any],
        inputs: Sequence[Any],
        walltime: float | None = None,
    ) -> Any:
        """Submit one attempt (`run_job`'s arguments) to executor ``label``.

        Parameters
        ----------
        key, label : `~typing.Any`, `str`
            What the end of the attempt is queued under (see `wait`); label of the executor.
        args, kwargs, inputs : `tuple`, `dict`, `~collections.abc.Sequence`
            Arguments of `run_job` (Parsl's ``parsl_resource_specification`` too); the parents' futures.
        walltime : `float`, optional
            The job's ``requestWalltime`` (s): blocks with less left take it last (`BlockWatch`).

        Returns
        -------
        future : `~typing.Any`
            Parsl's app future of the attempt.
        """
        watched = self.blocks is not None and self.blocks.before_submit(label, walltime)
        future = self._apps[label](*args, inputs=list(inputs), **kwargs)
        future.add_done_callback(lambda done: self._ended.put((key, done)))
        if watched and self.blocks is not None and walltime:
            self.blocks.waiting[key] = (label, walltime, future)
        return future

    def tick(self) -> None:
        """Per loop pass: fail attempts of lost interchanges; keep jobs off too-short blocks."""
        if self.dfk is None or self._closed:
            return
        for label in self.labels:
            fail_if_interchange_lost(self.dfk.executors[label])
        if self.blocks is not None:
            self.blocks.tick()

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        """Every attempt that ended, waiting up to ``timeout`` s for the first.

        Parameters
        ----------
        timeout : `float`
            Seconds to wait for the first end (0: do not wait).

        Returns
        -------
        ended : `list` [`tuple`]
            ``(key, future)`` pairs; empty if none ended in time.
        """
        batch: list[tuple[Any, Any]] = []
        try:
            batch.append(self._ended.get(timeout=timeout) if timeout > 0 else self._ended.get_nowait())
            while True:
                batch.append(self._ended.get_nowait())
        except queue.Empty:
            return batch

    def drain(self) -> None:
        """Start no more attempts where the executor can (the local pool's queued ones never start)."""
        if self.dfk is None or self._closed:
            return
        for label in self.labels:
            drain = getattr(self.dfk.executors[label], "drain", None)
            if callable(drain):
                drain()

    def shutdown(self) -> None:
        """Shut the kernel and its executors down once, waiting at most `SHUTDOWN_TIMEOUT` s."""
        if self._closed or self.dfk is None:
            return
        self._closed = True
        queue = getattr(getattr(self.dfk, "monitoring", None), "resource_msgs", None)
        if queue is not None:
            # Parsl's MonitoringHub.close terminates its database process if it does not exit in
            # time (a loaded machine), then joins this queue's feeder thread, which then blocks for
            # ever writing to a full pipe nobody reads: a 10k-job monitored run hung there.
            queue.cancel_join_thread()
        done = threading.Event()

        def cleanup() -> None:
            try:
                self.dfk.cleanup()
            except Exception as exc:  # noqa: BLE001
                _LOG.warning("Parsl cleanup failed: %s", exc)
            finally:
                done.set()

        # A thread of its own, so that a shutdown stuck in Parsl (an executor waiting for an
        # interchange that died, for ever) cannot keep the driver from ending.
        threading.Thread(target=cleanup, name="bps-parsl-shutdown", daemon=True).start()
        if not done.wait(SHUTDOWN_TIMEOUT):
            _LOG.warning(
                "Parsl's shutdown did not end within %.0f s: going on without it (interchanges killed)",
                SHUTDOWN_TIMEOUT,
            )
            for executor in self.dfk.executors.values():
                proc = getattr(executor, "interchange_proc", None)
                if proc is not None and hasattr(proc, "kill"):
                    with suppress(OSError):
                        proc.kill()


class _QuietFileHandler(logging.FileHandler):
    """A log file whose write errors (a full disk) lose the record quietly."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def _setup_parsl_logging(config: BpsConfig, submit_path: str) -> None:
    """Send Parsl's log only to ``<submit>/parsl/parsl.log``, at ``parsl.log_level`` (doc/design.md)."""
    logger = logging.getLogger("parsl")
    logger.propagate = False
    handler = _QuietFileHandler(os.path.join(submit_path, "parsl", "parsl.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for old in list(logger.handlers):
        if isinstance(old, logging.FileHandler):
            logger.removeHandler(old)
            old.close()
    logger.addHandler(handler)
    set_parsl_logging(config)
