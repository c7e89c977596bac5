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

"""Every use of Parsl's internals, in one place: each function names the
private attribute it touches and why; all were checked on `CHECKED_ON`
(``tests/test_parslcompat.py``, run by `.ci/run` on both). Importing this
module does not import Parsl.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = (
    "CHECKED_ON",
    "hold_block",
    "interchange_alive",
    "interchange_command",
    "interchange_exit_code",
    "mark_scaled_in",
    "outstanding_tasks",
    "start_kernel",
    "try_message_type",
    "unwrap_monitoring",
)

CHECKED_ON = ("2025.12.8", "2026.10.26")
"""The Parsl releases every function here was checked on (pyproject.toml's range)."""


def start_kernel(config: Any, on_error: Callable[[str, BaseException], None]) -> Any:
    """Start Parsl's data-flow kernel; if that fails, stop what it had
    started before raising.

    A failing ``DataFlowKernel(config)`` leaves its executors and threads
    running and gives no object to stop them: the kernel is made with
    ``__new__`` so that the half-built object can be taken apart (with its
    private ``_logging_unregister_callback``).

    Parameters
    ----------
    config : `parsl.config.Config`
        The configuration to start the kernel with.
    on_error : `~collections.abc.Callable`
        Called with a part's name and exception when stopping it fails.

    Returns
    -------
    dfk : `parsl.dataflow.dflow.DataFlowKernel`
        The running kernel.
    """
    from parsl.dataflow.dflow import DataFlowKernel

    dfk = DataFlowKernel.__new__(DataFlowKernel)
    try:
        DataFlowKernel.__init__(dfk, config)
    except BaseException:

        def close_of(name: str) -> Callable[[], Any] | None:
            return getattr(getattr(dfk, name, None), "close", None)

        # The poller first (it polls the executors), then the executors, then the rest.
        steps = [("job_status_poller", close_of("job_status_poller"))]
        steps += [(f"executor {label}", ex.shutdown) for label, ex in getattr(dfk, "executors", {}).items()]
        steps += [(name, close_of(name)) for name in ("memoizer", "usage_tracker", "monitoring")]
        steps.append(("logging callback", getattr(dfk, "_logging_unregister_callback", None)))
        for name, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - each part is stopped whatever the others do
                on_error(name, exc)
        raise
    return dfk


def mark_scaled_in(executor: Any, block: str, message: str) -> None:
    """Record a block the plugin cancelled as scaled in (not failed), so
    that Parsl's error handler does not count it against the executor: in
    the executor's private ``_status`` and ``_simulated_status`` (which the
    poller merges).

    Parameters
    ----------
    executor : `parsl.executors.status_handling.BlockProviderExecutor`
        The executor that owns the block.
    block, message : `str`
        The block's id; why it was cancelled (shown in Parsl's logs).
    """
    from parsl.jobs.states import JobState, JobStatus

    status = JobStatus(JobState.SCALED_IN, message)
    executor._status[block] = status
    executor._simulated_status[block] = status


def hold_block(executor: Any, block: str) -> bool:
    """Put the worker pools of a block on hold, as HTEX's own scale-in does
    (its private ``_hold_block``), so the interchange sends them no new task.

    Parameters
    ----------
    executor : `parsl.executors.base.ParslExecutor`
        The executor that owns the block.
    block : `str`
        The block's id.

    Returns
    -------
    held : `bool`
        Whether the executor could be asked to hold the block.
    """
    hold = getattr(executor, "_hold_block", None)
    if hold is None:
        return False
    hold(block)
    return True


def interchange_alive(executor: Any) -> bool:
    """Whether an HTEX's interchange process (undocumented
    ``interchange_proc``) runs and the executor is not in a bad state.

    Parameters
    ----------
    executor : `parsl.executors.HighThroughputExecutor`
        The executor.

    Returns
    -------
    alive : `bool`
        `True` if its interchange runs.
    """
    proc = getattr(executor, "interchange_proc", None)
    return proc is not None and proc.poll() is None and not executor.bad_state_is_set


def interchange_exit_code(executor: Any) -> int | None:
    """The exit code of an HTEX's interchange process (undocumented
    ``interchange_proc``) if it ended while the executor was not in a bad state.

    Parameters
    ----------
    executor : `parsl.executors.base.ParslExecutor`
        The executor (any kind: one without an interchange gives `None`).

    Returns
    -------
    code : `int` or `None`
        The exit code; `None` if it runs, has none, or the executor already failed.
    """
    proc = getattr(executor, "interchange_proc", None)
    if proc is None or getattr(executor, "bad_state_is_set", True):
        return None
    return proc.poll()


def interchange_command(executor: Any, command: Any, timeout: float) -> Any:
    """Ask an HTEX's interchange a command through the undocumented
    ``command_client``: ``"MANAGERS"`` (the worker pools with ``block_id``,
    ``tasks``, ``idle_duration``) or ``["HOLD_MANAGER", id]``.

    Parameters
    ----------
    executor : `parsl.executors.HighThroughputExecutor`
        The executor.
    command : `str` or `list`
        The command.
    timeout : `float`
        Seconds to wait for the interchange's answer.

    Returns
    -------
    answer : `typing.Any`
        The interchange's answer.
    """
    return executor.command_client.run(command, timeout_s=timeout)


def outstanding_tasks(executor: Any) -> int:
    """The tasks an executor holds that have not ended: ``outstanding`` is
    a method from Parsl 2026.1 on, a property before.

    Parameters
    ----------
    executor : `parsl.executors.base.ParslExecutor`
        The executor.

    Returns
    -------
    count : `int`
        Its outstanding tasks.
    """
    outstanding = executor.outstanding
    return outstanding() if callable(outstanding) else outstanding


def try_message_type() -> Any:
    """The monitoring message type of a try's first and last message, as a
    Parsl worker sends them: ``WORKER_TASK_INFO`` from Parsl 2026.1 on,
    ``RESOURCE_INFO`` (with ``first_msg``/``last_msg`` set) before.

    Returns
    -------
    message_type : `parsl.monitoring.message_type.MessageType`
        The member to send.
    """
    from parsl.monitoring.message_type import MessageType

    return getattr(MessageType, "WORKER_TASK_INFO", MessageType.RESOURCE_INFO)


def unwrap_monitoring(
    func: Callable, kwargs: dict[str, Any]
) -> tuple[Callable, dict[str, Any], tuple | None]:
    """Undo Parsl monitoring's wrapper around a task (``__wrapped__``, with
    the private keyword arguments ``_parsl_monitoring_task_id`` and
    ``_parsl_monitoring_try_id``), for an executor that reports tries itself.

    Parameters
    ----------
    func : `~collections.abc.Callable`
        The function the kernel submitted.
    kwargs : `dict`
        Its keyword arguments.

    Returns
    -------
    func : `~collections.abc.Callable`
        The task's own function.
    kwargs : `dict`
        Its own keyword arguments.
    monitoring : `tuple` or `None`
        ``(task_id, try_id)`` when the task was wrapped, else `None`.
    """
    if "_parsl_monitoring_task_id" not in kwargs or not hasattr(func, "__wrapped__"):
        return func, kwargs, None
    kwargs = dict(kwargs)
    ids = (kwargs.pop("_parsl_monitoring_task_id"), kwargs.pop("_parsl_monitoring_try_id"))
    return func.__wrapped__, kwargs, ids
