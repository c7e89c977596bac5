"""Process faults (issue 11, items 5, 8, 9, 10): the local pool's spawner
dying, jobs whose processes leave their session, signal dispositions jobs
inherit, log and journal directories removed mid-run.

Everything is real: drivers in subprocesses (``test_reliability.py`` is their
script), the spawner killed with SIGKILL, ``bps cancel`` and ``bps restart``,
processes found by scanning ``/proc``. Each test names the promise of
``doc/reliability.md`` ("Process faults") it proves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from cli import bps, cli_environment, wait_for  # noqa: E402
from lsst_ctrl_bps_parsl_worker import journal, processes  # noqa: E402
from lsst_ctrl_bps_parsl_worker.job import run_job  # noqa: E402
from synthetic import attempts, statuses  # noqa: E402
from test_reliability import LOCAL2, F, S, lines, run_id_of, run_processes, start  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    return cli_environment(tmp_path, monkeypatch)


def spawner_pids(submit: Path) -> set[int]:
    """Pids of the spawners that have a journal in the run's ``parsl/running``."""
    try:
        names = os.listdir(submit / "parsl" / "running")
    except OSError:
        return set()
    prefix = journal.journal_name(0)[:-1]
    return {int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def attempt_states(submit: Path, names) -> dict[str, list[int]]:
    return {name: [row[3] for row in attempts(submit, name)] for name in names}


def counting_jobs(n: int, log: Path, sleep: float, prefix: str = "j") -> list[dict]:
    """Jobs that log ``<name> start`` and ``<name> ok`` around a sleep."""
    return [
        {
            "name": f"{prefix}{i}",
            "label": prefix,
            "script": f"echo {prefix}{i} start >> {log}; sleep {sleep}; echo {prefix}{i} ok >> {log}",
        }
        for i in range(n)
    ]


def assert_each_once(log: Path, names) -> None:
    counts = Counter(lines(log))
    for name in names:
        assert counts[f"{name} start"] == 1 and counts[f"{name} ok"] == 1, (name, counts)


# ---- 5. the spawner dies ---------------------------------------------------------------


def test_spawner_killed_mid_run_a_new_one_takes_over_and_nothing_runs_twice(tmp_path, env):
    """Promise P1: the local pool's spawner is SIGKILLed while a long job
    runs and 20 jobs wait in its queue. A new spawner takes over: the long
    job (now an orphan) is followed to its end, not started again, and its
    exit status is read from its log; the queued jobs start once each; no
    attempt is recorded FAILED; the run succeeds."""
    log, long_started = tmp_path / "ok.log", tmp_path / "long_started"
    jobs = counting_jobs(24, log, 0.2)
    jobs.append(
        {
            "name": "long",
            "script": f"echo long start >> {log}; touch {long_started}; sleep 3; echo long ok >> {log}",
        }
    )
    spec = {"jobs": jobs, "final": f"echo finalJob start >> {log}; echo finalJob ok >> {log}", "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec)
    wait_for(long_started.exists, what="the long job", proc=proc)
    wait_for(lambda: spawner_pids(submit), what="the spawner's journal", proc=proc)
    (first,) = spawner_pids(submit)
    os.kill(first, signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "BrokenPipe" not in out, out
    assert f"spawner (pid {first}) died" in out, out
    names = [j["name"] for j in jobs] + ["finalJob"]
    assert_each_once(log, names)
    assert all(row[0] == S for row in statuses(submit).values())
    assert attempt_states(submit, names) == {name: [S] for name in names}
    assert not spawner_pids(submit), "journals left behind"


def test_spawner_dying_again_and_again_stops_the_run_cleanly_and_restart_finishes(tmp_path, env):
    """Promise P1 (fallback): a spawner killed four times within a minute is
    not replaced again: the run stops with one line (no traceback, no
    BrokenPipeError), no job that never started is recorded FAILED, and
    ``bps restart`` completes the run without running any succeeded job again."""
    log, started = tmp_path / "ok.log", tmp_path / "started"
    jobs = [
        {
            "name": f"w{i}",
            "label": "w",
            "script": f"echo w{i} start >> {log}; echo w{i} >> {started}; sleep 0.3; echo w{i} ok >> {log}",
        }
        for i in range(40)
    ]
    spec = {"jobs": jobs, "final": f"echo finalJob start >> {log}; echo finalJob ok >> {log}", "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec)
    killed: set[int] = set()
    for _ in range(4):
        wait_for(lambda: spawner_pids(submit) - killed, what="a new spawner", proc=proc)
        (pid,) = spawner_pids(submit) - killed
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        wait_for(lambda p=pid: not alive(p), what="the spawner to die")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    assert "Traceback" not in out and "BrokenPipe" not in out, out
    assert "died 4 times" in out, out
    rows = statuses(submit)
    assert not any(state == F for state, *_ in rows.values()), rows
    for name in [j["name"] for j in jobs]:
        assert F not in [row[3] for row in attempts(submit, name)]
    result = bps(env, "restart", "--id", str(submit))
    assert "Run Id:" in result.stdout, result.stdout + result.stderr
    assert all(row[0] == S for row in statuses(submit).values())
    counts = Counter(lines(log))
    twice = {line: n for line, n in counts.items() if line.endswith(" ok") and n > 1}
    assert not twice, f"jobs that succeeded more than once: {twice}"
    assert {f"{j['name']} ok" for j in jobs} <= set(counts)


# ---- 8. everything a job started ends with it ---------------------------------------------


ESCAPES = (
    # A child in a session of its own, and a double-forked daemon (its parent exits,
    # it is reparented, in a new session).
    "setsid sleep {secs}1 & ( setsid sh -c 'sleep {secs}2 & exit 0' & ) ; "
)


def escaping_job(secs: int, flag: Path) -> str:
    return ESCAPES.format(secs=secs) + f"sleep 0.2; touch {flag}; sleep {secs}"


def sleepers(secs: int) -> list[int]:
    """Pids of ``sleep`` processes whose argument starts with ``secs`` (the test's marker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"sleep") and len(argv) > 1 and argv[1].startswith(str(secs).encode()):
                found.append(int(entry))
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_cancel_kills_processes_that_left_the_job_session(tmp_path, env):
    """Promise P2: ``bps cancel`` ends every process a job started, also a
    ``setsid`` child and a double-forked daemon in sessions of their own
    (found by the attempt token in their environment): afterwards no
    process of the run is left (scan of ``/proc``)."""
    secs = 7000 + os.getpid() % 1000
    flag = tmp_path / "flag"
    spec = {"jobs": [{"name": "escaper", "script": escaping_job(secs, flag)}], "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(flag.exists, what="the job", proc=proc)
        wait_for(lambda: len(sleepers(secs)) == 3, timeout=30, what="the job and its escapees", proc=proc)
        result = bps(env, "cancel", "--id", str(submit))
        assert "Traceback" not in result.stdout + result.stderr
        proc.communicate(timeout=60)
        wait_for(lambda: not sleepers(secs), timeout=10, what="every sleeper to end")
        assert not run_processes(run_id_of(submit))
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(sleepers(secs))


def test_walltime_kill_ends_processes_that_left_the_job_session(tmp_path, env):
    """Promise P2 (walltime): a job killed for its walltime on the local pool
    takes its ``setsid`` child and double-forked daemon with it."""
    secs = 8000 + os.getpid() % 1000
    flag = tmp_path / "flag"
    spec = {
        "jobs": [{"name": "escaper", "walltime": 0.02, "script": escaping_job(secs, flag)}],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, out
        assert "killed after walltime" in (submit / "logs" / "escaper" / "escaper.stderr").read_text()
        wait_for(lambda: not sleepers(secs), timeout=10, what="every sleeper to end")
        assert not run_processes(run_id_of(submit))
    finally:
        kill_all(sleepers(secs))


def test_walltime_kill_in_run_job_ends_processes_that_left_the_job_session(tmp_path):
    """Promise P2 (walltime, Parsl workers): `job.run_job` (what thread
    pools and HTEX workers run) kills the escapees of a job past its walltime."""
    secs = 9000 + os.getpid() % 1000
    flag = tmp_path / "flag"
    token = f"proc-faults-{os.getpid()}/0/1"
    try:
        code, sig, *_, timed_out = run_job(
            token,
            "",
            "",
            escaping_job(secs, flag),
            str(tmp_path / "logs" / "j.out"),
            str(tmp_path / "logs" / "j.err"),
            str(tmp_path / "running" / "0.1"),
            time_limit=1.0,
            shell="/bin/sh",
        )
        assert timed_out and flag.exists()
        wait_for(lambda: not sleepers(secs), timeout=10, what="every sleeper to end")
        assert not processes.attempt_processes((token,))
    finally:
        kill_all(sleepers(secs))


def test_killer_never_signals_a_process_without_the_token(tmp_path):
    """Promise P2: the killer reads the token from each process's own
    ``/proc`` entry: a process of the same user without it, or with another
    run's token, is left alone."""
    plain = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, "BPS_PARSL_ATTEMPT": "otherrun/1/1"})
    mine = subprocess.Popen(["sleep", "30"], env={**os.environ, "BPS_PARSL_ATTEMPT": "myrun/1/1"})
    try:
        assert processes.kill_attempts(run_prefix="myrun/") == 1
        assert mine.wait(timeout=5) == -signal.SIGTERM
        assert plain.poll() is None and other.poll() is None
    finally:
        for p in (plain, other, mine):
            p.kill()
            p.wait()


# ---- 9. jobs start with default signal dispositions ------------------------------------------


SIGNAL_PROBE = "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1"


def signal_masks(out: str) -> dict[str, int]:
    return {
        line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines() if line.startswith("Sig")
    }


def test_local_pool_jobs_start_with_default_signal_dispositions(tmp_path, env):
    """Promise P3: a job on the local pool has no ignored and no blocked
    signal (the spawner ignores SIGINT's effect and Python ignores SIGPIPE and
    SIGXFSZ, but none of that reaches the job): ``/proc/self/status`` shows
    SigIgn and SigBlk 0, and ``yes | head -1`` says nothing of a broken pipe."""
    spec = {"jobs": [{"name": "probe", "script": SIGNAL_PROBE}], "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    logs = submit / "logs" / "probe"
    assert signal_masks((logs / "probe.stdout").read_text()) == {"SigIgn": 0, "SigBlk": 0}
    assert "Broken pipe" not in (logs / "probe.stderr").read_text()


def _run_probe_in_thread(tmp_path: Path, name: str, prepare=None) -> tuple[str, str]:
    """Run the probe through `run_job` in a thread (as a thread pool does)."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"

    def work() -> None:
        if prepare is not None:
            prepare()
        run_job(f"probe/{name}/1", "", "", SIGNAL_PROBE, str(out), str(err), str(tmp_path / name))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    return out.read_text(), err.read_text()


def test_run_job_starts_jobs_with_default_signal_dispositions(tmp_path):
    """Promise P3 (Parsl workers): `job.run_job` gives jobs default
    dispositions too; also from a worker that ignores SIGINT and a thread
    that blocks SIGUSR1 (then every signal Python can name is reset; glibc
    keeps its two internal signals, 32 and 33, to itself)."""
    out, err = _run_probe_in_thread(tmp_path, "plain")
    assert signal_masks(out) == {"SigIgn": 0, "SigBlk": 0}
    assert "Broken pipe" not in err
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out, err = _run_probe_in_thread(
            tmp_path, "hostile", lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        )
    finally:
        signal.signal(signal.SIGINT, old)
    masks = signal_masks(out)
    glibc_internal = (1 << 31) | (1 << 32)
    assert masks["SigIgn"] & ~glibc_internal == 0 and masks["SigBlk"] == 0, masks
    assert "Broken pipe" not in err


# ---- 10. log and journal directories may vanish --------------------------------------------


def test_log_and_running_directories_removed_mid_run(tmp_path, env):
    """Promise P4: ``logs/`` and ``parsl/running/`` are removed while 24 jobs
    run: every job still succeeds once, every job that started after the
    removal has its logs, and the spawner's journal is written again (so
    report and cancel still see what runs)."""
    log = tmp_path / "ok.log"
    jobs = counting_jobs(24, log, 0.25)
    spec = {"jobs": jobs, "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len([x for x in lines(log) if x.endswith(" ok")]) >= 4, what="4 jobs", proc=proc)
    subprocess.run(["rm", "-rf", str(submit / "logs"), str(submit / "parsl" / "running")], check=True)
    # A job whose shell created its logs just before the removal says "start" a moment later.
    time.sleep(0.3)
    before = {x.split()[0] for x in lines(log)}
    wait_for(lambda: spawner_pids(submit), timeout=30, what="the journal written again", proc=proc)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert all(row[0] == S for row in statuses(submit).values())
    names = [j["name"] for j in jobs]
    assert_each_once(log, names)
    for name in set(names) - before:
        assert f"{name} ok" in lines(log)
        assert (submit / "logs" / "j" / f"{name}.stdout").exists(), name
        assert "[bps-parsl] exit status 0" in (submit / "logs" / "j" / f"{name}.stderr").read_text()


def test_run_job_logs_into_a_directory_that_vanished(tmp_path):
    """Promise P4 (Parsl workers): `job.run_job` makes the log and running
    directories again if they were removed."""
    out, err = tmp_path / "gone" / "deeper" / "j.out", tmp_path / "gone" / "deeper" / "j.err"
    code, *_ = run_job(
        "gone/0/1",
        "",
        "",
        "echo hello",
        str(out),
        str(err),
        str(tmp_path / "running" / "0.1"),
        shell="/bin/sh",
    )
    assert code == 0 and out.read_text() == "hello\n"
    assert "[bps-parsl] exit status 0" in err.read_text()
