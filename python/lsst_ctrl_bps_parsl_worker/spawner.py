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

"""The local pool's spawner: a small single-threaded process that starts,
reaps and reports the pool's jobs within a core and memory budget.

Standard library only: `LocalPoolExecutor` runs it as ``python -S spawner.py
CORES MEMORY`` (``MEMORY`` in MB, or ``none``). Starting processes from here
rather than from threads of the driver keeps process start-up free of the
driver's interpreter lock and of its large address space.

The process started is the spawner's keeper (`lsst_ctrl_bps_parsl_worker.keeper`):
it forks the spawner and outlives it, so that the exit status of jobs running
when the spawner dies is still logged.

Wire protocol
-------------
The executor writes requests to the spawner's stdin, one JSON object per
line; the spawner writes one reply line per ended job to its stdout, after a
first line ``spawner <pid>`` (its own pid, which names its journal). Once the
spawner ended, its keeper adds ``exit <exit code>`` (``128 + s`` for a
signal ``s``) on a line of its own, then the output ends.

Requests:

``{"id": N, "shell", "prefix", "env", "command", "out", "err", "pid_file", "token", "cores", "memory", "time_limit", "warm"}``
    Start the job (`launch.Launcher.spawn_job`: ``shell`` runs the script
    of ``prefix``, ``env``, ``command``, creates ``out`` and ``err`` and runs
    the script's last command in its own place) once ``cores`` cores and ``memory`` MB fit in the budget,
    first come first served (a request larger than the whole budget is given
    the whole budget). ``prefix`` and ``env`` may be left out (empty). The
    spawner records the job's exit status, as the operating system gives it,
    in its private exit record in the directory of ``pid_file``
    (`exits.record_exit`) before it reaps the job. ``token`` (one
    word) is exported to the job as ``BPS_PARSL_ATTEMPT``; ``time_limit``
    (seconds or ``null``, on the monotonic clock) kills the job's processes
    after that long (SIGTERM, then SIGKILL `processes.KILL_GRACE` later).
    When the job's process ends, what is left in its process group is
    killed at once, and what carries its token elsewhere (``setsid``,
    double forks) at the next sweep, within `LEFTOVER_SWEEP` seconds. ``N`` is the
    executor's id of the request, unique within the executor. ``warm``
    (true or left out) lets a ``pipetask run-qbb`` job start warm
    (`lsst_ctrl_bps_parsl_worker.warm`: forked from a warm process, a
    child of this one, and adopted by this one as a subreaper).
``{"op": "stop"}``
    Fail every queued job and kill every running one.
``{"op": "drain"}``
    Fail every queued job and every later request; running jobs are left to
    end (the driver's submit directory is full).
``{"op": "resume", "spawner": PID, "jobs": [request, ...]}``
    First line of a spawner that replaces one that died (pid ``PID``): take
    over its unanswered requests. A job that had started is followed to its
    end and never started again (its exit status is read from ``/proc``
    while it is unreaped, else from its stderr log, where the dead spawner's
    keeper logged it); the others are queued.

End of input (the executor's process exited or died) drops the queued jobs
but lets the running ones finish (their exit status still reaches their
logs, where a restart finds it); then the spawner exits.

Replies, one line per ended job::

    <id> <exit code> <signal|-> <start|-|?> <end> <timed out 0|1>

``start`` is ``-`` when the job was not started because the pool stopped
(and only then), ``!`` when it could not be started (an argument list or
environment too large, a missing program: a failure of that job alone, whose
reason is in its log and whose exit code is 126, or 127 for something
missing; a start that fails for want of processes or memory, EAGAIN or
ENOMEM, is tried again `launch.START_RETRY_DELAYS` later first), ``?``
when it started at a time nobody knows (a job followed after a spawner
died); times are seconds since the epoch. A job killed by a
signal ``s`` has exit code ``128 + s``. A line ``note <text>`` is for the
driver's log (why jobs started cold, once per reason). While jobs are queued, replies may
wait up to 20 ms to be written together.

Which jobs run is kept in a journal, ``spawner.<host>.<pid>`` in the
directory of the jobs' ``pid_file``
(`lsst_ctrl_bps_parsl_worker.journal`); while jobs run, its modification
time is refreshed every ``JOURNAL_REFRESH`` seconds, so that another host
can tell this spawner is alive.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque

if __name__ == "__main__":
    # Run as a script without site-packages: the job-process functions are
    # in the top-level package next to ``lsst/``.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsst_ctrl_bps_parsl_worker.exits import (  # noqa: E402
    ended_child,
    log_exit_status,
    reap,
    record_exit,
    recorded_exits,
    zombie_exit_code,
)
from lsst_ctrl_bps_parsl_worker.journal import (  # noqa: E402
    Journal,
    Journals,
    journal_entries,
    journal_name,
)
from lsst_ctrl_bps_parsl_worker.keeper import keep  # noqa: E402
from lsst_ctrl_bps_parsl_worker.launch import (  # noqa: E402
    START_RETRY_DELAYS,
    Launcher,
    start_failure,
    transient_start_error,
)
from lsst_ctrl_bps_parsl_worker.processes import (  # noqa: E402
    KILL_GRACE,
    append_note,
    attempt_processes,
    end_group,
    job_alive,
    kill_attempts,
    live_jobs,
    process_start_time,
    signal_attempts,
)
from lsst_ctrl_bps_parsl_worker.warm import WarmStarts  # noqa: E402

__all__ = ("Spawner", "main")

_HOST = socket.gethostname()
_REPLY_DELAY = 0.02
"""Seconds replies may wait to be sent together while jobs are still queued
here (the driver has nothing to hand over that could start sooner)."""
_ADOPTED_POLL = 0.1
"""Seconds between checks whether a job followed from a dead spawner ended."""
LEFTOVER_SWEEP = 1.0
"""Seconds between two sweeps for processes that jobs which ended left
behind outside their process group (`Spawner.sweep_leftovers`)."""
_SWEEPS_PER_TOKEN = 2
"""Sweeps that must find nothing of an ended job before it is forgotten."""


# ---- the spawner ----------------------------------------------------------------------


class Spawner:
    """Queue, start and reap jobs within a core and memory budget.

    Parameters
    ----------
    cores : `int`
        Cores of the budget.
    memory : `int` or `None`
        Memory of the budget (MB); `None` for no limit.
    out : `list` [`str`]
        Reply lines waiting to be written; replies are appended.
    dirs_fd : `int`, optional
        Pipe to the keeper for the journals' directories (``-1``: no keeper).
    """

    def __init__(self, cores: int, memory: int | None, out: list[str], dirs_fd: int = -1) -> None:
        self.cores = cores
        self.memory = memory
        self.free_cores = cores
        self.free_memory = memory
        self.queue: deque[dict] = deque()
        self.running: dict[int, dict] = {}
        self.adopted: dict[int, dict] = {}
        """Jobs started by a spawner that died, by pid: not children of this
        process, so followed through ``/proc`` instead of reaped."""
        self.kills: list[tuple[float, str]] = []
        """(when, token): SIGKILL still due to a job killed for its walltime (monotonic clock)."""
        self.ended_tokens: dict[str, int] = {}
        """Tokens of jobs that ended, by the sweeps left before they are forgotten."""
        self.next_sweep = 0.0
        """When (monotonic) the next sweep for leftover processes may run."""
        self.hold_until = 0.0
        """No job is started before then (monotonic): a start failed for a passing lack of resources."""
        self.out = out
        self.out_since = 0.0
        self.stopping = False
        self.journals = Journals(dirs_fd)
        # The environment is converted once, not for every job.
        self.launcher = Launcher()
        self.warm = WarmStarts(self.note)

    def _share(self, job: dict) -> tuple[int, int]:
        cores = min(int(job.get("cores") or 1), self.cores)
        memory = min(int(job.get("memory") or 0), self.memory) if self.memory is not None else 0
        return cores, memory

    def _fits(self, job: dict) -> bool:
        cores, memory = self._share(job)
        return self.free_cores >= cores and (self.free_memory is None or self.free_memory >= memory)

    def _take(self, job: dict) -> None:
        cores, memory = job["taken"] = self._share(job)
        self.free_cores -= cores
        if self.free_memory is not None:
            self.free_memory -= memory

    def reply(
        self,
        job: dict,
        code: int,
        sig: int | None,
        start: float | str | None,
        timed_out: bool = False,
    ) -> None:
        """Report an ended job; ``start`` `None`: never started, ``"?"``: unknown.

        Parameters
        ----------
        job : `dict`
            The job's request.
        code : `int`
            Its exit status (-1: never started).
        sig : `int` or `None`
            The signal that ended it, if any.
        start : `float`, `str` or `None`
            Its start time.
        timed_out : `bool`, optional
            Whether it was killed for its walltime.
        """
        if not self.out:
            self.out_since = time.monotonic()
        started = "-" if start is None else start if isinstance(start, str) else repr(start)
        self.out.append(
            f"{job['id']} {code} {'-' if sig is None else sig} {started} {time.time()!r} {int(timed_out)}\n"
        )

    def note(self, text: str) -> None:
        """Send a line for the driver's log (`warm.WarmStarts`).

        Parameters
        ----------
        text : `str`
            The line; its whitespace runs are sent as one space.
        """
        if not self.out:
            self.out_since = time.monotonic()
        self.out.append(f"note {' '.join(text.split())}\n")

    def journal(self, job: dict) -> Journal | None:
        """The journal of the directory of the job's ``pid_file``.

        Parameters
        ----------
        job : `dict`
            The job's request.

        Returns
        -------
        journal : `Journal` or `None`
            The journal, `None` if none can be made.
        """
        return self.journals.of(job.get("pid_file") or "")

    def refresh_journals(self) -> float | None:
        """Seconds until the journals' next refresh (`Journals.refresh`), `None` when no job runs.

        Returns
        -------
        seconds : `float` or `None`
            Seconds until the next refresh, `None` when no job runs.
        """
        return self.journals.refresh(bool(self.running or self.adopted))

    def start_ready(self) -> float | None:
        """Start the queued jobs that fit; seconds until a start that failed
        for a passing reason (EAGAIN, ENOMEM) is tried again, if one is due.

        Any other error starting a job (an argument list or environment too
        large, a missing program or directory) is that job's failure alone:
        its reason goes to its log (`launch.start_failure`) and it is
        answered as ended (start ``!``); the other jobs go on.

        Returns
        -------
        seconds : `float` or `None`
            Seconds until a start that failed for a passing reason is tried
            again, `None` if none is due.
        """
        while self.queue and not self.stopping and self._fits(self.queue[0]):
            wait = self.hold_until - time.monotonic()
            if wait > 0:
                return wait
            job = self.queue.popleft()
            self._take(job)
            try:
                self._spawn(job)
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is this job's
                self._give_back(job)
                tries = job.get("start_tries", 0)
                if transient_start_error(exc) and tries < len(START_RETRY_DELAYS):
                    job["start_tries"] = tries + 1
                    self.queue.appendleft(job)
                    self.hold_until = time.monotonic() + START_RETRY_DELAYS[tries]
                    continue
                code = start_failure(job["err"], exc, tries, job.get("pid_file") or "", job["token"])
                self.reply(job, code, None, "!")
        return None

    def _spawn(self, job: dict) -> None:
        journal = self.journal(job)
        if journal is not None:
            # Before the start: the keeper names the job if this process dies while starting it.
            journal.starting(job["token"], job["err"])
        job["start"] = time.time()
        started = time.monotonic()
        pid = self.launcher.spawn_job(
            job["shell"],
            job["token"],
            job.get("prefix", ""),
            job.get("env", ""),
            job["command"],
            job["out"],
            job["err"],
            self.warm if job.get("warm") else None,
        )
        limit = job.get("time_limit")
        job["deadline"] = started + limit if limit else None
        self.running[pid] = job
        if journal is not None:
            # At once: the keeper logs the exit status of the jobs it names if this process dies.
            journal.started(pid, job["token"], job["err"])
            journal.write()

    def _give_back(self, job: dict) -> None:
        cores, memory = job.pop("taken", (0, 0))
        self.free_cores += cores
        if self.free_memory is not None:
            self.free_memory += memory

    def _ended(self, pid: int, job: dict, code: int, sig: int | None, start: float | str) -> None:
        self.ended_tokens[job["token"]] = _SWEEPS_PER_TOKEN
        journal = self.journal(job)
        if journal is not None:
            journal.ended(pid)
        self._give_back(job)
        timed_out = job.get("timed_out", False)
        if timed_out:
            append_note(job["err"], f"[bps-parsl] killed after walltime of {job['time_limit']:.0f} s\n")
        self.reply(job, code, sig, start, timed_out)

    def reap(self) -> None:
        """Answer each ended job (at once when nothing is queued: the driver
        may be waiting for it to hand over more), then log its exit status in
        its stderr log and reap it. Until it is reaped the job is there for
        the keeper to log, should this process die in between.
        """
        while self.running:
            try:
                ended = ended_child()
            except ChildProcessError:
                return
            if ended is None:
                return
            pid, code, sig = ended
            job = self.running.pop(pid, None)
            if job is not None:
                # Unreaped, its pid still names its process group: end what it left there.
                end_group(pid)
                self._ended(pid, job, code, sig, job["start"])
                if self.flush_due() == 0.0:
                    self.flush()
                record_exit(os.path.dirname(job.get("pid_file") or ""), job["token"], code)
                log_exit_status(job["err"], code)
            reap(pid)

    # ---- jobs of a spawner that died ----

    def resume(self, dead_spawner: int, jobs: list[dict]) -> None:
        """Take over the requests a spawner that died had not answered.

        A job it had started (its journal says so, its process is alive, or
        its stderr log exists, which is created as a job starts) is not started
        again: a live one is followed until it ends, and an ended one is
        answered at once (`_answer_from_log`). Every other job is queued as
        if just sent.

        Parameters
        ----------
        dead_spawner : `int`
            Process id of the spawner that died.
        jobs : `list` [`dict`]
            Its unanswered requests.
        """
        live = live_jobs()
        started: set[str] = set()
        journaled: dict[str, int] = {}
        old_journals = {
            os.path.join(directory, journal_name(_HOST, dead_spawner))
            for directory in {os.path.dirname(job.get("pid_file") or "") for job in jobs}
            if directory
        }
        for path in old_journals:
            running, tokens = journal_entries(path)
            started |= tokens
            journaled.update((token, pid) for pid, token in running.items())
        for job in jobs:
            token = job["token"]
            pid = live.get(token)
            if pid is not None:
                self._adopt(pid, job)
            elif token in started or os.path.exists(job["err"]):
                self.reply(job, *self._answer_from_log(job, journaled.get(token)), "?")
            else:
                self.queue.append(job)
        self.journals.write()
        for path in old_journals:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _adopt(self, pid: int, job: dict) -> None:
        self._take(job)
        start = process_start_time(pid)
        job["start"] = start if start is not None else "?"
        limit = job.get("time_limit")
        ran = time.time() - start if start is not None else 0.0
        job["deadline"] = time.monotonic() + limit - ran if limit else None
        self.adopted[pid] = job
        journal = self.journal(job)
        if journal is not None:
            journal.started(pid, job["token"], job["err"])

    @staticmethod
    def _answer_from_log(job: dict, pid: int | None) -> tuple[int, int | None]:
        """(exit code, signal) of a job that a spawner that died had started:
        read from ``/proc`` while the job (``pid``) ended unreaped, else from
        the exit records (where that spawner, or its keeper, recorded it).
        """
        directory = os.path.dirname(job.get("pid_file") or "")
        code = zombie_exit_code(pid) if pid is not None else None
        if code is not None:
            record_exit(directory, job["token"], code)
            log_exit_status(job["err"], code)
        else:
            code = recorded_exits(directory).get(job["token"]) if directory else None
        if code is None:
            append_note(
                job["err"],
                "[bps-parsl] the job pool's spawner died while this job ran, and neither it nor its "
                "keeper logged an exit status: counted as failed\n",
            )
            code, sig = -1, None
        else:
            sig = code - 128 if 128 < code < 128 + 65 else None
        return code, sig

    def poll_adopted(self) -> None:
        """Answer the adopted jobs that ended."""
        for pid, job in list(self.adopted.items()):
            if not job_alive(pid, job["token"]):
                del self.adopted[pid]
                code, sig = self._answer_from_log(job, pid)
                self._ended(pid, job, code, sig, job["start"])

    # ---- time limits and stopping ----

    def check_deadlines(self) -> float | None:
        """Kill jobs past their time limit; return seconds to the next deadline.

        Returns
        -------
        seconds : `float` or `None`
            Seconds to the next deadline or due SIGKILL, `None` if none.
        """
        now = time.monotonic()
        soonest = None
        if self.kills:
            due = [token for when, token in self.kills if when <= now]
            if due:
                self.kills = [(when, token) for when, token in self.kills if when > now]
                signal_attempts(signal.SIGKILL, due)
            if self.kills:
                soonest = min(when for when, _ in self.kills)
        for jobs in (self.running, self.adopted):
            for pid, job in jobs.items():
                deadline = job.get("deadline")
                if deadline is None:
                    continue
                if now >= deadline:
                    job["timed_out"] = True
                    job["deadline"] = None
                    groups = (pid,) if jobs is self.running else ()
                    signal_attempts(signal.SIGTERM, (job["token"],), groups=groups)
                    deadline = now + KILL_GRACE
                    self.kills.append((deadline, job["token"]))
                soonest = deadline if soonest is None else min(soonest, deadline)
        return None if soonest is None else max(0.0, soonest - now)

    def sweep_leftovers(self, force: bool = False) -> float | None:
        """End the processes that jobs which ended left behind outside their
        process group (``setsid``, double forks): every process of this user
        carrying such a job's token (`processes.attempt_processes`). One scan
        of ``/proc`` per `LEFTOVER_SWEEP` at most.

        Parameters
        ----------
        force : `bool`, optional
            Sweep now, even if the last sweep was less than `LEFTOVER_SWEEP`
            ago.

        Returns
        -------
        seconds : `float` or `None`
            Seconds until the next sweep is due, `None` if none is.
        """
        if not self.ended_tokens:
            return None
        now = time.monotonic()
        if not force and now < self.next_sweep:
            return self.next_sweep - now
        self.next_sweep = now + LEFTOVER_SWEEP
        found = attempt_processes(self.ended_tokens)
        if found:
            signal_attempts(signal.SIGKILL, groups=set(found.values()))
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        else:
            # Nothing left this time: a token is forgotten after that many such sweeps.
            for token, left in list(self.ended_tokens.items()):
                if left <= 1:
                    del self.ended_tokens[token]
                else:
                    self.ended_tokens[token] = left - 1
        return LEFTOVER_SWEEP if self.ended_tokens else None

    def drop_queued(self) -> None:
        """Start no more jobs: fail the queued ones."""
        self.stopping = True
        while self.queue:
            self.reply(self.queue.popleft(), -1, None, None)

    def stop(self) -> None:
        """Fail queued jobs, kill running ones (SIGTERM, then SIGKILL)."""
        self.drop_queued()
        tokens = [job["token"] for job in (*self.running.values(), *self.adopted.values())]
        if tokens:
            kill_attempts(tokens, groups=tuple(self.running))
        deadline = time.monotonic() + 10
        while (self.running or self.adopted) and time.monotonic() < deadline:
            self.reap()
            self.poll_adopted()
            time.sleep(0.01)

    def flush_due(self) -> float | None:
        """Seconds until the gathered replies must be written (`None`: none
        gathered). They go at once when no job is queued here, as the
        driver may be waiting for them to hand over more (the next link of
        a chain, say); otherwise they wait up to ``_REPLY_DELAY``, so that
        a busy pool reports many ended jobs per write.

        Returns
        -------
        seconds : `float` or `None`
            Seconds until the replies must be written, `None` when there are none.
        """
        if not self.out:
            return None
        if not self.queue or self.stopping:
            return 0.0
        return max(0.0, self.out_since + _REPLY_DELAY - time.monotonic())

    def flush(self) -> None:
        """Write the replies gathered since the last flush in one go."""
        if self.out:
            data = "".join(self.out).encode()
            self.out.clear()
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(1, view) :]
            except OSError:
                pass  # the driver is gone: nobody reads the replies

    def close(self) -> None:
        """Stop the warm processes, remove the journals (every job has ended)."""
        self.warm.close()
        self.flush()
        self.journals.close()

    def handle(self, request: dict) -> None:
        """Act on one request line.

        Parameters
        ----------
        request : `dict`
            The decoded request (a job, ``stop`` or ``resume``).
        """
        op = request.get("op")
        if op == "stop":
            self.stop()
        elif op == "drain":
            self.drop_queued()
        elif op == "resume":
            self.resume(int(request["spawner"]), request["jobs"])
        elif self.stopping:
            self.reply(request, -1, None, None)
        else:
            self.queue.append(request)


def main(argv: list[str], dirs_fd: int = -1) -> int:
    """Serve requests from stdin until end of input (``dirs_fd``: see `keeper.keep`).

    Parameters
    ----------
    argv : `list` [`str`]
        Command line: the script, the cores and the memory (MB, or ``none``).
    dirs_fd : `int`, optional
        Pipe to the keeper for the journals' directories (``-1``: no keeper).

    Returns
    -------
    code : `int`
        Exit status.
    """
    cores = int(argv[1])
    memory = int(argv[2]) if argv[2] != "none" else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the jobs do not inherit it (`Launcher`)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spawner = Spawner(cores, memory, [f"spawner {os.getpid()}\n"], dirs_fd)
    spawner.flush()
    stdin_fd = sys.stdin.fileno()
    buffer = b""
    open_input = True
    held: float | None = None
    while open_input or spawner.running or spawner.adopted:
        timeout = spawner.check_deadlines()
        for due in (spawner.flush_due(), spawner.sweep_leftovers(), held):
            if due is not None:
                timeout = due if timeout is None else min(timeout, due)
        if spawner.adopted:
            timeout = _ADOPTED_POLL if timeout is None else min(timeout, _ADOPTED_POLL)
        refresh = spawner.refresh_journals()
        if refresh is not None:
            timeout = refresh if timeout is None else min(timeout, refresh)
        readable, _, _ = select.select([stdin_fd, wake_r] if open_input else [wake_r], [], [], timeout)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 1 << 16)
            if not data:
                open_input = False
                spawner.drop_queued()
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                spawner.handle(json.loads(line))
        spawner.reap()
        if spawner.adopted:
            spawner.poll_adopted()
        held = spawner.start_ready()
        spawner.journals.write()
        if spawner.flush_due() == 0.0:
            spawner.flush()
    spawner.flush()
    for _ in range(10):  # what the last jobs left behind (bounded: a process may not die at once)
        if spawner.sweep_leftovers(force=True) is None:
            break
        time.sleep(0.01)
    spawner.close()
    return 0


if __name__ == "__main__":
    sys.exit(keep(lambda dirs_fd: main(sys.argv, dirs_fd), _HOST))
