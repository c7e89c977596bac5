"""Recreate the submitting process's environment where a job runs.

Kept for site code written against the old plugin; the ``environment``
site key (see `SiteConfig.get_command_prefix`) does the same through a
file written once per run.
"""

from __future__ import annotations

from .commands import environment_script

__all__ = ("export_environment",)


def export_environment() -> str:
    """Return shell commands that recreate this process's environment.

    Returns
    -------
    script : `str`
        One ``export NAME='value'`` line per variable (see
        `commands.environment_script` for what is left out).
    """
    return environment_script()
