"""The job spawner of the local pool: a small single-threaded process.

``python -S spawner.py CORES MEMORY`` (standard library only) reads job requests
from stdin (one JSON object per line), starts each job when its cores and
memory fit (first come, first served), and writes one JSON line per ended job
to stdout. Starting processes from here rather than from threads of the
driver keeps process start-up free of the driver's interpreter lock: this
loop starts a job in well under a millisecond.

Requests: ``{"id", "shell", "script", "out", "err", "pid_file", "token",
"cores", "memory", "time_limit"}`` to run a job; ``{"op": "stop"}`` to fail
every queued job and kill every running one. End of input (the driver exited
or died) does the same, then the spawner exits.
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


class Spawner:
    """Queue, start and reap jobs within a core and memory budget."""

    def __init__(self, cores: int, memory: int | None, out) -> None:
        self.cores = cores
        self.memory = memory
        self.free_cores = cores
        self.free_memory = memory
        self.queue: deque[dict] = deque()
        self.running: dict[int, dict] = {}
        self.out = out
        self.stopping = False
        self.made_dirs: set[str] = set()
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
        result = {
            "id": job["id"],
            "code": code,
            "signal": sig,
            "start": start,
            "end": time.time(),
            "host": _HOST,
            "timed_out": timed_out,
            "started": start is not None,
        }
        self.out.write(json.dumps(result) + "\n")

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
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out_fd = os.open(job["out"], flags, 0o644)
        try:
            err_fd = os.open(job["err"], flags, 0o644)
        except OSError:
            os.close(out_fd)
            raise
        try:
            job["start"] = time.time()
            pid = os.posix_spawn(
                job["shell"],
                [job["shell"], "-c", job["script"]],
                self.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_fd, 1),
                    (os.POSIX_SPAWN_DUP2, err_fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(out_fd)
            os.close(err_fd)
        limit = job.get("time_limit")
        job["deadline"] = job["start"] + limit if limit else None
        self.running[pid] = job
        try:
            with open(job["pid_file"], "w") as stream:
                stream.write(f"{_HOST} {pid} {job['token']}\n")
        except OSError:
            pass

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
            try:
                os.unlink(job["pid_file"])
            except OSError:
                pass
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

    def stop(self) -> None:
        """Fail queued jobs, terminate running ones (SIGTERM, then SIGKILL)."""
        self.stopping = True
        while self.queue:
            self.reply(self.queue.popleft(), -1, None, None)
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
    out = os.fdopen(sys.stdout.fileno(), "w", buffering=1)
    spawner = Spawner(cores, memory, out)
    stdin_fd = sys.stdin.fileno()
    buffer = b""
    open_input = True
    while open_input or spawner.running:
        timeout = spawner.check_deadlines()
        readable, _, _ = select.select([stdin_fd, wake_r] if open_input else [wake_r], [], [], timeout)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 1 << 16)
            if not data:
                open_input = False
                spawner.stop()
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
