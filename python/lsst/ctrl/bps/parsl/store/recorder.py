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

"""`Recorder`: the driver's one writer of the store's job state (queued, and
committed once per pass of its loop, `RunStore.flush`); settling what a
driver that died left behind; where each attempt's logs are (a stdout and a
stderr file of its own: the old plugin's names for the first attempt, then
numbered, under ``<submit>/logs/<subDirTemplate>``).
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lsst_ctrl_bps_parsl_worker.exits import recorded_exits
from lsst_ctrl_bps_parsl_worker.processes import append_note

from ..oneline import safe_component, safe_subdir, shown
from ..records import AttemptResult, JobKind, JobRow, JobState
from .runstore import RunStore

if TYPE_CHECKING:
    from lsst.ctrl.bps import BpsConfig

__all__ = ("Recorder", "log_dir_template", "log_paths")

_LOG = logging.getLogger(__name__)


def log_paths(submit_path: str, log_dir: str | None, name: str, attempt: int) -> tuple[str, str]:
    """The stdout and stderr files of one attempt of one job, always under
    ``<submit>/logs`` whatever the job's name and log directory hold.

    Parameters
    ----------
    submit_path, name : `str`
        Submit directory; job name.
    log_dir : `str` or `None`
        The job's log sub-directory (``subDirTemplate`` expanded).
    attempt : `int`
        Attempt number, 1 for the first.

    Returns
    -------
    stdout, stderr : `str`
        ``<submit>/logs/<log_dir>/<name>.stdout`` and ``.stderr``, then
        ``.stdout.<attempt>`` and ``.stderr.<attempt>`` after the first.
    """
    base = os.path.join(submit_path, "logs", safe_subdir(log_dir), safe_component(name))
    suffix = "" if attempt <= 1 else f".{attempt}"
    return f"{base}.stdout{suffix}", f"{base}.stderr{suffix}"


class _SubdirTemplate:
    """``subDirTemplate`` parsed once; fields missing from a job's tags are
    left out, and the path made safe (`files.safe_subdir`).
    """

    def __init__(self, template: str):
        self.parts = list(string.Formatter().parse(template))

    def __call__(self, label: str, tags: dict[str, Any]) -> str:
        out = []
        for literal, field, spec, _ in self.parts:
            out.append(literal)
            if field is None:
                continue
            value = label if field == "label" else tags.get(field)
            if value is not None:
                out.append(format(value, spec) if spec else str(value))
        return safe_subdir("".join(out))


def log_dir_template(config: BpsConfig) -> _SubdirTemplate:
    """The run's ``subDirTemplate`` (also from ``site.<computeSite>``, as the
    old plugin read it); unset, logs go straight into ``<submit>/logs``.

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The run's configuration.

    Returns
    -------
    template : `_SubdirTemplate`
        Callable giving a job's log sub-directory from its label and tags.
    """
    found, site = config.search("computeSite", opt={"default": None})
    opt: dict[str, Any] = {"replaceVars": False, "default": ""}
    if found and site:
        opt["curvals"] = {"curr_site": site}
    found, template = config.search("subDirTemplate", opt=opt)
    return _SubdirTemplate(template if found and isinstance(template, str) else "")


class Recorder:
    """Write how a run's attempts ended to its store, and notes to their logs.

    Parameters
    ----------
    store : `RunStore`
        The run's store, open for writing.
    rows : `~collections.abc.Sequence` [`JobRow`]
        The run's jobs, by id.
    submit_path : `str`
        Submit directory (where the attempts' logs are).
    """

    def __init__(self, store: RunStore, rows: Sequence[JobRow], submit_path: str):
        self.store = store
        self.rows = rows
        self.submit_path = submit_path
        self._run_id: str | None = None

    def exit_statuses(self) -> dict[str, int]:
        """The exit status of every attempt whose reaper recorded it, read now.

        Returns
        -------
        exits : `dict` [`str`, `int`]
            Exit status by attempt token (``<run id>/<job id>/<attempt>``).
        """
        return recorded_exits(os.path.join(self.submit_path, "parsl", "running"))

    def exit_status(self, job: int, attempt: int, exits: dict[str, int] | None = None) -> int | None:
        """Exit status recorded for an attempt (what the job printed is never read).

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.
        exits : `dict` [`str`, `int`], optional
            Exit statuses already read (`exit_statuses`); read now if `None`.

        Returns
        -------
        code : `int` or `None`
            The exit status; `None` if it did not end or its reaper was lost with it.
        """
        if self._run_id is None:
            self._run_id = str(self.store.meta()["run_id"])
        found = self.exit_statuses() if exits is None else exits
        return found.get(f"{self._run_id}/{job}/{attempt}")

    def stderr_of(self, job: int, attempt: int) -> str:
        """The stderr log of an attempt.

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.

        Returns
        -------
        path : `str`
            Path of the attempt's stderr log.
        """
        row = self.rows[job]
        return log_paths(self.submit_path, row.log_dir, row.name, attempt)[1]

    def note(self, job: int, attempt: int, text: str) -> None:
        """Append a ``[bps-parsl]`` line to an attempt's stderr log.

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.
        text : `str`
            The line, without the prefix.
        """
        append_note(self.stderr_of(job, attempt), f"[bps-parsl] {text}\n")

    def ended(
        self,
        job: int,
        attempt: int,
        attempt_state: JobState,
        result: AttemptResult,
        memory: int | None = None,
        executor: str | None = None,
        job_state: JobState | None = None,
        lost: str | None = None,
    ) -> None:
        """An attempt ended.

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.
        attempt_state, job_state : `JobState`
            How the attempt ended; the job's state afterwards (READY for a retry; `None`: ``attempt_state``).
        result : `AttemptResult`
            Its exit status, signal, times and host.
        memory : `int`, optional
            Memory requested for it (MB).
        executor, lost : `str`, optional
            Label of the executor that ran it; how the infrastructure lost it (`None`: it ended by itself).
        """
        code, sig, start, end, host, _ = result
        self.store.record_attempt(
            job, attempt, attempt_state, code, sig, memory, executor, None, start, end, host, lost
        )
        state = attempt_state if job_state is None else job_state
        self.store.set_state(job, state, attempt, code, sig, start, end, host)

    def rejected(self, job: int, attempt: int, reason: str, when: float) -> None:
        """An attempt that no executor took failed at once.

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.
        reason : `str`
            Why (written to the attempt's log and to the log).
        when : `float`
            When (seconds since the epoch).
        """
        self.note(job, attempt, reason)
        _LOG.warning("job %s: %s", shown(self.rows[job].name), shown(reason, 4000))
        self.ended(job, attempt, JobState.FAILED, AttemptResult(-1, None, when, when, None, False))

    def lost(
        self, job: int, attempt: int, error: BaseException, when: float, cause: str | None = None
    ) -> AttemptResult:
        """The executor lost an attempt: say so in its log.

        Parameters
        ----------
        job, attempt : `int`
            Job id and attempt number.
        error : `BaseException`
            The executor's error.
        when : `float`
            When the loss was seen (seconds since the epoch).
        cause : `str`, optional
            How the infrastructure lost it (`losses`); `None` for another reason.

        Returns
        -------
        result : `AttemptResult`
            The result to record it with (exit status -1, ended ``when``).
        """
        name = shown(self.rows[job].name)
        if cause is None:
            _LOG.warning("job %s attempt %d: executor error %r", name, attempt, error)
            self.note(job, attempt, f"the executor lost this attempt: {error!r}")
        else:
            _LOG.warning("job %s attempt %d lost: %s", name, attempt, shown(cause, 4000))
            self.note(job, attempt, f"infrastructure loss, not counted as a job retry: {cause}")
        return AttemptResult(-1, None, None, when, None, False)

    def settle_leftovers(self, state: list[JobState], attempts: list[int]) -> None:
        """Settle the attempts a driver that died launched (their stderr log
        exists) but did not record: succeeded if their recorded exit status
        is 0, failed otherwise.

        Parameters
        ----------
        state : `list` [`JobState`]
            Stored state of each job, by job id; updated.
        attempts : `list` [`int`]
            Stored attempt number of each job, by job id; updated.
        """
        exits = self.exit_statuses()
        for i, row in enumerate(self.rows):
            if state[i] == JobState.SUCCEEDED or row.kind != JobKind.PAYLOAD:
                continue
            recorded = attempts[i]
            # The recorded attempt is read again too: a job the driver recorded
            # as DELETED or lost may have ended by itself, and its exit record is the truth.
            attempt = max(recorded, 1)
            if not os.path.exists(self.stderr_of(i, attempt)):
                continue
            while os.path.exists(self.stderr_of(i, attempt + 1)):
                attempt += 1
            code = self.exit_status(i, attempt, exits)
            if attempt == recorded and code != 0 and state[i] not in (JobState.PENDING, JobState.RUNNING):
                continue  # the store already knows how that attempt ended
            attempts[i] = attempt
            settled = JobState.SUCCEEDED if code == 0 else JobState.FAILED
            self.store.record_attempt(i, attempt, settled, code, memory=row.request_memory)
            self.store.set_state(i, settled, attempt, code)
            state[i] = settled
