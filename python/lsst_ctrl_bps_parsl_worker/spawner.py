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

"""The local pool's spawner: a single-threaded process that starts, reaps and
reports the pool's jobs within a core and memory budget (design.md, Local pools).

Standard library only: `LocalPoolExecutor` runs it as ``python -S spawner.py
CORES MEMORY`` (``MEMORY`` in MB, or ``none``) through its keeper (`keeper`).

Wire protocol
-------------
Requests, one JSON object per line on stdin:

``{"id": N, "shell", "prefix", "env", "command", "out", "err", "pid_file", "token", "cores", "memory", "time_limit", "warm"}``
    Start the job (`processes.Launcher.spawn_job`; ``prefix``, ``env`` may be
    left out) once ``cores`` and ``memory`` (MB) fit, first come first
    served. ``N`` is unique within the executor; ``token`` is exported as
    ``BPS_PARSL_ATTEMPT``; the exit status is recorded in the directory of
    ``pid_file``; ``time_limit`` is in seconds (or ``null``); ``warm`` lets a
    ``pipetask run-qbb`` job start warm (`warm`).
``{"op": "stop"}``
    Fail every queued job and kill every running one.
``{"op": "drain"}``
    Fail every queued job and every later request; running jobs end.
``{"op": "resume", "spawner": PID, "jobs": [request, ...]}``
    First line of a spawner that replaces one that died: take over its
    unanswered requests (reliability.md, P1).

End of input drops the queued jobs, lets the running ones finish, then the
spawner exits. Replies on stdout: first ``spawner <pid>``, then per ended job::

    <id> <exit code> <signal|-> <start|-|!|?> <end> <timed out 0|1>

``start`` is ``-`` when the pool stopped before the job started, ``!`` when
it could not be started (exit code 126, 127 for something missing; reason
in its log), ``?`` when unknown (a job followed after a spawner died); times
are epoch seconds; a signal ``s`` gives exit code ``128 + s``. ``note
<text>`` is a line for the driver's log (why jobs started cold, once per
reason). Once the spawner ended its keeper adds ``exit <exit code>``. While
jobs are queued, replies may wait up to 20 ms to be written together.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import time
from collections import deque

if __name__ == "__main__":
    # Run as a script without site-packages: the job-process functions are
    # in the top-level package next to ``lsst/``.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsst_ctrl_bps_parsl_worker import exits, processes  # noqa: E402
from lsst_ctrl_bps_parsl_worker.journal import Journal, journal_jobs, journal_name  # noqa: E402
from lsst_ctrl_bps_parsl_worker.keeper import keep  # noqa: E402
from lsst_ctrl_bps_parsl_worker.warm import WarmStarts  # noqa: E402

__all__ = ("LEFTOVER_SWEEP", "Spawner")

_REPLY_DELAY = 0.02
"""Seconds replies may wait to be sent together while jobs are queued here (nothing could start sooner)."""
_ADOPTED_POLL = 0.1
"""Seconds between checks whether a job followed from a dead spawner ended."""
LEFTOVER_SWEEP = 1.0
"""Seconds between two sweeps for what ended jobs left outside their process group."""
_SWEEPS_PER_TOKEN = 2
"""Sweeps that must find nothing of an ended job before it is forgotten."""


def _directory(job: dict) -> str:
    """Directory of the job's pid file: of its journal and exit record (empty: none)."""
    return os.path.dirname(job.get("pid_file") or "")


