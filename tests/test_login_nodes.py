"""A run operated from any login node (issue 10, item 6).

Without the rig (fast): two processes in two UTS namespaces (two hostnames,
one file system) racing to claim a run, a claim taken over only once its
remote holder's heartbeat stays still, a heartbeat whose clock lies but
whose counter moves, and readers of the store while the driver commits.
On the multi-node rig (marked ``slurm``): ``bps report/status/cancel/restart``
run in the login namespace ``login2`` on runs driven from this host.
Hostnames come from ``unshare --uts`` (root); where that cannot run the
race runs on one hostname and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cli import cli_environment  # noqa: E402
from lsst.ctrl.bps.parsl.control.claim import ClaimBusyError, claim_run, current_claim  # noqa: E402
from lsst.ctrl.bps.parsl.control.liveness import HOST, driver_alive  # noqa: E402
from lsst.ctrl.bps.parsl.records import JobState  # noqa: E402
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path  # noqa: E402
from synthetic import job, make_config, run, workflow  # noqa: E402

try:
    from .multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
LOCAL2 = {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}
CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None


def on_host(host: str, argv: list[str]) -> list[str]:
    """``argv`` run with hostname ``host`` (own UTS namespace) where possible."""
    if not CAN_UNSHARE:
        return argv
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *argv]


@pytest.fixture
def finished(tmp_path):
    """A finished run of two jobs."""
    submit = tmp_path / "submit"
    run(workflow([job("a", "true"), job("b", "true")]), submit, make_config(site={"local": LOCAL2}))
    return submit


_RACER = """
import json, os, sys, time
from lsst.ctrl.bps.parsl.control.claim import ClaimBusyError, claim_run
from lsst.ctrl.bps.parsl.control.liveness import HOST
submit, at, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < at:
    pass
try:
    with claim_run(submit, "race"):
        won = time.time()
        time.sleep(2.0)
        with open(out, "a") as stream:
            stream.write(json.dumps(["won", HOST, os.getpid(), [won, time.time()]]) + "\\n")
except ClaimBusyError as exc:
    with open(out, "a") as stream:
        stream.write(json.dumps(["busy", HOST, os.getpid(), str(exc)]) + "\\n")
"""


def test_drivers_racing_on_two_hosts_at_the_same_instant_one_wins(finished, tmp_path):
    """Six processes on two hostnames claim the run at the same instant:
    never do two hold it at once, and the others are told who does
    (``pid N on HOST``)."""
    out = tmp_path / "race.jsonl"
    at = time.time() + 5.0
    procs = [
        subprocess.Popen(
            on_host(f"racer{k % 2}", [sys.executable, "-c", _RACER, str(finished), str(at), str(out)])
        )
        for k in range(6)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 6
    held = sorted(r[3] for r in results if r[0] == "won")
    assert held and all(a[1] <= b[0] for a, b in zip(held, held[1:], strict=False)), results
    holders = {f"pid {r[2]} on {r[1]}" for r in results if r[0] == "won"}
    assert any(r[0] == "busy" for r in results), results
    assert all(r[3] in holders for r in results if r[0] == "busy"), results
    if CAN_UNSHARE:
        assert {r[1] for r in results} == {"racer0", "racer1"}


def forge_remote_driver(submit: Path, stale_after: float, age: float) -> dict:
    """A claim and a heartbeat of a driver on host ``elsewhere``, written ``age`` s ago."""
    number, _ = current_claim(str(submit))
    ident = {"host": "elsewhere", "pid": 4242, "started": 1}
    claim = submit / "parsl" / f"driver.claim.{number + 1}"
    claim.write_text(json.dumps({**ident, "time": time.time() - age, "what": "submit"}))
    run_id = RunStore(db_path(str(submit)), readonly=True).meta()["run_id"]
    beat = {
        **ident,
        "run_id": run_id,
        "time": time.time() - age,
        "interval": 0.5,
        "stopping": None,
        "beat": 7,
        "stale_after": stale_after,
    }
    heartbeat = submit / "parsl" / "driver.heartbeat"
    heartbeat.write_text(json.dumps(beat))
    for path in (claim, heartbeat):
        os.utime(path, (time.time() - age, time.time() - age))
    return beat


def test_remote_driver_is_alive_until_its_heartbeat_is_stale_then_taken_over(finished):
    """A driver on another host with a fresh heartbeat holds the run; once
    its heartbeat is older than its own ``stale_after`` (file system clock)
    and stays still while watched, the run is taken over."""
    forge_remote_driver(finished, stale_after=3.0, age=0.0)
    assert driver_alive(str(finished)) is not None
    with pytest.raises(ClaimBusyError, match="pid 4242 on elsewhere"):
        with claim_run(str(finished), "restart"):
            pass
    time.sleep(3.5)
    assert driver_alive(str(finished)) is None
    started = time.monotonic()
    with claim_run(str(finished), "restart") as mine:
        assert mine.host == HOST
    assert time.monotonic() - started < 10


def test_a_heartbeat_that_moves_is_alive_whatever_its_clock_says(finished):
    """A remote heartbeat whose time and file time are an hour old, but whose
    counter moves every 0.5 s, keeps the run held: takeover watches progress,
    it does not trust clocks."""
    beat = forge_remote_driver(finished, stale_after=2.0, age=3600)
    path = finished / "parsl" / "driver.heartbeat"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, os, sys, time\n"
            "path, beat = sys.argv[1], json.loads(sys.argv[2])\n"
            "for k in range(40):\n"
            "    beat['beat'] += 1\n"
            "    open(path + '.tmp', 'w').write(json.dumps(beat))\n"
            "    os.utime(path + '.tmp', (time.time() - 3600, time.time() - 3600))\n"
            "    os.replace(path + '.tmp', path)\n"
            "    time.sleep(0.5)\n",
            str(path),
            json.dumps(beat),
        ]
    )
    try:
        time.sleep(0.3)
        assert driver_alive(str(finished)) is None  # by its age alone it looks gone
        assert driver_alive(str(finished), confirm=True) is not None
        with pytest.raises(ClaimBusyError):
            with claim_run(str(finished), "restart"):
                pass
    finally:
        writer.kill()
        writer.wait()


_WRITER = """
import sys, time
from lsst.ctrl.bps.parsl.store.runstore import RUNNING, RunStore
store = RunStore(sys.argv[1])
jobs = [row.job for row in store.statuses()]
deadline = time.monotonic() + float(sys.argv[2])
attempt = 0
while time.monotonic() < deadline:
    attempt += 1
    for job in jobs:
        store.set_state(job, RUNNING, attempt)
    store.flush()
