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

"""The function every Parsl executor runs for a job attempt: `run_job`.

`run_job` lives in the top-level package ``lsst_ctrl_bps_parsl_worker``
(standard library only), so that Parsl, which sends functions by reference,
makes its workers import that package and nothing else: importing this
module imports ``lsst.ctrl.bps`` (and the butler), about 1.5 s of CPU per
worker. This name stays the public one.

`ResourceGate` and `GATES` serve the driver's in-process thread pools only.
"""

from __future__ import annotations

import threading
from collections import deque

from lsst_ctrl_bps_parsl_worker.job import NotStartedError, job_script, run_job
from lsst_ctrl_bps_parsl_worker.processes import ATTEMPT_ENV, EXIT_MARKER

__all__ = (
    "ATTEMPT_ENV",
    "EXIT_MARKER",
    "GateClosedError",
    "NotStartedError",
    "ResourceGate",
    "job_script",
    "run_job",
)

GateClosedError = NotStartedError
"""The run is stopping: an in-process pool's gate started no more jobs."""


class ResourceGate:
    """Cores and memory of an in-process pool, taken by each job while it runs.

    Worker threads wait here, so a finishing job hands its cores to the next
    one without a round trip through the driver.

    Parameters
    ----------
    cores : `int`
        Cores jobs may use at once.
    memory : `int` or `None`
        Memory (MB) jobs may use at once; `None` for no limit.
    """

    def __init__(self, cores: int, memory: int | None):
        self.cores = cores
        self.memory = memory
        self._free_cores = cores
        self._free_memory = memory
        self._closed = False
        self._lock = threading.Lock()
        self._waiters: deque[list] = deque()

    def _fits(self, cores: int, memory: int) -> bool:
        return self._free_cores >= cores and (self._free_memory is None or self._free_memory >= memory)

    def _take(self, cores: int, memory: int) -> None:
        self._free_cores -= cores
        if self._free_memory is not None:
            self._free_memory -= memory

    def acquire(self, cores: int, memory: int) -> tuple[int, int]:
        """Wait until the job fits, take its share; returns what was taken.

        Waiters are served first come, first served, so a large job is
        not overtaken forever by small ones.
        """
        cores = min(cores, self.cores)
        memory = min(memory, self.memory) if self.memory is not None else 0
        with self._lock:
            if self._closed:
                raise GateClosedError("run stopping")
            if not self._waiters and self._fits(cores, memory):
                self._take(cores, memory)
                return cores, memory
            # [cores, memory, event, granted]
            event = threading.Event()
            waiter = [cores, memory, event, False]
            self._waiters.append(waiter)
        event.wait()
        if not waiter[3]:
            raise GateClosedError("run stopping")
        return cores, memory

    def release(self, taken: tuple[int, int]) -> None:
        """Give back what `acquire` took and wake the waiters that now fit."""
        with self._lock:
            self._free_cores += taken[0]
            if self._free_memory is not None:
                self._free_memory += taken[1]
            while self._waiters and self._fits(self._waiters[0][0], self._waiters[0][1]):
                waiter = self._waiters.popleft()
                self._take(waiter[0], waiter[1])
                waiter[3] = True
                waiter[2].set()

    def close(self) -> None:
        """Make every waiting and future `acquire` raise `GateClosedError`."""
        with self._lock:
            self._closed = True
            while self._waiters:
                self._waiters.popleft()[2].set()


GATES: dict[str, ResourceGate] = {}
"""Gates of in-process executors, by ``<run id>/<executor label>``."""
