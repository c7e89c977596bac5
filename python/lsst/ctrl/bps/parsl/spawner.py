"""Job processes: how they start, how they are found and stopped, and the
local pool's spawner, a small single-threaded process.

Standard library only: ``python -S spawner.py CORES MEMORY`` runs the spawner,
and `runner` imports the same functions on Parsl workers.

Every job attempt starts through a `Launcher` (a session of its own, default
signal dispositions, no blocked signal) and runs `job_argv`'s script, which
creates the attempt's log files (and their directory, if it vanished) and
exports ``BPS_PARSL_ATTEMPT=<run id>/<job>/<attempt>``. Every process a job
starts inherits that token, so `kill_attempts` finds them all, also those that
left the job's process group or session, by reading each process's own
``/proc`` entry.

The spawner reads job requests from stdin (one JSON object per line), starts
each job when its cores and memory fit (first come, first served), and writes
one line per ended job to stdout: ``<id> <exit code> <signal|-> <start|-|?>
<end> <timed out 0|1>`` (start ``-``: the job was never started; ``?``: it
started at a time nobody knows). Starting processes from here rather than from
threads of the driver keeps process start-up free of the driver's interpreter
lock.

Requests: ``{"id", "shell", "script", "out", "err", "pid_file", "token",
"cores", "memory", "time_limit"}`` to run a job; ``{"op": "stop"}`` to fail
every queued job and kill every running one; ``{"op": "resume", "spawner":
<pid>, "jobs": [request, ...]}`` (first line of a new spawner) to take over
the requests of a spawner that died: a job that had started is followed to its
end (its exit status is read from its stderr log), the others are queued. End
of input (the driver exited or died) drops the queued jobs but lets the
running ones finish (their exit status still reaches their logs, where a
restart finds it), then the spawner exits.

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
from collections.abc import Collection, Mapping

ATTEMPT_ENV = "BPS_PARSL_ATTEMPT"
EXIT_MARKER = "[bps-parsl] exit status "
JOURNAL_PREFIX = "spawner."
KILL_GRACE = 0.5
"""Seconds between SIGTERM and SIGKILL when job processes are killed."""

_HOST = socket.gethostname()
_JOURNAL_COMPACT_BYTES = 1 << 20
_REPLY_DELAY = 0.02
"""Seconds replies may wait to be sent together while jobs are still queued
here (the driver has nothing to hand over that could start sooner)."""
_ADOPTED_POLL = 0.1
"""Seconds between checks whether a job followed from a dead spawner ended."""
_EXPORT = f"export {ATTEMPT_ENV}=".encode()
_NAMED_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


# ---- starting a job ---------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as one word for the shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def job_argv(shell: str, out: str, err: str, script: str) -> list[str]:
    """The command line of a job attempt's shell.

    The shell creates the log files itself (creating files is the slowest
    step of a start, and the spawner starts jobs one at a time), and their
    directory first if it does not exist (a log directory may be removed
    while a run goes on). If they cannot be created, the shell says why on
    its inherited stderr and exits with 127.
    """
    directory = quote(os.path.dirname(out) or ".")
    redirect = f"command exec >{quote(out)} 2>{quote(err)}"
    return [
        shell,
        "-c",
        f"[ -d {directory} ] || mkdir -p {directory} 2>/dev/null; "
        f"{redirect} || {{ mkdir -p {directory} && {redirect}; }} || exit 127\n{script}",
    ]


class Launcher:
    """Starts job shells: each in a session of its own, with stdin and stdout
    on ``/dev/null`` (`job_argv`'s script redirects them) and stderr
    inherited, every signal at its default disposition and none blocked,
    whatever the caller ignores or blocks.

    With glibc the C library's ``posix_spawn`` is called directly: Python's
    ``os.posix_spawn`` cannot name glibc's two internal signals (32 and 33),
    which glibc then leaves ignored in the child. Elsewhere ``os.posix_spawn``
    resets every other signal.

    Parameters
    ----------
    environ : `~collections.abc.Mapping`, optional
        The jobs' environment (converted once); this process's by default.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.environ = {os.fsencode(k): os.fsencode(v) for k, v in environ.items()}
        self._glibc = _glibc_spawn()
        if self._glibc is not None:
            import ctypes

            items = [k + b"=" + v for k, v in self.environ.items()]
            self._envp = (ctypes.c_char_p * (len(items) + 1))(*items, None)

    def spawn(self, argv: list[str]) -> int:
        """Start ``argv`` (`job_argv`); return its pid, which the caller must reap."""
        if self._glibc is not None:
            return self._glibc(argv, self._envp)
        return os.posix_spawn(
            argv[0],
            argv,
            self.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
            setsigdef=_NAMED_SIGNALS,
            setsigmask=(),
        )


_GLIBC_SPAWN: list = []
"""The glibc spawn function, once made (`None` in it: not glibc)."""


def _glibc_spawn():
    """A function ``(argv, envp) -> pid`` calling glibc's ``posix_spawn``
    with every signal (glibc's own included) reset to its default and none
    blocked, or `None` where the C library is not glibc."""
    if _GLIBC_SPAWN:
        return _GLIBC_SPAWN[0]
    spawn = None
    try:
        if os.confstr("CS_GNU_LIBC_VERSION"):
            spawn = _make_glibc_spawn()
    except (OSError, ValueError, AttributeError, ImportError):
        spawn = None
    _GLIBC_SPAWN.append(spawn)
    return spawn


def _make_glibc_spawn():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Opaque glibc structures (336 and 80 bytes on x86_64), with room to spare.
    attr = ctypes.create_string_buffer(1024)
    actions = ctypes.create_string_buffer(1024)
    every_signal = ctypes.create_string_buffer(b"\xff" * 128, 128)  # a raw sigset_t: sigfillset omits 32, 33
    no_signal = ctypes.create_string_buffer(128)
    setsigdef, setsigmask, setsid = 0x04, 0x08, 0x80  # glibc's POSIX_SPAWN_* flags
    steps = (
        libc.posix_spawnattr_init(attr),
        libc.posix_spawnattr_setsigdefault(attr, every_signal),
        libc.posix_spawnattr_setsigmask(attr, no_signal),
        libc.posix_spawnattr_setflags(attr, ctypes.c_short(setsigdef | setsigmask | setsid)),
        libc.posix_spawn_file_actions_init(actions),
        libc.posix_spawn_file_actions_addopen(actions, 0, os.devnull.encode(), os.O_RDONLY, 0),
        libc.posix_spawn_file_actions_addopen(actions, 1, os.devnull.encode(), os.O_WRONLY, 0),
    )
    if any(steps):
        return None
    posix_spawn = libc.posix_spawn

    def spawn(argv: list[str], envp) -> int:
        pid = ctypes.c_int()
        args = [os.fsencode(arg) for arg in argv]
        error = posix_spawn(
            ctypes.byref(pid), args[0], actions, attr, (ctypes.c_char_p * (len(args) + 1))(*args, None), envp
        )
        if error:
            raise OSError(error, os.strerror(error), argv[0])
        return pid.value

    spawn.keep = (libc, attr, actions, every_signal, no_signal)  # type: ignore[attr-defined]
    return spawn


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(exit code, signal) of a wait status; a signal ``s`` gives ``128 + s``,
    as the shell reports it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    code = os.WEXITSTATUS(status)
    return code, (code - 128 if 128 < code < 128 + 65 else None)


def logged_exit_status(stderr: str) -> int | None:
    """Exit status a job's shell appended to its stderr log, if any."""
    try:
        with open(stderr, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 4096))
            tail = stream.read().decode(errors="replace")
    except OSError:
        return None
    pos = tail.rfind(EXIT_MARKER)
    if pos < 0:
        return None
    try:
        return int(tail[pos + len(EXIT_MARKER) :].split()[0])
    except (ValueError, IndexError):
        return None


