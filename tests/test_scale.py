"""Scale: a chain of depth 100,000, prepared and walked without recursion.

A chain this deep ends the old plugin with RecursionError near depth 490; here
the DAG is flattened, ordered and walked without recursion. The default tier
proves it with an executor that starts no process (the walk is what is
tested, and a process per link would cost minutes) and runs a chain twice as
deep as the old plugin's limit on real processes; the ``long`` tier runs the
100,000 links on real processes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from concurrent.futures import Future
from typing import Any

import pytest
from lsst.ctrl.bps import GenericWorkflow, GenericWorkflowExec, GenericWorkflowJob, WmsStates
from lsst.ctrl.bps.parsl.site import ExecutorCapacity, SiteConfig
from parsl.executors.base import ParslExecutor
from synthetic import make_config, run

TRUE = GenericWorkflowExec("true", "/bin/true", False)
DEPTH = int(os.environ.get("BPS_PARSL_TEST_CHAIN_DEPTH", "100000"))
LOCAL2 = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}}


class InstantExecutor(ParslExecutor):
    """An executor that reports every job attempt succeeded at once (a done
    future of `run_job`'s result), without starting a process."""

    def __init__(self, label: str = "instant"):
        super().__init__()
        self.label = label
        self._host = socket.gethostname()

    def start(self) -> None:
        pass

    def submit(self, func: Any, resource_specification: dict, *args: Any, **kwargs: Any) -> Any:
        now = time.time()
        future: Future = Future()
        future.set_result((0, None, now, now, self._host, False))
        return future

    def shutdown(self) -> None:
        pass

    def monitor_resources(self) -> bool:
        return False


class InstantSite(SiteConfig):
    """A site with one `InstantExecutor`."""

    def get_executors(self) -> list[ParslExecutor]:
        return [InstantExecutor()]

    def select_executor(self, job: Any) -> str:
        return "instant"

    def capacity(self, label: str) -> ExecutorCapacity:
        return ExecutorCapacity(cores=2)


def _chain(depth: int) -> GenericWorkflow:
    gw = GenericWorkflow("chain")
    previous = None
    for i in range(depth):
        job = GenericWorkflowJob(
            f"link{i}", "link", executable=TRUE, arguments="{n}", cmdvals={"n": i}, number_of_retries=0
        )
        gw.add_job(job)
        if previous is not None:
            gw.add_job_relationships(previous, job.name)
        previous = job.name
    return gw


def _check_in_order(result: dict[str, tuple], depth: int) -> None:
    assert len(result) == depth
    assert all(row[0] == WmsStates.SUCCEEDED.value for row in result.values())
    starts = [result[f"link{i}"][4] for i in range(0, depth, max(1, depth // 1000))]
    assert starts == sorted(starts)


@pytest.mark.parametrize("depth", [20_000, pytest.param(100_000, marks=pytest.mark.long)])
def test_chain_is_walked_without_recursion(tmp_path, depth):
    """Prepare, order and walk a chain 20 (``long`` tier: 100) times deeper
    than Python's default recursion limit, through the driver's real loop and
    store, on an executor that starts no process (mocked: a process per link
    is what the ``long`` tier's 100,000-deep chain on the local pool adds)."""
    assert sys.getrecursionlimit() * 10 < depth
    config = make_config(site={"local": {"class": "test_scale.InstantSite"}})
    result = run(_chain(depth), tmp_path / "submit", config=config)
    _check_in_order(result, depth)


def test_chain_deeper_than_the_old_limit_runs_in_order_on_real_processes(tmp_path):
    """1,000 links (the old plugin died near 490) on the real local pool."""
    result = run(_chain(1000), tmp_path / "submit", config=make_config(site=LOCAL2))
    _check_in_order(result, 1000)


@pytest.mark.long
def test_chain_of_depth_100000_runs_in_order(tmp_path):
    """The 100,000-deep chain on the real local pool: one process per link."""
    result = run(_chain(DEPTH), tmp_path / "submit", config=make_config(site=LOCAL2))
    _check_in_order(result, DEPTH)


def test_report_reads_the_store_summary_and_lists_jobs_only_when_asked(tmp_path):
    """The per-label, per-state counts a report shows come from the summary
    the store keeps (triggers on every state change, including a run with a
    failure, its pruned job and a restart), equal to counting the jobs, and
    the jobs themselves are read only when the report's job list is looked at."""
    import sqlite3

    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.records import JobKind, JobState
    from synthetic import job

    gw = GenericWorkflow("summary")
    for i in range(30):
        gw.add_job(job(f"a{i}", "true", label="a"))
    gw.add_job(job("bad1", "exit 3", label="bad"))
    gw.add_job(job("below1", "true", label="below"), parent_names=["bad1"])
    submit = tmp_path / "submit"
    run(gw, submit, config=make_config(site=LOCAL2), expect_fail=True)
    ParslService({}).restart(str(submit))

    conn = sqlite3.connect(str(submit / "bps_parsl.sqlite3"))
    counted = conn.execute(
        "SELECT j.label, s.state, count(*) FROM jobs j JOIN status s ON s.job = j.id WHERE j.kind = ? "
        "GROUP BY j.label, s.state",
        (int(JobKind.PAYLOAD),),
    ).fetchall()
    kept = conn.execute("SELECT label, state, count FROM summary WHERE count > 0").fetchall()
    conn.close()
    assert sorted(kept) == sorted(counted)
    assert (("bad", JobState.FAILED, 1) in kept) and ("below", JobState.PRUNED, 1) in kept

    (report,), message = ParslService({}).report(str(submit), return_exit_codes=True)
    assert not message
    assert report.total_number_jobs == 32 and report.run_summary == "a:30;bad:1;below:1"
    assert report.job_summary["a"][WmsStates.SUCCEEDED] == 30
    assert report.job_summary["below"][WmsStates.PRUNED] == 1
    assert report.exit_code_summary == {"a": [], "bad": [3], "below": []}
    assert repr(report.jobs) == "JobReports(<not read yet>)"
    assert len(report.jobs) == 32 and {j.name for j in report.jobs if j.state == WmsStates.FAILED} == {"bad1"}
