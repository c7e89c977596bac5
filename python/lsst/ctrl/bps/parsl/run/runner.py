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

It lives in ``lsst_ctrl_bps_parsl_worker`` (standard library only): Parsl
sends functions by reference, and importing this module would cost each
worker ~1.5 s of CPU (``lsst.ctrl.bps``, the butler).
"""

from __future__ import annotations

from lsst_ctrl_bps_parsl_worker.exits import EXIT_MARKER
from lsst_ctrl_bps_parsl_worker.job import NotStartedError, job_script, run_job
from lsst_ctrl_bps_parsl_worker.processes import ATTEMPT_ENV

__all__ = ("ATTEMPT_ENV", "EXIT_MARKER", "NotStartedError", "job_script", "run_job")