print(attempt, flush=True)
store.close()
"""


def test_readers_never_fail_or_see_half_a_commit_while_the_driver_commits(tmp_path):
    """A writer commits every job's attempt number in one transaction, as
    fast as it can, for 4 s; readers (store methods and a report) in a loop
    meanwhile: no failure, every read sees one attempt number for all jobs."""
    from lsst.ctrl.bps.parsl.report.reports import run_report

    submit = tmp_path / "submit"
    run(workflow([job(f"j{i}", "true", label="j") for i in range(300)]), submit, make_config())
    path = db_path(str(submit))
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, path, "4"], stdout=subprocess.PIPE, text=True, cwd=str(HERE)
    )
    reads = 0
    time.sleep(0.2)
    while writer.poll() is None:
        store = RunStore(path, readonly=True)
        try:
            rows = [row for row in store.statuses() if row.state == JobState.RUNNING]
        finally:
            store.close()
        assert len({row.attempt for row in rows}) <= 1, sorted({row.attempt for row in rows})
        run_report(str(submit), True, False)
        reads += 1
    commits = int(writer.stdout.read())
    assert writer.returncode == 0
    assert commits > 20 and reads > 10, (commits, reads)
    assert not os.path.exists(path + "-wal")  # a rollback journal, not WAL


# ---- on the multi-node rig, from the login namespace ----------------------------------

_DRIVER = """
import json, sys
from synthetic_driver import prepare_and_submit
submit, spec, extra = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
prepare_and_submit(submit, spec, extra)
"""


def start_driver(env: dict, submit: Path, jobs: list[dict], site: dict, stale_after: float = 30.0):
    extra = {"site": {"local": site}, "parslProgressInterval": 0, "parslDriverStaleAfter": stale_after}
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(submit), json.dumps({"jobs": jobs}), json.dumps(extra)],
        env=env,
        cwd=str(submit.parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def login_bps(rig, env: dict, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bps ARGS`` on the login node ``login2``, with the test's environment."""
    environ = " ".join(f"{k}={_quote(v)}" for k, v in env.items() if k in _PASSED)
    return rig.run_on_login(
        [
            "sh",
            "-c",
            f'cd {_quote(str(cwd))} && exec env {environ} PWD={_quote(str(cwd))} "$@"',
            "sh",
            str(BIN / "bps"),
            *args,
        ],
        timeout=timeout,
    )


