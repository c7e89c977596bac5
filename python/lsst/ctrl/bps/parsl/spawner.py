"""The job spawner of the local pool: a small single-threaded process.

``python -S spawner.py CORES MEMORY`` (standard library only) reads job requests
from stdin (one JSON object per line), starts each job when its cores and
memory fit (first come, first served), and writes one line per ended job to
stdout: ``<id> <exit code> <signal|-> <start|-> <end> <timed out 0|1>``
(start ``-``: the job was never started). Starting processes from here rather
than from threads of the driver keeps process start-up free of the driver's
interpreter lock: this loop starts a job in well under a millisecond.

Requests: ``{"id", "shell", "script", "out", "err", "pid_file", "token",
"cores", "memory", "time_limit"}`` to run a job; ``{"op": "stop"}`` to fail
every queued job and kill every running one. End of input (the driver exited
or died) drops the queued jobs but lets the running ones finish (their exit
status still reaches their logs, where a restart finds it), then the spawner
exits.

Which jobs run is kept in a journal, ``spawner.<host>.<pid>`` in the directory
of the jobs' ``pid_file`` (one ``+ <pid> <token>`` line when a job starts, one
``- <pid>`` line when it ended): appending a line costs far less than
creating and deleting a file per job. `read_journal` reads it back.
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

_HOST = socket.gethostname()
_KILL_GRACE = 0.5
JOURNAL_PREFIX = "spawner."
_JOURNAL_COMPACT_BYTES = 1 << 20
_REPLY_DELAY = 0.02
"""Seconds replies may wait to be sent together while jobs are still queued
here (the driver has nothing to hand over that could start sooner)."""


def journal_name(host: str, pid: int) -> str:
    """File name of the journal of the spawner ``pid`` on ``host``."""
    return f"{JOURNAL_PREFIX}{host}.{pid}"


def read_journal(path: str) -> dict[int, str]:
    """Return ``{pid: token}`` of the jobs a journal says are running."""
    running: dict[int, str] = {}
    try:
        with open(path, "rb") as stream:
            data = stream.read().decode(errors="replace")
    except OSError:
        return running
    for line in data.splitlines():
        fields = line.split()
        try:
            if len(fields) == 3 and fields[0] == "+":
                running[int(fields[1])] = fields[2]
            elif len(fields) == 2 and fields[0] == "-":
                running.pop(int(fields[1]), None)
        except ValueError:
            continue
    return running


class Journal:
    """The append-only record of which jobs run, one per directory."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, journal_name(_HOST, os.getpid()))
        self.running: dict[int, str] = {}
        self.size = 0
        self.pending: list[str] = []
        self.fd = self._open(self.path)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self) -> None:
        """Append the lines recorded since the last write, in one go."""
        if not self.pending:
            return
        data = "".join(self.pending).encode()
        self.pending.clear()
        try:
            os.write(self.fd, data)
        except OSError:
            return
        self.size += len(data)
        if self.size > _JOURNAL_COMPACT_BYTES:
            self._compact()

    def started(self, pid: int, token: str) -> None:
        """Record that job attempt ``token`` runs as process group ``pid``."""
        self.running[pid] = token
        self.pending.append(f"+ {pid} {token}\n")

    def ended(self, pid: int) -> None:
        """Record that process group ``pid`` ended."""
        self.running.pop(pid, None)
        self.pending.append(f"- {pid}\n")

    def _compact(self) -> None:
        """Rewrite the journal with only the running jobs (atomically)."""
        text = "".join(f"+ {pid} {token}\n" for pid, token in self.running.items())
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            new_fd = self._open(self.path)
        except OSError:
            return
        os.close(self.fd)
        self.fd = new_fd
        self.size = len(text)

    def close(self) -> None:
        """Close and remove the journal (every job has ended)."""
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Spawner:
    """Queue, start and reap jobs within a core and memory budget."""

    def __init__(self, cores: int, memory: int | None, out: list[str]) -> None:
        self.cores = cores
        self.memory = memory
        self.free_cores = cores
        self.free_memory = memory
        self.queue: deque[dict] = deque()
        self.running: dict[int, dict] = {}
        self.out = out
        self.out_since = 0.0
        self.stopping = False
        self.made_dirs: set[str] = set()
        self.journals: dict[str, Journal] = {}
        # Encoded once: posix_spawn would convert os.environ for every job.
        self.environ = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}

    def _share(self, job: dict) -> tuple[int, int]:
        cores = min(int(job.get("cores") or 1), self.cores)
        memory = min(int(job.get("memory") or 0), self.memory) if self.memory is not None else 0
        return cores, memory

    def _fits(self, job: dict) -> bool:
        cores, memory = self._share(job)
        return self.free_cores >= cores and (self.free_memory is None or self.free_memory >= memory)

    def reply(
        self, job: dict, code: int, sig: int | None, start: float | None, timed_out: bool = False
    ) -> None:
        if not self.out:
            self.out_since = time.monotonic()
        self.out.append(
            f"{job['id']} {code} {'-' if sig is None else sig} {'-' if start is None else repr(start)} "
            f"{time.time()!r} {int(timed_out)}\n"
        )

    def journal(self, job: dict) -> Journal | None:
        """The journal of the directory of the job's ``pid_file``."""
        directory = os.path.dirname(job.get("pid_file") or "")
        if not directory:
            return None
        journal = self.journals.get(directory)
        if journal is None:
            try:
                journal = self.journals[directory] = Journal(directory)
            except OSError:
                return None
        return journal

    def start_ready(self) -> None:
        while self.queue and not self.stopping and self._fits(self.queue[0]):
            job = self.queue.popleft()
            cores, memory = self._share(job)
            self.free_cores -= cores
            if self.free_memory is not None:
                self.free_memory -= memory
            job["taken"] = (cores, memory)
            try:
                self._spawn(job)
            except OSError as exc:
                self._give_back(job)
                self._append(job["err"], f"[bps-parsl] could not start the job: {exc}\n")
                self.reply(job, 127, None, None)

    def _spawn(self, job: dict) -> None:
        directory = os.path.dirname(job["out"])
        if directory not in self.made_dirs:
            os.makedirs(directory, exist_ok=True)
            self.made_dirs.add(directory)
        # The job's shell creates its own log files: creating files is the
        # slowest step of a start, and this loop starts jobs one at a time.
        # If they cannot be created, the shell says why on this process's
        # stderr (the driver's) and the job fails with 127.
        script = f"command exec >{_quote(job['out'])} 2>{_quote(job['err'])} || exit 127\n{job['script']}"
        job["start"] = time.time()
        pid = os.posix_spawn(
            job["shell"],
            [job["shell"], "-c", script],
            self.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
        )
        limit = job.get("time_limit")
        job["deadline"] = job["start"] + limit if limit else None
        self.running[pid] = job
        journal = self.journal(job)
        if journal is not None:
            journal.started(pid, job["token"])

    def _give_back(self, job: dict) -> None:
        cores, memory = job.pop("taken", (0, 0))
        self.free_cores += cores
        if self.free_memory is not None:
            self.free_memory += memory

    @staticmethod
    def _append(path: str, text: str) -> None:
        try:
            with open(path, "a") as stream:
                stream.write(text)
        except OSError:
            pass

    def reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.running.pop(pid, None)
            if job is None:
                continue
            journal = self.journal(job)
            if journal is not None:
                journal.ended(pid)
            self._give_back(job)
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                code = 128 + sig
            else:
                code = os.WEXITSTATUS(status)
                sig = code - 128 if 128 < code < 128 + 65 else None
            timed_out = job.get("timed_out", False)
            if timed_out:
                self._append(job["err"], f"[bps-parsl] killed after walltime of {job['time_limit']:.0f} s\n")
            self.reply(job, code, sig, job["start"], timed_out)

    def check_deadlines(self) -> float | None:
        """Kill jobs past their time limit; return seconds to the next deadline."""
        now = time.time()
        soonest = None
        for pid, job in list(self.running.items()):
            deadline = job.get("deadline")
            if deadline is None:
                continue
            if job.get("killed_at"):
                if now - job["killed_at"] > _KILL_GRACE:
                    _signal_group(pid, signal.SIGKILL)
                continue
            if now >= deadline:
                job["timed_out"] = True
                job["killed_at"] = now
                _signal_group(pid, signal.SIGTERM)
                deadline = now + _KILL_GRACE
            soonest = deadline if soonest is None else min(soonest, deadline)
        return None if soonest is None else max(0.0, soonest - now)

    def drop_queued(self) -> None:
        """Start no more jobs: fail the queued ones."""
        self.stopping = True
        while self.queue:
            self.reply(self.queue.popleft(), -1, None, None)

    def stop(self) -> None:
        """Fail queued jobs, terminate running ones (SIGTERM, then SIGKILL)."""
        self.drop_queued()
        for pid in self.running:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + _KILL_GRACE
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        for pid in self.running:
            _signal_group(pid, signal.SIGKILL)
        while self.running:
            self.reap()
            time.sleep(0.01)

    def flush_due(self) -> float | None:
        """Seconds until the gathered replies must be written (`None`: none
        gathered). They go at once when no job is queued here, as the
        driver may be waiting for them to hand over more (the next link of
        a chain, say); otherwise they wait up to ``_REPLY_DELAY``, so that
        a busy pool reports many ended jobs per write."""
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
        """Remove the journals (every job has ended)."""
        for journal in self.journals.values():
            journal.close()
        self.journals.clear()


def _quote(path: str) -> str:
    """``path`` as one word for the shell."""
    return "'" + path.replace("'", "'\\''") + "'"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    """Serve requests from stdin until end of input."""
    cores = int(argv[1])
    memory = int(argv[2]) if argv[2] != "none" else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spawner = Spawner(cores, memory, [])
    stdin_fd = sys.stdin.fileno()
    buffer = b""
    open_input = True
    while open_input or spawner.running:
        timeout = spawner.check_deadlines()
        due = spawner.flush_due()
        if due is not None:
            timeout = due if timeout is None else min(timeout, due)
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
                request = json.loads(line)
                if request.get("op") == "stop":
                    spawner.stop()
                elif spawner.stopping:
                    spawner.reply(request, -1, None, None)
                else:
                    spawner.queue.append(request)
        spawner.reap()
        spawner.start_ready()
        for journal in spawner.journals.values():
            journal.write()
        if spawner.flush_due() == 0.0:
            spawner.flush()
    spawner.flush()
    spawner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
