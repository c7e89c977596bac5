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

"""The executor's side of the spawner's wire protocol (`lsst_ctrl_bps_parsl_worker.spawner`),
and Python tasks run through files by a fresh Python process (`job.py` as a script).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from shlex import quote
from typing import Any

import lsst_ctrl_bps_parsl_worker
from lsst_ctrl_bps_parsl_worker.job import NotStartedError

from parsl.app.errors import AppTimeout, RemoteExceptionWrapper
from parsl.serialize import deserialize, pack_apply_message
from parsl.serialize.errors import SerializationError

from ..records import AttemptResult

__all__ = ("PythonTasks", "TaskProcessError", "job_request", "parse_reply")

_HOST = socket.gethostname()
_PYTASK = os.path.join(os.path.dirname(os.path.abspath(lsst_ctrl_bps_parsl_worker.__file__)), "job.py")


class TaskProcessError(RuntimeError):
    """A Python task's process ended without a result (killed, or it crashed)."""


def job_request(
    token: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    time_limit: float | None = None,
    shell: str = "/bin/bash",
    warm: bool = False,
    inputs: Sequence[Any] = (),
    parsl_resource_specification: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spawner request of a `run_job` call (its signature, so a call
    `run_job` would refuse is refused here): 1 core, no memory.

    Parameters
    ----------
    token, prefix, env, command, out_path, err_path, pid_file, time_limit, shell, warm
        As `run_job`.
    inputs, parsl_resource_specification
        Not sent (Parsl and the executor read them).

    Returns
    -------
    request : `dict` [`str`, `~typing.Any`]
        The request, without its id.
    """
    return {
        "shell": shell,
        "prefix": prefix,
        "env": env,
        "command": command,
        "out": out_path,
        "err": err_path,
        "pid_file": pid_file,
        "token": token,
        "cores": 1,
        "memory": 0,
        "time_limit": time_limit,
        "warm": warm,
    }


def parse_reply(line: bytes) -> tuple[int, AttemptResult | BaseException]:
    """Decode one reply line of the spawner.

    Parameters
    ----------
    line : `bytes`
        The line.

    Returns
    -------
    number, result : `int`, `AttemptResult` or `BaseException`
        Id of the request; how the job ended, or `NotStartedError`.
    """
    number, code, sig, start, end, timed_out = line.split()
    if start == b"-":
        return int(number), NotStartedError("the job was not started: the pool is stopping")
    return int(number), AttemptResult(
        int(code),
        None if sig == b"-" else int(sig),
        None if start in (b"?", b"!") else float(start),
        float(end),
        _HOST,
        timed_out == b"1",
    )


class PythonTasks:
    """The files of one executor's Python tasks, in a private directory made for the first one.

    Parameters
    ----------
    label : `str`
        The executor's label.
    """

    def __init__(self, label: str) -> None:
        self.token_prefix = f"localpool.{_HOST}.{os.getpid()}.{''.join(label.split())}/"  # the number follows
        self.label = label
        self.directory: str | None = None

    def request(self, number: int, func: Callable, args: tuple, kwargs: dict) -> tuple[dict[str, Any], str]:
        """Write task ``number``'s file; return its spawner request and the base path of its files.

        Parameters
        ----------
        number, func, args, kwargs : `int`, `~collections.abc.Callable`, `tuple`, `dict`
            The task's id in the executor; its function and arguments.

        Returns
        -------
        request, base : `dict` [`str`, `~typing.Any`], `str`
            The spawner request that runs the task; base path of the task's files.

        Raises
        ------
        parsl.serialize.errors.SerializationError
            ``func`` or an argument cannot be serialized.
        """
        try:
            message = pack_apply_message(func, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - Parsl's own executors say it this way
            raise SerializationError(getattr(func, "__name__", repr(func))) from exc
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix=f"parsl-localpool-{os.getpid()}-")
        base = os.path.join(self.directory, str(number))
        with open(base + ".task", "wb") as stream:
            pickle.dump((list(sys.path), message), stream)
        words = (sys.executable, _PYTASK, base + ".task", base + ".result")
        request = job_request(
            f"{self.token_prefix}{number}",
            "",
            "",
            " ".join(quote(word) for word in words),
            base + ".out",
            base + ".err",
            base + ".pid",  # its directory holds the spawner's journal
            shell="/bin/sh",
        )
        return request, base

    def outcome(self, base: str, result: AttemptResult | BaseException) -> tuple[Any] | BaseException:
        """``(value,)`` the task at ``base`` returned, or the error its future raises; its files are removed.

        Parameters
        ----------
        base, result : `str`, `AttemptResult` or `BaseException`
            Base path of the task's files; how its process ended, or why it never started.

        Returns
        -------
        outcome : `tuple` or `BaseException`
            ``(value,)`` the task returned, or the error to set on its future.
        """
        try:
            if isinstance(result, BaseException):
                return result
            code, sig, _, _, _, timed_out = result
            if timed_out:
                return AppTimeout(f"the task was killed after its walltime on executor '{self.label}'")
            with open(base + ".result", "rb") as stream:
                ok, value = deserialize(stream.read())
        except FileNotFoundError:
            how = f"was killed by signal {sig}" if sig is not None else f"exited with status {code}"
            tail = _tail(base + ".err")
            return TaskProcessError(
                f"the task's process {how} without a result"
                + (f"; its stderr ends with:\n{tail}" if tail else "")
            )
        except Exception as exc:  # noqa: BLE001 - a result this process cannot load
            return TaskProcessError(f"the task's result could not be read: {exc!r}")
        finally:
            for suffix in (".task", ".result", ".out", ".err"):
                with contextlib.suppress(OSError):
                    os.unlink(base + suffix)
        if ok:
            return (value,)
        return value.get_exception() if isinstance(value, RemoteExceptionWrapper) else value

    def close(self) -> None:
        """Remove the directory of the task files."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _tail(path: str, size: int = 2000) -> str:
    """The last ``size`` bytes of a file, as text (empty if unreadable)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - size))
            return stream.read().decode(errors="replace").strip()
    except OSError:
        return ""
