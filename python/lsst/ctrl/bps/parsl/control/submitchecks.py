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

"""Checks ``bps submit`` makes before it writes anything."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..configuration import ConfigurationError
from ..site import SiteConfig

if TYPE_CHECKING:
    from lsst.ctrl.bps import BpsConfig, GenericWorkflow

__all__ = ("check_executables", "check_submit_path")


def check_submit_path(config: BpsConfig) -> None:
    """The submit directory must be creatable (its nearest existing ancestor writable).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The submit configuration.

    Raises
    ------
    ConfigurationError
        If the directory cannot be created by this user.
    """
    found, value = config.search("submitPath", opt={"replaceVars": False, "default": None})
    if not found or not isinstance(value, str) or not value:
        return
    path = value.split("{", 1)[0]
    if "{" in value:
        path = os.path.dirname(path)
    path = os.path.abspath(os.path.expanduser(path or "."))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigurationError(
            f"'submitPath' is {value!r}, but {existing} is not a directory: set submitPath to a directory "
            "you can write"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"'submitPath' is {value!r}, but {existing} is not writable by you: set submitPath to a "
            "directory you can write"
        )


def check_executables(config: BpsConfig, generic_workflow: GenericWorkflow) -> None:
    """On a site whose executors all run jobs here, absolute executable paths must be executable here.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The submit configuration.
    generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
        The workflow to run.

    Raises
    ------
    ConfigurationError
        If an executable is missing or not executable.
    """
    site = SiteConfig.from_config(config)
    if any(site.capacity(label) is None for label in site.executor_labels()):
        return  # jobs run elsewhere: the path may exist only there
    executables = list(generic_workflow.get_executables(data=True, transfer_only=False))
    final = generic_workflow.get_final()
    final_executable = getattr(final, "executable", None)
    if final_executable is not None:
        executables.append(final_executable)
    for executable in executables:
        path = str(executable.src_uri)
        if path.startswith("file://"):
            path = path[len("file://") :]
        if not os.path.isabs(path) or "$" in path or "<" in path:
            continue
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigurationError(
                f"executable '{executable.name}' is {path}, which is not an executable file on this host "
                f"({site.where} runs jobs here): fix the executable's path in the submit YAML"
            )
