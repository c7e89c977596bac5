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
    Start the job (`processes.Launcher.spawn_job`: the program its script
    ``prefix``, ``env``, ``command`` would run under ``shell``, with ``out``
    and ``err`` as its output, when the script is plain; otherwise the shell,
    which creates ``out`` and ``err`` and runs the script's last command in
    its own place) once ``cores`` cores and ``memory`` MB fit in the budget,
    first come first served (a request larger than the whole budget is given
    the whole budget). ``prefix`` and ``env`` may be left out (empty). The
    spawner appends the job's exit status to ``err``
    (`exits.log_exit_status`) before it
    reaps the job. ``token`` (one
    word) is exported to the job as ``BPS_PARSL_ATTEMPT``; ``time_limit``
    (seconds or ``null``) kills the job's processes after that long
    (SIGTERM, then SIGKILL `processes.KILL_GRACE` later). ``N`` is the
    executor's id of the request, unique within the executor. ``warm``
    (true or left out) lets a ``pipetask run-qbb`` job start warm
    (`lsst_ctrl_bps_parsl_worker.warm`: forked from a warm process, a
    child of this one, and adopted by this one as a subreaper).
``{"op": "stop"}``
    Fail every queued job and kill every running one.
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

``start`` is ``-`` when the job never started (stopped, or it could not be
started), ``?`` when it started at a time nobody knows (a job followed
after a spawner died); times are seconds since the epoch. A job killed by a
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
    sys.path.insert(
        0,
        os.path.dirname(
            os.path.dirname(
                os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            )
        ),
    )

from lsst_ctrl_bps_parsl_worker.exits import (  # noqa: E402
    ended_child,
    log_exit_status,
    logged_exit_status,
    reap,
    zombie_exit_code,
)
from lsst_ctrl_bps_parsl_worker.journal import (  # noqa: E402
    Journal,
    Journals,
    journal_entries,
    journal_name,
)
from lsst_ctrl_bps_parsl_worker.keeper import keep  # noqa: E402
from lsst_ctrl_bps_parsl_worker.processes import (  # noqa: E402
    KILL_GRACE,
    Launcher,
    append_note,
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


# ---- the spawner ----------------------------------------------------------------------


class Spawner:
    """Queue, start and reap jobs within a core and memory budget."""

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
        """(when, token): SIGKILL still due to a job killed for its walltime."""
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
        """Report an ended job; ``start`` `None`: never started, ``"?"``: unknown."""
        if not self.out:
            self.out_since = time.monotonic()
        started = "-" if start is None else start if isinstance(start, str) else repr(start)
        self.out.append(
            f"{job['id']} {code} {'-' if sig is None else sig} {started} {time.time()!r} {int(timed_out)}\n"
        )

    def note(self, text: str) -> None:
        """Send a line for the driver's log (`warm.WarmStarts`)."""
        if not self.out:
            self.out_since = time.monotonic()
        self.out.append(f"note {' '.join(text.split())}\n")

    def journal(self, job: dict) -> Journal | None:
        """The journal of the directory of the job's ``pid_file``."""
        return self.journals.of(job.get("pid_file") or "")

    def refresh_journals(self) -> float | None:
        """Seconds until the journals' next refresh (`Journals.refresh`), `None` when no job runs."""
        return self.journals.refresh(bool(self.running or self.adopted))

    def start_ready(self) -> None:
        while self.queue and not self.stopping and self._fits(self.queue[0]):
            job = self.queue.popleft()
            self._take(job)
            try:
                self._spawn(job)
            except OSError as exc:
                self._give_back(job)
                append_note(job["err"], f"[bps-parsl] could not start the job: {exc}\n")
                self.reply(job, 127, None, None)

    def _spawn(self, job: dict) -> None:
        journal = self.journal(job)
        if journal is not None:
            # Before the start: the keeper names the job if this process dies while starting it.
            journal.starting(job["token"], job["err"])
        job["start"] = time.time()
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
        job["deadline"] = job["start"] + limit if limit else None
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
                self._ended(pid, job, code, sig, job["start"])
                if self.flush_due() == 0.0:
                    self.flush()
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
        job["deadline"] = (start if start is not None else time.time()) + limit if limit else None
        self.adopted[pid] = job
        journal = self.journal(job)
        if journal is not None:
            journal.started(pid, job["token"], job["err"])

    @staticmethod
    def _answer_from_log(job: dict, pid: int | None) -> tuple[int, int | None]:
        """(exit code, signal) of a job that a spawner that died had started:
        read from ``/proc`` while the job (``pid``) ended unreaped, else from
        its stderr log (where that spawner, or its keeper, logged it).
        """
        code = zombie_exit_code(pid) if pid is not None else None
        if code is not None:
            log_exit_status(job["err"], code)
        else:
            code = logged_exit_status(job["err"])
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
        """Kill jobs past their time limit; return seconds to the next deadline."""
        now = time.time()
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
        """Act on one request line."""
        op = request.get("op")
        if op == "stop":
            self.stop()
        elif op == "resume":
            self.resume(int(request["spawner"]), request["jobs"])
        elif self.stopping:
            self.reply(request, -1, None, None)
        else:
            self.queue.append(request)


def main(argv: list[str], dirs_fd: int = -1) -> int:
    """Serve requests from stdin until end of input (``dirs_fd``: see `keeper.keep`)."""
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
    while open_input or spawner.running or spawner.adopted:
        timeout = spawner.check_deadlines()
        due = spawner.flush_due()
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
        spawner.start_ready()
        spawner.journals.write()
        if spawner.flush_due() == 0.0:
            spawner.flush()
    spawner.close()
    return 0


if __name__ == "__main__":
    sys.exit(keep(lambda dirs_fd: main(sys.argv, dirs_fd), _HOST))
