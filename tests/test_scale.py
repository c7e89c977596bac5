"""Scale: a chain of depth 100,000 and a wide workflow, prepared and run for real.

A chain this deep ends the old plugin with RecursionError near depth 490; here
the DAG is flattened, ordered and walked without recursion.
"""

from __future__ import annotations

import os

from lsst.ctrl.bps import GenericWorkflow, GenericWorkflowExec, GenericWorkflowJob, WmsStates
from synthetic import make_config, run

TRUE = GenericWorkflowExec("true", "/bin/true", False)
DEPTH = int(os.environ.get("BPS_PARSL_TEST_CHAIN_DEPTH", "100000"))


def test_chain_of_depth_100000_runs_in_order(tmp_path):
    gw = GenericWorkflow("chain")
    previous = None
    for i in range(DEPTH):
        job = GenericWorkflowJob(
            f"link{i}", "link", executable=TRUE, arguments="{n}", cmdvals={"n": i}, number_of_retries=0
        )
        gw.add_job(job)
        if previous is not None:
            gw.add_job_relationships(previous, job.name)
        previous = job.name
    config = make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}})
    submit = tmp_path / "submit"
    result = run(gw, submit, config=config)
    assert len(result) == DEPTH
    assert all(row[0] == WmsStates.SUCCEEDED.value for row in result.values())
    starts = [result[f"link{i}"][4] for i in range(0, DEPTH, max(1, DEPTH // 1000))]
    assert starts == sorted(starts)
