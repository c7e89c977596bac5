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


r"""Starting a job's command without its shell, where the shell would only
have started it.

A job attempt is a shell script (`processes.job_script`): the attempt's
token, the site's command prefix, the job's ``export`` lines, its command
line. When that script is plain, ``bash -c`` (or ``dash -c``) would do
nothing but create the two log files and ``exec`` one program with an
argument list and an environment that can be worked out in advance. Then
`direct_start` works them out, and the launcher starts that program
itself, with the log files opened for it: the same process, arguments,
environment, files, session and exit status, without the shell's ~1 ms of
start-up per job (doc/performance.md).

The script is plain when all of these hold; otherwise the shell runs it:

* the shell is bash or dash (`shell_kind`), the command prefix is empty;
* every environment line is ``export NAME=WORD`` as `commands.export_lines`
  writes them (single-quoted text, ``"${X}"``, safe bare characters);
* the command line is one simple command of words made of the characters
  ``A-Z a-z 0-9 _ . / : , + @ % = -``, single-quoted text, double-quoted
  text without ``\``, backquotes or ``!``, and ``$NAME`` / ``${NAME}``
  (unquoted only when the value has no blank, newline, ``*``, ``?``, ``[``
  or ``\``); its first word names a file by a path (holds a ``/``) and is
  not an assignment;
* every variable expanded is one the shell exports (so it has the value
  the shell would expand), and none the shell treats specially (``SHLVL``,
  ``PWD``, ``IFS``, ``RANDOM``, ``BASH*``, ...; `_SPECIAL`) is exported or
  expanded;
* no variable that changes how the shell starts (``BASH_ENV``,
  ``SHELLOPTS``, ...; `_STARTUP`) is in the environment.

The environment the shell itself passes on (what it adds, resets or drops:
``PWD``, ``SHLVL``, ``OLDPWD``, ``IFS``, exported functions re-written,
names that are not variable names...) is asked of the shell once per
environment (`shell_environment`), so it is exactly the shell's; then the
job's exports are applied and, for bash, ``_`` is set to the command's path.
If the program cannot be started (missing, not executable, no ``#!`` line,
log directory gone), the caller starts the shell after all, which says why,
creates the directory, or runs the file as a script, as it always did.
tests/test_direct.py compares the arguments and environment a program sees
both ways.

Standard library only (the spawner runs under ``python -S``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache

__all__ = ("DirectStart", "direct_start", "shell_environment", "shell_kind")

DirectStart = tuple[list[str], dict[str, str]]
"""(argv, changes) of a program started without its shell: its arguments, and
the variables set over the environment the shell passes on (`shell_environment`)."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:,+@%=-")
_UNSAFE_UNQUOTED_VALUE = frozenset(" \t\n*?[\\")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_EXPORT = re.compile(r"export ([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_SPECIAL = frozenset(
    {
        "CDPATH",
        "COMP_WORDBREAKS",
        "DIRSTACK",
        "ENV",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "FUNCNAME",
        "GLOBIGNORE",
        "GROUPS",
        "HISTCMD",
        "IFS",
        "LINENO",
        "OLDPWD",
        "OPTARG",
        "OPTERR",
        "OPTIND",
        "PIPESTATUS",
        "POSIXLY_CORRECT",
        "PPID",
        "PS1",
        "PS2",
        "PS3",
        "PS4",
        "PWD",
        "RANDOM",
        "SECONDS",
        "SHELLOPTS",
        "SHLVL",
        "SRANDOM",
        "UID",
        "_",
    }
)
"""Variables a shell reads, sets or resets itself (with ``BASH*``, ``LC_ALL``):
never exported or expanded by a job started without its shell."""
_STARTUP = frozenset({"BASH_ENV", "BASHOPTS", "BASH_XTRACEFD", "ENV", "POSIXLY_CORRECT", "SHELLOPTS"})
"""Variables that change what the shell does when it starts (not only the environment it passes on)."""
_ENV_PROGRAM = "/usr/bin/env"

