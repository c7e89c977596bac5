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

"""Where each job attempt's logs are: a stdout and a stderr file of its own
(the old plugin's names for the first attempt, then numbered), under
``<submit>/logs/<subDirTemplate>``.
"""

from __future__ import annotations

import os
import string
from typing import TYPE_CHECKING, Any

from lsst_ctrl_bps_parsl_worker.processes import append_note

from ..oneline import safe_component, safe_subdir

if TYPE_CHECKING:
    from lsst.ctrl.bps import BpsConfig

__all__ = ("append_note", "log_dir_template", "log_paths")


def log_paths(submit_path: str, log_dir: str | None, name: str, attempt: int) -> tuple[str, str]:
    """The stdout and stderr files of one attempt of one job, always under
    ``<submit>/logs`` whatever the job's name and log directory hold.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    log_dir : `str` or `None`
        The job's log sub-directory (``subDirTemplate`` expanded).
    name : `str`
        Job name.
    attempt : `int`
        Attempt number, 1 for the first.

    Returns
    -------
    stdout, stderr : `str`
        ``<submit>/logs/<log_dir>/<name>.stdout`` and ``.stderr``, then
        ``.stdout.<attempt>`` and ``.stderr.<attempt>`` after the first.
    """
    base = os.path.join(submit_path, "logs", safe_subdir(log_dir), safe_component(name))
    suffix = "" if attempt <= 1 else f".{attempt}"
    return f"{base}.stdout{suffix}", f"{base}.stderr{suffix}"


class _SubdirTemplate:
    """``subDirTemplate`` parsed once; fields missing from a job's tags are
    left out, and the path made safe (`oneline.safe_subdir`).
    """

    def __init__(self, template: str):
        self.parts = list(string.Formatter().parse(template))

    def __call__(self, label: str, tags: dict[str, Any]) -> str:
        out = []
        for literal, field, spec, _ in self.parts:
            out.append(literal)
            if field is None:
                continue
            value = label if field == "label" else tags.get(field)
            if value is not None:
                out.append(format(value, spec) if spec else str(value))
        return safe_subdir("".join(out))


def log_dir_template(config: BpsConfig) -> _SubdirTemplate:
    """The run's ``subDirTemplate`` (also from ``site.<computeSite>``, as the
    old plugin read it); unset, logs go straight into ``<submit>/logs``.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The run's configuration.

    Returns
    -------
    template : `_SubdirTemplate`
        Callable giving a job's log sub-directory from its label and tags.
    """
    found, site = config.search("computeSite", opt={"default": None})
    opt: dict[str, Any] = {"replaceVars": False, "default": ""}
    if found and site:
        opt["curvals"] = {"curr_site": site}
    found, template = config.search("subDirTemplate", opt=opt)
    return _SubdirTemplate(template if found and isinstance(template, str) else "")
