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

"""What a `LocalPoolExecutor` task is besides its spawner request: its
future, and for a Python task (any function but `run_job`) the files through
which a fresh Python process (`job.py` as a script) gets the function and gives back
its outcome.
"""

from __future__ import annotations

import datetime
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from shlex import quote
from typing import Any

import lsst_ctrl_bps_parsl_worker
from lsst_ctrl_bps_parsl_worker.job import run_job

from parsl.app.errors import AppTimeout, RemoteExceptionWrapper, wrap_error
from parsl.serialize import deserialize, pack_apply_message
from parsl.serialize.errors import SerializationError

from ..parslcompat import try_message_type
from ..records import AttemptResult

__all__ = ("PythonTasks", "Task", "TaskProcessError", "is_run_job", "report_try")

_PYTASK = os.path.join(os.path.dirname(os.path.abspath(lsst_ctrl_bps_parsl_worker.__file__)), "job.py")
_WRAP_ERROR_CODE = wrap_error(run_job).__code__
"""Code of the wrapper Parsl's ``python_app`` puts around its function."""
_SUFFIXES = (".task", ".result", ".out", ".err")


class TaskProcessError(RuntimeError):
    """A Python task's process ended without a result (killed, or it crashed)."""


def is_run_job(func: Callable) -> bool:
    """Whether ``func`` is `run_job`, bare or as ``python_app`` wraps it.

    Parameters
    ----------
    func : `~collections.abc.Callable`
        A task's function.

    Returns
    -------
    is_run_job : `bool`
        `True` if the spawner can run it as a job.
    """
    return func is run_job or (
        getattr(func, "__code__", None) is _WRAP_ERROR_CODE and getattr(func, "__wrapped__", None) is run_job
    )


class Task:
    """A task submitted to the executor: its future, the base path of its
    files (Python tasks only) and its monitoring ids (task, try), if any.

    Parameters
    ----------
    future : `concurrent.futures.Future`
        The task's future.
    files : `str` or `None`
        Base path of a Python task's files; `None` for a job.
    monitoring : `tuple` [`int`, `int`] or `None`
        Parsl monitoring's (task id, try id), `None` when monitoring is off.
    """

    __slots__ = ("future", "files", "monitoring")

    def __init__(self, future: Future, files: str | None, monitoring: tuple[int, int] | None):
        self.future = future
        self.files = files
        self.monitoring = monitoring


class PythonTasks:
    """The files of one executor's Python tasks, in a private directory
    made when the first one is submitted.

    Parameters
    ----------
    token_prefix, label : `str`
        Prefix of the tasks' attempt tokens (their number follows); the executor's label.
    """

    def __init__(self, token_prefix: str, label: str) -> None:
        self.token_prefix = token_prefix
        self.label = label
        self.directory: str | None = None

    def request(self, number: int, func: Callable, args: tuple, kwargs: dict) -> tuple[dict[str, Any], str]:
        """Write task ``number``'s file; return its spawner request and the
        base path of its files.

        Parameters
        ----------
        number : `int`
            The task's id in the executor.
        func, args, kwargs : `~collections.abc.Callable`, `tuple`, `dict`
            The task's function and its arguments.

        Returns
        -------
        request : `dict` [`str`, `~typing.Any`]
            The spawner request that runs the task.
        base : `str`
            Base path of the task's files.

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
        request = {
            "shell": "/bin/sh",
            "command": " ".join(quote(word) for word in words),
            "out": base + ".out",
            "err": base + ".err",
            "pid_file": base + ".pid",  # its directory holds the spawner's journal
            "token": f"{self.token_prefix}{number}",
            "cores": 1,
            "memory": 0,
            "time_limit": None,
        }
        return request, base

    def outcome(self, base: str, result: AttemptResult | BaseException) -> tuple[Any] | BaseException:
        """(value,) the task at ``base`` returned, or the error its future
        raises; its files are removed.

        Parameters
        ----------
        base : `str`
            Base path of the task's files.
        result : `AttemptResult` or `BaseException`
            How the task's process ended, or why it never started.

        Returns
        -------
        outcome : `tuple` or `BaseException`
            ``(value,)`` the task returned, or the error to set on its future.
        """
        try:
            return self._outcome(base, result)
        finally:
            for suffix in _SUFFIXES:
                try:
                    os.unlink(base + suffix)
                except OSError:
                    pass

    def _outcome(self, base: str, result: AttemptResult | BaseException) -> tuple[Any] | BaseException:
        if isinstance(result, BaseException):
            return result
        code, sig, _, _, _, timed_out = result
        if timed_out:
            return AppTimeout(f"the task was killed after its walltime on executor '{self.label}'")
        try:
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


def report_try(queue: Any, run_id: str | None, ids: tuple[int, int], result: AttemptResult) -> None:
    """Tell Parsl monitoring a try's start and end (what its worker wrapper reports on other executors).

    Parameters
    ----------
    queue : `~typing.Any`
        The executor's ``monitoring_messages`` queue, or `None`.
    run_id : `str` or `None`
        Parsl's run id.
    ids : `tuple` [`int`, `int`]
        (task id, try id) of the try.
    result : `AttemptResult`
        How the try ended.
    """
    if queue is None:
        return
    end = result.end if result.end is not None else time.time()
    host = result.host
    for first, when in ((True, result.start if result.start is not None else end), (False, end)):
        message: dict[str, Any] = {"run_id": run_id, "try_id": ids[1], "task_id": ids[0], "hostname": host}
        message.update(block_id=None, first_msg=first, last_msg=not first)
        message["timestamp"] = datetime.datetime.fromtimestamp(when)
        queue.put((try_message_type(), message))
