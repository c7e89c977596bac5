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

"""`bps ping`: can this machine run a workflow on the configured site?"""

from __future__ import annotations

import shutil
import subprocess

from lsst.ctrl.bps import BpsConfig

__all__ = ("ping_site",)

_SCHEDULER_COMMANDS = {
    "SlurmProvider": ["sinfo", "--version"],
    "PBSProProvider": ["qstat", "--version"],
    "TorqueProvider": ["qstat", "--version"],
    "LSFProvider": ["bjobs", "-V"],
    "CondorProvider": ["condor_q", "-version"],
    "GridEngineProvider": ["qstat", "-help"],
    "KubernetesProvider": ["kubectl", "version", "--client"],
}


def _load_config(pass_thru: str | None, config: BpsConfig | dict | None) -> BpsConfig:
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER

    service = "lsst.ctrl.bps.parsl.ParslService"
    source = pass_thru.strip() if pass_thru and pass_thru.strip() else (dict(config) if config else {})
    return BpsConfig(
        source, search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS, wms_service_class_fqn=service
    )


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
    from ..configuration import ConfigurationError
    from ..site import SiteConfig

    try:
        bps_config = _load_config(pass_thru, config)
        site = SiteConfig.from_config(bps_config)
        site.validate()
        executors = site.get_executors()
    except ConfigurationError as exc:
        return 1, str(exc)
    except Exception as exc:  # the site's own code: one line, not a traceback
        from .oneline import one_line

        return 1, f"the site's executors cannot be built: {one_line(exc)}"
    for executor in executors:
        provider = getattr(executor, "provider", None)
        if provider is None:
            continue
        command = _SCHEDULER_COMMANDS.get(type(provider).__name__)
        if command is None:
            continue
        if shutil.which(command[0]) is None:
            return 1, f"executor '{executor.label}' needs '{command[0]}', which is not on PATH"
        try:
            subprocess.run(command, capture_output=True, timeout=30, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            return 1, f"executor '{executor.label}': '{' '.join(command)}' failed: {exc}"
        if command[0] == "sinfo":
            try:
                subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30, check=True)
            except (subprocess.SubprocessError, OSError):
                return 1, f"executor '{executor.label}': 'sinfo -h' cannot reach slurmctld"
    return 0, ""
