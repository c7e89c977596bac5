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

"""Warm starts as `processes.Launcher.spawn_job` asks for them: which jobs fit
(design.md, "Warm starts"), which warm process forks them, and its handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import time
from collections import ChainMap
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

from . import warmserver
from .exits import ended_child, reap
from .keeper import become_subreaper
from .warmserver import SLOT_ENV, SLOT_SIZE, TOKEN_ENV

__all__ = ("MAX_SERVERS", "WarmStarts")

MAX_SERVERS = 2
"""Warm processes (environments) one asker keeps at most."""
MAX_DEATHS = 3
"""Warm processes of one environment that may die before its jobs all start cold."""
_MATTERS = re.compile(
    r"(PYTHON.*|LD_.*|.*_DIR|SETUP_.*|EUPS_.*|LC_.*|LANG|LANGUAGE|TZ|OMP_.*|MKL_.*|OPENBLAS_.*|"
    r"NUMEXPR_.*|.*_NUM_THREADS)"
)
"""Variables read when the stack is imported: a job whose values differ needs another warm process."""
_SCRIPT_LINES = frozenset(
    {
        "import re",
        "import sys",
        "from lsst.ctrl.mpexec.cli.pipetask import main",
        "if __name__ == '__main__':",
        'if __name__ == "__main__":',
        "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])",
        "sys.exit(main())",
        "main()",
    }
)
"""Lines of a ``pipetask`` script (pip's console script, the stack's ``bin/pipetask``)."""
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PIECE = re.compile(
    rf"""([A-Za-z0-9_./:,+@%=-]+)|'([^']*)'|"((?:[^"\\`$!]|\$(?:\{{{_NAME}\}}|{_NAME}))*)"|"""
    rf"""\$(?:\{{({_NAME})\}}|({_NAME}))|([ \t]+)"""
)
"""A piece of a plain word (safe characters, quoted text, a variable), or blanks between words."""
_VARIABLE = re.compile(rf"\$(?:\{{({_NAME})\}}|({_NAME}))")
_SPECIAL = re.compile(
    r"_|IFS|PWD|OLDPWD|SHLVL|ENV|CDPATH|POSIXLY_CORRECT|SHELLOPTS|BASH.*|LC_ALL|PS[1-4]|RANDOM|SRANDOM|"
    r"SECONDS|LINENO|OPT(ARG|ERR|IND)|EPOCH.*|HISTCMD|E?UID|PPID|GROUPS|FUNCNAME|DIRSTACK|PIPESTATUS|"
    r"GLOBIGNORE|COMP_WORDBREAKS"
)
"""Variables a shell reads, sets or resets itself: a job exporting or expanding one starts cold."""
_STARTUP = ("BASH_ENV", "BASHOPTS", "BASH_XTRACEFD", "ENV", "POSIXLY_CORRECT", "SHELLOPTS")
"""Variables that change what the shell does when it starts: with one of them, jobs start cold."""
_ENV_PROGRAM = "/usr/bin/env"
_START_TIMEOUT = 300.0
_NOT_PLAIN = "their script is not plain (commandPrefix, shell syntax; see design.md)"


# ---- what the job's shell would run -----------------------------------------------------


def _shell_words(line: str, variables: Mapping[str, str]) -> list[str] | None:
    """The words of a simple command ``line`` as the shell expands them with
    ``variables``; `None` if it holds anything but plain words (design.md, "Warm starts").
    """

    def value(name: str) -> str:
        if _SPECIAL.fullmatch(name):
            raise KeyError(name)
        return variables[name]  # KeyError: the shell may hold a variable it does not export

    words: list[str] = []
    word, quoted, pos = "", False, 0
    line += " "  # the last word ends at a blank too
    try:
        while pos < len(line):
            match = _PIECE.match(line, pos)
            if match is None:
                return None
            pos = match.end()
            bare, single, double, braced, name, blank = match.groups()
            if blank is not None:
                if word or quoted:
                    words.append(word)
                word, quoted = "", False
            elif bare is not None:
                word += bare
            elif single is not None:
                word += single
                quoted = True
            elif double is not None:
                word += _VARIABLE.sub(lambda v: value(v.group(1) or v.group(2)), double)
                quoted = True
            else:
                text = value(braced or name)
                if any(char in text for char in " \t\n*?[\\"):
                    return None  # the shell would split or glob it
                word += text
    except KeyError:
        return None
    return words


