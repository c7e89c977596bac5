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

"""The checks of ``bps submit`` before it writes anything, and of ``bps ping``."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from typing import Any

from lsst.ctrl.bps import BpsConfig, GenericWorkflow

from ..configuration import ConfigurationError
from ..oneline import one_line
from ..site import SiteConfig

__all__ = ("check_executables", "check_submit_path", "ping_site")

_PROBE_TIMEOUT = 30.0
"""Seconds a scheduler command has to answer."""

_SCHEDULER_COMMANDS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    # Provider class: (the commands Parsl's provider runs, a probe that needs the scheduler to answer).
    "SlurmProvider": (("sbatch", "squeue", "scancel"), ["squeue", "--noheader", "--user", "{user}"]),
    "PBSProProvider": (("qsub", "qstat", "qdel"), ["qstat", "-B"]),
    "TorqueProvider": (("qsub", "qstat", "qdel"), ["qstat", "-B"]),
    "GridEngineProvider": (("qsub", "qstat", "qdel"), ["qstat"]),
    "LSFProvider": (("bsub", "bjobs", "bkill"), ["bjobs", "-V"]),
    "CondorProvider": (("condor_submit", "condor_q", "condor_rm"), ["condor_q", "-totals"]),
}
"""What `ping_site` checks for each Parsl provider (or a subclass of it)."""


def ping_site(pass_thru: str | None, config: BpsConfig | dict | None) -> tuple[int, str]:
    """Check Parsl, the site class, its executors and its scheduler's commands.

    Parameters
    ----------
    pass_thru : `str` or `None`
        Path of a submit YAML, as given to ``bps ping``.
    config : `lsst.ctrl.bps.BpsConfig`, `dict` or `None`
        The configuration, if given instead of a file.

    Returns
    -------
    status, message : `tuple`
        0 and "" if all answer, else 1 and a one-line reason.
    """
    try:
        import parsl  # noqa: F401
    except ImportError as exc:
        return 1, f"parsl does not import ({exc}): pip install parsl"
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER

    source = pass_thru.strip() if pass_thru and pass_thru.strip() else (dict(config) if config else {})
    try:
        bps_config = BpsConfig(
            source,
            search_order=BPS_SEARCH_ORDER,
            defaults=BPS_DEFAULTS,
            wms_service_class_fqn="lsst.ctrl.bps.parsl.ParslService",
        )
        site = SiteConfig.from_config(bps_config)
        site.validate()
        executors = site.get_executors()
    except ConfigurationError as exc:
        return 1, str(exc)
    except Exception as exc:  # the site's own code: one line, not a traceback
        return 1, f"the site's executors cannot be built: {one_line(exc)}"
    problem = next(filter(None, map(_check_executor, executors)), None)
    return (1, problem) if problem else (0, "")


def _check_executor(executor: Any) -> str | None:
    """What keeps ``executor`` from working here (a command not on ``PATH``, a failed probe), or `None`."""
    label = getattr(executor, "label", "?")
    launch = getattr(executor, "interchange_launch_cmd", None)
    if isinstance(launch, list) and launch and shutil.which(launch[0]) is None:
        return (
            f"executor '{label}' starts '{launch[0]}', which is not on PATH: put the bin directory of the "
            "Python environment that has parsl on PATH"
        )
    provider = getattr(executor, "provider", None)
    if provider is None:
        return None
    kind = next((c.__name__ for c in type(provider).__mro__ if c.__name__ in _SCHEDULER_COMMANDS), None)
    if kind is None:
        return None
    commands, probe = _SCHEDULER_COMMANDS[kind]
    for command in commands:
        if shutil.which(command) is None:
            return (
                f"executor '{label}' ({kind}) runs '{command}', which is not on PATH: run bps on a host with "
                "the scheduler's commands, or put them on PATH"
            )
    argv = [word.format(user=getpass.getuser()) for word in probe]
    shown = " ".join(argv)
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=_PROBE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return f"executor '{label}' ({kind}): '{shown}' did not answer within {_PROBE_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"executor '{label}' ({kind}): '{shown}' cannot run ({exc.strerror or exc})"
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[:300] or f"exit status {result.returncode}"
        return f"executor '{label}' ({kind}): '{shown}' failed: {said}"
    return None


def check_submit_path(config: BpsConfig) -> None:
    """The submit directory must be creatable (its nearest existing ancestor writable): `ConfigurationError`.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The submit configuration.
    """
    found, value = config.search("submitPath", opt={"replaceVars": False, "default": None})
    if not found or not isinstance(value, str) or not value:
        return
    path = value.split("{", 1)[0]
    if "{" in value:
        path = os.path.dirname(path)
    existing = os.path.abspath(os.path.expanduser(path or "."))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    is_dir = os.path.isdir(existing)
    if not is_dir or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"'submitPath' is {value!r}, but {existing} is not {'writable by you' if is_dir else 'a directory'}: "
            "set submitPath to a directory you can write"
        )


def check_executables(config: BpsConfig, generic_workflow: GenericWorkflow) -> None:
    """On a site whose executors all run jobs here, absolute executable paths must be executable here
    (`ConfigurationError`).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The submit configuration.
    generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
        The workflow to run.
    """
    site = SiteConfig.from_config(config)
    if any(site.capacity(label) is None for label in site.executor_labels()):
        return  # jobs run elsewhere: the path may exist only there
    final = getattr(generic_workflow.get_final(), "executable", None)
    executables = [*generic_workflow.get_executables(data=True, transfer_only=False), final]
    for executable in filter(None, executables):
        path = str(executable.src_uri).removeprefix("file://")
        if not os.path.isabs(path) or "$" in path or "<" in path:
            continue
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigurationError(
                f"executable '{executable.name}' is {path}, which is not an executable file on this host "
                f"({site.where} runs jobs here): fix the executable's path in the submit YAML"
            )
