"""Control and store faults (issue 11, items 4, 6, 7, 11, 12): no signal on
trust, full disk, the store is the run, no race in liveness, failures are
exceptions.

Real drivers in subprocesses, real signals, real files and modes, the real
``bps`` command line, a real tmpfs for the full disk (root only). Each test
names the promise of ``doc/reliability.md`` ("Control and store faults") it
proves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from parsl.executors import ThreadPoolExecutor

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from cli import bps, wait_for  # noqa: E402
from lsst.ctrl.bps import WmsStates  # noqa: E402
from lsst.ctrl.bps.parsl import ParslService  # noqa: E402
from lsst.ctrl.bps.parsl.control.liveness import HOST, driver_alive, process_start  # noqa: E402
from lsst.ctrl.bps.parsl.run import session as control  # noqa: E402
from lsst.ctrl.bps.parsl.service import RunFailedError  # noqa: E402
from lsst.ctrl.bps.parsl.site import SiteConfig  # noqa: E402
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path  # noqa: E402
from synthetic import job, make_config, run, statuses, workflow  # noqa: E402
from test_reliability import (  # noqa: E402
    LOCAL2,
    env,
    lines,
    mount_tmpfs,
    run_id_of,
    run_processes,
    start,
    store_opens_cleanly,
)

SHARED_FIXTURES = (env, mount_tmpfs)
"""Fixtures of ``test_reliability`` these tests use by name."""

S, F, D = (WmsStates[n].value for n in ("SUCCEEDED", "FAILED", "DELETED"))


def sessions(submit: Path) -> list[tuple]:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        return store.sessions()
    finally:
        store.close()


@pytest.fixture
def finished(tmp_path, env):
    """A finished run with one failed job (so cancel and restart have work)."""
    submit = tmp_path / "submit"
    gw = workflow([job("good", "true"), job("bad", "exit 3")])
    run(gw, submit, make_config(site={"local": LOCAL2}), expect_fail=True)
    return submit


_SLEEPER = """
import sys, time
print("started", flush=True)
time.sleep(300)
"""


@pytest.fixture
def victim(finished):
    """A process of this user that no command of a run may signal: it is
    named by a crafted claim of the run (``parsl/driver.claim.<N+1>``, right
    host and start time), as a forged claim would name it."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    parsl_dir = finished / "parsl"
    number = max(int(p.name.rsplit(".", 1)[1]) for p in parsl_dir.glob("driver.claim.*")) + 1
    claim = {"host": HOST, "pid": proc.pid, "started": process_start(proc.pid), "time": time.time()}
    (parsl_dir / f"driver.claim.{number}").write_text(json.dumps(claim))
    yield proc
    proc.kill()
    proc.wait()


def forge_heartbeat(submit: Path, pid: int, run_id: str) -> None:
    record = {
        "run_id": run_id,
        "host": HOST,
        "pid": pid,
        "started": process_start(pid),
        "time": time.time() + 3600,
        "interval": 2.0,
        "stopping": None,
    }
    (submit / "parsl" / "driver.heartbeat").write_text(json.dumps(record))


# ---- no signal on trust (item 4) ------------------------------------------------


def test_crafted_lock_or_heartbeat_never_gets_a_process_signalled(finished, victim, monkeypatch):
    """Control 1: a process of the user that is not the run's driver, named
    by a crafted claim ``parsl/driver.claim.<N>``, and then also by a heartbeat
    (right host, right start time, fresh), makes ``cancel`` and ``restart``
    refuse with one line; it never gets a signal."""
    monkeypatch.setattr(control, "_ACK_TIMEOUT", 1.0)
    monkeypatch.setattr(control, "_LOCK_WAIT", 1.0)
    submit = finished
    service = ParslService({})
    ok, message = service.cancel(str(submit))
    assert ok is False and "still running" in message and "\n" not in message, message
    assert victim.poll() is None

    forge_heartbeat(submit, victim.pid, run_id_of(submit))
    assert driver_alive(str(submit)) is not None  # it does look alive
    ok, message = service.cancel(str(submit))
    assert ok is False and f"pid {victim.pid}" in message and "did not answer" in message, message
    run_id, _, message = service.restart(str(submit))
    assert run_id is None and "still running" in message, message
    time.sleep(0.5)
    assert victim.poll() is None, "the crafted pid got a signal"
    assert len(sessions(submit)) == 1  # nothing ran