def append_note(path: str, text: str) -> None:
    """Append ``text`` to a log file, making its directory again if it vanished."""
    for _ in range(2):
        try:
            with open(path, "a") as stream:
                stream.write(text)
            return
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError:
                return
        except OSError:
            return


# ---- finding and stopping a job's processes -----------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid,
    process group, session, ..."""
    data = _read(f"/proc/{pid}/stat")
    return data[data.rindex(b")") + 2 :].split()


def _my_processes() -> list[int]:
    """Pids of this user's processes, other than this one."""
    uid, me = os.getuid(), os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def attempt_processes(tokens: Collection[str] = (), run_prefix: str | None = None) -> dict[int, int]:
    """Return ``{pid: process group}`` of this user's live processes that
    carry one of ``tokens`` (or a token starting with ``run_prefix``), read
    from their own ``/proc`` entry: in their environment (every process a job
    started) or, for a job's shell, in its command line."""
    exact = {f"{ATTEMPT_ENV}={token}".encode() for token in tokens}
    shells = [_EXPORT + f"{token}\n".encode() for token in tokens]
    env_prefix = f"{ATTEMPT_ENV}={run_prefix}".encode() if run_prefix else None
    shell_prefix = _EXPORT + run_prefix.encode() if run_prefix else None
    found: dict[int, int] = {}
    if not exact and env_prefix is None:
        return found
    for pid in _my_processes():
        try:
            environ = _read(f"/proc/{pid}/environ")
            carries = any(
                item in exact or (env_prefix is not None and item.startswith(env_prefix))
                for item in environ.split(b"\0")
                if item.startswith(b"BPS_")
            )
            if not carries:
                cmdline = _read(f"/proc/{pid}/cmdline")
                if _EXPORT in cmdline:
                    carries = any(shell in cmdline for shell in shells) or (
                        shell_prefix is not None and shell_prefix in cmdline
                    )
            if carries:
                found[pid] = int(_stat_fields(pid)[2])
        except (OSError, ValueError, IndexError):
            continue
    return found