_PASSED = ("PATH", "PYTHONPATH", "XDG_STATE_HOME", "BPS_WMS_SERVICE_CLASS", "SLURM_CONF", "HOME")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def wait_until(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.2)
    return value


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def run_left_in(rig, marker: str) -> dict[str, list[str]]:
    """Processes of the run (its jobs, its worker pools) still in any node or the login namespace."""
    found = {}
    for node in [*rig.hosts, "login2"]:
        left = [
            cmd for cmd in rig.processes_in(node).values() if marker in cmd or "process_worker_pool" in cmd
        ]
        if left:
            found[node] = left
    return found


@pytest.mark.slurm
def test_report_status_cancel_of_a_two_node_run_from_login2_leave_nothing(
    multinode_slurm, tmp_path, monkeypatch
):
    """A run on 2 nodes driven from this host: ``bps report`` and ``bps
    status`` from login2 show it running with the driver's host; ``bps
    cancel`` from login2 stops it through the submit directory (the driver
    kills its jobs, its blocks end): ``squeue`` is empty and no process of
    the run is left in any node or in login2."""
    rig = multinode_slurm
    env = cli_environment(tmp_path, monkeypatch)
    env["SLURM_CONF"] = rig.env["SLURM_CONF"]
    marker = f"bpsloginrun{os.getpid()}x"
    log = tmp_path / "started"
    jobs = [
        {"name": f"s{i}", "label": "s", "script": f"hostname >> {log}; exec -a {marker} sleep 120"}
        for i in range(4)
    ]
    site = {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:05:00",
        "partition": rig.partition,
        "exclusive": False,
        "max_blocks": 1,
        "worker_init": f"export PATH={BIN}:$PATH",
        "executor_options": {"max_workers_per_node": 1},
    }
    submit = tmp_path / "submit"
    proc = start_driver(env, submit, jobs, site)
    try:
        wait_until(lambda: len(set(lines(log))) >= 2, 75, "jobs running on two nodes", proc)
        report = login_bps(rig, env, tmp_path, "report", "--id", str(submit))
        assert report.returncode == 0 and "RUNNING" in report.stdout, report.stdout + report.stderr
        status = login_bps(rig, env, tmp_path, "status", "--id", str(submit))
        assert "RUNNING" in status.stdout + status.stderr, status.stdout + status.stderr
        cancel = login_bps(rig, env, tmp_path, "cancel", "--id", str(submit))
        assert "Successfully canceled" in cancel.stdout, cancel.stdout + cancel.stderr
        out, _ = proc.communicate(timeout=60)
        assert "cancelled by 'bps cancel' from pid" in out and "on login2" in out, out[-3000:]
        assert "SIGTERM" not in out
        wait_until(lambda: not rig.squeue(), 30, "squeue empty")
        wait_until(lambda: not run_left_in(rig, marker), 30, "no process of the run in any namespace")
        assert not (submit / "parsl" / "driver.heartbeat").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slurm
def test_restart_from_login2_refused_while_the_driver_lives_then_takes_over(
    multinode_slurm, tmp_path, monkeypatch
):
    """``bps restart`` from login2 of a run whose driver (this host) lives is
    refused naming it; after the driver is SIGKILLed (its job too), once its
    heartbeat is stale (``parslDriverStaleAfter: 3``), the restart from
    login2 runs the run to its end there, and the job killed with the driver
    runs again."""
    rig = multinode_slurm
    env = cli_environment(tmp_path, monkeypatch)
    marker = f"bpsloginrestart{os.getpid()}x"
    flag, log = tmp_path / "ran-once", tmp_path / "started"
    jobs = [
        {
            "name": "slow",
            "script": f"hostname >> {log}; if [ -e {flag} ]; then exit 0; fi; touch {flag}; "
            f"exec -a {marker} sleep 120",
        },
        {"name": "quick", "script": "true"},
    ]
    submit = tmp_path / "submit"
    proc = start_driver(env, submit, jobs, LOCAL2, stale_after=3.0)
    try:
        wait_until(lambda: lines(log), 60, "the slow job running", proc)
        refused = login_bps(rig, env, tmp_path, "restart", "--id", str(submit))
        text = refused.stdout + refused.stderr
        assert f"pid {proc.pid} on {HOST}" in text and "still running" in text, text
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pid in _pids_with(marker):
            os.kill(pid, signal.SIGKILL)
        # The heartbeat must go stale first (by the file system's clock): until then
        # login2 cannot tell a dead driver from a live one and refuses.
        time.sleep(3.0 + 2.5)
        started = time.monotonic()
        restarted = login_bps(rig, env, tmp_path, "restart", "--id", str(submit))
        took = time.monotonic() - started
        text = restarted.stdout + restarted.stderr
        assert restarted.returncode == 0, text
        store = RunStore(db_path(str(submit)), readonly=True)
        try:
            sessions, states = store.sessions(), {row.job: row.state for row in store.statuses()}
        finally:
            store.close()
        assert [s.host for s in sessions] == [HOST, "login2"], sessions
        assert set(states.values()) == {JobState.SUCCEEDED}, states
        assert lines(log)[-1] == "login2"
        print(f"\nrestart from login2 after a SIGKILLed driver: {took:.1f} s")
    finally:
        _kill_leftovers(proc, marker)


