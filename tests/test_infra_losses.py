"""Lost work is infrastructure, not payload; walltime-aware blocks; no
orphans on nodes (issue 10, items 2, 4 and 5).

Without the rig: a local HighThroughputExecutor (LocalProvider, worker pools
are real processes on this machine) whose worker pool, worker or interchange
is SIGKILLed; real drivers in subprocesses (``test_reliability.py`` is their
script). On the multi-node rig (``multinode_slurm.py``, marked ``slurm``,
skipped where it cannot start): a real ``bps submit`` of the e2e pipeline on
2 nodes with one node killed mid-run, and a worker pool killed on a live
node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from cli import bps, cli_environment, wait_for  # noqa: E402
from lsst.ctrl.bps.parsl.sites.losses import (  # noqa: E402
    InterchangeLostError,
    LostAttempts,
    infrastructure_cause,
    stops_run,
)
from lsst_ctrl_bps_parsl_worker.processes import attempt_processes  # noqa: E402
from synthetic import attempts, statuses  # noqa: E402
from test_reliability import D, F, S, lines, start  # noqa: E402

try:
    from .multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def env(tmp_path, monkeypatch):
    return cli_environment(tmp_path, monkeypatch)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---- classification ------------------------------------------------------------------


def test_losses_are_told_apart_from_job_failures():
    from lsst.ctrl.bps.parsl.localpool.executor import PoolLostError
    from parsl.executors.errors import BadStateException
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    class Executor:
        label = "mn"

    lost = {
        "ManagerLost": ManagerLost(b"abc", "node2"),
        "WorkerLost": WorkerLost(3, "node1"),
        "InterchangeLostError": InterchangeLostError("interchange of executor mn exited with status -9"),
        "BadStateException": BadStateException(Executor(), RuntimeError("no block connected")),
        "PoolLostError": PoolLostError("the local pool's spawner died 4 times"),
    }
    for name, error in lost.items():
        cause = infrastructure_cause(error)
        assert cause and f"[{name}]" in cause and "\n" not in cause, (name, cause)
    assert "node2" in infrastructure_cause(lost["ManagerLost"])
    assert [name for name, error in lost.items() if stops_run(error)] == [
        "InterchangeLostError",
        "BadStateException",
        "PoolLostError",
    ]
    for own in (None, RuntimeError("boom"), ValueError("bad"), KeyboardInterrupt()):
        assert infrastructure_cause(own) is None and not stops_run(own)


def test_lost_attempt_budget_and_settle_delay():
    losses = LostAttempts(2)
    assert [losses.lost(7) for _ in range(3)] == [True, True, False]
    losses.hold(1, 10.0)
    losses.hold(2, 5.0)
    assert len(losses) == 2 and losses.next_due() == 5.0
    assert losses.due(4.0) == [] and losses.due(6.0) == [2] and losses.due(11.0) == [1]
    assert not losses


# ---- a local HTEX: the worker side kills jobs whose worker or pool died --------------


def _local_htex(tmp_path, monkeypatch, init_blocks: int = 1, **options):
    """Load a local HTEX (``init_blocks`` pools of one worker each); return it,
    its `run_job` app and the kernel."""
    import parsl
    from lsst_ctrl_bps_parsl_worker.job import run_job
    from parsl.app.python import PythonApp
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=1,
        provider=LocalProvider(init_blocks=init_blocks, min_blocks=0, max_blocks=2),
        **options,
    )
    dfk = parsl.load(Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy_period=0.5))
    return executor, PythonApp(run_job, data_flow_kernel=dfk, executors=["htex"]), dfk


@pytest.fixture
def htex(tmp_path, monkeypatch):
    """A loaded local HTEX (one pool, one worker, heartbeats 1/4 s) and its
    `run_job` app."""
    import parsl

    executor, app, dfk = _local_htex(
        tmp_path, monkeypatch, heartbeat_period=1, heartbeat_threshold=4, block_error_handler=False
    )
    try:
        yield executor, app
    finally:
        dfk.cleanup()
        parsl.clear()


def _start_job(app, tmp_path: Path, token: str, seconds: int = 60):
    out, err = tmp_path / f"{token.replace('/', '_')}.out", tmp_path / f"{token.replace('/', '_')}.err"
    script = f"sleep {seconds} & sleep {seconds}; wait"
    future = app(token, "", "", script, str(out), str(err), str(tmp_path / "pid"), None, "/bin/sh")
    wait_for(lambda: len(attempt_processes([token])) >= 3 or future.done(), 60, f"job {token} running")
    assert not future.done(), future.exception()
    return future


def _parent(pid: int) -> int:
    """The parent pid of ``pid`` (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


@pytest.mark.parametrize("victim", ["pool", "worker"])
def test_job_dies_with_its_worker_or_pool_and_the_loss_is_infrastructure(htex, tmp_path, victim):
    """Promise L3: SIGKILL of the worker pool (``process_worker_pool.py``)
    or of the worker running a job: every process of the job (a shell and
    two ``sleep``) is gone within seconds, long before the executor reports
    the loss; the future fails with ``ManagerLost`` or ``WorkerLost``, which
    the plugin classes as an infrastructure loss."""
    executor, app = htex
    token = f"test{os.getpid()}/0/1"
    future = _start_job(app, tmp_path, token)
    shells = [pid for pid in attempt_processes([token]) if "export BPS_PARSL_ATTEMPT" in cmdline(pid)]
    # A shell forking for `sleep &` shows the same command line until the child execs.
    (shell,) = [pid for pid in shells if _parent(pid) not in shells]
    worker = _parent(shell)
    pool = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "process_worker_pool" in cmdline(pool), cmdline(pool)
    pool_children = _children(pool)
    killed_at = time.monotonic()
    os.kill(pool if victim == "pool" else worker, signal.SIGKILL)
    wait_for(lambda: not attempt_processes([token]), 10, "the job's processes gone")
    gone_after = time.monotonic() - killed_at
    error = future.exception(timeout=60)
    reported_after = time.monotonic() - killed_at
    _kill_parsl_orphans(pool_children)
    cause = infrastructure_cause(error)
    assert cause is not None, repr(error)
    assert ("ManagerLost" if victim == "pool" else "WorkerLost") in cause, cause
    assert gone_after < 5, gone_after
    print(f"\n{victim} killed: job gone after {gone_after:.2f} s, {cause} after {reported_after:.1f} s")


@pytest.mark.parametrize("pool_gone_at_start", [False, True], ids=["worker-ends", "pool-gone-first"])
def test_guard_watcher_kills_every_marked_process(tmp_path, pool_gone_at_start):
    """Promise L3, the watcher alone (this test plays the worker: it holds
    the watcher's pipe). Processes carrying the worker's mark (one that left
    its session too) die when the worker's pipe ends; if the pool is gone
    before the watcher starts (it cannot watch it), a marked process started
    afterwards, while the worker lives, dies within a sweep; unmarked
    processes are left alone."""
    from lsst_ctrl_bps_parsl_worker import keeper

    mark = f"{os.getpid()}.{time.time_ns()}"
    marked_env = {**os.environ, keeper.WORKER_ENV: mark}
    pool = subprocess.Popen(["sleep", "60"])
    if pool_gone_at_start:
        pool.kill()
        pool.wait()
    bystander = subprocess.Popen(["sleep", "60"])
    marked = [subprocess.Popen(["sleep", "60"], env=marked_env)]
    watcher = subprocess.Popen(
        [sys.executable, "-S", keeper.__file__, str(os.getpid()), str(pool.pid), mark], stdin=subprocess.PIPE
    )
    try:
        marked.append(subprocess.Popen(["setsid", "sleep", "60"], env=marked_env))
        if pool_gone_at_start:
            wait_for(
                lambda: all(p.poll() is not None for p in marked), 10, "marked processes killed by a sweep"
            )
            assert watcher.poll() is None, "the watcher stays while its worker lives"
        else:
            time.sleep(1.0)
            assert all(p.poll() is None for p in marked), "killed while the worker and its pool live"
        assert watcher.stdin is not None
        watcher.stdin.close()  # the worker ends
        wait_for(lambda: all(p.poll() is not None for p in marked), 10, "marked processes killed")
        assert watcher.wait(timeout=10) == 0
        assert bystander.poll() is None, "an unmarked process was killed"
    finally:
        for proc in [pool, bystander, watcher, *marked]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---- real drivers on a local HTEX -------------------------------------------------------


def _first_run_sleeps(name: str, started: Path, log: Path, marker: str, seconds: int = 60) -> str:
    """A job whose first attempt waits (``exec -a marker sleep``), and whose next one succeeds."""
    return (
        f"if grep -qx {name} {started} 2>/dev/null; then echo {name} ok >> {log}; "
        f"else echo {name} >> {started}; exec -a {marker} sleep {seconds}; fi"
    )


def test_lost_worker_pool_reruns_without_using_number_of_retries(tmp_path, env):
    """Promise L1: the HTEX worker pool is SIGKILLed while a job with
    ``numberOfRetries`` 0 runs on it. The attempt is recorded as an
    infrastructure loss (``attempts.lost``, exit -1), the job runs again
    and succeeds, its job processes are gone once the pool is, and
    ``bps report`` names the loss."""
    marker = f"bpslostjob{os.getpid()}"
    pool_children: list[int] = []
    log, started = tmp_path / "ok.log", tmp_path / "started"
    jobs = [{"name": "a", "retries": 0, "script": _first_run_sleeps("a", started, log, marker)}]
    proc, submit = start(tmp_path, env, {"jobs": jobs, "site": {"class": "test_reliability.HtexSite"}})
    try:
        wait_for(lambda: lines(started), timeout=120, what="the job on the worker pool", proc=proc)
        wait_for(lambda: _pids_named(marker), timeout=20, what="the job's sleep")
        pools = [p for p in _pids_named("process_worker_pool") if str(submit) in cmdline(p)]
        assert pools, "no worker pool of this run"
        pool_children = _children(pools[0])
        os.kill(pools[0], signal.SIGKILL)
        wait_for(lambda: not _pids_named(marker), timeout=10, what="the lost job's processes gone")
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_parsl_orphans(pool_children)
    assert proc.returncode == 0, out
    assert statuses(submit)["a"][0] == S
    first, second = attempts(submit, "a")
    assert (first.state, first.exit_code) == (F, -1) and "ManagerLost" in (first.lost or ""), first
    assert second.state == S and second.lost is None, second
    assert lines(log) == ["a ok"]
    report = bps(env, "report", "--id", str(submit)).stdout
    assert "Infrastructure losses: 1 attempts of 1 jobs" in report and "ManagerLost" in report, report


def test_interchange_death_is_noticed_and_stops_the_run(tmp_path, env):
    """Promise L2: the interchange of the run's HTEX is SIGKILLed while a job
    runs. Parsl never fails its futures; the driver notices the exited
    process, records the job's attempt as an infrastructure loss and stops
    the run in one line; the job is DELETED (a restart runs it)."""
    marker = f"bpsichjob{os.getpid()}"
    log, started = tmp_path / "ok.log", tmp_path / "started"
    jobs = [{"name": "a", "retries": 0, "script": _first_run_sleeps("a", started, log, marker)}]
    proc, submit = start(tmp_path, env, {"jobs": jobs, "site": {"class": "test_reliability.HtexSite"}})
    try:
        wait_for(lambda: lines(started), timeout=120, what="the job on the worker pool", proc=proc)
        (interchange,) = [p for p in _pids_named("HTEX interchange") if _is_child_of(p, proc.pid)]
        killed_at = time.monotonic()
        os.kill(interchange, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        stopped_after = time.monotonic() - killed_at
        wait_for(lambda: not _pids_named(marker), timeout=20, what="the job's processes gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _pids_named(marker):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0, out
    assert "can run nothing more" in out and "interchange" in out and "Traceback" not in out, out
    (first,) = attempts(submit, "a")
    assert first.exit_code == -1 and "interchange of executor htex exited" in (first.lost or ""), first
    assert statuses(submit)["a"][0] == D
    print(f"\ninterchange killed: run stopped after {stopped_after:.1f} s")


def _pids_named(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def _children(pid: int) -> list[int]:
    """Pids of the children of ``pid``."""
    return [child for child in map(int, filter(str.isdigit, os.listdir("/proc"))) if _parent(child) == pid]


def _kill_parsl_orphans(pids: list[int]) -> None:
    """Kill what a killed worker pool left of Parsl's own processes (its
    workers, its resource tracker: orphans now, waiting forever)."""
    for pid in pids:
        if _parent(pid) == 1 and "multiprocessing" in cmdline(pid):
            os.kill(pid, signal.SIGKILL)


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
    except OSError:
        return False


# ---- walltime: no job on a block that ends before it could --------------------------------


def test_job_is_kept_off_a_block_with_too_little_walltime_left(htex, tmp_path):
    """Promise W1: block 0 has (by its clock) 20 s left, a job asks for 10 s
    with a 30 s margin: block 0 is put on hold before the job is submitted,
    cancelled once it runs nothing, a fresh block is started and the job
    runs there. (A LocalProvider has no walltime: the test gives it one, and
    ages block 0 by moving its first-seen time back.)"""
    from lsst.ctrl.bps.parsl.sites.losses import BlockWatch
    from parsl.jobs.states import JobState

    executor, app = htex
    executor.provider.walltime = "00:01:00"
    watch = BlockWatch({"htex": executor}, str(tmp_path / "running"))
    wait_for(lambda: executor.connected_blocks(), 60, "block 0 connected")
    clock = watch.clocks["htex"]
    clock.update(time.monotonic())
    clock.seen["0"] = time.monotonic() - 40
    assert watch.before_submit("htex", 10.0)
    assert clock.held == {"0"}
    where = tmp_path / "block"
    token = f"wt{os.getpid()}/0/1"
    future = app(
        token,
        "",
        "",
        f"echo $PARSL_WORKER_BLOCK_ID > {where}",
        str(tmp_path / "o"),
        str(tmp_path / "e"),
        str(tmp_path / "pid"),
        None,
        "/bin/sh",
    )
    watch.waiting[(0, 1)] = ("htex", 10.0, future)
    deadline = time.monotonic() + 60
    while not future.done() and time.monotonic() < deadline:
        watch.tick()
        time.sleep(0.2)
    assert future.result(timeout=1)[0] == 0
    assert where.read_text().strip() != "0", "the job ran on the held block"
    assert executor.status_facade["0"].state == JobState.SCALED_IN
    # A job that fits no block at all is sent anyway (with a warning), not held.
    assert not watch.before_submit("htex", 45.0)


def test_idle_block_is_released_while_another_block_runs_the_last_job(tmp_path, monkeypatch):
    """Promise W2: two blocks of a local HTEX (one worker each), one job left
    running on one of them: the other block, idle for ``max_idle``, is put on
    hold and cancelled (scaled in, not failed) while the job runs on. A job
    waiting in the interchange keeps every block."""
    import parsl
    from lsst.ctrl.bps.parsl.sites.losses import BlockWatch
    from parsl.jobs.states import JobState

    executor, app, dfk = _local_htex(tmp_path, monkeypatch, init_blocks=2)
    try:
        watch = BlockWatch({"htex": executor}, str(tmp_path / "running"), max_idle=2.0)
        wait_for(lambda: len(executor.connected_blocks()) == 2, 60, "two blocks connected")

        def job(name: str, seconds: float):
            return app(
                f"idle{os.getpid()}/{name}/1",
                "",
                "",
                f"sleep {seconds}; echo $PARSL_WORKER_BLOCK_ID > {tmp_path / name}",
                str(tmp_path / f"{name}.out"),
                str(tmp_path / f"{name}.err"),
                str(tmp_path / f"{name}.pid"),
                None,
                "/bin/sh",
            )

        # Three jobs on two workers: one waits, so no block goes while it does.
        first = [job("a", 3), job("b", 3), job("c", 9)]
        released_while_waiting = set()
        while not first[0].done() or not first[1].done():
            watch.tick()
            released_while_waiting |= watch.clocks["htex"].held
            time.sleep(0.2)
        assert not released_while_waiting
        deadline = time.monotonic() + 20
        while not first[2].done() and time.monotonic() < deadline:
            watch.tick()
            time.sleep(0.2)
        assert [f.result(timeout=5)[0] for f in first] == [0, 0, 0]
        last_block = (tmp_path / "c").read_text().strip()
        other = ({"0", "1"} - {last_block}).pop()
        states = {block: status.state for block, status in executor.status_facade.items()}
        assert states[other] == JobState.SCALED_IN and states[last_block] == JobState.RUNNING, states
        assert not executor.bad_state_is_set
    finally:
        dfk.cleanup()
        parsl.clear()


def test_idle_blocks_are_released_by_parsl_scaling():
    """Promise W2: blocks of an executor with no task left are released by
    Parsl's ``simple`` scaling after ``maxIdleTime`` (default 30 s)."""
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from synthetic import make_config

    site = {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:10:00",
        "address": "10.0.0.1",
    }
    config = SiteConfig.from_config(make_config(computeSite="mn", site={"mn": site})).get_parsl_config()
    assert (config.strategy, config.max_idletime) == ("simple", 30.0)
    site["maxIdleTime"] = 5
    config = SiteConfig.from_config(make_config(computeSite="mn", site={"mn": site})).get_parsl_config()
    assert config.max_idletime == 5.0


# ---- on the multi-node rig ---------------------------------------------------------------


def rig_site(rig, **keys) -> dict:
    """`sites.Slurm` with 2-node blocks, one worker per node, short heartbeats."""
    return {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:10:00",
        "partition": rig.partition,
        "exclusive": False,
        "max_blocks": 1,
        "worker_init": f"export PATH={VENV_BIN}:$PATH",
        "executor_options": {"max_workers_per_node": 1},
        "heartbeat_period": 2,
        "heartbeat_threshold": 8,
        **keys,
    }


def token_processes_in(rig, k: int, run_id: str) -> dict[int, str]:
    """Processes of node ``k`` that carry an attempt token of run ``run_id``."""
    mine = attempt_processes(run_prefix=f"{run_id}/")
    return {pid: cmdline(pid) for pid in rig.pids_in(k) if pid in mine}


@pytest.mark.slurm
@pytest.mark.long
def test_node_killed_mid_run_bps_submit_completes_without_payload_retries(
    multinode_slurm, e2e_repo, tmp_path
):
    """Promise L5: a real ``bps submit`` of the e2e pipeline on 2-node blocks
    (``middle`` quanta sleep 8 s); the block's second node, running a
    ``middle`` quantum, is killed (link down, every process). The run completes, every quantum's
    outputs exist and succeeded once, no attempt that failed was the job's
    own (every failed attempt is an infrastructure loss), and ``bps report``
    shows the losses."""
    import yaml
    from e2e_pipeline import repo as e2e
    from lsst.ctrl.bps.parsl.store.runstore import DB_NAME, RunStore

    rig = multinode_slurm
    pipeline = tmp_path / "pipeline.yaml"
    spec = yaml.safe_load(e2e.PIPELINE.read_text())
    spec["tasks"]["middle"] = {"class": spec["tasks"]["middle"]["class"], "config": {"sleep": 8.0}}
    pipeline.write_text(yaml.safe_dump(spec))
    suffix = "node_killed"
    extra = {"computeSite": "mn", "site": {"mn": rig_site(rig)}, "numberOfRetries": 0}
    submit_yaml = e2e.write_submit_yaml(tmp_path, e2e_repo, pipeline, output_run_suffix=suffix, extra=extra)
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=tmp_path)
    run_log = tmp_path / e2e.RUN_LOG_NAME
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), "submit", str(submit_yaml)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def batch_host() -> int | None:
            fields = rig.squeue("-t", "running", "-o", "%i %B")
            return int(fields[0][1].removeprefix("node")) if len(fields) == 1 else None

        def middle_running() -> tuple[int, int] | None:
            first = batch_host()
            for label, _, pid, _, status in e2e.read_run_log(run_log):
                if label == "middle" and status == "start":
                    for k in (1, 2, 3, 4):
                        # The block's second node: losing it must not end the block.
                        if first is not None and k != first and pid in rig.pids_in(k):
                            return k, first
            return None

        victim, first = wait_for(middle_running, timeout=150, what="a middle quantum running", proc=proc)
        (block,) = [fields[0] for fields in rig.squeue("-t", "running")]
        killed_at = time.time()
        rig.kill_node(victim)
        out, _ = proc.communicate(timeout=240)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    output, output_run = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == e2e.expected_outputs()
    assert set(e2e.count_runs(run_log, "ok")) == e2e.all_quanta_keys()
    assert max(e2e.count_runs(run_log, "ok").values()) == 1
    submit = Path(tmp_path).resolve() / "submit" / output_run
    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        rows = store.attempts()
    finally:
        store.close()
    lost = [row for row in rows if row.lost]
    assert lost, "no attempt recorded as lost"
    own_failures = [row for row in rows if row.state != S and not row.lost]
    assert not own_failures, own_failures
    report = subprocess.run(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), "report", "--id", str(submit)],
        env={**env, "BPS_WMS_SERVICE_CLASS": "lsst.ctrl.bps.parsl.ParslService"},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "Infrastructure losses" in report, report
    noticed = max(row.end for row in lost) - killed_at
    reruns = {row.job: row.attempt for row in lost}
    rerun_ends = [r.end for r in rows if r.job in reruns and r.attempt > reruns[r.job] and r.end]
    recovered = max(rerun_ends) - killed_at if rerun_ends else float("nan")
    print(
        f"\nnode{victim} killed (block {block} on node{first} and node{victim}): {len(lost)} attempts "
        f"lost, noticed {noticed:.1f} s after the kill (heartbeat threshold 8 s), their reruns done "
        f"{recovered:.1f} s after it (queued behind the jobs left on node{first}); run {elapsed:.1f} s"
    )
    # The block kept its first node (--no-kill): only the lost node's job ran again, in the same
    # block (no new block to wait for; its end waits for the jobs queued before it on the one
    # node left).
    assert len(lost) == 1, lost
    (rerun,) = [r for r in rows if r.job in reruns and r.attempt > reruns[r.job]]
    assert rerun.host == f"node{first}", rerun
    # The killed node stays down (the fixture revives it for the next test).
    wait_for(lambda: not rig.squeue(), timeout=30, what="no block of the run left")


@pytest.mark.slurm
@pytest.mark.long
def test_worker_pool_killed_on_a_live_node_leaves_no_orphan(multinode_slurm, tmp_path, env):
    """Promise L5: the worker pool (``process_worker_pool.py``) of one node
    of a running block is SIGKILLed while a job runs there. No process of
    the run is left on that node (the job's own session included), and the
    job runs again once and succeeds, with ``numberOfRetries`` 0 (a first
    attempt that is not lost succeeds after its sleep)."""
    from test_reliability import run_id_of

    rig = multinode_slurm
    marker = f"bpsorphan{os.getpid()}"
    log, started = tmp_path / "ok.log", tmp_path / "started"
    jobs = [
        {"name": f"a{i}", "retries": 0, "script": _first_run_sleeps(f"a{i}", started, log, marker, 20)}
        for i in range(2)
    ]
    proc, submit = start(tmp_path, env, {"jobs": jobs, "site": rig_site(rig)})
    try:
        wait_for(lambda: len(lines(started)) >= 2, timeout=120, what="both jobs running", proc=proc)
        run_id = run_id_of(submit)

        def node_with_job() -> int | None:
            return next((k for k in (1, 2, 3, 4) if token_processes_in(rig, k, run_id)), None)

        k = wait_for(node_with_job, timeout=30, what="a node running a job")
        (pool,) = [p for p, c in rig.processes_in(k).items() if "process_worker_pool" in c]
        os.kill(pool, signal.SIGKILL)
        wait_for(lambda: not token_processes_in(rig, k, run_id), timeout=10, what=f"no job left on node{k}")
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _pids_named(marker):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    lost = [name for name in ("a0", "a1") if any(row.lost for row in attempts(submit, name))]
    assert len(lost) == 1, [attempts(submit, name) for name in ("a0", "a1")]
    (kept,) = {"a0", "a1"} - set(lost)
    # The lost job ran again once (and logged "ok"); the other one's first attempt succeeded.
    assert lines(log) == [f"{lost[0]} ok"]
    first, second = attempts(submit, lost[0])
    assert first.exit_code == -1 and "ManagerLost" in first.lost and second.state == S, (first, second)
    assert [row.state for row in attempts(submit, kept)] == [S]
    # The block of the killed pool ends (Slurm waits for its processes: KillWait).
    assert rig.wait_idle(60), f"the run left {rig.squeue()}: {[rig.job_processes_in(k) for k in (1, 2)]}"
