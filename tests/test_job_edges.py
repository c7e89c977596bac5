"""Trust at the edges of a job (issue 20, items 2, 4, 5, 11, 15): a job that
cannot start fails alone; nothing a job prints decides its status; what a
job leaves behind ends with it; deadlines on the monotonic clock; "not
started" means not started.

Real processes throughout: real oversize ``exec`` (E2BIG from the kernel),
the spawner as a subprocess, drivers through `synthetic.run` and the
synthetic driver script, processes found by scanning ``/proc``. Where a
fault cannot be made for real on a shared machine (EAGAIN from ``fork``
needs a process limit root ignores; a wall clock jump would move every
other process's clock), the one call that fails or the clock is replaced,
and the test says so. Each test names the promise of ``doc/reliability.md``
it proves.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import parsl
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from cli import cli_environment, wait_for  # noqa: E402
from lsst.ctrl.bps.parsl.localpool import LocalPoolExecutor  # noqa: E402
from lsst.ctrl.bps.parsl.records import JobState  # noqa: E402
from lsst_ctrl_bps_parsl_worker import processes, spawner  # noqa: E402
from lsst_ctrl_bps_parsl_worker.exits import EXITS_PREFIX, recorded_exits  # noqa: E402
from lsst_ctrl_bps_parsl_worker.job import NotStartedError, run_job  # noqa: E402
from parsl import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.serialize.errors import SerializationError  # noqa: E402
from synthetic import attempts, job, make_config, run, workflow  # noqa: E402
from synthetic import statuses as statuses_of  # noqa: E402
from test_reliability import LOCAL2, S, lines, run_id_of, run_processes, start  # noqa: E402

BIG_ARGUMENT = "x" * (3 << 20)
"""A 3 MB word: more than any ``exec`` takes (E2BIG)."""


def _bad_starts(tmp: Path) -> dict[str, dict]:
    """Commands and environments the kernel refuses to ``exec`` (E2BIG), and
    a program that does not exist, each as ``run_job`` keyword arguments."""
    many = "".join(f"export V{i}={'v' * 40}\n" for i in range(50_000))
    return {
        "argv": {"command": f"/bin/echo {BIG_ARGUMENT}"},
        "manyvars": {"env": many, "command": "/bin/true"},
        "bigvalue": {"env": f"export BIG={'y' * 200_000}\n", "command": "/bin/true"},
    }


def _sleepers(marker: str) -> list[int]:
    """Pids of live ``sleep`` processes whose argument is ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z" and argv[0].endswith(b"sleep") and len(argv) > 1 and argv[1] == marker.encode():
                found.append(int(entry))
    return found


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def leaving_behind(marker: str, n: int = 100) -> str:
    """A script that leaves ``sleep MARKER`` processes behind every way a
    job can: ``cmd &``, ``nohup``, ``setsid``, a double fork, and ``n`` more
    in the background, then exits 0 at once."""
    return (
        f"sleep {marker} & nohup sleep {marker} >/dev/null 2>&1 & "
        f"setsid sleep {marker} & ( setsid sh -c 'sleep {marker} & ' & ) ; "
        f"for i in $(seq {n}); do sleep {marker} & done; exit 0"
    )


# ---- 2. a job that cannot start is that job's failure --------------------------------


def _request(tmp: Path, number: int, command: str, env: str = "", **extra) -> dict:
    return {
        "id": number,
        "shell": "/bin/bash",
        "env": env,
        "command": command,
        "out": str(tmp / f"{number}.out"),
        "err": str(tmp / f"{number}.err"),
        "pid_file": str(tmp / "running" / f"{number}.pid"),
        "token": f"edges-{os.getpid()}/{number}/1",
        "cores": 1,
        "memory": 0,
        "time_limit": None,
        **extra,
    }