def _kill_leftovers(proc: subprocess.Popen, marker: str) -> None:
    """Kill the driver's process group if it still runs, and this test's job processes."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in _pids_with(marker):
        os.kill(pid, signal.SIGKILL)


def _pids_with(marker: str) -> list[int]:
    """Pids of this test's job processes (named by ``marker``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(marker.encode()):
                    found.append(int(entry))
            except OSError:
                continue
    return found


# ---- jobs a local pool on another host still runs (issue 10, items 5 and 6) ----------


def bps_on(host: str, env: dict, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bps ARGS`` with hostname ``host`` (own UTS namespace, same processes and files)."""
    return subprocess.run(
        on_host(host, [str(BIN / "bps"), *args]),
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawner_journals(submit: Path) -> list[Path]:
    """The journals of the local pool's spawners of a run."""
    return sorted((submit / "parsl" / "running").glob("spawner.*"))


def run_snapshot(submit: Path) -> tuple[str, dict[str, bytes]]:
    """What a refused restart must leave as it was: the store's rows and
    every file of the run but the driver's own (claim, heartbeat, clock
    probes, disk space reserve) and the database file."""
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        rows = repr((store.statuses(), store.attempts(), store.sessions()))
    finally:
        store.close()
    files = {}
    for path in sorted(submit.rglob("*")):
        name = path.name
        if path.is_file() and not name.startswith(
            ("driver.", ".clock.", "space.reserve", "bps_parsl.sqlite3")
        ):
            files[str(path.relative_to(submit))] = path.read_bytes()
    return rows, files


def job_states(submit: Path) -> dict[str, JobState]:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        return {names[row.job]: row.state for row in store.statuses()}
    finally:
        store.close()


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare for a second hostname")
def test_restart_from_login2_refused_while_a_local_job_of_the_dead_driver_runs_here(tmp_path, monkeypatch):
    """The driver (this host, local site) is SIGKILLed while a job runs; its
    local pool lets the job run on. Once the driver's heartbeat is stale,
    ``bps restart`` from login2 (which cannot stop processes here) is refused
    with one line naming the job, this host and the fix, and changes nothing
    (store, logs, journal; the job still runs). Once the job has ended, the
    restart from login2 is accepted and settles the job from its log: it is
    not run again."""
    env = cli_environment(tmp_path, monkeypatch)
    log, release = tmp_path / "started", tmp_path / "release"
    jobs = [
        {"name": "slow", "script": f"hostname >> {log}; while [ ! -e {release} ]; do sleep 0.1; done"},
        {"name": "quick", "script": "true"},
    ]
    submit = tmp_path / "submit"
    proc = start_driver(env, submit, jobs, LOCAL2, stale_after=3.0)
    try:
        wait_until(lambda: lines(log), 60, "the slow job running", proc)
        wait_until(lambda: job_states(submit).get("quick") == JobState.SUCCEEDED, 30, "quick done", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        journal = wait_until(lambda: spawner_journals(submit), 10, "the spawner's journal")[0]
        assert f"spawner.{HOST}." in journal.name
        time.sleep(3.0 + 1.0)  # the dead driver's heartbeat goes stale
        before = run_snapshot(submit)
        refused = bps_on("login2", env, tmp_path, "restart", "--id", str(submit))
        text = refused.stdout + refused.stderr
        assert (
            f"job(s) slow of the driver that died still run on {HOST}" in text
            and f"run 'bps restart' on {HOST}, which stops them, or wait until they end" in text
        ), text
        assert "Traceback" not in text and "restarting run" not in text, text
        print(f"\nrefused from login2: {text.strip()}")
        after = run_snapshot(submit)
        assert after[0] == before[0]
        changed = {k for k in before[1].keys() | after[1].keys() if before[1].get(k) != after[1].get(k)}
        assert not changed, changed
        assert not release.exists() and journal.exists()
        time.sleep(1.5)
        assert len(lines(log)) == 1 and journal.exists()  # the job runs on, untouched
        release.touch()
        wait_until(lambda: not spawner_journals(submit), 15, "the spawner to end with its job")
        accepted = bps_on("login2", env, tmp_path, "restart", "--id", str(submit))
        text = accepted.stdout + accepted.stderr
        assert accepted.returncode == 0 and "Run Id:" in accepted.stdout, text
        assert set(job_states(submit).values()) == {JobState.SUCCEEDED}
        assert lines(log) == [HOST]  # not run again
        store = RunStore(db_path(str(submit)), readonly=True)
        try:
            assert [s.host for s in store.sessions()] == [HOST, "login2"]
        finally:
            store.close()
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare for a second hostname")
def test_restart_from_login2_takes_a_stale_spawner_journal_as_ended_and_reruns_its_job(tmp_path, monkeypatch):
    """The driver, its local pool's spawner and the job are SIGKILLed; the
    spawner's journal is left, listing the job. Once the journal is older
    than ``parslDriverStaleAfter`` (3 s) and stays still, ``bps restart``
    from login2 takes the job as ended (its log says why), reruns it once,
    and removes the journal."""
    env = cli_environment(tmp_path, monkeypatch)
    marker = f"bpsstalejournal{os.getpid()}x"
    flag, log = tmp_path / "ran-once", tmp_path / "started"
    jobs = [
        {
            "name": "slow",
            "script": f"hostname >> {log}; if [ -e {flag} ]; then exit 0; fi; touch {flag}; "
            f"exec -a {marker} sleep 120",
        },
    ]
    submit = tmp_path / "submit"
    proc = start_driver(env, submit, jobs, LOCAL2, stale_after=3.0)
    try:
        wait_until(lambda: lines(log), 60, "the slow job running", proc)
        journal = wait_until(lambda: spawner_journals(submit), 10, "the spawner's journal")[0]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        spawner = int(journal.name.rsplit(".", 1)[1])
        # The spawner and its keeper (its parent, which would log the job's exit status).
        stat = Path(f"/proc/{spawner}/stat").read_bytes()
        keeper = int(stat[stat.rindex(b")") + 2 :].split()[1])
        for pid in (keeper, spawner):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The job's shell and its child at once, as when the host is gone: no exit status logged.
        shells = _pids_of_run(RunStore(db_path(str(submit)), readonly=True).meta()["run_id"])
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in shells:
                os.kill(pid, sig)
        wait_until(lambda: not _pids_with(marker), 10, "the job killed")
        assert journal.exists() and "+ " in journal.read_text()
        assert "exit status" not in next(submit.rglob("slow.stderr")).read_text()
        time.sleep(3.0 + 1.0)  # the heartbeat and the journal go stale
        started = time.monotonic()
        restarted = bps_on("login2", env, tmp_path, "restart", "--id", str(submit))
        took = time.monotonic() - started
        text = restarted.stdout + restarted.stderr
        assert restarted.returncode == 0 and "Run Id:" in restarted.stdout, text
        assert job_states(submit) == {"slow": JobState.SUCCEEDED}
        assert lines(log) == [HOST, "login2"]  # run again once, from login2
        assert not journal.exists()
        assert any("stopped refreshing its journal" in p.read_text() for p in submit.rglob("*slow*.stderr*"))
        print(f"\nrestart from login2 over a stale spawner journal: {took:.1f} s")
    finally:
        _kill_leftovers(proc, marker)


def _pids_of_run(run_id: str) -> list[int]:
    """Pids of the processes of a run's job attempts: the job shell (its
    command line exports ``BPS_PARSL_ATTEMPT``) and its children (in their
    environment)."""
    found = []
    needle = f"BPS_PARSL_ATTEMPT={run_id}/".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = (
                    Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/environ").read_bytes()
                )
            except OSError:
                continue
            if needle in text:
                found.append(int(entry))
    return found


# ---- one driver per run, fenced (issue 20, item 1) ------------------------------------


def store_rows(submit: Path) -> str:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        return repr((store.statuses(), store.attempts(), store.sessions()))
    finally:
        store.close()


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare for a second hostname")
def test_a_frozen_driver_that_resumes_after_a_takeover_dispatches_and_records_nothing(tmp_path, monkeypatch):
    """A driver on login1 runs a chain a -> b -> c -> d; it is frozen
    (SIGSTOP of the driver process alone, as a hung NFS client or a paused
    thread would be) while ``a`` runs. ``a`` ends meanwhile; once the
    driver's heartbeat is stale (``parslDriverStaleAfter: 3``) ``bps
    restart`` from login2 takes the run over and runs b, c, d. Then the
    frozen driver resumes (SIGCONT): it notices the takeover before it
    dispatches ``b`` or records anything (the store's rows are unchanged),
    writes no heartbeat, and exits 1 with one line saying the run was taken
    over. Every job ran exactly once."""
    env = cli_environment(tmp_path, monkeypatch)
    log = tmp_path / "started"
    names = ["a", "b", "c", "d"]
    jobs = [{"name": n, "script": f'echo "$(hostname) {n}" >> {log}; sleep 2'} for n in names]
    edges = list(zip(names, names[1:], strict=False))
    extra = {"site": {"local": LOCAL2}, "parslProgressInterval": 0, "parslDriverStaleAfter": 3.0}
    submit = tmp_path / "submit"
    proc = subprocess.Popen(
        on_host(
            "login1",
            [
                sys.executable,
                "-c",
                _DRIVER,
                str(submit),
                json.dumps({"jobs": jobs, "edges": edges}),
                json.dumps(extra),
            ],
        ),
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: lines(log), 60, "job a running", proc)
        os.kill(proc.pid, signal.SIGSTOP)  # the driver alone; its local pool's jobs run on
        wait_until(lambda: "exit status" in next(submit.rglob("a.stderr")).read_text(), 30, "a ended")
        time.sleep(3.0 + 1.0)  # the frozen driver's heartbeat goes stale
        restarted = bps_on("login2", env, tmp_path, "restart", "--id", str(submit), timeout=180)
        text = restarted.stdout + restarted.stderr
        assert restarted.returncode == 0 and "Run Id:" in restarted.stdout, text
        assert set(job_states(submit).values()) == {JobState.SUCCEEDED}
        before = store_rows(submit)
        beat = (submit / "parsl" / "driver.heartbeat").exists()
        resumed = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - resumed
        assert proc.returncode == 1, out
        taken = [line for line in out.splitlines() if "taken over" in line]
        assert len(taken) == 1 and "recorded nothing more" in taken[0], out
        assert "Traceback" not in out, out
        assert store_rows(submit) == before
        assert (submit / "parsl" / "driver.heartbeat").exists() == beat  # none written by the old driver
        started = [line.split() for line in lines(log)]
        assert sorted(name for _, name in started) == names, started  # each job once
        assert [host for host, name in started if name != "a"] == ["login2"] * 3, started
        store = RunStore(db_path(str(submit)), readonly=True)
        try:
            assert [s.host for s in store.sessions()] == ["login1", "login2"]
            succeeded = [(a.job, a.attempt) for a in store.attempts() if a.state == JobState.SUCCEEDED]
        finally:
            store.close()
        assert len(succeeded) == len({job for job, _ in succeeded}) == 4, succeeded
        print(f"\nfrozen driver resumed after a takeover: exited in {took:.1f} s: {taken[0]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_commit_of_a_writer_whose_claim_was_taken_over_is_refused(finished):
    """The store's half of the fence: once a newer claim is the run's
    (`RunStore.take_fence`), every write of the older holder (a state, a
    session's end, a run-wide value) is refused inside its transaction with
    `RunTakenOverError` and changes nothing; the older claim can never be
    taken again."""
    from lsst.ctrl.bps.parsl.store.runstore import RunTakenOverError

    old, new = RunStore(db_path(str(finished))), RunStore(db_path(str(finished)))
    try:
        old.take_fence(5)
        old.begin_session("submit", os.getpid(), HOST)
        new.take_fence(6)
        before = store_rows(finished)
        old.set_state(0, JobState.DELETED, 9)
        for write in (old.flush, lambda: old.end_session("failed"), lambda: old.set_meta("x", 1)):
            with pytest.raises(RunTakenOverError, match="taken over"):
                write()
        assert store_rows(finished) == before
        with pytest.raises(RunTakenOverError):
            RunStore(db_path(str(finished))).take_fence(5)
        new.set_state(0, JobState.DELETED, 9)
        new.flush()
    finally:
        old.close()
        new.close()
