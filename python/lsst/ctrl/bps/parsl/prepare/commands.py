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

"""A job's command line and environment rendered (doc/configuration.md; placeholders
may nest, so rendering repeats until the text stops changing), and ``export`` lines.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from ..oneline import ShownMessageError, write_private

__all__ = (
    "RenderError",
    "environment_script",
    "export_lines",
    "fill_wms",
    "render",
    "write_environment_file",
)

_CMDVAL = re.compile(r"(?<!\$)\{(\w+)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV = re.compile(rf"<ENV:({_NAME})>")
_VALID_NAME = re.compile(_NAME)
_FILE = re.compile(r"<FILE:([^>]+)>")
_WMS_BRACES = re.compile(r"\{(wms[^}]+)\}")
_WMS = re.compile(r"<WMS:([^>]*)>")
_MAX_PASSES = 20

_WMS_PLACEHOLDERS = ("attemptNum",)
"""The ``<WMS:name>`` placeholders filled in: ``attemptNum``, 0 for the first
attempt (as HTCondor's ``NumJobStarts``), counted across restarts."""


class RenderError(ShownMessageError, ValueError):
    """A placeholder in a job's command line cannot be resolved."""


def render(
    text: str,
    cmdvals: Mapping[str, Any],
    file_path: Callable[[str], str | None],
    job_name: str,
    expand_env: bool = True,
) -> str:
    """Resolve every placeholder of ``text``.

    Parameters
    ----------
    text : `str`
        Command line or value with placeholders.
    cmdvals : `~collections.abc.Mapping`
        Values for ``{name}`` placeholders.
    file_path : callable
        The path of a workflow file by name, or `None` if unknown.
    job_name : `str`
        Job name, for messages.
    expand_env : `bool`
        Turn ``<ENV:X>`` into ``${X}`` (for command lines, not for `export_lines`).

    Returns
    -------
    text : `str`
        The text rendered (``{wmsName}`` as ``<WMS:name>``).

    Raises
    ------
    RenderError
        If a placeholder has no value, or is an unknown ``<WMS:...>``.
    """

    def cmdval(match: re.Match) -> str:
        key = match.group(1)
        if key.startswith("wms") and len(key) > 3:
            return _wms_placeholder(match)
        if key not in cmdvals:
            raise RenderError(
                f"job '{job_name}': placeholder '{{{key}}}' has no value: set '{key}' in the submit YAML"
            )
        value = cmdvals[key]
        return "" if value is None else str(value)

    def gwfile(match: re.Match) -> str:
        name = match.group(1)
        path = file_path(name)
        if path is None:
            raise RenderError(
                f"job '{job_name}': '<FILE:{name}>' names no file of the workflow: check the job's arguments"
            )
        return path

    if "{wms" in text:
        text = _WMS_BRACES.sub(_wms_placeholder, text)
    # Fast path: one pass over a cached split of the text; the loop below
    # handles nesting and reports what cannot be resolved.
    parts = _split_cmdvals(text)
    if len(parts) > 1:
        try:
            text = "".join(
                part if n % 2 == 0 else ("" if cmdvals[part] is None else str(cmdvals[part]))
                for n, part in enumerate(parts)
            )
        except KeyError:
            pass
    for _ in range(_MAX_PASSES):
        new = _FILE.sub(gwfile, _CMDVAL.sub(cmdval, text)) if ("{" in text or "<FILE:" in text) else text
        if new == text:
            break
        text = new
    else:
        raise RenderError(
            f"job '{job_name}': placeholders still unresolved after {_MAX_PASSES} passes: {text}"
        )
    if "<WMS:" in text:
        _check_wms(text, job_name)
    return _ENV.sub(r"${\1}", text) if expand_env and "<ENV:" in text else text


def _wms_placeholder(match: re.Match) -> str:
    """``{wmsAttemptNum}`` -> ``<WMS:attemptNum>``, as ctrl_bps writes it."""
    name = match.group(1)[3:]
    return f"<WMS:{name[0].lower()}{name[1:]}>"


def _check_wms(text: str, job_name: str) -> None:
    """Refuse an unknown ``<WMS:name>``."""
    for name in _WMS.findall(text):
        if name not in _WMS_PLACEHOLDERS:
            known = ", ".join(f"<WMS:{known}>" for known in _WMS_PLACEHOLDERS)
            raise RenderError(
                f"job '{job_name}': placeholder '<WMS:{name}>' is not one this plugin fills in ({known}): "
                "remove it from the job's command or environment in the submit YAML"
            )


def fill_wms(text: str, attempt_num: int) -> str:
    """Fill in the ``<WMS:...>`` placeholders of one attempt.

    Parameters
    ----------
    text : `str`
        Rendered command line or environment script.
    attempt_num : `int`
        Number of the attempt, 0 for the first one.

    Returns
    -------
    text : `str`
        ``text`` with ``<WMS:attemptNum>`` replaced by ``attempt_num``.
    """
    return text.replace("<WMS:attemptNum>", str(attempt_num))


@functools.lru_cache(maxsize=1024)
def _split_cmdvals(text: str) -> list[str]:
    """``text`` split at its ``{name}`` placeholders."""
    return _CMDVAL.split(text)


def _export_value(value: str) -> str:
    """``value`` as one shell word: single-quoted, each ``<ENV:X>`` as ``"${X}"``."""
    parts = _ENV.split(value)
    words = [f'"${{{part}}}"' if n % 2 else shlex.quote(part) for n, part in enumerate(parts) if part]
    return "".join(words) or "''"


def export_lines(environment: Mapping[str, str], job_name: str = "", literal: bool = False) -> str:
    """Return ``export`` lines for a job's environment, in order, each ``<ENV:X>`` as ``$X``.

    Parameters
    ----------
    environment : `~collections.abc.Mapping` [`str`, `str`]
        Variables to export, in order.
    job_name : `str`, optional
        Name of the job, for the error messages.
    literal : `bool`, optional
        Export the values as they are (no ``<ENV:X>`` expansion).

    Returns
    -------
    lines : `str`
        One ``export`` statement per line (no final newline).

    Raises
    ------
    RenderError
        If a key is not a shell variable name or a value holds a NUL.
    """
    lines = []
    for key, value in environment.items():
        if not isinstance(key, str) or not _VALID_NAME.fullmatch(key):
            raise RenderError(
                f"job {job_name!r}: environment key {key!r} is not a variable name (letters, digits and _, "
                "not starting with a digit): rename it in the submit YAML's environment section"
            )
        text = str(value)
        if "\0" in text:
            raise RenderError(
                f"job {job_name!r}: the value of environment key {key!r} holds a NUL character, which no "
                "process environment can carry: remove it from the submit YAML"
            )
        lines.append(f"export {key}={shlex.quote(text) if literal else _export_value(text)}")
    return "\n".join(lines)


_NOT_EXPORTED = frozenset({"_", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "HOST", "DISPLAY"})


def environment_script(environ: Mapping[str, str] | None = None) -> str:
    """Return ``export`` statements that recreate an environment.

    Parameters
    ----------
    environ : `~collections.abc.Mapping`, optional
        Variables to export (default: this process's environment).

    Returns
    -------
    script : `str`
        One ``export NAME='value'`` line per variable, sorted; the shell's
        and display's own variables (`_NOT_EXPORTED`), names that are no
        shell variable names and bash functions left out.
    """
    environ = os.environ if environ is None else environ
    kept = {
        key: value
        for key, value in sorted(environ.items())
        if key not in _NOT_EXPORTED and _VALID_NAME.fullmatch(key) and not key.startswith("BASH_FUNC")
    }
    return export_lines(kept, literal=True) + "\n" if kept else ""


def write_environment_file(path: str, environ: Mapping[str, str] | None = None) -> str:
    """Write `environment_script` to ``path``, readable by the user only.

    Parameters
    ----------
    path : `str`
        Path of the file.
    environ : `~collections.abc.Mapping` [`str`, `str`], optional
        Environment to write; `None` means this process's.

    Returns
    -------
    path : `str`
        The file written.
    """
    return write_private(path, environment_script(environ))