def test_spawner_answers_a_job_that_cannot_start_as_failed_and_goes_on(tmp_path):
    """Promise J1 (local pool): E2BIG from a 3 MB command line, 50,000
    variables or one 200 KB value, and a missing program, each end that job
    (start ``!``, exit 126 or 127, the reason in its log and its private
    record) while a job started before them runs on and one sent after them
    starts: the spawner never stops."""
    bad = _bad_starts(tmp_path)
    requests = [_request(tmp_path, 0, "/bin/sleep 1.5")]
    requests += [_request(tmp_path, i + 1, **kwargs) for i, kwargs in enumerate(bad.values())]
    requests.append(_request(tmp_path, 9, "/nonexistent/program"))
    requests.append(_request(tmp_path, 10, "/bin/true"))
    proc = subprocess.Popen(
        [sys.executable, "-S", spawner.__file__, "4", "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
    proc.stdin.flush()
    replies: dict[int, list[str]] = {}
    while len(replies) < len(requests):
        fields = proc.stdout.readline().split()
        if len(fields) == 6:
            replies[int(fields[0])] = fields
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    for number in (1, 2, 3):
        code, start = replies[number][1], replies[number][3]
        assert (code, start) == ("126", "!"), replies[number]
        log = (tmp_path / f"{number}.err").read_text()
        assert "could not be started" in log and "Argument list too long" in log, log
        assert recorded_exits(str(tmp_path / "running"))[f"edges-{os.getpid()}/{number}/1"] == 126
    # A missing program: the shell says so (exit 127), as it always did.
    assert replies[9][1] == "127" and replies[9][3] not in ("-", "!")
    assert replies[0][1] == "0" and replies[0][3] not in ("-", "!")
    assert replies[10][1] == "0"


def test_jobs_start_when_the_working_directory_is_gone(tmp_path):
    """Promise J1 (a missing working directory): the pool's working
    directory is removed before its jobs start; they start and succeed (a
    job that needs it fails alone, with the shell's reason in its log)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-S", spawner.__file__, "2", "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=gone,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().startswith("spawner ")
    gone.rmdir()
    requests = [_request(tmp_path, 1, "/bin/true"), _request(tmp_path, 2, "touch here")]
    proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
    proc.stdin.flush()
    replies: dict[int, list[str]] = {}
    while len(replies) < 2:
        fields = proc.stdout.readline().split()
        if len(fields) == 6:
            replies[int(fields[0])] = fields
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert replies[1][1] == "0" and replies[1][3] not in ("-", "!")
    assert replies[2][1] != "0" and replies[2][3] not in ("-", "!")
    assert "No such file or directory" in (tmp_path / "2.err").read_text()


def test_run_job_fails_a_job_that_cannot_start_without_raising(tmp_path):
    """Promise J1 (Parsl workers): `run_job` returns exit 126, no start
    time, the reason in the job's log, for each E2BIG class; it never raises."""
    for name, kwargs in _bad_starts(tmp_path).items():
        err = tmp_path / "logs" / f"{name}.err"
        code, sig, begun, _, _, timed_out = run_job(
            f"edges-{os.getpid()}/{name}/1",
            "",
            kwargs.get("env", ""),
            kwargs["command"],
            str(tmp_path / "logs" / f"{name}.out"),
            str(err),
            str(tmp_path / "running" / name),
        )
        assert (code, sig, begun, timed_out) == (126, None, None, False), name
        assert "Argument list too long" in err.read_text()
        assert recorded_exits(str(tmp_path / "running"))[f"edges-{os.getpid()}/{name}/1"] == 126


def test_a_passing_fork_failure_is_tried_again_within_a_bound(tmp_path, monkeypatch):
    """Promise J1 (EAGAIN): a start that fails with EAGAIN is tried again
    (`processes.START_RETRY_DELAYS`, ~1.9 s in all) and the job runs; one that
    keeps failing ends that job with the reason. Mocked: the launcher's
    spawn fails twice with EAGAIN (a real EAGAIN from fork needs a process
    limit, which root ignores)."""
    real = processes.Launcher.spawn_job
    failures = {"left": 2}

    def flaky(self, *args):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(self, *args)

    monkeypatch.setattr(processes.Launcher, "spawn_job", flaky)
    err = tmp_path / "ok.err"
    result = run_job(
        "edges/ok/1", "", "", "/bin/true", str(tmp_path / "ok.out"), str(err), str(tmp_path / "p")
    )
    assert result[0] == 0 and failures["left"] == 0
    # The spawner: same retries, without blocking its loop.
    pool = spawner.Spawner(1, None)
    pool.flush = lambda: None  # type: ignore[method-assign]  # keep the replies to read them here
    failures["left"] = 2
    pool.handle(_request(tmp_path, 1, "/bin/true"))
    deadline = time.monotonic() + 10
    while not pool.running and time.monotonic() < deadline:
        wait = pool.start_ready()
        time.sleep(wait or 0.01)
    assert pool.running and failures["left"] == 0
    while pool.running:
        pool.reap()
        time.sleep(0.01)
    assert pool.out[-1].split()[1] == "0"
    # Always EAGAIN: the job fails, after the bounded retries.
    failures["left"] = 100
    began = time.monotonic()
    result = run_job(
        "edges/no/1", "", "", "/bin/true", str(tmp_path / "no.out"), str(tmp_path / "no.err"), ""
    )
    assert result[0] == 126 and result[2] is None
    assert time.monotonic() - began < sum(processes.START_RETRY_DELAYS) + 5
    assert "tried 6 times" in (tmp_path / "no.err").read_text()


def test_a_job_that_cannot_start_fails_alone_and_the_run_goes_on(tmp_path):
    """Promise J1 (the run): a job whose command line is 3 MB is FAILED
    with the reason in its log, its child is PRUNED, and an unrelated job
    running at the time finishes (SUCCEEDED), on the local pool."""
    marker = tmp_path / "slow-done"
    gw = workflow(
        [
            job("bad", f"echo {BIG_ARGUMENT}"),
            job("child", "true"),
            job("slow", f"sleep 2; touch {marker}"),
        ],
        [("bad", "child")],
    )
    config = make_config({"computeSite": "local", "site": {"local": LOCAL2}})
    submit = tmp_path / "submit"
    found = run(gw, submit, config, expect_fail=True)
    assert found["bad"][0] == JobState.FAILED and found["bad"][2] == 126, found
    assert found["child"][0] == JobState.PRUNED, found
    assert found["slow"][0] == JobState.SUCCEEDED and marker.exists(), found
    log = next(submit.rglob("bad.stderr")).read_text()
    assert "could not be started" in log and "Argument list too long" in log
    from lsst.ctrl.bps.parsl import ParslService

    reports, _ = ParslService(config).report(wms_workflow_id=str(submit))
    said = str(reports[0].specific_info)
    assert "could not be started: 1 attempts" in said and "'bad': [Errno 7] Argument list too long" in said, (
        said
    )


def test_on_htex_workers_a_job_that_cannot_start_fails_alone_and_leaves_nothing(tmp_path, monkeypatch):
    """Promises J1 and J3 on real Parsl workers (HighThroughputExecutor,
    LocalProvider): a job with a 3 MB command line is FAILED (126) and its
    child PRUNED while the others succeed; what a job left behind (``cmd &``,
    ``nohup``, ``setsid``, a double fork, 20 more) is gone once it ended,
    while the run still goes on."""
    env = cli_environment(tmp_path, monkeypatch)
    marker = str(7400 + os.getpid() % 100 + 0.25)
    done = tmp_path / "left"
    spec = {
        "jobs": [
            {"name": "bad", "script": f"echo {BIG_ARGUMENT}"},
            {"name": "kid", "script": "true"},
            {"name": "leaver", "script": f"touch {done}; " + leaving_behind(marker, 20)},
            {"name": "slow", "script": f"sleep 8; test -e {done}"},
        ],
        "edges": [["bad", "kid"]],
        "site": {"class": "test_reliability.HtexSite"},
    }
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(done.exists, timeout=180, what="the leaving job", proc=proc)
        wait_for(lambda: not _sleepers(marker), timeout=10, what="leftovers to end")
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(_sleepers(marker))
    assert proc.returncode != 0, out
    found = {name: row[0] for name, row in statuses_of(submit).items()}
    assert found == {
        "bad": JobState.FAILED,
        "kid": JobState.PRUNED,
        "leaver": JobState.SUCCEEDED,
        "slow": JobState.SUCCEEDED,
    }, out
    assert statuses_of(submit)["bad"][2] == 126
    assert "Argument list too long" in next(submit.rglob("bad.stderr")).read_text()


# ---- 4. nothing a job prints decides its status ---------------------------------------


def test_what_a_job_prints_is_never_read_as_its_exit_status(tmp_path):
    """Promise J2: a job that prints ``[bps-parsl] exit status 0`` and
    exits 3 is recorded 3; a log holding only that line, with no record,
    records nothing; the record is private (mode 0600) and not a file the
    job's output goes to."""
    err, running = tmp_path / "logs" / "j.err", tmp_path / "running"
    code, *_ = run_job(
        "edges/print/1",
        "",
        "",
        "/bin/sh -c 'echo \"[bps-parsl] exit status 0\" >&2; exit 3'",
        str(tmp_path / "logs" / "j.out"),
        str(err),
        str(running / "j"),
    )
    assert code == 3 and recorded_exits(str(running)) == {"edges/print/1": 3}
    assert "[bps-parsl] exit status 0" in err.read_text()  # what it printed is there, and changes nothing
    records = [name for name in os.listdir(running) if name.startswith(EXITS_PREFIX)]
    assert records and all(os.stat(running / name).st_mode & 0o777 == 0o600 for name in records)
    (tmp_path / "logs" / "forged.err").write_text("[bps-parsl] exit status 0\n")
    assert "edges/forged/1" not in recorded_exits(str(running))


def test_a_job_that_printed_success_and_was_lost_is_not_recorded_succeeded(tmp_path, monkeypatch):
    """Promise J2 (restart): a job prints ``[bps-parsl] exit status 0``,
    then its whole host goes (driver, spawner, keeper, job: SIGKILL); the
    restart does not count it SUCCEEDED and its child runs only after it
    really succeeded."""
    from cli import bps

    env = cli_environment(tmp_path, monkeypatch)
    flag, order = tmp_path / "flag", tmp_path / "order"
    forge = (
        f"if [ ! -e {flag} ]; then echo '[bps-parsl] exit status 0' >&2; touch {flag}; sleep 300; fi; "
        f"echo parent >> {order}"
    )
    spec = {
        "jobs": [{"name": "liar", "script": forge}, {"name": "kid", "script": f"echo kid >> {order}"}],
        "edges": [["liar", "kid"]],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(flag.exists, what="the job", proc=proc)
        pids = run_processes(run_id_of(submit))
        proc.kill()
        _kill_all(pids)
        proc.wait(timeout=30)
        _kill_all(run_processes(run_id_of(submit)))
        bps(env, "restart", "--id", str(submit), timeout=300)
        assert lines(order) == ["parent", "kid"]
        first = [row for row in attempts(submit, "liar") if row[1] == 1]
        assert all(row[3] != S for row in first), first
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- 5. everything a job starts ends with it -----------------------------------------


def test_run_job_ends_what_a_job_left_behind(tmp_path):
    """Promise J3 (Parsl workers): once `run_job` reaped a job that exited
    0, nothing it started is left: ``cmd &``, ``nohup``, ``setsid``, a double
    fork and 100 more background processes."""
    marker = str(7100 + os.getpid() % 100 + 0.25)
    try:
        code, *_ = run_job(
            f"edges-left-{os.getpid()}/0/1",
            "",
            "",
            leaving_behind(marker),
            str(tmp_path / "j.out"),
            str(tmp_path / "j.err"),
            str(tmp_path / "running" / "j"),
            shell="/bin/sh",
        )
        assert code == 0
        wait_for(lambda: not _sleepers(marker), timeout=5, what="every leftover to end")
    finally:
        _kill_all(_sleepers(marker))


def test_local_pool_ends_what_a_job_left_behind_while_the_run_goes_on(tmp_path, monkeypatch):
    """Promise J3 (local pool): while another job still runs, everything a
    job that ended left behind is gone within `spawner.LEFTOVER_SWEEP` (plus
    slack). One process the job left escapes the sweep (it dropped its
    token and left the job's session: the limit without cgroups); it lives
    on under the spawner's keeper until the pool ends with the run, and the
    keeper ends it. The driver's piped output (stdout and stderr, as ``bps
    submit 2>&1 | cat``) ends with the run: no helper of the plugin holds it."""
    env = cli_environment(tmp_path, monkeypatch)
    marker, escapee = str(7200 + os.getpid() % 100 + 0.25), str(7300 + os.getpid() % 100 + 0.25)
    done = tmp_path / "left"
    spec = {
        "jobs": [
            {
                "name": "leaver",
                "script": f"setsid env -u BPS_PARSL_ATTEMPT sleep {escapee} & touch {done}; "
                + leaving_behind(marker),
            },
            {"name": "slow", "script": f"sleep 6; test -e {done}"},
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(done.exists, what="the leaving job", proc=proc)
        wait_for(lambda: not _sleepers(marker), timeout=spawner.LEFTOVER_SWEEP + 4, what="leftovers to end")
        assert proc.poll() is None  # the slow job still runs: the run went on
        assert _sleepers(escapee)  # the sweep cannot find it
        out, _ = proc.communicate(timeout=60)  # reads until every holder of the pipe closed it
        assert proc.returncode == 0, out
        wait_for(lambda: not _sleepers(escapee), timeout=10, what="the keeper to end the escapee")
        assert not run_processes(run_id_of(submit))
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_all(_sleepers(marker) + _sleepers(escapee))


# ---- 11. deadlines on the monotonic clock ---------------------------------------------


def test_walltime_deadlines_ignore_the_wall_clock(tmp_path, monkeypatch):
    """Promise J4: the spawner's walltime deadline does not move with the
    wall clock. Mocked: the spawner module's ``time.time`` jumps an hour
    forward (changing the machine's clock would change every process's)."""
    pool = spawner.Spawner(1, None)
    pool.flush = lambda: None  # type: ignore[method-assign]  # keep the replies to read them here
    pool.handle(_request(tmp_path, 1, "/bin/sleep 1", time_limit=30))
    pool.start_ready()
    assert pool.running
    real_time = time.time

    class Jumped:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def time():
            return real_time() + 3600

    monkeypatch.setattr(spawner, "time", Jumped())
    assert pool.check_deadlines() > 25
    assert not any(job.get("timed_out") for job in pool.running.values())
    while pool.running:
        pool.reap()
        time.sleep(0.02)
    assert pool.out[-1].split()[1] == "0"


# ---- 15. "not started" means not started ------------------------------------------


def nap(seconds: float) -> float:
    import time as _time

    _time.sleep(seconds)
    return seconds


_SITECUSTOMIZE = """
import os, sys
if sys.argv and sys.argv[0].endswith("lsst_ctrl_bps_parsl_worker/job.py") and os.environ.get("EDGES_STARTED"):
    open(os.path.join(os.environ["EDGES_STARTED"], os.path.basename(sys.argv[1])), "w").close()
"""
"""Makes every Python task's process say that it started, before it reads its task file."""


def test_not_started_only_for_tasks_that_never_ran(tmp_path, monkeypatch):
    """Promise J5: shutting the kernel down while tasks are handed over (5
    tasks of 0.5 s on 2 cores, the shutdown 0 to 0.4 s after the submits)
    ends a future with `NotStartedError` only if no process of its task
    started (each task's process says so as Python starts it, through a
    ``sitecustomize``)."""
    site, started = tmp_path / "site", tmp_path / "started"
    site.mkdir()
    started.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EDGES_STARTED", str(started))
    for trial in range(5):
        for name in os.listdir(started):
            os.unlink(started / name)
        executor = LocalPoolExecutor(label="local", cores=2)
        dfk = parsl.load(Config(executors=[executor], run_dir=str(tmp_path / f"runinfo{trial}")))
        try:
            app = python_app(nap, executors=["local"])
            futures = [app(0.5) for _ in range(5)]
            time.sleep(0.1 * trial)
        finally:
            dfk.cleanup()
            parsl.clear()
        time.sleep(1.0)  # a process started late would say so now
        ran = {int(name.split(".")[0]) for name in os.listdir(started)}
        for number, future in enumerate(futures):
            error = future.exception(timeout=30)
            if isinstance(error, NotStartedError):
                assert number not in ran, f"trial {trial}: task {number} started, yet 'not started'"


def test_a_spawner_dying_while_the_pool_shuts_down_is_replaced(tmp_path):
    """Promise J5: the spawner is SIGKILLed while the pool shuts down, with a
    job running that ignores SIGTERM (so the stop is still under way): a
    new spawner follows the job to its end, and its future says how it
    ended, not that it never started."""
    flag = tmp_path / "flag"
    executor = LocalPoolExecutor(label="local", cores=1)
    executor.start()
    future = executor.submit(
        run_job,
        {},
        f"edges-{os.getpid()}/dying/1",
        "",
        "",
        f"trap '' TERM; touch {flag}; sleep 30",
        str(tmp_path / "j.out"),
        str(tmp_path / "j.err"),
        str(tmp_path / "running" / "j"),
    )
    wait_for(flag.exists, timeout=60, what="the job")
    dead = executor._spawner_pid
    stopping = threading.Thread(target=executor.shutdown)
    stopping.start()
    time.sleep(0.2)
    os.kill(dead, signal.SIGKILL)
    stopping.join(timeout=90)
    assert not stopping.is_alive()
    error = future.exception(timeout=30)
    assert not isinstance(error, NotStartedError), error
    code, sig = future.result()[:2]
    assert code == 128 + signal.SIGKILL and sig == signal.SIGKILL, future.result()


def test_executor_has_working_dir_and_reports_unpicklable_arguments(tmp_path):
    """Promise J5: the local executor has ``working_dir`` (Parsl's staging
    providers read it) and an argument that cannot be serialized raises
    Parsl's `SerializationError` at submit, not a raw ``OSError``."""
    executor = LocalPoolExecutor(label="local", cores=1, working_dir=str(tmp_path / "work"))
    assert executor.working_dir == str(tmp_path / "work")
    assert LocalPoolExecutor(label="x").working_dir is None
    executor.start()
    try:
        with socket.socket() as sock, pytest.raises(SerializationError):
            executor.submit(nap, {}, sock)
    finally:
        executor.shutdown()