def _plain_job(
    passed: dict[str, str], token: str, prefix: str, env: str, command: str
) -> tuple[list[str], dict[str, str]] | None:
    """(argv, variables set over ``passed``) of the program the job's shell
    would run in its own place, or `None` when its script is not plain.
    """
    if prefix or "\n" in command.strip():
        return None
    changes = {TOKEN_ENV: token}
    if _shell_words(token, {}) != [token]:
        return None
    for line in filter(str.strip, env.splitlines()):
        words = _shell_words(line, ChainMap(changes, passed))
        if not words or len(words) != 2 or not re.match(rf"export {_NAME}=", line):
            return None
        name, _, text = words[1].partition("=")
        if _SPECIAL.fullmatch(name):
            return None
        changes[name] = text
    argv = _shell_words(command.strip(), ChainMap(changes, passed))
    if not argv or "/" not in argv[0] or re.match(rf"{_NAME}\+?=", command.strip()):
        return None
    return argv, changes


def _shell_environment(shell: str, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment ``shell``, started with ``environ``, passes to a program
    it runs (``PWD``, ``SHLVL``, ...), asked of the shell itself; `None` if it
    is not bash or dash, or does not answer plainly.
    """
    if os.path.basename(os.path.realpath(shell)) not in ("bash", "dash") or any(
        name in environ for name in _STARTUP
    ):
        return None
    import subprocess

    try:
        done = subprocess.run(
            [shell, "-c", f"{_ENV_PROGRAM} -0"], env=environ, stdin=subprocess.DEVNULL, capture_output=True
        )
    except OSError:
        return None
    items = [item.partition(b"=") for item in done.stdout.split(b"\0") if item]
    if done.returncode or done.stderr or not all(equals for _, equals, _ in items):
        return None
    return {os.fsdecode(name): os.fsdecode(value) for name, _, value in items}


# ---- is it pipetask, which warm process ------------------------------------------------


def _pipetask_python(path: str, environ: Mapping[str, str]) -> tuple[str, str] | str:
    """(Python, resolved script directory) of ctrl_mpexec's ``pipetask`` script
    at ``path`` (which scripts are: design.md), or why it is not one.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(4096)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    lines = head.decode(errors="replace").splitlines()
    body = [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("#")]
    if (
        not lines
        or not lines[0].startswith("#!")
        or "from lsst.ctrl.mpexec.cli.pipetask import main" not in body
        or not set(body) <= _SCRIPT_LINES
    ):
        return f"{path} is not ctrl_mpexec's pipetask script"
    words = lines[0][2:].split()
    python = None
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        import shutil

        found = shutil.which(words[1], path=environ.get("PATH", ""))
        python = os.path.abspath(found) if found else None
    elif len(words) == 1:
        python = words[0]
    if not python or not os.path.isabs(python) or not os.access(python, os.X_OK):
        return f"the Python of {path} ({lines[0][2:].strip()}) is not found"
    return python, os.path.dirname(os.path.realpath(path))


def _environment_key(python: str, script_dir: str, environ: Mapping[str, str]) -> tuple:
    """What must be equal for two jobs to share a warm process (`_MATTERS`)."""
    return (python, script_dir, tuple(sorted((k, v) for k, v in environ.items() if _MATTERS.fullmatch(k))))


class _WarmProcess:
    """One warm process, as its asker sees it: started with ``python``, the
    script's directory and the first job's environment; ``note`` gets its notes.
    """

    def __init__(
        self, python: str, script_dir: str, environ: Mapping[str, str], note: Callable[[str], None]
    ) -> None:
        import subprocess  # here: the spawner starts faster without it

        self.python = python
        self.note = note
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in environ.items() if k != TOKEN_ENV}
        env[SLOT_ENV] = "_" * SLOT_SIZE
        boot = (  # sys.path[0] first: never a module of the current directory (`python -c`)
            f"import sys; sys.path[0] = {script_dir!r};"
            "import importlib.util as u;"
            f"s = u.spec_from_file_location('_bps_parsl_warm', {os.path.abspath(warmserver.__file__)!r});"
            "m = u.module_from_spec(s); s.loader.exec_module(m);"
            f"m.serve({theirs.fileno()}, {script_dir!r})"
        )
        self.proc: subprocess.Popen = subprocess.Popen(
            [python, "-c", boot],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.sock = ours
        self.ready = False
        self.dead: str | None = None
        self.started = time.monotonic()

    def poll(self) -> None:
        """Read what the warm process said since (ready, notes), without waiting."""
        while self.dead is None and select.select([self.sock], [], [], 0)[0]:
            self._message(self._receive())
        if self.dead is None and not self.ready and time.monotonic() - self.started > _START_TIMEOUT:
            self.stop()
            self.dead = f"did not import the stack within {_START_TIMEOUT:.0f} s"

    def _receive(self) -> dict:
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            code = self.proc.poll()
            self.dead = "died" if code is None else f"died (exit status {code})"
            self.stop()
            return {}
        return json.loads(data)

    def _message(self, message: dict) -> None:
        if "note" in message:
            self.note(f"warm process {self.proc.pid} ({self.python}): {message['note']}")
        self.ready = self.ready or bool(message.get("ready"))
        if "fail" in message:
            self.dead = message["fail"]
            self.stop()

    def start(self, request: dict) -> int | str:
        """Ask for a job (``argv``, ``env``, ``cwd``, ``out``, ``err``): its pid, or why not."""
        try:
            self.sock.send(json.dumps(request).encode())
        except OSError:
            self._receive()
        while self.dead is None:
            message = self._receive()
            if "pid" in message:
                return int(message["pid"])
            if "cold" in message:
                return str(message["cold"])
            self._message(message)
        return f"the warm process {self.dead}"

    def stop(self) -> None:
        """Close the connection (the warm process exits at its end) and reap it."""
        import subprocess

        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        except ChildProcessError:
            pass


class WarmStarts:
    """Warm processes of one asker, and its notes about jobs started cold.

    Parameters
    ----------
    note : callable
        Called with one line of text the first time a reason comes up.
    """

    def __init__(self, note: Callable[[str], None]) -> None:
        self._note = note
        self._said: set[str] = set()
        self._not_pipetask: dict[tuple[str, str | None], str] = {}  # (program, PATH): why not
        self._passed: dict[str, tuple[Mapping[str, str], dict[str, str] | None]] = {}  # shell: (base, passed)
        self._servers: dict[tuple, _WarmProcess] = {}
        self._deaths: dict[tuple, int] = {}
        self._subreaper: bool | None = None
        self.warm = 0
        self.cold = 0

    def _say(self, text: str) -> None:
        """Note ``text`` once (and no more than 100 different lines)."""
        if text not in self._said and len(self._said) < 100:
            self._said.add(text)
            self._note(text)

    def _cold(self, reason: str | None) -> None:
        self.cold += 1
        if reason:
            self._say(f"jobs started cold: {reason}")

    def start_job(
        self, shell: str, token: str, prefix: str, env: str, command: str, out: str, err: str, base: dict
    ) -> int | None:
        """Start a job attempt warm if its script is plain and runs ``pipetask``.

        Parameters
        ----------
        shell, token, prefix, env, command : `str`
            The job's shell, token, command prefix, export lines and command line.
        out, err : `str`
            Its stdout and stderr log files.
        base : `dict`
            The environment its shell would start with (token aside).

        Returns
        -------
        pid : `int` or `None`
            The job's pid (a child to reap), or `None`: start it cold (the reason, if any, was noted).
        """
        found = _plain_job(base, token, prefix, env, command)  # expands no variable the shell sets
        if found is None:
            self._cold(_NOT_PLAIN)
            return None
        argv, changes = found
        environ = ChainMap(changes, base)
        seen = (argv[0], environ.get("PATH"))
        program = self._not_pipetask.get(seen) or _pipetask_python(argv[0], environ)
        if isinstance(program, str):
            if len(self._not_pipetask) < 1024:
                self._not_pipetask[seen] = program
            self._cold(program)
            return None
        cached = self._passed.get(shell)
        if cached is None or cached[0] is not base:
            cached = self._passed[shell] = (base, _shell_environment(shell, base))
        if cached[1] is None:
            self._cold(_NOT_PLAIN)
            return None
        if cached[1].get("_") == _ENV_PROGRAM:  # bash sets ``_`` to the program it runs
            changes["_"] = argv[0]
        return self._start(argv, ChainMap(changes, cached[1]), out, err, program)

    def _start(
        self, argv: list[str], environ: Mapping[str, str], out: str, err: str, found: tuple[str, str]
    ) -> int | None:
        """Start ``pipetask`` (``found``: its `_pipetask_python`) warm: its pid, or `None`."""
        if self._subreaper is None:
            self._subreaper = become_subreaper()
        if not self._subreaper:
            self._cold("this process cannot adopt the jobs a warm process forks (PR_SET_CHILD_SUBREAPER)")
            return None
        python, script_dir = found
        key = _environment_key(python, script_dir, environ)
        server = self._servers.get(key)
        if server is not None:
            server.poll()
            if server.dead is not None:
                del self._servers[key]
                self._deaths[key] = self._deaths.get(key, 0) + 1
                self._say(f"the warm process {server.proc.pid} for {python} {server.dead}")
                server = None
        if server is None:
            if self._deaths.get(key, 0) >= MAX_DEATHS:
                self._cold(f"the warm processes for {python} died {MAX_DEATHS} times")
            elif len(self._servers) >= MAX_SERVERS:
                self._cold(
                    f"more than {MAX_SERVERS} different environments (Python, PYTHONPATH, stack setup)"
                )
            else:
                try:
                    self._servers[key] = _WarmProcess(python, script_dir, environ, self._say)
                    self._cold(None)  # while it imports the stack
                except OSError as exc:
                    self._deaths[key] = self._deaths.get(key, 0) + 1
                    self._cold(f"a warm process for {python} could not be started: {exc}")
            return None
        if not server.ready:
            self._cold(None)
            return None
        request = {"argv": argv, "env": dict(environ), "cwd": os.getcwd(), "out": out, "err": err}
        result = server.start(request)
        if isinstance(result, int):
            self.warm += 1
            return result
        self._cold(result)
        return None

    def reap_orphans(self, keep: Collection[int] = ()) -> None:
        """Reap the ended children this subreaper adopted (what jobs left behind).

        Parameters
        ----------
        keep : `~collections.abc.Collection` [`int`], optional
            Pids of this process's own other children (the orphan guard's watcher).
        """
        if not self._subreaper:
            return
        keep = {*keep, *(server.proc.pid for server in self._servers.values())}
        with contextlib.suppress(ChildProcessError):
            while (ended := ended_child()) is not None and ended[0] not in keep:
                reap(ended[0])

    def close(self) -> None:
        """Stop every warm process, and say how many jobs started warm."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()
        if self.warm:
            self._note(f"{self.warm} job(s) started warm, {self.cold} cold")
