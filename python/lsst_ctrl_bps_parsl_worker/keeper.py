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


"""The keeper of a local-pool spawner: the spawner's parent, which outlives
it to record the exit status of a dead spawner's jobs (reliability.md, P1).

It holds nothing of the wire nor of the terminal (stdout only to add ``exit
<exit code>`` after the spawner's last reply), and exits when it has no
children left. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

from .exits import ended_child, exit_code_of, log_exit_status, reap, record_exit
from .journal import journal_jobs, journal_name
from .processes import live_jobs

__all__ = ("HOLD_UNNAMED", "LEFTOVER_WAIT", "become_subreaper", "keep")

_EXEC_WAIT = 0.05
"""Seconds for a job being started when the spawner died to reach its ``exec``."""
HOLD_UNNAMED = 10.0
"""Seconds an ended job that the journal does not name stays unreaped, for
the spawner taking over to read its exit status from ``/proc``."""
LEFTOVER_WAIT = 5.0
"""Seconds at most spent killing what jobs left behind once the spawner exited by itself."""
_PR_SET_CHILD_SUBREAPER = 36

Named = tuple[str, str, str]
"""(journal directory, token, stderr log) of a job the spawner's journal names."""


def become_subreaper() -> bool:
    """Make this process a ``PR_SET_CHILD_SUBREAPER`` (it adopts its descendants' orphans).

    Returns
    -------
    done : `bool`
        Whether it is one (not on systems without it).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def keep(spawner_main: Callable[[int], int], host: str) -> int:
    """Run ``spawner_main(dirs_fd)`` in a child process kept by this one
    (``dirs_fd``: a pipe for the journals' directories, JSON lines; ``-1``: no keeper).

    Parameters
    ----------
    spawner_main : `~collections.abc.Callable` [[`int`], `int`]
        The spawner's main function, called with ``dirs_fd``.
    host : `str`
        This host's name (journal names carry it).

    Returns
    -------
    code : `int`
        Exit status for this process: the spawner's.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not become_subreaper():
        return spawner_main(-1)
    dirs_r, dirs_w = os.pipe2(os.O_CLOEXEC)
    try:
        spawner = os.fork()
    except OSError:
        os.close(dirs_r)
        os.close(dirs_w)
        return spawner_main(-1)
    if spawner == 0:
        os.close(dirs_r)
        code = 1
        try:
            code = spawner_main(dirs_w)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(dirs_w)
    _to_devnull(0, 2)  # it may outlive the run (jobs left behind): it holds no terminal open
    code = _await_spawner(spawner)
    try:
        os.write(1, f"\nexit {code}\n".encode())
    except OSError:
        pass  # nobody reads the wire any more
    _to_devnull(1)
    if code == 0:
        # The spawner exited by itself: every child left is a process a job left behind.
        _end_leftovers()
    _keep_orphans(_read_dirs(dirs_r), journal_name(host, spawner))
    return code


def _to_devnull(*fds: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(devnull, fd)
    os.close(devnull)


def _read_dirs(fd: int) -> set[str]:
    """The journals' directories the spawner wrote to ``fd`` (closed)."""
    dirs = set()
    try:
        with open(fd, "rb") as stream:
            for line in stream:
                try:
                    dirs.add(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return dirs


def _await_spawner(spawner: int) -> int:
    """Reap children until the spawner ends; its exit code. Until then, the
    only other children are processes a job left behind when it ended.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if pid == spawner:
            return exit_code_of(status)[0]


def _end_leftovers() -> None:
    """SIGKILL every child left with its process group, again for what they
    leave in turn, for `LEFTOVER_WAIT` s at most.
    """
    deadline = time.monotonic() + LEFTOVER_WAIT
    while time.monotonic() < deadline:
        children = _children()
        if not children:
            return
        for pid, fields in children.items():
            if fields[0] != b"Z":
                for kill, target in ((os.killpg, pid), (os.kill, pid)):
                    try:
                        kill(target, signal.SIGKILL)
                    except OSError:
                        pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.02)


def _keep_orphans(dirs: set[str], journal: str) -> None:
    """Log the exit status of each job the spawner left, as it ends; return
    when no child is left.
    """
    logs: dict[int, Named] = {}
    starting: dict[str, Named] = {}
    for directory in dirs:
        running, _, being_started = journal_jobs(os.path.join(directory, journal))
        logs.update((pid, (directory, token, err)) for pid, (token, err) in running.items() if err)
        starting.update((token, (directory, token, err)) for token, err in being_started.items())
    if starting:
        _name_starting(logs, starting)
        time.sleep(_EXEC_WAIT)  # a job started as the spawner died may not carry its token yet
        _name_starting(logs, starting)
    held: dict[int, float] = {}
    while True:
        try:
            info = ended_child(block=not held)
        except ChildProcessError:
            return
        ended = {pid for pid, fields in _children().items() if fields[0] == b"Z"}
        if info is not None:
            ended.add(info[0])
        for pid in ended:
            if _settle(pid, logs, held):
                held.pop(pid, None)
        if held:
            time.sleep(0.1)


def _name_starting(logs: dict[int, Named], starting: dict[str, Named]) -> None:
    """Add to ``logs`` the job the spawner was starting when it died (a child
    leading its own session, with the token of the journal's ``>`` line).
    """
    children = _children()
    for token, pid in live_jobs().items():
        if token in starting and pid in children:
            logs.setdefault(pid, starting[token])


def _children() -> dict[int, list[bytes]]:
    """The fields of ``/proc/<pid>/stat`` after the command (state first) of this process's children."""
    me = str(os.getpid()).encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stream:
                data = stream.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[1] == me:
            found[int(entry)] = fields
    return found


def _settle(pid: int, logs: dict[int, Named], held: dict[int, float]) -> bool:
    """Record the exit status of ended child ``pid`` if the journal named it,
    and reap it; or hold it (see `HOLD_UNNAMED`). Whether it was reaped.
    """
    named = logs.get(pid)
    if named is None and time.monotonic() < held.setdefault(pid, time.monotonic() + HOLD_UNNAMED):
        return False
    try:
        ended = ended_child(pid)
    except ChildProcessError:
        return True
    if ended is None:
        return False
    if named is not None:
        directory, token, stderr = named
        record_exit(directory, token, ended[1])
        log_exit_status(stderr, ended[1])
    reap(pid)
    return True
