"""Every node of a multi-node Slurm block works: the rig of
``multinode_slurm.py`` (compute nodes in network + UTS namespaces on this
machine), Parsl's HTEX with one worker pool per node, and a real
``bps submit`` of the e2e pipeline through ``sites.Slurm`` with ``nodes: 2``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from .multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401

pytestmark = pytest.mark.slurm

VENV_BIN = os.path.dirname(sys.executable)


def block_nodes(rig, job_id: str) -> list[str]:
    """Hostnames of the nodes Slurm gave job ``job_id``."""
    nodelist = next(fields[2] for fields in rig.squeue("-j", job_id))
    return rig.slurm(["scontrol", "show", "hostnames", nodelist]).split()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.2)
    return value


def test_rig_nodes_are_separate_hosts(multinode_slurm):
    rig = multinode_slurm
    print(f"\nmulti-node rig: {rig.hosts}, timings {rig.timings}")
    assert len(rig.hosts) >= 2 and set(rig.sinfo().values()) == {"idle"}
    for k, node in enumerate(rig.nodes, start=1):
        res = rig.run_in(k, ["sh", "-c", "hostname; cat /proc/net/route | wc -l"])
        host, routes = res.stdout.split()
        assert host == node.host
        assert int(routes) == 2, "a node must have only its bridge route (header + 1 line)"
        assert any("slurmd" in cmd for cmd in rig.processes_in(k).values())
        assert rig.job_processes_in(k) == {}
    assert rig.run_on_login(["hostname"]).stdout.strip() == "login2"
    # The login node is another host on the same filesystem and reaches the controller.
    queue = rig.run_on_login(["squeue", "-h"])
    assert queue.returncode == 0, queue.stderr


def test_rig_kills_a_node_hard_and_revives_it(multinode_slurm, tmp_path):
    rig = multinode_slurm
    job_id = rig.slurm(
        ["sbatch", "--parsable", "-N", "1", "-w", "node2", "-o", "/dev/null", "--wrap", "sleep 300"]
    )
    job_id = job_id.strip()
    wait_for(
        lambda: any("sleep 300" in c for c in rig.job_processes_in(2).values()), 20, "sleep 300 on node2"
    )
    killed = rig.kill_node(2)
    assert killed and rig.processes_in(2) == {}
    probe = f"exec 3<>/dev/tcp/{rig.node(2).address}/16818"
    assert rig.run_in(1, ["timeout", "3", "bash", "-c", probe]).returncode != 0, "node2 still answers"
    rig.cancel_all()
    rig.revive_node(2)
    assert rig.sinfo()["node2"] == "idle"
    assert rig.wait_idle(30), rig.squeue()


def test_default_address_reaches_the_nodes(multinode_slurm):
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from synthetic import make_config

    site = {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:05:00",
        "partition": "nodes",
    }
    config = make_config(computeSite="mn", site={"mn": site})
    assert SiteConfig.from_config(config).get_address() == multinode_slurm.head_address


def test_htex_srun_starts_a_worker_pool_on_every_node(multinode_slurm, tmp_path, monkeypatch):
    import parsl
    from lsst.ctrl.bps.parsl.sites.slurm import default_launcher
    from parsl import python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import SlurmProvider

    rig = multinode_slurm
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p),
    )
    monkeypatch.chdir(tmp_path)
    config = Config(
        executors=[
            HighThroughputExecutor(
                label="mn",
                address=rig.head_address,
                max_workers_per_node=1,
                provider=SlurmProvider(
                    partition=rig.partition,
                    nodes_per_block=2,
                    init_blocks=1,
                    min_blocks=0,
                    max_blocks=1,
                    exclusive=False,
                    walltime="00:05:00",
                    worker_init=f"export PATH={VENV_BIN}:$PATH",
                    launcher=default_launcher(),
                ),
            )
        ],
        run_dir=str(tmp_path / "runinfo"),
        strategy_period=0.5,
    )

    @python_app
    def where(seconds):
        import socket
        import time

        time.sleep(seconds)
        return socket.gethostname()

    parsl.load(config)
    try:
        hosts = {f.result(timeout=90) for f in [where(1.0) for _ in range(8)]}
        (job_id,) = [fields[0] for fields in rig.squeue()]
        nodes = block_nodes(rig, job_id)
        pools = {
            node: [cmd for cmd in rig.processes_in(node).values() if "process_worker_pool" in cmd]
            for node in rig.hosts
        }
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    assert len(nodes) == 2
    assert hosts == set(nodes), f"tasks ran on {hosts}, block has {nodes}"
    assert {node for node, found in pools.items() if found} == set(nodes), pools
    assert rig.wait_idle(30), f"Parsl left {rig.squeue()}"


def test_bps_submit_on_two_nodes(multinode_slurm, e2e_repo, tmp_path):
    from e2e_pipeline import repo as e2e
    from lsst.ctrl.bps.parsl.store.runstore import DB_NAME, SUCCEEDED, RunStore

    rig = multinode_slurm
    suffix = "two_nodes"
    site = {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 2,
        "walltime": "00:10:00",
        "partition": rig.partition,
        "exclusive": False,
        "max_blocks": 1,
        "worker_init": f"export PATH={VENV_BIN}:$PATH",
        # One job per node at a time: both nodes are needed for two at once.
        "executor_options": {"max_workers_per_node": 1},
    }
    extra = {"computeSite": "mn", "site": {"mn": site}}
    submit_yaml = e2e.write_submit_yaml(
        tmp_path, e2e_repo, e2e.PIPELINE, output_run_suffix=suffix, extra=extra
    )
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), "submit", str(submit_yaml)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(f"\nbps submit on 2 nodes: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]

    output, output_run = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == e2e.expected_outputs()
    assert dict(e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)) == dict.fromkeys(e2e.all_quanta_keys(), 1)
    store = RunStore(str(Path(tmp_path).resolve() / "submit" / output_run / DB_NAME), readonly=True)
    try:
        statuses = store.statuses()
    finally:
        store.close()
    assert {row[1] for row in statuses} == {SUCCEEDED}
    hosts = {row[7] for row in statuses}
    print(f"jobs per host: { {h: sum(row[7] == h for row in statuses) for h in hosts} }")
    assert len(hosts) == 2 and hosts <= set(rig.hosts), hosts
    assert rig.wait_idle(30), f"the run left {rig.squeue()}"