class Spawner:
    """Queue, start and reap jobs within a core and memory budget.

    Parameters
    ----------
    cores, memory : `int`
        Cores and memory (MB; `None`: no limit) of the budget.
    dirs_fd : `int`, optional
        Pipe to the keeper for the journals' directories (``-1``: no keeper).
    """

    def __init__(self, cores: int, memory: int | None, dirs_fd: int = -1) -> None:
        self.cores = cores
        self.memory = math.inf if memory is None else memory
        self.queue: deque[dict] = deque()
        self.running: dict[int, dict] = {}
        self.adopted: dict[int, dict] = {}
        """Jobs started by a spawner that died, by pid: not children, followed through ``/proc``."""
        self.kills: list[tuple[float, str]] = []
        """(when, token): SIGKILL still due to a job killed for its walltime (monotonic clock)."""
        self.ended_tokens: dict[str, int] = {}
        """Tokens of jobs that ended, by the sweeps left before they are forgotten."""
        self.next_sweep = 0.0
        """When (monotonic) the next sweep for leftover processes may run."""
        self.hold_until = 0.0
        """No job is started before then (monotonic): a start failed for a passing lack of resources."""
        self.out: list[str] = []  # reply lines not yet written
        self.out_since = 0.0
        self.stopping = False
        self.journals: dict[str, Journal] = {}
        """The journal of each directory of the jobs' pid files."""
        self.dirs_fd = dirs_fd
        # The environment is converted once, not for every job.
        self.launcher = processes.Launcher()
        self.warm = WarmStarts(self._note)

    def _fits(self, job: dict) -> bool:
        """Whether the job's cores and memory (each at most the whole budget) are free."""
        jobs = (job, *self.running.values(), *self.adopted.values())
        cores = sum(min(int(j.get("cores") or 1), self.cores) for j in jobs)
        memory = sum(min(int(j.get("memory") or 0), self.memory) for j in jobs)
        return cores <= self.cores and memory <= self.memory

    def _send(self, line: str) -> None:
        if not self.out:
            self.out_since = time.monotonic()
        self.out.append(line)

    def _reply(self, job: dict, code: int, start: str) -> None:
        """Report an ended job (``start``: its start time, or ``-``, ``!``, ``?``: see the module docstring)."""
        sig = code - 128 if 128 < code < 128 + 65 else "-"
        self._send(f"{job['id']} {code} {sig} {start} {time.time()!r} {int(job.get('timed_out', False))}\n")

    def _note(self, text: str) -> None:
        """Send a line for the driver's log (`warm.WarmStarts`)."""
        self._send(f"note {' '.join(text.split())}\n")

    def _journal(self, job: dict) -> Journal | None:
        """The journal of the directory of the job's pid file, made on first use (`None`: none can be)."""
        directory = _directory(job)
        if directory and directory not in self.journals:
            try:
                self.journals[directory] = Journal(directory)
            except OSError:
                return None
            if self.dirs_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(self.dirs_fd, (json.dumps(directory) + "\n").encode())  # for the keeper
        return self.journals.get(directory)

    def start_ready(self) -> float | None:
        """Start the queued jobs that fit. Any error but a passing one
        (EAGAIN, ENOMEM) is that job's failure alone (`processes.start_failure`).

        Returns
        -------
        seconds : `float` or `None`
            Seconds until a start that failed for a passing reason is tried again (`None`: none).
        """
        while self.queue and not self.stopping:
            if not self._fits(self.queue[0]):
                break
            wait = self.hold_until - time.monotonic()
            if wait > 0:
                return wait
            job = self.queue.popleft()
            try:
                self._spawn(job)
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is this job's
                tries = job.get("start_tries", 0)
                if processes.transient_start_error(exc) and tries < len(processes.START_RETRY_DELAYS):
                    job["start_tries"] = tries + 1
                    self.queue.appendleft(job)
                    self.hold_until = time.monotonic() + processes.START_RETRY_DELAYS[tries]
                    continue
                code = processes.start_failure(job["err"], exc, tries, _directory(job), job["token"])
                self._reply(job, code, "!")
        return None

    def _spawn(self, job: dict) -> None:
        journal = self._journal(job)
        if journal is not None:
            # Before the start: the keeper names the job if this process dies while starting it.
            journal.starting(job["token"], job["err"])
        job["start"] = repr(time.time())
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

    def _ended(self, pid: int, job: dict, code: int) -> None:
        self.ended_tokens[job["token"]] = _SWEEPS_PER_TOKEN
        journal = self._journal(job)
        if journal is not None:
            journal.ended(pid)
        if job.get("timed_out"):
            processes.append_note(
                job["err"], f"[bps-parsl] killed after walltime of {job['time_limit']:.0f} s\n"
            )
        self._reply(job, code, job["start"])

    def reap(self) -> None:
        """Answer each ended job, record its exit status, then reap it."""
        while self.running:
            try:
                ended = exits.ended_child()
            except ChildProcessError:
                return
            if ended is None:
                return
            pid, code = ended
            job = self.running.pop(pid, None)
            if job is not None:
                # Unreaped, its pid still names its process group: end what it left there.
                processes.signal_attempts(signal.SIGKILL, groups=(pid,))
                self._ended(pid, job, code)
                if self._flush_due() == 0.0:
                    self.flush()
                exits.record_exit(_directory(job), job["token"], code, job["err"])
            exits.reap(pid)

    # ---- the jobs of a spawner that died ----

    def _resume(self, dead_spawner: int, jobs: list[dict]) -> None:
        """Take over the requests a spawner that died had not answered
        (reliability.md, P1): a job it started is followed or answered, never started again.
        """
        live = processes.live_jobs()
        started: set[str] = set()
        journaled: dict[str, int] = {}
        old_journals = {os.path.join(d, journal_name(dead_spawner)) for d in map(_directory, jobs) if d}
        for path in old_journals:
            old = journal_jobs(path)
            started |= old.started
            journaled.update((token, pid) for pid, token in old.running.items())
        for job in jobs:
            token = job["token"]
            pid = live.get(token)
            if pid is not None:
                self._adopt(pid, job)
            elif token in started or os.path.exists(job["err"]):
                self._reply(job, self._exit_code(job, journaled.get(token)), "?")
            else:
                self.queue.append(job)
        for journal in self.journals.values():
            journal.write()
        for path in old_journals:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _adopt(self, pid: int, job: dict) -> None:
        start = processes.process_start_time(pid)
        job["start"] = repr(start) if start is not None else "?"
        limit = job.get("time_limit")
        ran = time.time() - start if start is not None else 0.0
        job["deadline"] = time.monotonic() + limit - ran if limit else None
        self.adopted[pid] = job
        journal = self._journal(job)
        if journal is not None:
            journal.started(pid, job["token"], job["err"])

    @staticmethod
    def _exit_code(job: dict, pid: int | None) -> int:
        """Exit code of a job its dead spawner started: from ``/proc`` while it
        ended unreaped (then recorded), else from the exit records, else ``-1``.
        """
        directory, token = _directory(job), job["token"]
        code = exits.zombie_exit_code(pid) if pid is not None else None
        if code is not None:
            exits.record_exit(directory, token, code, job["err"])
        elif directory:
            code = exits.recorded_exits(directory).get(token)
        if code is not None:
            return code
        processes.append_note(
            job["err"],
            "[bps-parsl] the job pool's spawner died while this job ran, and neither it nor its "
            "keeper logged an exit status: counted as failed\n",
        )
        return -1

    def _poll_adopted(self) -> None:
        """Answer the adopted jobs that ended."""
        live = processes.live_jobs()
        for pid, job in list(self.adopted.items()):
            if live.get(job["token"]) != pid:
                del self.adopted[pid]
                self._ended(pid, job, self._exit_code(job, pid))

    # ---- time limits and stopping ----

    def check_deadlines(self) -> float | None:
        """Kill jobs past their time limit; return seconds to the next deadline.

        Returns
        -------
        seconds : `float` or `None`
            Seconds to the next deadline or due SIGKILL, `None` if none.
        """
        now = time.monotonic()
        due = [token for when, token in self.kills if when <= now]
        if due:
            self.kills = [(when, token) for when, token in self.kills if when > now]
            processes.signal_attempts(signal.SIGKILL, due)
        soonest = min((when for when, _ in self.kills), default=None)
        for jobs in (self.running, self.adopted):
            for pid, job in jobs.items():
                deadline = job.get("deadline")
                if deadline is None:
                    continue
                if now >= deadline:
                    job["timed_out"] = True
                    job["deadline"] = None
                    groups = (pid,) if jobs is self.running else ()
                    processes.signal_attempts(signal.SIGTERM, (job["token"],), groups=groups)
                    deadline = now + processes.KILL_GRACE
                    self.kills.append((deadline, job["token"]))
                soonest = deadline if soonest is None else min(soonest, deadline)
        return None if soonest is None else max(0.0, soonest - now)

    def _sweep_leftovers(self, force: bool = False) -> float | None:
        """SIGKILL what ended jobs left outside their process group (every
        process carrying their token), one ``/proc`` scan per `LEFTOVER_SWEEP`
        at most (unless ``force``); seconds until the next sweep is due.
        """
        if not self.ended_tokens:
            return None
        now = time.monotonic()
        if not force and now < self.next_sweep:
            return self.next_sweep - now
        self.next_sweep = now + LEFTOVER_SWEEP
        if not processes.signal_attempts(signal.SIGKILL, self.ended_tokens):
            # Nothing left this time: a token is forgotten after that many such sweeps.
            self.ended_tokens = {token: left - 1 for token, left in self.ended_tokens.items() if left > 1}
        return LEFTOVER_SWEEP if self.ended_tokens else None

    def _drop_queued(self) -> None:
        """Start no more jobs: fail the queued ones."""
        self.stopping = True
        while self.queue:
            self._reply(self.queue.popleft(), -1, "-")

    def _stop(self) -> None:
        """Fail queued jobs, kill running ones (SIGTERM, then SIGKILL)."""
        self._drop_queued()
        tokens = [job["token"] for job in (*self.running.values(), *self.adopted.values())]
        processes.kill_attempts(tokens, groups=tuple(self.running))
        deadline = time.monotonic() + 10
        while (self.running or self.adopted) and time.monotonic() < deadline:
            self.reap()
            self._poll_adopted()
            time.sleep(0.01)

    def _flush_due(self) -> float | None:
        """Seconds until the gathered replies must be written (`None`: none):
        at once when nothing is queued (the driver may wait for them),
        otherwise within ``_REPLY_DELAY``, so a busy pool writes many at once.
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
            with contextlib.suppress(OSError):  # the driver is gone: nobody reads the replies
                while view:
                    view = view[os.write(1, view) :]

    def handle(self, request: dict) -> None:
        """Act on one request line.

        Parameters
        ----------
        request : `dict`
            The decoded request (a job, ``stop``, ``drain`` or ``resume``).
        """
        op = request.get("op")
        if op == "stop":
            self._stop()
        elif op == "drain":
            self._drop_queued()
        elif op == "resume":
            self._resume(int(request["spawner"]), request["jobs"])
        elif self.stopping:
            self._reply(request, -1, "-")
        else:
            self.queue.append(request)


def _main(argv: list[str], dirs_fd: int) -> int:
    """Serve requests from stdin until end of input (``argv``: the script, the cores, the memory)."""
    memory = int(argv[2]) if argv[2] != "none" else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the jobs do not inherit it (`processes.Launcher`)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spawner = Spawner(int(argv[1]), memory, dirs_fd)
    spawner._send(f"spawner {os.getpid()}\n")
    spawner.flush()
    stdin_fd = sys.stdin.fileno()
    buffer = b""
    open_input = True
    held: float | None = None
    while open_input or spawner.running or spawner.adopted:
        poll = _ADOPTED_POLL if spawner.adopted else None
        dues = [spawner.check_deadlines(), spawner._flush_due(), spawner._sweep_leftovers(), held, poll]
        if spawner.running or spawner.adopted:
            dues.extend(journal.touch() for journal in spawner.journals.values())
        timeout = min((due for due in dues if due is not None), default=None)
        readable, _, _ = select.select([stdin_fd, wake_r] if open_input else [wake_r], [], [], timeout)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 1 << 16)
            if not data:
                open_input = False
                spawner._drop_queued()
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                spawner.handle(json.loads(line))
        spawner.reap()
        if spawner.adopted:
            spawner._poll_adopted()
        held = spawner.start_ready()
        for journal in spawner.journals.values():
            journal.write()
        if spawner._flush_due() == 0.0:
            spawner.flush()
    spawner.flush()
    for _ in range(10):  # what the last jobs left behind (bounded: a process may not die at once)
        if spawner._sweep_leftovers(force=True) is None:
            break
        time.sleep(0.01)
    # Every job has ended: stop the warm processes, remove the journals.
    spawner.warm.close()
    spawner.flush()
    for journal in spawner.journals.values():
        journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(keep(lambda dirs_fd: _main(sys.argv, dirs_fd)))
