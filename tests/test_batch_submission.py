"""Batch submission (``bpsBatchSubmission: true``, lsst-ctrl-bps 30.2026.4300+):
``bps submit`` runs a control workflow whose ``bps batch-prepare`` job adds
the payload's jobs to the running run; they run in the same run (store,
report, restart) and the final job runs after all of them.

Real processes throughout: the real ``bps`` command line on the e2e
pipeline (tests/e2e_pipeline). Skipped where lsst-ctrl-bps has no batch
submission (Python 3.11's 30.2026.300).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e_pipeline import repo as e2e
from lsst.ctrl.bps import WmsStates
from lsst.ctrl.bps.parsl.prepare.batch import JOINED, LAZY_GROUPS
from lsst.ctrl.bps.parsl.store.runstore import DB_NAME, RunStore

try:
    from lsst.ctrl.bps import GenericWorkflowLazyGroup  # noqa: F401

    HAS_BATCH = True
except ImportError:
    HAS_BATCH = False

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not HAS_BATCH, reason="this lsst-ctrl-bps has no batch submission (needs 30.2026.4300)"
    ),
    pytest.mark.skipif(
        not (e2e.VENV_PREFIX / "bin" / "bps").exists() or not (e2e.VENV_PREFIX / "bin" / "pipetask").exists(),
        reason="bps and pipetask must be installed next to this Python",
    ),
]

S = WmsStates.SUCCEEDED.value
BATCH = {
    "bpsBatchSubmission": True,
    # The bps defaults ask 32 GB for the two control jobs: more than this machine has.
    "buildQuantumGraph": {"requestMemory": 1000},
    "preparePayloadWorkflow": {"requestMemory": 1000},
}


def bps(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=workdir)
    env["BPS_WMS_SERVICE_CLASS"] = "lsst.ctrl.bps.parsl.ParslService"
    proc = subprocess.run(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"bps {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )
    return proc


def stored(submit: Path) -> tuple[dict, list, dict[int, int]]:
    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        return store.meta(), store.jobs(), {s.job: s.state for s in store.statuses()}
    finally:
        store.close()


def test_batch_submission_payload_joins_the_running_run(e2e_repo, tmp_path):
    suffix = "batch"
    submit_yaml = e2e.write_submit_yaml(
        tmp_path, e2e_repo, e2e.PIPELINE, output_run_suffix=suffix, extra=BATCH
    )
    proc = bps(tmp_path, "submit", str(submit_yaml))
    assert "Run Id:" in proc.stdout

    output, output_run = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == e2e.expected_outputs()
    runs = e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)
    assert dict(runs) == dict.fromkeys(e2e.all_quanta_keys(), 1)

    submit = Path(tmp_path).resolve() / "submit" / output_run
    meta, rows, states = stored(submit)
    names = [row.name for row in rows]
    # One run: the control jobs first, then the payload (pipetaskInit, 11 quanta, finalJob).
    assert names[:2] == ["buildQuantumGraph", "preparePayloadWorkflow"]
    assert len(rows) == 2 + sum(e2e.expected_quanta().values()) + 2
    assert set(states.values()) == {S}
    assert meta[JOINED] == [meta[LAZY_GROUPS]["preparePayloadWorkflow"]]
    final = [row for row in rows if row.final]
    assert [row.label for row in final] == ["finalJob"]

    # Same store, one driver session; the final job ended after every other job.
    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        assert len(store.sessions()) == 1
        attempts = store.attempts()
    finally:
        store.close()
    ends = {a.job: a.end for a in attempts}
    starts = {a.job: a.start for a in attempts}
    final_id = final[0].id
    assert all(starts[final_id] >= end for job, end in ends.items() if job != final_id)
    # The payload starts only after the control job that added it.
    lazy = meta[LAZY_GROUPS]["preparePayloadWorkflow"]
    assert all(starts[job] >= ends[lazy] for job in starts if job > lazy)

    # Report shows the whole run; restart re-runs nothing.
    report = bps(tmp_path, "report", "--id", str(submit))
    assert "SUCCEEDED" in report.stdout
    assert "preparePayloadWorkflow" in report.stdout and "finalJob" in report.stdout
    bps(tmp_path, "restart", "--id", str(submit))
    assert dict(e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)) == dict.fromkeys(e2e.all_quanta_keys(), 1)
    assert len(stored(submit)[1]) == len(rows)
