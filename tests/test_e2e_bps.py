"""End to end: the real ``bps submit`` command line, through this plugin, on a
real butler repo (tests/e2e_pipeline: 3 labels, 11 quanta on 5 detectors).

All tests share one repo (session fixture ``e2e_repo``) and write to their
own output collections and work directories. Each quantum costs ~2 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_pipeline import repo as e2e
from lsst.ctrl.bps import WmsStates
from lsst.ctrl.bps.parsl.store.runstore import DB_NAME, JobKind, RunStore

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (e2e.VENV_PREFIX / "bin" / "bps").exists() or not (e2e.VENV_PREFIX / "bin" / "pipetask").exists(),
        reason="bps and pipetask must be installed next to this Python",
    ),
]

S = WmsStates.SUCCEEDED.value
F = WmsStates.FAILED.value
P = WmsStates.PRUNED.value
SUBMIT_TIMEOUT = 240


def bps_submit(workdir: Path, submit_yaml: Path) -> subprocess.CompletedProcess:
    """Run ``bps submit`` in ``workdir`` as a user would, output captured."""
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=workdir)
    proc = subprocess.run(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), "submit", str(submit_yaml)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT,
    )
    # Shown by pytest only when the test fails.
    sys.stdout.write(proc.stdout[-5000:])
    sys.stderr.write(proc.stderr[-5000:])
    return proc


def submit_dir(workdir: Path, suffix: str) -> Path:
    """The submit directory ``write_submit_yaml`` asks for."""
    return Path(workdir).resolve() / "submit" / e2e.output_names(suffix)[1]


def read_state(submit: Path) -> dict[str, dict]:
    """Per job name: its stored row, status and attempts."""
    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        rows = store.jobs()
        statuses = {s[0]: s for s in store.statuses()}
        result = {}
        for row in rows:
            _, state, attempt, exit_code, sig, *_ = statuses[row.id]
            result[row.name] = {
                "row": row,
                "state": state,
                "attempt": attempt,
                "exit_code": exit_code,
                "signal": sig,
                "attempts": store.attempts(row.id),
                "tags": json.loads(row.tags) if row.tags else {},
            }
        return result
    finally:
        store.close()


def find(jobs: dict[str, dict], label: str, detector: int | None = None) -> list[dict]:
    return [
        j
        for j in jobs.values()
        if j["row"].label == label and (detector is None or j["tags"].get("detector") == detector)
    ]


def log_files(submit: Path, job: dict, attempt: int) -> tuple[Path, Path]:
    base = submit / "logs" / (job["row"].log_dir or "") / job["row"].name
    suffix = "" if attempt == 1 else f".{attempt}"
    return base.with_name(f"{base.name}.stdout{suffix}"), base.with_name(f"{base.name}.stderr{suffix}")


def detector_query(*detectors: int) -> dict:
    ids = ", ".join(str(d) for d in detectors)
    return {"payload": {"dataQuery": f"instrument = '{e2e.INSTRUMENT}' AND detector IN ({ids})"}}


def test_success_run(e2e_repo, tmp_path):
    suffix = "ok"
    submit_yaml = e2e.write_submit_yaml(tmp_path, e2e_repo, e2e.PIPELINE, output_run_suffix=suffix)
    proc = bps_submit(tmp_path, submit_yaml)
    assert proc.returncode == 0, proc.stderr[-3000:]

    output, _ = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == e2e.expected_outputs()
    assert e2e.read_sum(e2e_repo, output)["detectors"] == list(range(e2e.N_DETECTORS))
    runs = e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)
    assert dict(runs) == dict.fromkeys(e2e.all_quanta_keys(), 1)

    submit = submit_dir(tmp_path, suffix)
    jobs = read_state(submit)
    # pipetaskInit + 11 quanta + finalJob
    assert len(jobs) == sum(e2e.expected_quanta().values()) + 2
    assert {name: j["state"] for name, j in jobs.items()} == dict.fromkeys(jobs, S)
    assert {j["attempt"] for j in jobs.values()} == {1}
    assert {j["exit_code"] for j in jobs.values()} == {0}
    assert len(find(jobs, "finalJob")) == 1 and find(jobs, "finalJob")[0]["row"].final
    for job in jobs.values():
        if job["row"].kind == JobKind.PAYLOAD:
            out, err = log_files(submit, job, 1)
            assert out.is_file() and err.is_file(), job["row"].name
    # Parsl's run directory goes into the submit directory, not the cwd.
    assert not (tmp_path / "runinfo").exists()
    assert not Path("runinfo").exists()
    assert (submit / "parsl" / "runinfo").is_dir()


def test_failed_quantum_prunes_descendants_and_final_job_runs(e2e_repo, tmp_path):
    suffix = "fail"
    submit_yaml = e2e.write_submit_yaml(tmp_path, e2e_repo, e2e.PIPELINE_FAIL, output_run_suffix=suffix)
    proc = bps_submit(tmp_path, submit_yaml)
    assert proc.returncode == 1
    # A failed run is no SystemExit: ctrl_bps still prints its Run Id lines, then the reason.
    assert "Run Id:" in proc.stdout and "did not succeed" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    submit = submit_dir(tmp_path, suffix)
    jobs = read_state(submit)
    (failed,) = find(jobs, "middle", e2e.FAIL_DETECTOR)
    # Exit 1 is in retryUnlessExit [1, 2]: no retry.
    assert (failed["state"], failed["exit_code"], failed["attempt"]) == (F, 1, 1)
    assert len(failed["attempts"]) == 1
    (gather,) = find(jobs, "gather")
    assert gather["state"] == P
    others = [j for name, j in jobs.items() if j is not failed and j is not gather]
    assert {j["state"] for j in others} == {S}
    (final,) = find(jobs, "finalJob")
    assert final["state"] == S

    runs = e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)
    assert runs[("middle", f"{e2e.INSTRUMENT}.{e2e.FAIL_DETECTOR}")] == 1
    assert ("gather", e2e.INSTRUMENT) not in runs
    # The final job registered the partial outputs.
    output, _ = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == e2e.expected_outputs(failed=(e2e.FAIL_DETECTOR,))
    assert e2e.check_outputs(e2e_repo, output) == {"e2e_a": 5, "e2e_b": 4, "e2e_sum": 0}


@pytest.mark.parametrize("keep_compute_site", [True, False], ids=["computeSite-only", "no-site-keys"])
def test_plugin_default_site(e2e_repo, tmp_path, keep_compute_site):
    suffix = "defaults_cs" if keep_compute_site else "defaults_none"
    submit_yaml = e2e.write_submit_yaml(
        tmp_path, e2e_repo, e2e.PIPELINE, output_run_suffix=suffix, extra=detector_query(0)
    )
    config = yaml.safe_load(submit_yaml.read_text())
    del config["site"]
    if not keep_compute_site:
        del config["computeSite"]
    submit_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    assert "site:" not in submit_yaml.read_text()

    proc = bps_submit(tmp_path, submit_yaml)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output, _ = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == {"e2e_a": 1, "e2e_b": 1, "e2e_sum": 1}
    submit = submit_dir(tmp_path, suffix)
    jobs = read_state(submit)
    assert len(jobs) == 5 and {j["state"] for j in jobs.values()} == {S}
    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        assert store.meta()["compute_site"] == "local"
    finally:
        store.close()


def test_retried_job_succeeds_on_second_attempt(e2e_repo, tmp_path):
    suffix = "retry"
    extra = detector_query(0, 1)
    extra["extraQgraphOptions"] = (
        "-c middle:fail_ids=[1] -c middle:fail_attempts=1 -c middle:fail_exit_code=3"
    )
    submit_yaml = e2e.write_submit_yaml(
        tmp_path, e2e_repo, e2e.PIPELINE, output_run_suffix=suffix, extra=extra
    )
    proc = bps_submit(tmp_path, submit_yaml)
    assert proc.returncode == 0, proc.stderr[-3000:]

    output, _ = e2e.output_names(suffix)
    assert e2e.check_outputs(e2e_repo, output) == {"e2e_a": 2, "e2e_b": 2, "e2e_sum": 1}
    submit = submit_dir(tmp_path, suffix)
    jobs = read_state(submit)
    assert {j["state"] for j in jobs.values()} == {S}
    (retried,) = find(jobs, "middle", 1)
    assert (retried["attempt"], retried["exit_code"]) == (2, 0)
    assert [(a[1], a[3], a[4]) for a in retried["attempts"]] == [(1, F, 3), (2, S, 0)]
    for attempt in (1, 2):
        out, err = log_files(submit, retried, attempt)
        assert out.is_file() and err.is_file(), attempt
    assert "exit status 3" in log_files(submit, retried, 1)[1].read_text()
    others = [j for j in jobs.values() if j is not retried]
    assert {j["attempt"] for j in others} == {1}

    key = ("middle", f"{e2e.INSTRUMENT}.1")
    assert e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME)[key] == 2
    assert e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME, status="ok")[key] == 1
