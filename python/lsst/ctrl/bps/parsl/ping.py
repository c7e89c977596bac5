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

    Returns
    -------
    status, message : `tuple`
        0 and "" if all answer, else 1 and a one-line reason.
    """
    try:
        import parsl  # noqa: F401
    except ImportError as exc:
        return 1, f"parsl does not import ({exc}): pip install parsl"
    from .configuration import ConfigurationError
    from .site import SiteConfig

    try:
        bps_config = _load_config(pass_thru, config)
        site = SiteConfig.from_config(bps_config)
        site.validate()
        executors = site.get_executors()
    except (ConfigurationError, OSError, ValueError, TypeError, KeyError) as exc:
        return 1, str(exc)
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