_LIT, _QUOTED_LIT, _QUOTED_VAR, _BARE_VAR = 0, 1, 2, 3
Word = tuple[tuple[tuple[int, str], ...], bool]
"""A word's parts (kind, text or variable name), and whether any of it was quoted."""


def _special(name: str) -> bool:
    return name in _SPECIAL or name.startswith("BASH") or name == "LC_ALL"


@lru_cache(maxsize=16)
def shell_kind(shell: str) -> str | None:
    """``"bash"`` or ``"dash"`` for a shell whose ``-c`` behaviour
    `direct_start` reproduces, else `None`.

    Parameters
    ----------
    shell : `str`
        Path of the job's shell.

    Returns
    -------
    kind : `str` or `None`
        ``"bash"``, ``"dash"`` or `None`.
    """
    name = os.path.basename(shell)
    try:
        real = os.path.basename(os.path.realpath(shell, strict=True))
    except OSError:
        return None
    if name == real == "bash":
        return "bash"
    if real == "dash" and name in ("sh", "dash"):
        return "dash"
    return None


def _variable(text: str, start: int) -> tuple[str, int] | None:
    """The name of the ``$NAME`` or ``${NAME}`` at ``text[start]`` and the index after it."""
    if text.startswith("{", start + 1):
        match = _NAME.match(text, start + 2)
        if match is None or not text.startswith("}", match.end()):
            return None
        return match.group(), match.end() + 1
    match = _NAME.match(text, start + 1)
    if match is None:
        return None
    return match.group(), match.end()


@lru_cache(maxsize=4096)
def _statements(text: str) -> tuple[tuple[Word, ...], ...] | None:
    """The words of each simple command of ``text`` (one per line), or `None`
    if it holds anything but plain words.
    """
    statements: list[tuple[Word, ...]] = []
    words: list[Word] = []
    parts: list[tuple[int, str]] | None = None
    quoted = False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\n":
            if parts is not None:
                words.append((tuple(parts), quoted))
                parts, quoted = None, False
            if char == "\n" and words:
                statements.append(tuple(words))
                words = []
            i += 1
            continue
        if parts is None:
            parts = []
        if char in _SAFE:
            j = i + 1
            while j < n and text[j] in _SAFE:
                j += 1
            parts.append((_LIT, text[i:j]))
            i = j
        elif char == "'":
            j = text.find("'", i + 1)
            if j < 0:
                return None
            parts.append((_QUOTED_LIT, text[i + 1 : j]))
            quoted = True
            i = j + 1
        elif char == '"':
            quoted = True
            i += 1
            start = i
            while True:
                if i >= n or text[i] in "\\`!":
                    return None
                if text[i] == '"':
                    parts.append((_QUOTED_LIT, text[start:i]))
                    i += 1
                    break
                if text[i] == "$":
                    parts.append((_QUOTED_LIT, text[start:i]))
                    found = _variable(text, i)
                    if found is None:
                        return None
                    parts.append((_QUOTED_VAR, found[0]))
                    i = start = found[1]
                else:
                    i += 1
        elif char == "$":
            found = _variable(text, i)
            if found is None:
                return None
            parts.append((_BARE_VAR, found[0]))
            i = found[1]
        else:
            return None
    if parts is not None:
        words.append((tuple(parts), quoted))
    if words:
        statements.append(tuple(words))
    return tuple(statements)