def test_symlinked_or_copied_store_is_refused(finished, tmp_path, env):
    """Control 2: a store that is a symbolic link, or a store copied from
    another submit directory (its recorded submit path is not this one), is
    refused by cancel and restart with one line; nothing runs."""
    other = tmp_path / "linked"
    (other / "parsl").mkdir(parents=True)
    (other / "bps_parsl.sqlite3").symlink_to(finished / "bps_parsl.sqlite3")
    copied = tmp_path / "copied"
    shutil.copytree(finished, copied)
    service = ParslService({})
    for submit, words in ((other, "symbolic link"), (copied, f"not in {copied}")):
        ok, message = service.cancel(str(submit))
        assert ok is False and words in message and "\n" not in message, message
        run_id, _, message = service.restart(str(submit))
        assert run_id is None and words in message, message
        result = bps(env, "restart", "--id", str(submit), check=False)
        assert words in result.stdout and "Traceback" not in result.stdout + result.stderr, result.stdout
    assert len(sessions(finished)) == 1 and len(sessions(copied)) == 1


def test_cancel_goes_through_the_submit_directory(tmp_path, env):
    """Control 3: ``bps cancel`` reaches the driver through the request file
    in the submit directory (the driver says so, rather than "received
    SIGTERM"); the session ends 'cancelled', no job process and no heartbeat
    are left."""
    marker = f"bpsrequestcancel{os.getpid()}x"
    log = tmp_path / "started"
    spec = {
        "jobs": [
            {"name": f"s{i}", "label": "s", "script": f"echo s{i} >> {log}; exec -a {marker} sleep 60"}
            for i in range(4)
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(lines(log)) >= 2, what="two jobs running", proc=proc)
    result = bps(env, "cancel", "--id", str(submit))
    assert "Successfully canceled" in result.stdout, result.stdout + result.stderr
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "cancelled by 'bps cancel'" in out and "SIGTERM" not in out, out
    assert sessions(submit)[-1][6] == "cancelled"
    assert not run_processes(run_id_of(submit))
    assert not (submit / "parsl" / "driver.heartbeat").exists()


# ---- the store is the run (item 7) ---------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "truncated", "replaced"])
def test_store_deleted_truncated_or_replaced_mid_run_stops_the_driver(tmp_path, env, how):
    """Control 4: the run-state database deleted, truncated or replaced by
    another file while the driver runs: the driver stops within seconds with
    one line naming the file and what happened (no traceback, no success),
    and no job process is left."""
    marker = f"bpsstorelost{os.getpid()}x"
    log = tmp_path / "started"
    spec = {
        "jobs": [
            {"name": f"s{i}", "label": "s", "script": f"echo s{i} >> {log}; exec -a {marker} sleep 60"}
            for i in range(4)
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(lines(log)) >= 2, what="two jobs running", proc=proc)
    run_id = run_id_of(submit)
    db = submit / "bps_parsl.sqlite3"
    if how == "deleted":
        db.unlink()
    elif how == "truncated":
        os.truncate(db, 0)
    else:
        shutil.copy(db, tmp_path / "other.sqlite3")
        os.replace(tmp_path / "other.sqlite3", db)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert time.monotonic() - t0 < 60
    assert proc.returncode != 0, out
    words = {"deleted": "was deleted", "truncated": "truncated", "replaced": "replaced by another file"}[how]
    problem = [line for line in out.splitlines() if words in line]
    assert problem and str(db) in problem[-1] and "bps restart" in problem[-1], out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not run_processes(run_id)


# ---- failures are exceptions (item 12) ---------------------------------------------


def test_run_failed_error_is_an_ordinary_exception(tmp_path):
    """Control 5: ``RunFailedError`` is an `Exception` (not a `SystemExit`):
    ``except Exception`` around ``submit`` catches a run with a failed job."""
    assert issubclass(RunFailedError, Exception) and not issubclass(RunFailedError, SystemExit)
    config = make_config(site={"local": LOCAL2})
    service = ParslService(config)
    wf = service.prepare(config, workflow([job("bad", "exit 3")]), str(tmp_path / "submit"))
    caught = None
    try:
        service.submit(wf)
    except Exception as exc:  # noqa: BLE001
        caught = exc
    assert isinstance(caught, RunFailedError) and "1 job(s) did not succeed" in str(caught)


def test_restart_returns_its_contract_and_the_cli_exits_non_zero(finished, env):
    """Control 6: ``restart()`` of a run whose job fails again returns (run
    id, name, message) instead of raising; ``bps restart`` prints its ``Run
    Id`` lines, the one-line failure, and exits 1."""
    run_id, name, message = ParslService({}).restart(str(finished))
    assert run_id == run_id_of(finished) and name and "did not succeed" in message, message
    result = bps(env, "restart", "--id", str(finished), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Run Id: {run_id}" in result.stdout and "did not succeed" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


class BrokenExecutor(ThreadPoolExecutor):
    """A Parsl executor whose start fails, as one whose scheduler is unreachable."""

    def start(self):
        raise RuntimeError("cannot reach the scheduler")


class BrokenStartSite(SiteConfig):
    """A thread pool that starts, then an executor whose start fails."""

    started: list = []

    def get_executors(self):
        good = ThreadPoolExecutor(label="good", max_threads=1)
        BrokenStartSite.started.append(good)
        return [good, BrokenExecutor(label="broken")]

    def select_executor(self, job):
        return "good"


def test_parsl_failing_to_start_cleans_up(tmp_path):
    """Control 7: when an executor's ``start()`` raises, ``submit`` raises
    `RunFailedError` (caught by ``except Exception``) with one line, the
    session is recorded ended ('error'), the driver's signal handlers are
    restored and the executor that had started is shut down."""
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    config = make_config(site={"local": {"class": "test_control_faults.BrokenStartSite"}})
    service = ParslService(config)
    submit = tmp_path / "submit"
    wf = service.prepare(config, workflow([job("a", "true")]), str(submit))
    BrokenStartSite.started.clear()
    with pytest.raises(Exception) as info:
        service.submit(wf)
    assert isinstance(info.value, RunFailedError)
    message = str(info.value)
    assert "Parsl could not start" in message and "cannot reach the scheduler" in message
    assert "\n" not in message
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    (session,) = sessions(submit)
    assert session[5] is not None and session[6] == "error"
    good = BrokenStartSite.started[-1]
    assert good.executor._shutdown, "the executor that started was not shut down"
    assert not (submit / "parsl" / "driver.heartbeat").exists()


# ---- no race in liveness (item 11) --------------------------------------------------

_POLLER = """
import sys
from pathlib import Path
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.control.liveness import driver_alive
current, stop = Path(sys.argv[1]), Path(sys.argv[2])
service = ParslService({})
n = 0
while not stop.exists():
    try:
        starting = current.read_text().split()
    except OSError:
        continue
    for submit in starting:
        driver_alive(submit)
        service.report(submit)
        service.get_status(submit)
        n += 1
print(n)
"""


def test_detached_starts_never_fail_while_report_polls(tmp_path, env):
    """Control 8: 12 detached starts (two at a time), each while another
    process runs ``driver_alive``, ``report`` and ``status`` on the starting
    runs in a tight loop: every start succeeds and every run completes."""
    current, stop = tmp_path / "current", tmp_path / "stop"
    current.write_text("")
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, str(current), str(stop)], env=env, stdout=subprocess.PIPE, text=True
    )
    config = make_config(site={"local": LOCAL2})
    submits = [tmp_path / f"run{i}" for i in range(12)]
    for submit in submits:
        service = ParslService(config)
        service.prepare(config, workflow([job("x", "true")]), str(submit))
    starting: set[str] = set()
    guard = threading.Lock()
    failures: list[tuple[Path, str]] = []

    def publish(add: str | None = None, remove: str | None = None) -> None:
        with guard:
            if add:
                starting.add(add)
            if remove:
                starting.discard(remove)
            tmp = tmp_path / "current.tmp"
            tmp.write_text("\n".join(sorted(starting)))
            os.replace(tmp, current)

    def start_all(mine: list[Path]) -> None:
        for submit in mine:
            publish(add=str(submit))
            try:
                control.start_detached(str(submit), "submit")
            except RuntimeError as exc:
                failures.append((submit, str(exc)))
            finally:
                publish(remove=str(submit))

    threads = [threading.Thread(target=start_all, args=(submits[k::2],)) for k in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.touch()
        polls = int(poller.communicate(timeout=60)[0] or 0)
    assert not failures, failures
    assert polls > 30, polls
    for submit in submits:
        wait_for(lambda s=submit: driver_alive(str(s)) is None, timeout=120, what=f"driver of {submit}")
        assert statuses(submit)["x"][0] == S, (submit / "parsl" / "driver.log").read_text()


# ---- full disk (item 6) ----------------------------------------------------------------


def test_full_disk_mid_run_then_restart_runs_no_succeeded_job_twice(tmp_path, env, mount_tmpfs):
    """Control 9: the submit directory's file system fills up mid-run (a
    filler file written from outside): the driver stops with one line saying
    the disk is full and what to do (no traceback), having recorded every
    job that ended; after the filler is removed, ``bps restart`` completes
    the run and every job's success is logged exactly once."""
    disk = mount_tmpfs("disk", "size=12m")
    log = tmp_path / "ok.log"
    n = 200
    spec = {
        "jobs": [
            {"name": f"j{i}", "label": "j", "script": f"sleep 0.1; echo j{i} ok >> {log}"} for i in range(n)
        ],
        "edges": [[f"j{i - 10}", f"j{i}"] for i in range(10, n)],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec, submit=disk / "submit")
    wait_for(lambda: len(lines(log)) >= 30, what="30 jobs", proc=proc)
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k"], capture_output=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out[-3000:]
    full = [line for line in out.splitlines() if "file system of the submit directory is full" in line]
    assert full and "bps restart" in full[-1], out[-3000:]
    assert not run_processes(run_id_of(submit))
    (disk / "filler").unlink()
    store_opens_cleanly(submit)
    result = bps(env, "restart", "--id", str(submit))
    assert "Run Id:" in result.stdout, result.stdout + result.stderr
    assert all(row[0] == S for row in statuses(submit).values())
    counts = Counter(line.split()[0] for line in lines(log))
    assert set(counts) == {f"j{i}" for i in range(n)}
    twice = {name: c for name, c in counts.items() if c > 1}
    assert not twice, f"jobs that succeeded more than once: {twice}"


def test_full_disk_drains_running_jobs_then_restart_runs_none_twice(tmp_path, env, mount_tmpfs):
    """Issue 20, P13: the submit directory's file system fills while two
    jobs run: no new job starts, the two are left to end and are recorded
    SUCCEEDED (their records wait in memory, then the reserve's space is
    given back), then the run stops with the disk's one line. After space
    returns, ``bps restart`` runs every other job and neither of the two a
    second time."""
    disk = mount_tmpfs("disk", "size=12m")
    log = tmp_path / "jobs.log"  # outside the full disk
    n = 8
    spec = {
        "jobs": [
            {
                "name": f"j{i}",
                "label": "j",
                "script": f"echo start j{i} >> {log}; sleep 5; echo end j{i} >> {log}",
            }
            for i in range(n)
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec, submit=disk / "submit")

    def starts() -> list[str]:
        return [line.split()[1] for line in lines(log) if line.startswith("start")]

    running = set(wait_for(lambda: len(starts()) >= 2 and starts(), what="two jobs running", proc=proc))
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k"], capture_output=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out[-3000:]
    assert "no new job starts" in out, out[-3000:]
    full = [line for line in out.splitlines() if "file system of the submit directory is full" in line]
    assert full and "bps restart" in full[-1], out[-3000:]
    assert set(starts()) == running, f"jobs started after the disk filled: {set(starts()) - running}"
    ended = {line.split()[1] for line in lines(log) if line.startswith("end")}
    assert ended == running, "the running jobs were not left to end"
    (disk / "filler").unlink()
    store_opens_cleanly(submit)
    recorded = statuses(submit)
    assert {name for name, row in recorded.items() if row[0] == S} == running, recorded
    assert all(row[0] == D for name, row in recorded.items() if name not in running), recorded
    result = bps(env, "restart", "--id", str(submit))
    assert "Run Id:" in result.stdout, result.stdout + result.stderr
    assert all(row[0] == S for row in statuses(submit).values())
    counts = Counter(starts())
    assert set(counts) == {f"j{i}" for i in range(n)} and max(counts.values()) == 1, counts


def test_heartbeat_thread_does_not_outlive_the_run(tmp_path):
    """Control 10: after a run in this process, no monitor thread is left
    and the heartbeat and cancel-request files are gone."""
    run(workflow([job("a", "true")]), tmp_path / "submit", make_config(site={"local": LOCAL2}))
    assert not [t for t in threading.enumerate() if t.name == "bps-parsl-monitor"]
    assert not (tmp_path / "submit" / "parsl" / "driver.heartbeat").exists()
    assert not (tmp_path / "submit" / "parsl" / "cancel.request").exists()


# ---- every refusal exits non-zero (issue 20, item 8) ----------------------------


def test_every_refused_restart_exits_non_zero(tmp_path, env, mount_tmpfs):
    """Control 13: ``bps restart`` refused because the driver is alive, the
    submit directory is read-only or the store is damaged prints ctrl_bps's
    one ``Restart failed: ...`` line and exits 1, never 0 and never a
    traceback."""
    # Driver alive.
    proc, submit = start(tmp_path, env, {"jobs": [{"name": "slow", "script": "sleep 60"}], "site": LOCAL2})
    try:
        wait_for(lambda: driver_alive(str(submit)), 60, "the driver", proc)
        refused = bps(env, "restart", "--id", str(submit), check=False)
    finally:
        proc.kill()
        proc.wait()
    text = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Restart failed:" in text and "still running" in text, text
    assert "Traceback" not in text
    # Read-only submit directory (a read-only file system: root ignores modes).
    disk = mount_tmpfs("ro", "size=64m")
    spec = {"jobs": [{"name": "bad", "script": "exit 3"}], "site": LOCAL2}
    proc, finished = start(tmp_path, env, spec, submit=disk / "submit")  # no file left open here
    proc.communicate(timeout=120)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    refused = bps(env, "restart", "--id", str(finished), check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Restart failed:" in text and str(finished) in text, text
    assert "Traceback" not in text
    # Damaged store.
    damaged = tmp_path / "damaged"
    run(workflow([job("bad", "exit 3")]), damaged, make_config(site={"local": LOCAL2}), expect_fail=True)
    path = Path(db_path(str(damaged)))
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    refused = bps(env, "restart", "--id", str(damaged), check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Restart failed:" in text and "damaged" in text, text
    assert "Traceback" not in text


# ---- bps cancel of a stopped driver ends the run, in a bound (issue 20, items 1, 12) ----


def start_in_own_group(tmp_path: Path, env: dict, spec: dict) -> tuple[subprocess.Popen, Path]:
    """A driver in a process group of its own, as a job of an interactive shell (Ctrl-Z stops the group)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    submit = tmp_path / "submit"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "test_reliability.py"), str(submit), str(spec_path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    return proc, submit


def test_cancel_of_a_stopped_driver_continues_it_and_the_run_ends(tmp_path, env):
    """Control 16: ``bps cancel`` of a driver stopped as Ctrl-Z stops ``bps
    submit`` (SIGSTOP to its process group) continues it (SIGCONT to the
    group), the driver reads the request and stops its jobs: cancel
    succeeds well within its bound (10 s to answer + 60 s to end), the
    driver exits 1, no job process is left and the jobs are DELETED."""
    log = tmp_path / "started"
    spec = {"jobs": [{"name": f"s{i}", "script": f"echo s{i} >> {log}; sleep 120"} for i in range(2)]}
    proc, submit = start_in_own_group(tmp_path, env, {**spec, "site": LOCAL2})
    try:
        wait_for(lambda: len(lines(log)) == 2, 60, "both jobs running", proc)
        os.killpg(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        result = bps(env, "cancel", "--id", str(submit), check=False, timeout=120)
        took = time.monotonic() - started
        text = result.stdout + result.stderr
        assert result.returncode == 0 and "Successfully canceled" in text, text
        assert took < 30, took
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "cancelled by 'bps cancel'" in out, out
        assert not run_processes(run_id_of(submit))
        assert {row[0] for row in statuses(submit).values()} == {D}
        print(f"\ncancel of a stopped driver: {took:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cancel_of_a_driver_that_never_runs_again_escalates_to_sigkill_and_sweeps(tmp_path, env, monkeypatch):
    """Control 16: a driver that stays stopped whatever it is sent (a thread
    stops it again every 5 ms) is continued, then sent SIGTERM after
    ``_ACK_TIMEOUT``, then SIGKILL ``_STOP_TIMEOUT`` later (2 s and 3 s
    here, 10 s and 60 s by default); cancel then kills the run's jobs by
    token and records them DELETED: the run ends within the bound."""
    monkeypatch.setattr(control, "_ACK_TIMEOUT", 2.0)
    monkeypatch.setattr(control, "_STOP_TIMEOUT", 3.0)
    log = tmp_path / "started"
    spec = {"jobs": [{"name": f"s{i}", "script": f"echo s{i} >> {log}; sleep 120"} for i in range(2)]}
    proc, submit = start_in_own_group(tmp_path, env, {**spec, "site": LOCAL2})
    done = threading.Event()

    def keep_stopped():
        while not done.is_set() and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return
            time.sleep(0.005)

    stopper = threading.Thread(target=keep_stopped, daemon=True)
    try:
        wait_for(lambda: len(lines(log)) == 2, 60, "both jobs running", proc)
        run_id = run_id_of(submit)
        stopper.start()
        started = time.monotonic()
        ok, message = ParslService({}).cancel(str(submit))
        took = time.monotonic() - started
        assert ok, message
        assert "SIGKILL" in message and "2 unfinished job(s) marked DELETED" in message, message
        assert took < 2 + 3 + 15, took
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert not run_processes(run_id)
        assert {row[0] for row in statuses(submit).values()} == {D}
        print(f"\ncancel of a driver that never runs: {took:.1f} s: {message}")
    finally:
        done.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- submit directories are created atomically and exclusively (issue 20, item 6) ----

_SUBMITTER = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[4])
from lsst.ctrl.bps.parsl import workflow
from lsst.ctrl.bps.parsl.run import session as control
from lsst.ctrl.bps.parsl.store import schema as storeschema
from lsst.ctrl.bps.parsl.store.runstore import StateStoreError
from synthetic_driver import prepare_and_submit
submit, k, at, kill_after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[5]
if kill_after:  # SIGKILL this process right after one step of creating the run
    module, name = kill_after.split(":")
    target = {"control": control, "workflow": workflow, "storeschema": storeschema, "os": os}[module]
    real = getattr(target, name)
    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(target, name, step)
spec = {"jobs": [{"name": f"j{i}", "script": f"echo {k} >> {submit}.log"} for i in range(2)]}
while time.time() < at:
    pass
try:
    prepare_and_submit(submit, spec, {"racer": k, "site": {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}}})
except StateStoreError as exc:
    print(f"refused: {exc}", flush=True)
    sys.exit(1)
"""


def submitter(submit: Path, k: int, at: float, env: dict, kill_after: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _SUBMITTER, str(submit), str(k), str(at), str(HERE), kill_after],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def indexed(submit: Path) -> list[str]:
    from lsst.ctrl.bps.parsl.store.runindex import list_runs

    return [run_id for run_id, path in list_runs() if path == str(submit)]


def test_two_submits_into_one_new_directory_at_once_one_runs(tmp_path, env):
    """Control 17: six submits into one new submit directory at the same
    instant: exactly one runs (its jobs, its configuration, its one entry
    in the run index), every other exits 1 with one line saying the
    directory already holds a run; none of theirs is left behind."""
    submit = tmp_path / "submit"
    at = time.time() + 6.0
    procs = [submitter(submit, k, at, env) for k in range(6)]
    outs = [proc.communicate(timeout=180)[0] for proc in procs]
    winners = [k for k, proc in enumerate(procs) if proc.returncode == 0]
    assert len(winners) == 1, outs
    for k, (proc, out) in enumerate(zip(procs, outs, strict=True)):
        if k in winners:
            continue
        assert proc.returncode == 1 and out.count("\n") <= 2, out  # "Run Id" is never printed
        assert "already holds a run" in out and "Traceback" not in out, out
    winner = winners[0]
    assert lines(Path(f"{submit}.log")) == [str(winner)] * 2
    assert f"racer: {winner}" in (submit / "parsl" / "bps_config.yaml").read_text()
    assert indexed(submit) == [run_id_of(submit)]
    assert not list(submit.glob("*.tmp")) and not list((submit / "parsl").glob("*.tmp"))


@pytest.mark.parametrize(
    "step",
    [
        "control:save_pending_config",
        "workflow:add_run",
        "storeschema:_write_new",
        "os:link",
        "control:install_config",
    ],
)
def test_submit_killed_at_any_step_of_creating_its_directory_leaves_it_usable(tmp_path, env, step):
    """Control 17: a submit SIGKILLed right after each step of creating
    its run (configuration written, run indexed, store written, store
    linked in place, configuration in place) leaves either no run, and a
    new submit into the directory runs, or a complete run in the run index
    that ``bps restart`` runs to its end; never a traceback."""
    submit = tmp_path / "submit"
    proc = submitter(submit, 1, 0, env, kill_after=step)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == -signal.SIGKILL, out
    if (submit / "bps_parsl.sqlite3").exists():
        assert indexed(submit) == [run_id_of(submit)]
        result = bps(env, "restart", "--id", str(submit), check=False)
        text = result.stdout + result.stderr
        assert result.returncode == 0 and "Run Id:" in result.stdout, text
        winner = "1"
    else:
        again = submitter(submit, 2, 0, env)
        out = again.communicate(timeout=120)[0]
        assert again.returncode == 0, out
        assert indexed(submit) == [run_id_of(submit)]
        winner = "2"
    assert all(row[0] == S for row in statuses(submit).values())
    assert lines(Path(f"{submit}.log")) == [winner] * 2
    assert (submit / "parsl" / "bps_config.yaml").exists()
    assert "Traceback" not in text if winner == "1" else True


# ---- a stuck Parsl cannot keep a run from ending (issue 20, item 12) ----------------

_BOUNDED_DRIVER = """
import json, sys
from lsst.ctrl.bps.parsl.run import dispatch
from lsst.ctrl.bps.parsl.run import stopping
dispatch.SHUTDOWN_TIMEOUT = 2.0
stopping.STOP_BOUND = 3.0
from synthetic_driver import prepare_and_submit
prepare_and_submit(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))
"""


def bounded_driver(tmp_path: Path, env: dict, jobs: list[dict], site: str) -> tuple[subprocess.Popen, Path]:
    submit = tmp_path / "submit"
    extra = {"site": {"local": {"class": f"stuck_site.{site}", "cores": 2}}}
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOUNDED_DRIVER, str(submit), json.dumps({"jobs": jobs}), json.dumps(extra)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    return proc, submit


def test_a_parsl_shutdown_that_never_ends_is_given_up_in_a_bound(tmp_path, env):
    """Control 18: an executor whose shutdown never returns (as an HTEX
    waiting for a dead interchange): the driver waits
    ``dispatch.SHUTDOWN_TIMEOUT`` (2 s here, 60 s by default), says so, and
    ends the run as usual (its job recorded, exit 0)."""
    proc, submit = bounded_driver(tmp_path, env, [{"name": "a", "script": "true"}], "StuckShutdownSite")
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "Parsl's shutdown did not end within 2 s" in out and "Traceback" not in out, out
    assert {row[0] for row in statuses(submit).values()} == {S}


def test_a_driver_stuck_in_an_executor_ends_within_its_bound_after_sigterm(tmp_path, env):
    """Control 18: the driver's loop stuck for ever in a call into its
    executor (as in HTEX's ``connected_managers`` with a dead interchange)
    ignores nothing: SIGTERM arms the stop watchdog, which, after
    ``stopping.STOP_BOUND`` (3 s here, 180 s by default), kills the run's
    jobs by token, prints one line and exits 1; ``bps restart`` then runs
    the job again."""
    flag, log = tmp_path / "stuck", tmp_path / "started"
    env = dict(env, BPS_PARSL_TEST_STUCK=str(flag))
    jobs = [{"name": "slow", "script": f"echo go >> {log}; [ -e {flag}.done ] || exec sleep 120"}]
    proc, submit = bounded_driver(tmp_path, env, jobs, "StuckLoopSite")
    try:
        wait_for(lambda: lines(log), 60, "the job running", proc)
        run_id = run_id_of(submit)
        flag.touch()
        time.sleep(1.5)  # the loop is stuck now
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, out
    stuck = [line for line in out.splitlines() if "did not end within 3 s" in line]
    assert len(stuck) == 1 and "received SIGTERM" in stuck[0] and "bps restart" in stuck[0], out
    assert took < 3 + 15, took
    assert not run_processes(run_id)
    Path(f"{flag}.done").touch()
    flag.unlink()
    result = bps(env, "restart", "--id", str(submit), check=False)
    assert result.returncode == 0 and "Run Id:" in result.stdout, result.stdout + result.stderr
    assert {row[0] for row in statuses(submit).values()} == {S}
    print(f"\nstuck driver ended {took:.1f} s after SIGTERM: {stuck[0]}")
