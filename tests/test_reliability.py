"""Reliability and security (issue 6): crashes, faults and bad input never
lose work or leave a mess.

Everything here is real: real Parsl executors (the local thread pool, and a
HighThroughputExecutor with a LocalProvider), drivers in subprocesses, real
signals (SIGKILL, SIGTERM, SIGINT), real ``bps`` commands, a real tmpfs for
full and read-only disks (root only; skipped otherwise). Each test names the
promise of ``doc/reliability.md`` it proves.

This file is also the driver of its runs: ``python test_reliability.py
SUBMIT_DIR SPEC.json`` prepares and submits a synthetic workflow like ``bps
submit`` (see `main`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from cli import BIN, bps, cli_environment, wait_for  # noqa: E402
from lsst.ctrl.bps import WmsStates  # noqa: E402
from lsst.ctrl.bps.parsl.site import SiteConfig  # noqa: E402
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path  # noqa: E402
from synthetic import attempts, job, make_config, statuses, workflow  # noqa: E402

S, F, D, P = (WmsStates[n].value for n in ("SUCCEEDED", "FAILED", "DELETED", "PRUNED"))
LOCAL2 = {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}
IS_ROOT = os.geteuid() == 0


# ---- the driver of the test runs ----------------------------------------------


class HtexSite(SiteConfig):
    """One HighThroughputExecutor with a LocalProvider: workers are separate
    processes (``process_worker_pool.py`` from the venv's bin on PATH), which
    the worker-fault test kills. Heartbeats are short so that a lost worker
    pool is noticed within seconds."""

    def get_executors(self):
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        return [
            HighThroughputExecutor(
                label="htex",
                address="127.0.0.1",
                max_workers_per_node=2,
                heartbeat_period=1,
                heartbeat_threshold=3,
                poll_period=100,
                # Parsl's default handler gives the executor up (failing every
                # task) once all of init_blocks=1 blocks failed: a site that
                # wants a lost pool replaced turns it off.
                block_error_handler=False,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ]

    def select_executor(self, job):
        return "htex"


def main() -> int:
    """Prepare and submit the workflow of SPEC.json in SUBMIT_DIR.

    SPEC: {"jobs": [{"name", "script", "label"?, "retries"?, "walltime"?}],
    "edges": [[parent, child]], "final": script or null, "site": {...} or
    null, "kill_after_launch": job name or null}.

    ``kill_after_launch`` injects a crash at one precise point: the driver
    kills itself with SIGKILL when it is about to record that job's launch,
    once the job has already succeeded (as it may when the driver is slow).
    """
    import faulthandler

    from synthetic_driver import prepare_and_submit

    # A test that finds the driver stuck sends SIGUSR1: every thread's stack goes to the output.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    submit, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("kill_after_launch"):
        _inject_kill_after_launch(spec["kill_after_launch"], spec["ok_log"])
    prepare_and_submit(
        submit, spec, {"parslProgressInterval": 0, "site": {"local": spec.get("site") or LOCAL2}}
    )
    return 0


def _inject_kill_after_launch(name: str, ok_log: str) -> None:
    from lsst.ctrl.bps.parsl.store import runstore as state

    original = state.RunStore.flush

    def flush(self, *args, **kwargs):
        ids = {row.name: row.id for row in self.jobs()}
        target = ids[name]
        if any(row[0] == state.PENDING and row[-1] == target for row in self._pending_status):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if f"{name} ok" in Path(ok_log).read_text() if Path(ok_log).exists() else False:
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    state.RunStore.flush = flush


# ---- helpers --------------------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch):
    return cli_environment(tmp_path, monkeypatch)


def start(tmp_path, env, spec, name="submit", submit=None):
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    submit = submit or tmp_path / name
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "test_reliability.py"), str(submit), str(spec_path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, submit


def bps_background(env, *args):
    return subprocess.Popen(
        [str(BIN / "bps"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def run_id_of(submit: Path) -> str:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        return store.meta()["run_id"]
    finally:
        store.close()


def store_opens_cleanly(submit: Path) -> None:
    """The state store opens (read-only and for writing) and SQLite finds
    every page sound."""
    try:
        store = RunStore(db_path(str(submit)), readonly=True)
        try:
            store.check_integrity()
            jobs, rows = store.jobs(), store.statuses()
        finally:
            store.close()
        RunStore(db_path(str(submit))).close()  # a writable open runs quick_check too
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the state store of {submit} does not open cleanly: {exc}")
    if not jobs or len(rows) != len(jobs):
        pytest.fail(f"the state store of {submit} lacks jobs or their status")


def run_processes(run_id: str) -> list[int]:
    """Pids of processes carrying this run's attempt token in their environment."""
    found = []
    needle = f"BPS_PARSL_ATTEMPT={run_id}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as stream:
                if any(item.startswith(needle) for item in stream.read().split(b"\0")):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def pids_with(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- 1. crash safety ------------------------------------------------------------


def test_sigkill_during_prepare_leaves_no_half_written_store(tmp_path, env):
    """Promise 1 (prepare): SIGKILL while prepare writes a large store: the
    store is absent (only a ``.tmp`` was being written) or complete, and
    ``bps restart`` gives a clear error; submitting again works."""
    n = 12000
    spec = {"jobs": [{"name": f"p{i}", "label": "p", "script": "true"} for i in range(n)], "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec, name="big")

    def tmp_dbs():
        return list(submit.glob("bps_parsl.sqlite3.*.tmp")) if submit.exists() else []

    wait_for(lambda: tmp_dbs() or (submit / "bps_parsl.sqlite3").exists(), what="prepare writing", proc=proc)
    proc.kill()
    proc.wait()
    db = submit / "bps_parsl.sqlite3"
    if db.exists():  # the kill came after the rename: the store must be whole
        store_opens_cleanly(submit)
        assert len(statuses(submit)) == n
    else:
        result = bps(env, "restart", "--id", str(submit), check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Restart failed" in result.stdout and "bps_parsl.sqlite3" in result.stdout, result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        # Submitting again into the same directory starts cleanly.
        spec["jobs"] = spec["jobs"][:5]
        proc, _ = start(tmp_path, env, spec, name="again", submit=submit)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        assert all(row[0] == S for row in statuses(submit).values())
        assert not tmp_dbs()


@pytest.mark.long
def test_sigkill_at_random_points_then_restart_runs_every_job_once(tmp_path, env):
    """Promise 1: a 1,000-job run whose driver is SIGKILLed during its first
    jobs, twice mid-run, late, and during the final job, then restarted with
    ``bps restart`` each time: every job succeeded exactly once over all
    attempts, and the store opened cleanly after every kill."""
    seed = int(os.environ.get("BPS_PARSL_TEST_SEED", time.time()))
    rng = random.Random(seed)
    log = tmp_path / "ok.log"
    final_started = tmp_path / "final_started"
    n = 1000
    spec = {
        "jobs": [{"name": f"j{i}", "label": "j", "script": f"echo j{i} ok >> {log}"} for i in range(n)],
        "edges": [[f"j{i - 50}", f"j{i}"] for i in range(50, n)],
        "final": f"touch {final_started}; sleep 2; echo finalJob ok >> {log}",
        "site": LOCAL2,
    }
    points = [
        rng.randint(1, 20),
        rng.randint(150, 350),
        rng.randint(450, 650),
        rng.randint(750, 950),
    ]
    proc, submit = start(tmp_path, env, spec)
    kills = []
    for point in [*points, "final"]:
        if point == "final":
            wait_for(final_started.exists, what="the final job", proc=proc)
        else:
            wait_for(lambda p=point: len(lines(log)) >= p, what=f"{point} jobs", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append((point, len(lines(log))))
        store_opens_cleanly(submit)
        status = bps(env, "status", "--id", str(submit), check=False)
        if status.returncode != WmsStates.FAILED.value:
            pytest.fail(f"status after kill {kills[-1]}: {status.stdout}{status.stderr}")
        proc = bps_background(env, "restart", "--id", str(submit))
    out, _ = proc.communicate(timeout=300)
    if proc.returncode != 0 or "Run Id:" not in out:
        pytest.fail(f"last restart (seed {seed}, kills {kills}): {out[-3000:]}")
    store_opens_cleanly(submit)
    if not all(row[0] == S for row in statuses(submit).values()):
        pytest.fail(f"not every job succeeded (seed {seed}, kills {kills})")
    counts = Counter(line.split()[0] for line in lines(log))
    if set(counts) != {f"j{i}" for i in range(n)} | {"finalJob"}:
        pytest.fail(f"jobs lost (seed {seed}, kills {kills})")
    if run_processes(run_id_of(submit)):
        pytest.fail("job processes of the run are left")
    twice = {name: c for name, c in counts.items() if c > 1}
    assert not twice, f"jobs that succeeded more than once (seed {seed}, kills {kills}): {twice}"


def test_sigkill_between_launch_and_record_does_not_rerun_a_succeeded_job(tmp_path, env):
    """Promise 1, at its narrowest point: the driver is SIGKILLed after a job
    was handed to Parsl and succeeded, but before its launch was committed
    to the store. Restart must not run it again."""
    log = tmp_path / "ok.log"
    spec = {
        "jobs": [
            {"name": "a", "script": f"echo a ok >> {log}"},
            {"name": "b", "script": f"echo b ok >> {log}"},
        ],
        "edges": [["a", "b"]],
        "kill_after_launch": "a",
        "ok_log": str(log),
    }
    proc, submit = start(tmp_path, env, spec)
    proc.communicate(timeout=120)
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the injected SIGKILL did not happen ({proc.returncode})")
    store_opens_cleanly(submit)
    result = bps(env, "restart", "--id", str(submit))
    if "Run Id:" not in result.stdout:
        pytest.fail(result.stdout)
    assert Counter(lines(log)) == {"a ok": 1, "b ok": 1}


def test_job_running_when_the_driver_dies_finishes_and_is_not_rerun(tmp_path, env):
    """Promise 1: a local job that is running when its driver is SIGKILLed
    runs to its end (the pool starts nothing new, but does not kill it), and
    ``bps restart`` counts it as succeeded from its log instead of running it again."""
    log = tmp_path / "ok.log"
    started = tmp_path / "slow_started"
    spec = {
        "jobs": [
            {"name": "slow", "script": f"touch {started}; sleep 2; echo slow ok >> {log}"},
            {"name": "after", "script": f"echo after ok >> {log}"},
        ],
        "edges": [["slow", "after"]],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(started.exists, what="the slow job", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: "slow ok" in lines(log), what="the orphaned job to finish", timeout=30)
    result = bps(env, "restart", "--id", str(submit))
    if "Run Id:" not in result.stdout:
        pytest.fail(result.stdout)
    assert Counter(lines(log)) == {"slow ok": 1, "after ok": 1}


# ---- 2. graceful stop -----------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_stops_cleanly_and_restart_completes(tmp_path, env, signum):
    """Promise 2: SIGTERM/SIGINT on the driver records a consistent state
    (every job SUCCEEDED or DELETED, the session ended 'cancelled'), leaves
    no process of the run alive, and ``bps restart`` then completes."""
    marker = f"bpsgraceful{signum}x{os.getpid()}"
    flag, log, started = tmp_path / "flag", tmp_path / "ok.log", tmp_path / "started"
    spec = {
        "jobs": [
            {
                "name": f"g{i}",
                "label": "g",
                "script": f"if [ -e {flag} ]; then echo g{i} ok >> {log}; "
                f"else echo g{i} >> {started}; exec -a {marker} sleep 60; fi",
            }
            for i in range(6)
        ],
        "final": f"echo finalJob ok >> {log}",
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(lines(started)) >= 2, what="two jobs running", proc=proc)
    run_id = run_id_of(submit)
    proc.send_signal(signum)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # the stacks of a driver that did not stop (faulthandler)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert not pids_with(marker) and not run_processes(run_id)
    store_opens_cleanly(submit)
    assert all(row[0] in (S, D) for row in statuses(submit).values())
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        session = store.sessions()[-1]
    finally:
        store.close()
    assert session[5] is not None and session[6] == "cancelled"
    assert "DELETED" in bps(env, "report", "--id", str(submit)).stdout
    flag.touch()
    result = bps(env, "restart", "--id", str(submit))
    assert "Run Id:" in result.stdout, result.stdout
    assert all(row[0] == S for row in statuses(submit).values())
    assert sorted(lines(log)) == sorted([f"g{i} ok" for i in range(6)] + ["finalJob ok"]), out


# ---- 3. worker faults ------------------------------------------------------------


def test_job_killed_by_sigkill_is_recorded_and_retried_per_policy(tmp_path, env):
    """Promise 3 (signal): a job SIGKILLed from outside (as by the OOM
    killer) is recorded with signal 9 and exit 137, and retried if its
    policy allows (``retry``: 1 retry) or failed for good (``once``: 0)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = {
        "jobs": [
            {
                "name": name,
                "retries": retries,
                "script": f"if [ -e {pids}/{name}.done ]; then exit 0; fi; touch {pids}/{name}.done; "
                f"echo $$ > {pids}/{name}.tmp; mv {pids}/{name}.tmp {pids}/{name}; exec sleep 60",
            }
            for name, retries in (("retry", 1), ("once", 0))
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    for name in ("retry", "once"):
        pid_file = pids / name
        wait_for(pid_file.exists, what=f"job {name} running", proc=proc)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    final = statuses(submit)
    assert final["retry"][0] == S and final["once"][0] == F
    assert final["once"][2:4] == (137, 9)
    first, second = attempts(submit, "retry")
    assert (first[3], first[4], first[5]) == (F, 137, 9)
    assert second[3] == S
    assert len(attempts(submit, "once")) == 1


def test_htex_worker_pool_dying_costs_only_the_affected_tasks_retries(tmp_path, env):
    """Promise 3 (worker pool): the HTEX worker pool is SIGKILLed while two
    tasks run on it; those two are retried (on a new block) and succeed, the
    tasks that were queued run once, and the run succeeds."""
    marker = f"bpshtexjob{os.getpid()}"
    log, started = tmp_path / "ok.log", tmp_path / "started"
    jobs = [
        {
            "name": f"a{i}",
            "label": "a",
            "retries": 1,
            "script": f"if grep -qx a{i} {started} 2>/dev/null; then echo a{i} ok >> {log}; "
            f"else echo a{i} >> {started}; exec -a {marker} sleep 60; fi",
        }
        for i in range(2)
    ] + [{"name": f"b{i}", "label": "b", "retries": 1, "script": f"echo b{i} ok >> {log}"} for i in range(3)]
    spec = {"jobs": jobs, "site": {"class": "test_reliability.HtexSite"}}
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(
            lambda: len(lines(started)) >= 2, timeout=180, what="two tasks on the worker pool", proc=proc
        )
        pools = [p for p in pids_with("process_worker_pool") if str(submit) in _cmdline(p)]
        assert pools, "no worker pool of this run found"
        children = [c for p in pools for c in _children(p)]
        kill_pids(pools + children)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_pids(pids_with(marker))
    assert proc.returncode == 0, out
    final = statuses(submit)
    assert all(row[0] == S for row in final.values()), final
    for name in ("a0", "a1"):
        rows = attempts(submit, name)
        assert [r[3] for r in rows] == [F, S], rows
    for name in ("b0", "b1", "b2"):
        assert [r[3] for r in attempts(submit, name)] == [S]
    assert sorted(lines(log)) == ["a0 ok", "a1 ok", "b0 ok", "b1 ok", "b2 ok"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_job_outliving_its_walltime_is_killed_and_recorded(tmp_path, env):
    """Promise 3 (walltime): on the Local site (which enforces
    ``requestWalltime``, in minutes) a job running past 0.02 min (1.2 s) is
    killed, recorded FAILED with the signal, says so in its stderr log, and
    is not retried (it would only time out again)."""
    marker = f"bpswalltime{os.getpid()}"
    spec = {
        "jobs": [
            {"name": "slow", "retries": 2, "walltime": 0.02, "script": f"exec -a {marker} sleep 60"},
            {"name": "quick", "walltime": 0.5, "script": "true"},
        ],
        "site": LOCAL2,
    }
    t0 = time.monotonic()
    proc, submit = start(tmp_path, env, spec)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert time.monotonic() - t0 < 60
    final = statuses(submit)
    assert final["quick"][0] == S
    assert final["slow"][0] == F and final["slow"][3] == signal.SIGTERM
    assert len(attempts(submit, "slow")) == 1
    assert "killed after walltime" in (submit / "logs" / "slow" / "slow.stderr").read_text()
    assert not pids_with(marker)


# ---- 4. storage faults ------------------------------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount small tmpfs file systems (root only); unmounted afterwards."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _small_workflow(n=3):
    return workflow([job(f"s{i}", "true") for i in range(n)])


def test_unwritable_submit_dir_is_refused_before_jobs_start(tmp_path, mount_tmpfs):
    """Promise 4 (not writable): a submitPath on a read-only file system is
    refused by the submission checks, and prepare into it fails with one
    line naming the directory; no store is written."""
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.configuration import ConfigurationError
    from lsst.ctrl.bps.parsl.store.runstore import StateStoreError

    ro = mount_tmpfs("ro", "ro,size=1m")
    config = make_config(submitPath=f"{ro}/submit/{{outputRun}}")
    with pytest.raises(ConfigurationError, match="submitPath") as info:
        ParslService(config).run_submission_checks()
    assert "\n" not in str(info.value) and "writable" in str(info.value)
    with pytest.raises((ConfigurationError, StateStoreError)) as info:
        ParslService(config).prepare(config, _small_workflow(), str(ro / "submit"))
    assert str(ro / "submit") in str(info.value) and "\n" not in str(info.value)
    assert not (ro / "submit").exists()


def test_full_disk_before_start_gives_clear_error(tmp_path, mount_tmpfs):
    """Promise 4 (full disk, before start): prepare on a full disk fails
    with one line naming the store and what to do; nothing half-written is
    left."""
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.store.runstore import StateStoreError

    full = mount_tmpfs("full", "size=1m")
    subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=64k"], capture_output=True)
    config = make_config()
    submit = full / "submit"
    with pytest.raises(StateStoreError) as info:
        ParslService(config).prepare(config, _small_workflow(200), str(submit))
    message = str(info.value)
    assert "\n" not in message and str(submit) in message and "free space" in message, message
    assert not (submit / "bps_parsl.sqlite3").exists() and not list(submit.glob("bps_parsl.sqlite3.*tmp"))


def test_full_disk_mid_run_stops_with_state_intact(tmp_path, env, mount_tmpfs):
    """Promise 4 (full disk, mid-run): a job fills the disk of the submit
    directory; the driver stops with one line saying the disk is full, kills
    the run's jobs, and the store is intact. Once space is freed, ``bps
    restart`` completes the run."""
    disk = mount_tmpfs("disk", "size=3m")
    log = tmp_path / "ok.log"
    n = 300
    jobs = [{"name": f"j{i}", "label": "j", "script": f"echo j{i} ok >> {log}"} for i in range(n)]
    filled = tmp_path / "filled"
    jobs[60]["script"] = (
        f"if [ ! -e {filled} ]; then touch {filled}; dd if=/dev/zero of={disk}/filler bs=64k 2>/dev/null; fi; "
        f"echo j60 ok >> {log}"
    )
    spec = {"jobs": jobs, "edges": [[f"j{i - 20}", f"j{i}"] for i in range(20, n)], "site": LOCAL2}
    proc, submit = start(tmp_path, env, spec, submit=disk / "submit")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    last = [line for line in out.splitlines() if "is full" in line][-1]
    assert "bps restart" in last and "Traceback" not in out, out[-3000:]
    assert not run_processes(run_id_of(submit))
    (disk / "filler").unlink()
    store_opens_cleanly(submit)
    assert "ended: error" in bps(env, "report", "--id", str(submit)).stdout
    result = bps(env, "restart", "--id", str(submit))
    assert "Run Id:" in result.stdout, result.stdout + result.stderr
    assert all(row[0] == S for row in statuses(submit).values())
    assert {line.split()[0] for line in lines(log)} == {f"j{i}" for i in range(n)}


def _corrupt(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "garbage-header":
        with open(path, "r+b") as stream:
            stream.write(b"this is no database" * 10)
    elif how == "garbage-pages":  # every page but the first (schema) overwritten
        with open(path, "r+b") as stream:
            stream.seek(4096)
            stream.write(random.Random(1).randbytes(size - 4096))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small finished run (one failed job), made once for the damage tests."""
    root = tmp_path_factory.mktemp("finished")
    log = root / "ok.log"
    gw = workflow([job(f"d{i}", f"echo d{i} ok >> {log}") for i in range(20)] + [job("bad", "exit 3")])
    from synthetic import run

    run(gw, root / "submit", make_config(site={"local": LOCAL2}), expect_fail=True)
    return root / "submit", log


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage-header", "garbage-pages"])
def test_damaged_state_file_gives_error_naming_it_never_a_fresh_start(tmp_path, env, finished_run, how):
    """Promise 4 (damaged store): a truncated or corrupted state file makes
    ``bps restart`` and ``bps report`` print one line naming the file and
    what to do (no traceback), and nothing runs again."""
    source, log = finished_run
    submit = tmp_path / "submit"
    shutil.copytree(source, submit)
    before = lines(log)
    db = submit / "bps_parsl.sqlite3"
    _corrupt(db, how)
    result = bps(env, "restart", "--id", str(submit), check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 1 and "Restart failed" in result.stdout and str(db) in result.stdout, text
    assert "restore it from a backup or submit the run again" in result.stdout, text
    assert "Traceback" not in text
    from lsst.ctrl.bps.parsl import ParslService

    reports, message = ParslService({}).report(str(submit))
    assert reports == [] and str(db) in message and "\n" not in message, message
    assert lines(log) == before, "jobs ran again"
    assert not (submit / "logs" / "bad" / "bad.stderr.2").exists()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0xFF]))


def _answers(service, submit: Path) -> dict:
    """What report (with every job read), status and cancel say of a run:
    values, or ``("message", text)`` where the call refused."""
    found: dict = {}
    reports, message = service.report(str(submit))
    if reports:
        run = reports[0]
        jobs = sorted((j.name, j.label, j.state.name) for j in run.jobs)
        counts = {k.name: v for k, v in run.job_state_counts.items() if v}
        found["report"] = (run.total_number_jobs, counts, run.state.name, run.run_summary, jobs)
    else:
        found["report"] = ("message", message)
    state, message = service.get_status(str(submit))
    found["status"] = ("message", message) if state == WmsStates.UNKNOWN else state.name
    listed = service.list_submitted_jobs(wms_id=str(submit))
    found["cancel"] = ("message", service.cancel(listed[0])[1]) if listed else "nothing to cancel"
    return found


def test_generated_store_damage_gives_one_line_or_the_right_answer(tmp_path, finished_run):
    """P7 (issue 20): the store of a finished run with bytes flipped at 90
    offsets (seeded, all over the file: header, schema, every table and
    index) or truncated at 20 lengths (a wider sweep, 800 offsets and every
    page boundary, ran clean when this was written): report (every job read too), status
    and cancel through the service API each give the right answer (the
    undamaged run's) or one line naming the file; never an exception,
    never a value out of range or counts that disagree with the jobs."""
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.store.runstore import StateStoreError

    source, _ = finished_run
    service = ParslService({})
    pristine = tmp_path / "pristine"
    shutil.copytree(source, pristine)
    right = _answers(service, pristine)
    db = "bps_parsl.sqlite3"
    size = (source / db).stat().st_size
    rng = random.Random(20)
    cases = [("flip", offset) for offset in rng.sample(range(size), 90)]
    cases += [("truncate", n) for n in sorted({0, 1, 99, 100, *(rng.randrange(size) for _ in range(16))})]
    refused = 0
    for how, where in cases:
        submit = tmp_path / "damaged"
        shutil.rmtree(submit, ignore_errors=True)
        shutil.copytree(source, submit)
        if how == "flip":
            _flip(submit / db, where)
        else:
            os.truncate(submit / db, where)
        try:
            answers = _answers(service, submit)
        except StateStoreError as exc:  # the jobs, read when first looked at
            answers = {"report": ("message", str(exc))}
        for call, answer in answers.items():
            if isinstance(answer, tuple) and answer[0] == "message":
                refused += 1
                text = answer[1]
                assert str(submit / db) in text and "\n" not in text, (how, where, call, text)
            elif call == "report":
                assert answer == right[call], (how, where, call, answer)
            else:
                assert answer == right[call], (how, where, call, answer)
    assert refused > 20, refused


@pytest.mark.parametrize("how", ["state-18", "one-job-too-many", "flipped-schema", "half-truncated"])
def test_damaged_store_through_the_bps_cli_is_one_line_and_non_zero(tmp_path, env, finished_run, how):
    """P7 (issue 20), through the real ``bps`` command line: a state no job
    can have (the "18 is not a valid WmsStates" traceback), a label counting
    one job more than the run has (the silent "241 jobs" of a 240-job run),
    a flipped byte in the schema and a store truncated to half: ``bps
    report``, ``status``, ``cancel`` and ``restart`` each print one line
    naming the file, no traceback, and report, status and cancel exit
    non-zero (restart's exit status is issue 20 item 8); nothing runs again."""
    source, log = finished_run
    submit = tmp_path / "submit"
    shutil.copytree(source, submit)
    db = submit / "bps_parsl.sqlite3"
    before = lines(log)
    if how in ("state-18", "one-job-too-many"):
        conn = sqlite3.connect(db)
        if how == "state-18":
            conn.execute("UPDATE status SET state = 18 WHERE job = 0")
        else:
            conn.execute("UPDATE labels SET jobs = jobs + 1 WHERE position = 1")
        conn.commit()
        conn.close()
    elif how == "flipped-schema":
        _flip(db, 700)  # inside the CREATE TABLE text on the first page
    else:
        os.truncate(db, db.stat().st_size // 2)
    for command in ("report", "status", "cancel", "restart"):
        result = bps(env, command, "--id", str(submit), check=False)
        text = result.stdout + result.stderr
        assert "Traceback" not in text, (command, text)
        named = [line for line in text.splitlines() if str(db) in line]
        if command == "status" and "status: FAILED" in text:
            continue  # the right answer: the run's state is in its sessions, which are sound
        if command == "cancel" and how == "one-job-too-many" and "No job matches" in text:
            continue  # the right answer: every job's status is sound, and ended
        assert len(named) == 1, (command, text)
        if command != "restart":
            assert result.returncode != 0, (command, text)
    assert lines(log) == before, "jobs ran again"


# ---- 5. concurrency ---------------------------------------------------------------


def test_two_restarts_at_once_second_is_refused(tmp_path, env):
    """Promise 5 (lock): two ``bps restart`` of one run started together:
    one runs the jobs, the other is refused with a message; every job ran
    once."""
    flag, log = tmp_path / "flag", tmp_path / "ok.log"
    spec = {
        "jobs": [
            {
                "name": f"r{i}",
                "label": "r",
                "script": f"test -e {flag} || exit 1; echo r{i} ok >> {log}; sleep 1",
            }
            for i in range(6)
        ],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    flag.touch()
    first = bps_background(env, "restart", "--id", str(submit))
    second = bps_background(env, "restart", "--id", str(submit))
    outs = [p.communicate(timeout=240)[0] for p in (first, second)]
    ran = [o for o in outs if "Run Id:" in o]
    refused = [o for o in outs if "Restart failed" in o]
    assert len(ran) == 1 and len(refused) == 1, outs
    assert "still running" in refused[0] and "Traceback" not in refused[0], refused[0]
    assert sorted(lines(log)) == [f"r{i} ok" for i in range(6)]
    assert all(row[0] == S for row in statuses(submit).values())


@pytest.mark.long
def test_report_polled_during_a_large_run_never_fails(tmp_path, env):
    """Promise 5 (readers): ``bps report`` run from another process again
    one second after the previous one ended, and the report API from this
    process twice a second, during a 2,000-job run: no call ever fails and
    every report accounts for all jobs."""
    import threading

    from lsst.ctrl.bps.parsl import ParslService

    n = 2000
    spec = {
        "jobs": [{"name": f"r{i}", "label": "r", "script": "sleep 0.01"} for i in range(n)],
        "site": LOCAL2,
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: (submit / "bps_parsl.sqlite3").exists(), what="the store", proc=proc)
    cli: list[subprocess.CompletedProcess] = []

    def poll_cli():
        while proc.poll() is None:
            cli.append(bps(env, "report", "--id", str(submit), check=False))
            time.sleep(1.0)

    poller = threading.Thread(target=poll_cli)
    poller.start()
    api = []
    while proc.poll() is None:
        reports, message = ParslService({}).report(str(submit))
        api.append((message, [(r.total_number_jobs, sum(r.job_state_counts.values())) for r in reports]))
        time.sleep(0.5)
    poller.join(timeout=300)
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    cli.append(bps(env, "report", "--id", str(submit), check=False))
    for result in cli:
        text = result.stdout + result.stderr
        assert result.returncode == 0 and "Traceback" not in text and "r " in result.stdout, text
    assert all(message == "" and counts == [(n, n)] for message, counts in api), api
    assert len(cli) >= 3 and len(api) >= 4, (len(cli), len(api))


# ---- 7. security ------------------------------------------------------------------


def _is_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def test_no_pickle_and_private_modes(tmp_path, env):
    """Promise 7 (formats, modes): after a run with the exported environment
    on, nothing in the submit directory is a pickle or named like one; the
    store, the exported environment, the lock and the run-index records are
    0600 and the index directory 0700."""
    site = dict(LOCAL2, environment=True)
    spec = {"jobs": [{"name": "x", "script": 'test -n "$HOME"'}], "site": site}
    proc, submit = start(tmp_path, env, spec)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    for path in submit.rglob("*"):
        if path.is_file():
            assert not _is_pickle(path), path
            assert path.suffix not in (".pickle", ".pkl"), path

    def mode(path):
        return path.stat().st_mode & 0o777

    assert mode(submit / "bps_parsl.sqlite3") == 0o600
    assert mode(submit / "parsl" / "environment.sh") == 0o600
    claims = list((submit / "parsl").glob("driver.claim.*"))
    assert claims and all(mode(claim) == 0o600 for claim in claims)
    index = Path(env["XDG_STATE_HOME"]) / "lsst-ctrl-bps-parsl" / "runs"
    assert mode(index) == 0o700
    records = list(index.glob("*.json"))
    assert records and all(mode(r) == 0o600 for r in records)
    assert json.loads(records[0].read_text())["submit_path"] == str(submit)


def test_crafted_run_index_cannot_redirect_report_or_cancel(tmp_path, env):
    """Promise 7 (run index): an index record edited to point at another
    run's directory is refused by report, status, cancel and restart."""
    proc_a, submit_a = start(tmp_path, env, {"jobs": [{"name": "a", "script": "true"}]}, name="a")
    proc_b, submit_b = start(tmp_path, env, {"jobs": [{"name": "b", "script": "true"}]}, name="b")
    assert proc_a.wait(timeout=120) == 0 and proc_b.wait(timeout=120) == 0
    run_a = run_id_of(submit_a)
    index = Path(env["XDG_STATE_HOME"]) / "lsst-ctrl-bps-parsl" / "runs"
    (index / f"{run_a}.json").write_text(json.dumps({"run_id": run_a, "submit_path": str(submit_b)}))
    (index / "forged.json").write_text(json.dumps({"run_id": "forged", "submit_path": str(submit_b)}))
    from lsst.ctrl.bps.parsl import ParslService

    service = ParslService({})
    for run in (run_a, "forged"):
        reports, message = service.report(run)
        assert reports == [] and "points to" in message, message
        assert service.get_status(run)[0] == WmsStates.UNKNOWN
        assert service.list_submitted_jobs(wms_id=run) == []
        assert service.cancel(run)[0] is False
        assert service.restart(run)[0] is None
    # The same through the command line.
    report = bps(env, "report", "--id", run_a, check=False)
    assert "points to" in report.stdout + report.stderr and "Traceback" not in report.stdout + report.stderr
    assert "Successfully canceled" not in bps(env, "cancel", "--id", "forged", check=False).stdout
    assert all(row[0] == S for row in statuses(submit_b).values())
    store = RunStore(db_path(str(submit_b)), readonly=True)
    try:
        assert len(store.sessions()) == 1  # nothing acted on run b
    finally:
        store.close()


@pytest.mark.skipif(not IS_ROOT, reason="giving a run to another uid needs root")
def test_runs_of_another_user_are_refused(tmp_path, env):
    """Promise 7 (ownership): a run whose store belongs to another uid is
    reported read-only where the file system lets this user read it (as
    the HTCondor plugin reports other users' runs), refused by cancel and
    restart (directly and through the run index) and left out of this
    user's run list."""
    proc, submit = start(tmp_path, env, {"jobs": [{"name": "x", "script": "exit 1"}]})
    proc.wait(timeout=120)
    run_id = run_id_of(submit)
    os.chown(submit / "bps_parsl.sqlite3", 4242, 4242)
    from lsst.ctrl.bps.parsl import ParslService

    service = ParslService({})
    for run in (str(submit), run_id):
        reports, message = service.report(run)
        assert len(reports) == 1 and reports[0].state == WmsStates.FAILED, (reports, message)
        assert service.get_status(run)[0] == WmsStates.FAILED
        assert service.list_submitted_jobs(wms_id=run) == []
        assert service.cancel(run)[0] is False
        assert "belongs to uid 4242" in service.restart(run)[2]
    assert service.report(hist=1)[0] == []
    # The same through the command line.
    report = bps(env, "report", "--id", run_id, check=False)
    assert "FAILED" in report.stdout, report.stdout + report.stderr
    assert "Successfully canceled" not in bps(env, "cancel", "--id", run_id, check=False).stdout
    refused = bps(env, "restart", "--id", str(submit), check=False)
    assert refused.returncode == 1 and "belongs to uid 4242" in refused.stdout
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        assert len(store.sessions()) == 1
    finally:
        store.close()


def test_command_lines_run_exactly_as_bps_wrote_them(tmp_path, env):
    """Promise 7 (command lines): the stored command is BPS's rendered
    command; it runs byte for byte (quotes, ``$``, backticks intact), and
    job names and labels, which reports show, are never executed."""
    out_file = tmp_path / "out"
    pwned = tmp_path / "pwned"
    script = f'echo "$((1+1))" \'$(touch {pwned})\' "`echo tick`" > {out_file}'
    name = f"x$(touch {pwned})"
    gw = workflow([job(name, script, label="lab`touch pwned`")])
    from synthetic import run

    submit = tmp_path / "submit"
    final = run(gw, submit, make_config(site={"local": LOCAL2}))
    assert final[name][0] == S
    assert out_file.read_text() == f"2 $(touch {pwned}) tick\n"
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        (row,) = store.jobs()
    finally:
        store.close()
    quoted = "'" + script.replace("'", "'\\''") + "'"
    assert row.command == f"/bin/bash -c {quoted}"
    bps(env, "report", "--id", str(submit))
    assert not pwned.exists() and not (tmp_path / "pwned").exists()


if __name__ == "__main__":
    sys.exit(main())
