"""sites.Slurm against a real one-node Slurm on localhost: a workflow end to
end, and a cancel (SIGTERM to the driver) that leaves no Slurm job and no
job process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from synthetic import job, make_config, workflow

try:
    from .slurm_fixture import local_slurm  # noqa: F401
except ImportError:  # tests/ is not a package: imported via sys.path
    from slurm_fixture import local_slurm  # noqa: F401

from lsst.ctrl.bps.parsl.store.runstore import DELETED, SUCCEEDED, RunStore

pytestmark = pytest.mark.slurm

VENV_BIN = os.path.dirname(sys.executable)
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def squeue_ids() -> list[str]:
    res = subprocess.run(["squeue", "-h", "-o", "%i"], check=True, text=True, stdout=subprocess.PIPE)
    return res.stdout.split()


def squeue_running() -> list[str]:
    res = subprocess.run(
        ["squeue", "-h", "-t", "R", "-o", "%i"], check=True, text=True, stdout=subprocess.PIPE
    )
    return res.stdout.split()


def wait_squeue_empty(timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (ids := squeue_ids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return ids


def pgrep(pattern: str) -> set[int]:
    res = subprocess.run(["pgrep", "-f", pattern], text=True, stdout=subprocess.PIPE)
    return {int(p) for p in res.stdout.split()}


def slurm_site(local_slurm) -> dict:
    """The site section: sites.Slurm on the fixture's partition."""
    return {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": 1,
        "cores_per_node": local_slurm.cores,
        "walltime": "00:10:00",
        "partition": local_slurm.partition,
        "exclusive": False,
        # The Slurm node is this host; its name may not resolve to an
        # address the worker can use.
        "address": "127.0.0.1",
        # process_worker_pool.py is started from PATH inside the Slurm job.
        "worker_init": f"export PATH={VENV_BIN}:$PATH",
    }


@pytest.fixture
def venv_path(monkeypatch):
    # interchange.py (started by the driver) and the workers (in the Slurm
    # job, which inherits this environment) come from the venv's bin/.
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))


