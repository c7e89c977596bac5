"""A lost node is noticed fast and its block replaced (issue 10, item 3).

On the multi-node rig of ``multinode_slurm.py`` (marked ``slurm``, skipped
when it cannot start): raw Parsl with the executor `sites.Slurm` builds,
one node of a 2-node block killed hard (link down, every process killed).
The site's heartbeat keys and the plugin's Slurm provider are checked
without the rig.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

try:
    from .multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401

VENV_BIN = os.path.dirname(sys.executable)
TASK_SECONDS = 20.0


def slurm_site(rig, **keys):
    """`sites.Slurm` with 2-node blocks on the rig, one worker per node."""
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from synthetic import make_config

    site = {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:05:00",
        "partition": rig.partition if rig else "nodes",
        "exclusive": False,
        "max_blocks": 1,
        "worker_init": f"export PATH={VENV_BIN}:$PATH",
        "executor_options": {"max_workers_per_node": 1},
        **keys,
    }
    return SiteConfig.from_config(make_config(computeSite="mn", site={"mn": site}))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.2)
    return value


# ---- without the rig -----------------------------------------------------------------


def test_heartbeat_defaults_notice_a_lost_node_within_a_minute():
    site = slurm_site(None, address="10.0.0.1")
    (executor,) = site.get_executors()
    assert (executor.heartbeat_period, executor.heartbeat_threshold) == (10, 40)
    # A lost worker pool is failed at most threshold + one period after its last heartbeat.
    assert executor.heartbeat_threshold + executor.heartbeat_period <= 60
    from lsst.ctrl.bps.parsl.sites.batchsite import tolerate_lost_blocks
    from lsst.ctrl.bps.parsl.sites.slurm import SlurmProvider

    assert isinstance(executor.provider, SlurmProvider)
    assert executor.block_error_handler is tolerate_lost_blocks
    assert "#SBATCH --no-requeue" in executor.provider.scheduler_options
    assert executor.provider.status_polling_interval == 15


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"heartbeat_period": 45}, "'site.mn.heartbeat_threshold' (40) must be greater than"),
        ({"heartbeat_threshold": "soon"}, "'site.mn.heartbeat_threshold'"),
        ({"heartbeat_period": 0}, "'site.mn.heartbeat_period' is 0"),
        ({"heartbeat_period": 2.5}, "'site.mn.heartbeat_period'"),
        ({"executor_options": {"heartbeat_threshold": 5}}, "use 'site.mn.heartbeat_threshold'"),
    ],
)
def test_bad_heartbeat_keys_are_refused_in_one_line(keys, message):
    from lsst.ctrl.bps.parsl.configuration import ConfigurationError

    site = slurm_site(None, address="10.0.0.1", **keys)
    with pytest.raises(ConfigurationError) as caught:
        site.validate()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_heartbeat_keys_reach_every_htex_site():
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from synthetic import make_config

    keys = {"heartbeat_period": 5, "heartbeat_threshold": 25, "address": "10.0.0.1"}
    generic = {
        "class": "lsst.ctrl.bps.parsl.sites.Generic",
        "executors": {"main": {"provider": "slurm", "provider_options": {"partition": "x"}}},
    }
    torque = {"class": "lsst.ctrl.bps.parsl.sites.Torque", "nodes": 1, "walltime": "01:00:00"}
    triple = {"class": "lsst.ctrl.bps.parsl.sites.TripleSlurm", "nodes": 1}
    for site in (generic, torque, triple):
        config = make_config(computeSite="s", site={"s": {**site, **keys}})
        for executor in SiteConfig.from_config(config).get_executors():
            assert (executor.heartbeat_period, executor.heartbeat_threshold) == (5, 25), site["class"]


# ---- on the rig ----------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.long
def test_lost_node_fails_its_tasks_fast_and_a_new_block_replaces_its_block(
    multinode_slurm, tmp_path, monkeypatch
):
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from parsl.executors.high_throughput.errors import ManagerLost
    from parsl.jobs.states import JobState

    rig = multinode_slurm
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    # The workers import this module to run its apps.
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p),
    )
    monkeypatch.chdir(tmp_path)
    site = slurm_site(rig, no_kill=False)  # the path where a lost node ends its block
    (executor,) = site.get_executors()
    threshold = executor.heartbeat_threshold
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy_period=0.5, retries=0)
    marks = tmp_path / "started"
    marks.mkdir()

    @python_app
    def on_a_node(seconds, marks_dir):
        import os
        import socket
        import time

        host = socket.gethostname()
        open(os.path.join(marks_dir, f"{host}.{os.getpid()}"), "w").close()
        time.sleep(seconds)
        return host

    parsl.load(config)
    try:
        long_tasks = [on_a_node(TASK_SECONDS, str(marks)) for _ in range(2)]

        def both_started():
            for future in long_tasks:
                if future.done():
                    future.result()  # an early failure, raised here
            found = list(marks.iterdir())
            return found if len(found) >= 2 else None

        started = wait_for(both_started, 60, "two tasks")
        hosts = {path.name.split(".")[0] for path in started}
        assert len(hosts) == 2, f"both tasks on {hosts}"
        (block_job,) = [fields[0] for fields in rig.squeue()]
        victim = sorted(hosts)[-1]
        healthy = (hosts - {victim}).pop()

        killed_at = time.monotonic()
        rig.kill_node(victim)
        outcomes: dict[str, object] = {}
        lost_after = None
        for future in long_tasks:
            try:
                outcomes[future.result(timeout=threshold + 30)] = "ok"
            except ManagerLost as exc:
                outcomes[exc.hostname] = exc
                lost_after = time.monotonic() - killed_at
        assert isinstance(outcomes.get(victim), ManagerLost), outcomes
        assert lost_after is not None and lost_after <= threshold + 10, (
            f"ManagerLost after {lost_after:.1f} s"
        )

        # The provider reads the block as failed (NODE_FAIL), not COMPLETED nor PENDING.
        def block_state():
            status = executor.status_facade.get("0")
            return status if status is not None and status.terminal else None

        status = wait_for(block_state, 60, "block 0 terminal")
        block_seen_after = time.monotonic() - killed_at
        assert status.state == JobState.FAILED, status
        assert block_job in executor.provider.lost_blocks and "NODE_FAIL" in str(status.message), status
        assert not executor.bad_state_is_set, executor.executor_exception

        # A replacement block starts on the nodes left and new tasks run there.
        new_hosts = {f.result(timeout=60) for f in [on_a_node(1.0, str(marks)) for _ in range(4)]}
        replaced_after = time.monotonic() - killed_at
        jobs = {fields[0]: fields[2] for fields in rig.squeue("-t", "running")}
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    assert new_hosts and victim not in new_hosts and new_hosts <= set(rig.hosts), new_hosts
    assert block_job not in jobs and len(jobs) <= 1, jobs
    print(
        f"\nnode {victim} killed: its task ManagerLost after {lost_after:.1f} s (threshold {threshold} s); "
        f"task on {healthy}: {outcomes.get(healthy)!r}; block {block_job} FAILED seen after "
        f"{block_seen_after:.1f} s; new tasks done on {sorted(new_hosts)} after {replaced_after:.1f} s"
    )
    wait_for(lambda: not rig.squeue(), 30, "Parsl's blocks cancelled")


@pytest.mark.slurm
@pytest.mark.long
def test_requeued_block_is_cancelled_and_reported_failed(multinode_slurm, tmp_path):
    """With ``requeue: true`` Slurm requeues a block that lost a node; the
    provider cancels it and reports it FAILED instead of PENDING forever."""
    from lsst.ctrl.bps.parsl.sites.slurm import SlurmProvider
    from parsl.jobs.states import JobState

    rig = multinode_slurm
    provider = SlurmProvider(
        partition=rig.partition,
        nodes_per_block=2,
        exclusive=False,
        walltime="00:05:00",
        scheduler_options="#SBATCH --nodelist=node1,node2",
        requeue=True,
    )
    provider.script_dir = str(tmp_path)
    job_id = provider.submit("sleep 300", 1, "requeue-test")
    wait_for(lambda: provider.status([job_id])[0].state == JobState.RUNNING, 30, "block running")
    killed_at = time.monotonic()
    rig.kill_node(2)
    status = wait_for(
        lambda: (s := provider.status([job_id])[0]).terminal and s, 75, "requeued block reported terminal"
    )
    seen_after = time.monotonic() - killed_at
    assert status.state == JobState.FAILED and "requeued" in status.message, status
    assert job_id in provider.lost_blocks
    state = rig.slurm(["scontrol", "show", "job", "-o", job_id])
    assert "JobState=CANCELLED" in state and "Restarts=1" in state, state
    print(f"\nrequeued block {job_id} cancelled and FAILED {seen_after:.1f} s after the node was killed")


@pytest.mark.slurm
def test_forgotten_job_states_come_from_scontrol(multinode_slurm, tmp_path):
    """A block that ended is read from ``scontrol`` when ``squeue`` no longer
    lists it (no accounting on the rig); one Slurm never knew is COMPLETED."""
    from lsst.ctrl.bps.parsl.sites.slurm import SlurmProvider
    from parsl.jobs.states import JobState, JobStatus

    rig = multinode_slurm
    provider = SlurmProvider(partition=rig.partition, exclusive=False, walltime="00:01:00")
    provider.script_dir = str(tmp_path)
    assert not provider.accounting
    failing = provider.submit("exit 3", 1, "fails")
    cancelled = provider.submit("sleep 300", 1, "cancelled")
    wait_for(lambda: provider.status([cancelled])[0].state == JobState.RUNNING, 30, "block running")
    rig.slurm(["scancel", cancelled])

    def both_ended():
        found = provider.status([failing, cancelled])
        return found if all(s.terminal for s in found) else None

    states = wait_for(both_ended, 30, "both terminal")
    assert [s.state for s in states] == [JobState.FAILED, JobState.CANCELLED], states
    # The same states as scontrol gives them once squeue has forgotten the jobs.
    assert [provider._forgotten(job)[0] for job in (failing, cancelled)] == ["FAILED", "CANCELLED"]
    provider.resources["999999"] = {
        "job_id": "999999",
        "status": JobStatus(JobState.RUNNING),
        "job_stdout_path": str(Path(tmp_path) / "x.out"),
        "job_stderr_path": str(Path(tmp_path) / "x.err"),
    }
    (unknown,) = provider.status(["999999"])
    assert unknown.state == JobState.COMPLETED and "no longer known" in unknown.message