def _expand(word: Word, changes: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    """The text of ``word`` where ``changes`` were set over ``environ``;
    `None` if the shell would split or glob it, or expand a variable it does
    not export.
    """
    texts = []
    for kind, text in word[0]:
        if kind in (_LIT, _QUOTED_LIT):
            texts.append(text)
            continue
        value = changes.get(text, environ.get(text))
        if value is None or _special(text):
            return None  # the shell may hold a variable it does not export (HOSTTYPE, ...)
        if kind == _BARE_VAR and not _UNSAFE_UNQUOTED_VALUE.isdisjoint(value):
            return None
        texts.append(value)
    return "".join(texts)


@lru_cache(maxsize=256)
def _exports(env: str) -> tuple[tuple[str, Word], ...] | None:
    """``(name, value)`` of each statement of ``env``, or `None` if one is not
    ``export NAME=WORD`` with a value the shell would not split or glob.
    """
    statements = _statements(env)
    if statements is None:
        return None
    exports = []
    for statement in statements:
        if len(statement) != 2 or statement[0] != (((_LIT, "export"),), False):
            return None
        parts = statement[1][0]
        name, equals, rest = parts[0][1].partition("=")
        if parts[0][0] != _LIT or not equals or not _NAME.fullmatch(name):
            return None
        value = ((_LIT, rest), *parts[1:])
        if any(kind == _BARE_VAR for kind, _ in value):
            return None
        exports.append((name, (value, True)))
    return tuple(exports)


def shell_environment(shell: str, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment ``shell``, started with ``environ``, gives a program
    it runs in its own place (before the job's exports and ``_``), asked of
    the shell itself once: ``shell -c '/usr/bin/env -0'``. `None` when a
    variable changes how the shell starts (`_STARTUP`), or when the shell
    does not answer plainly (an exit status, anything on its stderr, e.g. a
    warning about ``SHLVL`` or ``LC_ALL``).

    Parameters
    ----------
    shell : `str`
        Path of the shell.
    environ : `~collections.abc.Mapping` [`str`, `str`]
        Environment the shell starts with.

    Returns
    -------
    environment : `dict` [`str`, `str`] or `None`
        What the shell passes to a program it runs, or `None` when it cannot
        be known plainly.
    """
    if not _STARTUP.isdisjoint(environ) or not os.access(_ENV_PROGRAM, os.X_OK):
        return None
    import subprocess

    try:
        done = subprocess.run(
            [shell, "-c", f"{_ENV_PROGRAM} -0"],
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode or done.stderr:
        return None
    passed = {}
    for item in done.stdout.split(b"\0"):
        if item:
            name, equals, value = item.partition(b"=")
            if not equals:
                return None
            passed[os.fsdecode(name)] = os.fsdecode(value)
    return passed


def direct_start(
    kind: str | None,
    shell_environ: Mapping[str, str] | None,
    token_name: str,
    token: str,
    prefix: str,
    env: str,
    command: str,
) -> DirectStart | None:
    """The program, arguments and environment the job's shell would run, or
    `None` when its script is not plain (module docstring).

    Parameters
    ----------
    kind : `str` or `None`
        `shell_kind` of the job's shell.
    shell_environ : `~collections.abc.Mapping` or `None`
        `shell_environment` of the environment the shell would start with.
    token_name, token : `str`
        The attempt's token variable and value, exported first.
    prefix, env, command : `str`
        The site's command prefix, the job's export lines, its command line.

    Returns
    -------
    start : `tuple` or `None`
        ``(argv, changes)``: the program's command line and the variables the
        script sets or changes; `None` when the script is not plain.
    """
    if kind is None or shell_environ is None or prefix:
        return None
    exports = _exports(env)
    statements = _statements(command)
    if (
        exports is None
        or statements is None
        or len(statements) != 1
        or not all(char in _SAFE for char in token)
    ):
        return None
    words = statements[0]
    changes = {token_name: token}
    for name, word in exports:
        if _special(name):
            return None
        value = _expand(word, changes, shell_environ)
        if value is None:
            return None
        changes[name] = value
    first = words[0][0]
    if first and first[0][0] == _LIT and _ASSIGNMENT.match(first[0][1]):
        return None
    argv = []
    for word in words:
        text = _expand(word, changes, shell_environ)
        if text is None:
            return None
        if text or word[1]:
            argv.append(text)
    if not argv or "/" not in argv[0]:
        return None
    if kind == "bash":
        changes["_"] = argv[0]
    return argv, changes