def test_workflow_end_to_end(local_slurm, tmp_path, venv_path):
    from lsst.ctrl.bps.parsl import ParslService

    assert wait_squeue_empty() == [], "Slurm jobs left from elsewhere"
    out = tmp_path / "out"
    out.mkdir()
    jobs = [job(n, f'echo "$SLURM_JOB_ID" > {out}/{n}') for n in ("a", "b", "c", "d", "e", "f")]
    gw = workflow(jobs, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e"), ("d", "f")])
    config = make_config(computeSite="slurm", site={"slurm": slurm_site(local_slurm)})
    submit = tmp_path / "submit"
    service = ParslService(config)
    wf = service.prepare(config, gw, str(submit))
    service.submit(wf)

    store = RunStore(str(submit / "bps_parsl.sqlite3"), readonly=True)
    try:
        states = [row[1] for row in store.statuses()]
    finally:
        store.close()
    assert len(states) == 6 and set(states) == {SUCCEEDED}, states
    # Every job ran inside a Slurm job (a Parsl block), not on the driver.
    ids = {(out / n).read_text().strip() for n in "abcdef"}
    assert all(ids) and "" not in ids, ids
    assert wait_squeue_empty() == [], "the run left Slurm jobs behind"


DRIVER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from synthetic import job, make_config, workflow
from lsst.ctrl.bps.parsl import ParslService

config = make_config(computeSite="slurm", site={{"slurm": {site!r}}})
gw = workflow([job(f"slow{{i}}", "sleep 30") for i in range({n})])
service = ParslService(config)
wf = service.prepare(config, gw, {submit!r})
service.submit(wf)
"""


def test_cancel_running_workflow(local_slurm, tmp_path, venv_path):
    assert wait_squeue_empty() == [], "Slurm jobs left from elsewhere"
    before = pgrep("sleep 30")
    submit = tmp_path / "submit"
    n_jobs = max(1, min(4, local_slurm.cores))
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            DRIVER_SCRIPT.format(tests=TESTS_DIR, site=slurm_site(local_slurm), n=n_jobs, submit=str(submit))
        )
    )
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        running_dir = submit / "parsl" / "running"
        deadline = time.monotonic() + 120
        started = False
        while time.monotonic() < deadline and proc.poll() is None:
            if squeue_running() and running_dir.is_dir() and any(running_dir.iterdir()):
                started = True
                break
            time.sleep(0.5)
        assert started, f"jobs never started in a Slurm block: {(tmp_path / 'driver.log').read_text()}"
        assert pgrep("sleep 30") - before, "no 'sleep 30' job process is running"

        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver did not exit within 90 s of SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    assert wait_squeue_empty(30) == [], "cancel left Slurm jobs behind"
    deadline = time.monotonic() + 10
    while (left := pgrep("sleep 30") - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"cancel left job processes behind: {sorted(left)}"

    store = RunStore(str(Path(submit) / "bps_parsl.sqlite3"), readonly=True)
    try:
        states = [row[1] for row in store.statuses()]
    finally:
        store.close()
    assert SUCCEEDED not in states and DELETED in states, states


@pytest.mark.parametrize("site_class", ["Slurm", "Ccin2p3"])
def test_blocks_the_scheduler_refuses_end_the_run_in_a_bound(local_slurm, tmp_path, venv_path, site_class):
    """Issue 20, item 12: a site whose every block ``sbatch`` refuses (an
    invalid partition) gives up after 3 refusals in a row (Parsl would try
    again at every scaling tick, for ever): the run ends within a bound with
    one line naming the site, the provider and Slurm's own error; every job
    is recorded DELETED and no Slurm job is left. Ccin2p3 (whose partitions
    ``lsst,htc`` this Slurm does not have) never gives up on blocks that
    failed, but does on blocks the scheduler refuses."""
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.service import RunFailedError

    site = dict(slurm_site(local_slurm), partition="nosuchpartition")
    if site_class == "Ccin2p3":
        site = {"class": "lsst.ctrl.bps.parsl.sites.ccin2p3.Ccin2p3", "address": "127.0.0.1"}
    config = make_config(computeSite="slurm", site={"slurm": site})
    submit = tmp_path / "submit"
    service = ParslService(config)
    wf = service.prepare(config, workflow([job("a", "true"), job("b", "true")]), str(submit))
    started = time.monotonic()
    with pytest.raises(RunFailedError) as info:
        service.submit(wf)
    took = time.monotonic() - started
    message = str(info.value)
    assert "\n" not in message, message
    assert "site.slurm" in message and "could not submit a block 3 times in a row" in message, message
    assert "invalid partition" in message.lower(), message
    assert took < 120, took
    store = RunStore(str(submit / "bps_parsl.sqlite3"), readonly=True)
    try:
        states = {row[1] for row in store.statuses()}
    finally:
        store.close()
    assert states == {DELETED}, states
    assert wait_squeue_empty() == []
    print(f"\nrefused blocks ended the run in {took:.1f} s: {message}")


def test_ping_of_a_slurm_site_checks_its_commands_and_controller(
    local_slurm, tmp_path, venv_path, monkeypatch
):
    """Issue 20, item 14: ``bps ping`` of sites.Slurm on the real Slurm is 0;
    with ``SLURM_CONF`` naming a controller that does not answer, it is 1
    with one line naming ``squeue`` and Slurm's error."""
    from lsst.ctrl.bps.parsl.control.checks import ping_site

    config = make_config(computeSite="slurm", site={"slurm": slurm_site(local_slurm)})
    assert ping_site(None, config) == (0, "")
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    dead = tmp_path / "slurm.conf"
    dead.write_text(
        "\n".join(
            "SlurmctldPort=6" if line.startswith("SlurmctldPort") else line for line in conf.splitlines()
        )
        + ("\nSlurmctldPort=6\n" if "SlurmctldPort" not in conf else "\n")
    )
    monkeypatch.setenv("SLURM_CONF", str(dead))
    status, message = ping_site(None, config)
    assert status == 1 and "'squeue --noheader --user" in message and "\n" not in message, message
    print(f"\nping with no controller: {message}")
