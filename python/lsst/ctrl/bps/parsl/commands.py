"""Turn a generic job into the bash script that runs it.

BPS writes command lines with three kinds of placeholders:
``{name}`` (a value of the job's ``cmdvals``), ``<ENV:NAME>`` (an environment
variable, read where the job runs) and ``<FILE:name>`` (the path of a file
of the generic workflow). They may nest, so rendering repeats until the text
stops changing.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from .files import write_private

__all__ = (
    "RenderError",
    "export_lines",
    "render",
    "write_environment_file",
)

_CMDVAL = re.compile(r"(?<!\$)\{(\w+)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV = re.compile(rf"<ENV:({_NAME})>")
_VALID_NAME = re.compile(_NAME)
_FILE = re.compile(r"<FILE:([^>]+)>")
_MAX_PASSES = 20


class RenderError(ValueError):
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
        Returns the path of a workflow file by name, or `None` if unknown.
    job_name : `str`
        Job name, for messages.
    expand_env : `bool`
        Turn ``<ENV:X>`` into ``${X}`` (for command lines); `False` keeps
        it, for `export_lines`.

    Returns
    -------
    text : `str`
        Text with ``{name}`` and ``<FILE:...>`` replaced and ``<ENV:X>``
        turned into ``${X}`` (if ``expand_env``).

    Raises
    ------
    RenderError
        If a placeholder has no value.
    """

    def cmdval(match: re.Match) -> str:
        key = match.group(1)
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
    return _ENV.sub(r"${\1}", text) if expand_env and "<ENV:" in text else text


@functools.lru_cache(maxsize=1024)
def _split_cmdvals(text: str) -> list[str]:
    return _CMDVAL.split(text)


def _export_value(value: str) -> str:
    """``value`` as one shell word: its text single-quoted, each ``<ENV:X>``
    as ``"${X}"``, so that only those references are expanded."""
    parts = _ENV.split(value)
    words = [f'"${{{part}}}"' if n % 2 else shlex.quote(part) for n, part in enumerate(parts) if part]
    return "".join(words) or "''"


def export_lines(environment: Mapping[str, str], job_name: str = "") -> str:
    """Return ``export`` statements for a job's environment, in order.

    Values reach the job exactly as written, except that each ``<ENV:X>``
    becomes the value of ``X`` where the job runs.

    Raises
    ------
    RenderError
        If a key is not a shell variable name or a value holds a NUL
        character (which no process environment can carry).
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
        lines.append(f"export {key}={_export_value(text)}")
    return "\n".join(lines)


def write_environment_file(path: str, environ: Mapping[str, str] | None = None) -> str:
    """Write the current environment as a sourceable script, readable by the
    user only (it may hold tokens).

    Returns
    -------
    path : `str`
        The file written.
    """
    environ = os.environ if environ is None else environ
    skip = {"_", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "HOST"}
    lines = [
        f"export {key}={shlex.quote(value)}"
        for key, value in sorted(environ.items())
        if key not in skip and _VALID_NAME.fullmatch(key) and not key.startswith("BASH_FUNC")
    ]
    return write_private(path, "\n".join(lines) + "\n")