def signal_attempts(
    sig: int, tokens: Collection[str] = (), run_prefix: str | None = None, groups: Collection[int] = ()
) -> int:
    """Send ``sig`` to the processes `attempt_processes` finds and to their
    process groups, and to ``groups`` (process groups of the caller's own
    children, not yet reaped). Returns how many processes were found.

    A job runs in a session of its own, so every member of a group found
    this way was started by the job, also one that dropped the token.
    """
    found = attempt_processes(tokens, run_prefix)
    own_group = os.getpgrp()
    for pgid in {*found.values(), *groups}:
        if pgid > 1 and pgid != own_group:
            _kill(os.killpg, pgid, sig)
    for pid in found:
        _kill(os.kill, pid, sig)
    if sig == signal.SIGTERM:
        # A stopped process acts on SIGTERM only once continued.
        for pid in found:
            _kill(os.kill, pid, signal.SIGCONT)
    return len(found)


def _kill(how, target: int, sig: int) -> None:
    try:
        how(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_attempts(
    tokens: Collection[str] = (),
    run_prefix: str | None = None,
    groups: Collection[int] = (),
    grace: float = KILL_GRACE,
) -> int:
    """Stop every process of the given job attempts (or of a whole run):
    SIGTERM, then, after up to ``grace`` seconds, SIGKILL to what is left.
    See `signal_attempts`. Returns how many processes were found at first."""
    found = signal_attempts(signal.SIGTERM, tokens, run_prefix, groups)
    if found or groups:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and attempt_processes(tokens, run_prefix):
            time.sleep(0.05)
        signal_attempts(signal.SIGKILL, tokens, run_prefix, groups)
    return found


def _live_shells() -> dict[str, int]:
    """``{token: pid}`` of the job shells (session leaders whose command line
    exports a token) of this user that are alive."""
    shells: dict[str, int] = {}
    for pid in _my_processes():
        try:
            cmdline = _read(f"/proc/{pid}/cmdline")
            start = cmdline.find(_EXPORT)
            if start < 0 or int(_stat_fields(pid)[3]) != pid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        end = cmdline.find(b"\n", start)
        if end > 0:
            shells[cmdline[start + len(_EXPORT) : end].decode(errors="replace")] = pid
    return shells


def _shell_alive(pid: int, token: str) -> bool:
    try:
        return _EXPORT + f"{token}\n".encode() in _read(f"/proc/{pid}/cmdline")
    except OSError:
        return False


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch)."""
    try:
        ticks = int(_stat_fields(pid)[19])
        for line in _read("/proc/stat").splitlines():
            if line.startswith(b"btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---- the journal ----------------------------------------------------------------------


def journal_name(host: str, pid: int) -> str:
    """File name of the journal of the spawner ``pid`` on ``host``."""
    return f"{JOURNAL_PREFIX}{host}.{pid}"


def read_journal(path: str) -> dict[int, str]:
    """Return ``{pid: token}`` of the jobs a journal says are running."""
    return _read_journal(path)[0]


def _read_journal(path: str) -> tuple[dict[int, str], set[str]]:
    """``{pid: token}`` of the running jobs, and the tokens of every job the
    journal says started."""
    running: dict[int, str] = {}
    started: set[str] = set()
    try:
        with open(path, "rb") as stream:
            data = stream.read().decode(errors="replace")
    except OSError:
        return running, started
    for line in data.splitlines():
        fields = line.split()
        try:
            if len(fields) == 3 and fields[0] == "+":
                running[int(fields[1])] = fields[2]
                started.add(fields[2])
            elif len(fields) == 2 and fields[0] == "-":
                running.pop(int(fields[1]), None)
        except ValueError:
            continue
    return running, started


class Journal:
    """The append-only record of which jobs run, one per directory.

    If its file is removed (with its directory, say), the next write makes
    them again, with every job that runs.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, journal_name(_HOST, os.getpid()))
        self.running: dict[int, str] = {}
        self.size = 0
        self.pending: list[str] = []
        os.makedirs(directory, exist_ok=True)
        self.fd = self._open(self.path)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self) -> None:
        """Append the lines recorded since the last write, in one go."""
        if not self.pending:
            return
        try:
            vanished = os.fstat(self.fd).st_nlink == 0
        except OSError:
            vanished = True
        if vanished:
            self.pending.clear()
            os.makedirs(self.directory, exist_ok=True)
            self._compact()
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


