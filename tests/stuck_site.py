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

"""Local sites whose executor gets stuck for ever, as an HTEX waiting on a
dead interchange does (for tests of the driver's bounds).

``StuckShutdownSite``: the executor's ``shutdown`` never returns.
``StuckLoopSite``: once the file named by ``$BPS_PARSL_TEST_STUCK`` exists,
reading the executor's ``interchange_proc`` (which the driver's loop does on
every pass) never returns.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from lsst.ctrl.bps.parsl.sites import Local


def _for_ever() -> None:
    threading.Event().wait()


class StuckShutdownSite(Local):
    """Local, with an executor whose shutdown never ends."""

    def get_executors(self) -> list[Any]:
        executors = super().get_executors()
        for executor in executors:
            real = executor.shutdown

            def shutdown(*args: Any, real: Any = real, **kwargs: Any) -> None:
                real(*args, **kwargs)
                _for_ever()

            executor.shutdown = shutdown
        return executors


def _interchange_proc(self: Any) -> None:
    flag = os.environ.get("BPS_PARSL_TEST_STUCK")
    if flag and os.path.exists(flag):
        _for_ever()
    return None


class StuckLoopSite(Local):
    """Local, with an executor the driver's loop gets stuck in once a flag file exists."""

    def get_executors(self) -> list[Any]:
        executors = super().get_executors()
        for executor in executors:
            executor.__class__ = type(
                "Stuck" + type(executor).__name__,
                (type(executor),),
                {"interchange_proc": property(_interchange_proc)},
            )
        return executors
