"""Check that the local Slurm of `slurm_localhost` works, alone and with Parsl."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

try:
    from .slurm_fixture import local_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from slurm_fixture import local_slurm  # noqa: F401

pytestmark = pytest.mark.slurm

VENV_BIN = os.path.dirname(sys.executable)


def _squeue_ids() -> list[str]:
    res = subprocess.run(["squeue", "-h", "-o", "%i"], check=True, text=True, stdout=subprocess.PIPE)
    return res.stdout.split()


def _wait_squeue_empty(timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (ids := _squeue_ids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return ids


def test_fixture_properties(local_slurm):
    print(
        f"\nlocal Slurm: partition={local_slurm.partition} node={local_slurm.node} "
        f"cores={local_slurm.cores} started={local_slurm.started} timings={local_slurm.timings}"
    )
    assert local_slurm.partition
    assert local_slurm.node
    assert local_slurm.cores >= 1
    assert os.environ.get("SLURM_CONF") == local_slurm.env.get("SLURM_CONF")


def test_sbatch_hostname(local_slurm, tmp_path):
    out = tmp_path / "hostname.out"
    # Not "sbatch --wait": it polls slowly (~10 s for a 1-s job).
    res = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            local_slurm.partition,
            "-t",
            "00:01:00",
            "-o",
            str(out),
            "--wrap",
            "hostname",
        ],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout
    job_id = res.stdout.strip().split(";")[0]
    assert _wait_squeue_empty(60) == []
    # No accounting (sacct fails): the controller remembers the job for MinJobAge.
    info = subprocess.run(["scontrol", "show", "job", job_id], text=True, stdout=subprocess.PIPE).stdout
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info
    assert out.read_text().strip(), "hostname printed nothing"


@pytest.mark.parametrize("launcher_name", ["SingleNodeLauncher", "SrunLauncher"])
def test_parsl_htex_slurm_provider(local_slurm, tmp_path, monkeypatch, launcher_name):
    parsl = pytest.importorskip("parsl")
    from parsl import bash_app, launchers, python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import SlurmProvider

    # interchange.py (started here) and process_worker_pool.py (started in
    # the Slurm job, which inherits this environment) are found on PATH.
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    # dill pickles the apps below by reference to this module: workers must
    # be able to import it.
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p),
    )
    monkeypatch.chdir(tmp_path)

    config = Config(
        executors=[
            HighThroughputExecutor(
                label="slurm",
                address="127.0.0.1",
                max_workers_per_node=local_slurm.cores,
                provider=SlurmProvider(
                    partition=local_slurm.partition,
                    nodes_per_block=1,
                    init_blocks=1,
                    min_blocks=0,
                    max_blocks=1,
                    walltime="00:05:00",
                    worker_init=f"export PATH={VENV_BIN}:$PATH",
                    launcher=getattr(launchers, launcher_name)(),
                ),
            )
        ],
        run_dir=str(tmp_path / "runinfo"),
    )

    @python_app
    def where():
        import os
        import socket

        return socket.gethostname(), os.environ.get("SLURM_JOB_ID")

    @bash_app
    def touch(path):
        return f"echo ran-in-slurm-job-$SLURM_JOB_ID > {path}"

    marker = tmp_path / "bash_app.out"
    parsl.load(config)
    try:
        host, job_id = where().result(timeout=120)
        assert touch(str(marker)).result(timeout=60) == 0
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    assert job_id, "python_app did not run inside a Slurm job"
    assert marker.read_text().startswith("ran-in-slurm-job-")
    assert _wait_squeue_empty() == [], "Parsl left Slurm blocks behind"