# ---- the spawner ----------------------------------------------------------------------


class Spawner:
    """Queue, start and reap jobs within a core and memory budget."""

    def __init__(self, cores: int, memory: int | None, out: list[str]) -> None:
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
        self.journals: dict[str, Journal] = {}
        # The environment is converted once, not for every job.
        self.launcher = Launcher()

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
            self._take(job)
            try:
                self._spawn(job)
            except OSError as exc:
                self._give_back(job)
                append_note(job["err"], f"[bps-parsl] could not start the job: {exc}\n")
                self.reply(job, 127, None, None)

    def _spawn(self, job: dict) -> None:
        job["start"] = time.time()
        pid = self.launcher.spawn(job_argv(job["shell"], job["out"], job["err"], job["script"]))
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
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.running.pop(pid, None)
            if job is not None:
                self._ended(pid, job, *exit_code_of(status), job["start"])

    # ---- jobs of a spawner that died ----

    def resume(self, dead_spawner: int, jobs: list[dict]) -> None:
        """Take over the requests a spawner that died had not answered.

        A job it had started (its journal says so, its shell is alive, or
        its stderr log exists, which its shell creates first) is not started
        again: a live one is followed until its shell exits, and an ended
        one is answered at once; both with the exit status its shell
        logged. Every other job is queued as if just sent.
        """
        live = _live_shells()
        started: set[str] = set()
        old_journals = {
            os.path.join(directory, journal_name(_HOST, dead_spawner))
            for directory in {os.path.dirname(job.get("pid_file") or "") for job in jobs}
            if directory
        }
        for path in old_journals:
            started |= _read_journal(path)[1]
        for job in jobs:
            token = job["token"]
            pid = live.get(token)
            if pid is not None:
                self._adopt(pid, job)
            elif token in started or os.path.exists(job["err"]):
                self.reply(job, *self._answer_from_log(job), "?")
            else:
                self.queue.append(job)
        for journal in self.journals.values():
            journal.write()
        for path in old_journals:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _adopt(self, pid: int, job: dict) -> None:
        self._take(job)
        start = _start_time(pid)
        job["start"] = start if start is not None else "?"
        limit = job.get("time_limit")
        job["deadline"] = (start if start is not None else time.time()) + limit if limit else None
        self.adopted[pid] = job
        journal = self.journal(job)
        if journal is not None:
            journal.started(pid, job["token"])

    @staticmethod
    def _answer_from_log(job: dict) -> tuple[int, int | None]:
        """(exit code, signal) of a job that a spawner that died had started."""
        code = logged_exit_status(job["err"])
        if code is None:
            append_note(
                job["err"],
                "[bps-parsl] the job pool's spawner died while this job ran, and its shell logged no "
                "exit status: counted as failed\n",
            )
            code, sig = -1, None
        else:
            sig = code - 128 if 128 < code < 128 + 65 else None
        return code, sig

    def poll_adopted(self) -> None:
        """Answer the adopted jobs whose shell has exited."""
        for pid, job in list(self.adopted.items()):
            if not _shell_alive(pid, job["token"]):
                del self.adopted[pid]
                code, sig = self._answer_from_log(job)
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


def main(argv: list[str]) -> int:
    """Serve requests from stdin until end of input."""
    cores = int(argv[1])
    memory = int(argv[2]) if argv[2] != "none" else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the jobs do not inherit it (`Launcher`)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spawner = Spawner(cores, memory, [])
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
        for journal in spawner.journals.values():
            journal.write()
        if spawner.flush_due() == 0.0:
            spawner.flush()
    spawner.flush()
    spawner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
