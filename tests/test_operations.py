"""Operating runs from another shell through the real ``bps`` command line:
report, status, cancel, restart, ping, Ctrl-C and detached submit.

Runs are synthetic workflows started by ``synthetic_driver.py`` in a separate
process (as ``bps submit`` would run them); every operation goes through the
``bps`` CLI in yet another process.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import HERE, bps, cli_environment, wait_for
from lsst.ctrl.bps import WmsStates
from synthetic import statuses

S, F, P, D = (WmsStates[n].value for n in ("SUCCEEDED", "FAILED", "PRUNED", "DELETED"))


@pytest.fixture
def env(tmp_path, monkeypatch):
    return cli_environment(tmp_path, monkeypatch)


def start(tmp_path, env, spec, name="submit", cwd=None):
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    submit = tmp_path / name
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "synthetic_driver.py"), str(submit), str(spec_path)],
        env=env,
        cwd=cwd or tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, submit


def started_jobs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def processes_with(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"{marker}{os.getpid()}x"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def slow_spec(tmp_path, n=6, seconds=30, marker="bpsslowjob"):
    log = tmp_path / "started"
    return {
        "jobs": [
            {
                "name": f"slow{i}",
                "label": "slow",
                "script": f"echo slow{i} >> {log}; exec -a {marker}{os.getpid()}x sleep {seconds}",
            }
            for i in range(n)
        ],
        "site": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2},
    }, log


def test_report_during_and_after_run_with_exit_codes(tmp_path, env):
    gate = tmp_path / "gate"
    spec = {
        "jobs": [
            {"name": "a1", "label": "a", "script": "true"},
            {"name": "a2", "label": "a", "script": "exit 3"},
            {
                "name": "b1",
                "label": "b",
                "script": f"for i in $(seq 1200); do [ -e {gate} ] && break; sleep 0.1; done",
            },
            {"name": "c1", "label": "c", "script": "true"},
        ],
        "edges": [["a2", "c1"]],
        "final": "true",
    }
    proc, submit = start(tmp_path, env, spec)
    try:
        wait_for(
            lambda: (submit / "bps_parsl.sqlite3").exists() and statuses(submit)["a2"][0] == F,
            what="a2 failed",
        )
        during = bps(env, "report", "--id", str(submit)).stdout
        assert "RUNNING" in during
        from lsst.ctrl.bps.parsl import ParslService

        # b1's process is in the local spawner's journal: the job, not just the run, runs.
        (live,) = ParslService({}).report(str(submit))[0]
        assert {j.name: j.state for j in live.jobs}["b1"] == WmsStates.RUNNING
    finally:
        gate.touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    after = bps(env, "report", "--id", str(submit), "--return-exit-codes").stdout
    assert "FAILED" in after and "3" in after
    from lsst.ctrl.bps.parsl import ParslService

    reports, message = ParslService({}).report(str(submit), return_exit_codes=True)
    (report,) = reports
    assert report.state == WmsStates.FAILED and report.total_number_jobs == 5
    assert report.job_summary["a"][WmsStates.FAILED] == 1 and report.job_summary["c"][WmsStates.PRUNED] == 1
    assert report.exit_code_summary["a"] == [3]
    assert report.path == str(submit) and report.operator == "tester"
    assert {j.name for j in report.jobs} == {"a1", "a2", "b1", "c1", "finalJob"}
    assert "logs" in str(report.specific_info)
    # The printed run id works as well as the directory.
    run_id = report.wms_id
    assert ParslService({}).report(run_id)[0][0].path == str(submit)


def test_report_list_and_hist_and_status(tmp_path, env):
    proc, submit = start(tmp_path, env, {"jobs": [{"name": "x", "script": "true"}]})
    assert proc.wait(timeout=120) == 0
    listed = bps(env, "report", "--hist", "1").stdout
    assert "SUCCEEDED" in listed
    assert "SUCCEEDED" not in bps(env, "report").stdout  # finished, and no history asked
    assert "SUCCEEDED" not in bps(env, "report", "--hist", "1", "--user", "somebody-else").stdout
    status = bps(env, "status", "--id", str(submit), check=False)
    assert status.returncode == WmsStates.SUCCEEDED.value, status.stdout + status.stderr
    # A deleted submit directory is skipped, not an error.
    import shutil

    shutil.rmtree(submit)
    assert bps(env, "report", "--hist", "1").returncode == 0


def test_cancel_from_another_shell_stops_everything(tmp_path, env):
    spec, log = slow_spec(tmp_path, marker="bpscancelme")
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(started_jobs(log)) >= 2, what="two slow jobs started")
    assert processes_with("bpscancelme")
    result = bps(env, "cancel", "--id", str(submit))
    assert "Successfully canceled" in result.stdout, result.stdout + result.stderr
    proc.wait(timeout=60)
    assert proc.returncode != 0
    n_started = len(started_jobs(log))
    time.sleep(1.5)
    assert len(started_jobs(log)) == n_started, "a job started after the cancel"
    assert not processes_with("bpscancelme")
    final = statuses(submit)
    assert all(row[0] in (D, S) for row in final.values()) and any(row[0] == D for row in final.values())
    report = bps(env, "report", "--id", str(submit)).stdout
    assert "DELETED" in report


def test_ctrl_c_on_blocking_submit(tmp_path, env):
    spec, log = slow_spec(tmp_path, marker="bpsctrlcme")
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(started_jobs(log)) >= 2, what="two slow jobs started")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not processes_with("bpsctrlcme")
    assert all(row[0] in (D, S) for row in statuses(submit).values())


def test_restart_after_failure_from_another_directory(tmp_path, env):
    flag = tmp_path / "fixed"
    runs = tmp_path / "runs"
    spec = {
        "jobs": [
            {"name": "good", "label": "a", "script": f"echo good >> {runs}"},
            {"name": "flaky", "label": "b", "script": f"echo flaky >> {runs}; test -e {flag}"},
            {"name": "child", "label": "c", "script": f"echo child >> {runs}"},
        ],
        "edges": [["good", "flaky"], ["flaky", "child"]],
        "final": f"echo final >> {runs}",
    }
    proc, submit = start(tmp_path, env, spec)
    assert proc.wait(timeout=120) != 0
    assert statuses(submit)["child"][0] == P
    flag.touch()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env2 = dict(env, PWD=str(elsewhere))
    result = bps(env2, "restart", "--id", str(submit), cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    final = statuses(submit)
    assert all(row[0] == S for row in final.values())
    assert final["flaky"][1] == 2  # attempt numbers continue
    assert runs.read_text().split().count("good") == 1  # not launched again
    assert runs.read_text().split().count("final") == 2  # the final job runs again
    assert not (elsewhere / "runinfo").exists()


def test_restart_after_sigkill_of_the_driver(tmp_path, env):
    runs = tmp_path / "runs"
    spec = {
        "jobs": [
            {"name": f"j{i}", "label": "j", "script": f"echo j{i} >> {runs}; sleep 0.4"} for i in range(12)
        ],
        "site": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2},
    }
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 4, what="some jobs ran")
    proc.kill()
    proc.wait()
    status = bps(env, "status", "--id", str(submit), check=False)
    assert status.returncode == WmsStates.FAILED.value
    assert "died" in bps(env, "report", "--id", str(submit)).stdout
    result = bps(env, "restart", "--id", str(submit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(row[0] == S for row in statuses(submit).values())
    done = runs.read_text().split()
    assert set(done) == {f"j{i}" for i in range(12)}


def test_restart_refuses_while_driver_alive(tmp_path, env):
    spec, log = slow_spec(tmp_path, n=2, seconds=20, marker="bpsbusyjob")
    proc, submit = start(tmp_path, env, spec)
    wait_for(lambda: len(started_jobs(log)) >= 1, what="a job started")
    result = bps(env, "restart", "--id", str(submit), check=False)
    assert "still running" in result.stdout + result.stderr
    bps(env, "cancel", "--id", str(submit))
    proc.wait(timeout=60)


def test_ping_good_and_broken_site(tmp_path, env):
    assert bps(env, "ping").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "computeSite: nowhere\nsite:\n  nowhere:\n    class: lsst.ctrl.bps.parsl.sites.NoSuchSite\n"
    )
    result = bps(env, "ping", "--pass-thru", str(bad), check=False)
    assert result.returncode != 0
    assert "site.nowhere.class" in result.stdout + result.stderr


def test_detached_submit_then_report_then_cancel(tmp_path, env):
    spec, log = slow_spec(tmp_path, marker="bpsdetachedjob")
    spec["detach"] = True
    proc, submit = start(tmp_path, env, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    wait_for(lambda: len(started_jobs(log)) >= 1, what="a detached job started")
    assert "RUNNING" in bps(env, "report", "--id", str(submit)).stdout
    status = bps(env, "status", "--id", str(submit), check=False)
    assert status.returncode == WmsStates.RUNNING.value
    assert "Successfully canceled" in bps(env, "cancel", "--id", str(submit)).stdout
    assert not processes_with("bpsdetachedjob")
    assert (submit / "parsl" / "driver.log").exists()


class _Trap:
    """Stands for the old plugin's pickled ``ParslWorkflow``: unpickling it
    creates a file, which proves the plugin never unpickles the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def old_plugin_submit_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A submit directory as the old plugin (lsst-ctrl-bps-parsl
    30.2026.4300) and ctrl_bps left it after an interrupted run, without
    installing the old plugin (doc/operations.md lists the layout):
    ``parsl_workflow.pickle`` and the ctrl_bps files in the submit directory,
    job logs under ``logs/``, Parsl's run directory with its checkpoint under
    the directory ``bps submit`` ran in. Returns (submit dir, that
    directory, the trap's marker file)."""
    import pickle

    import yaml

    submitted_from = tmp_path / "where I ran bps submit"
    submit = submitted_from / "submit" / "u" / "someone" / "run1"
    (submit / "logs" / "calib" / "7").mkdir(parents=True)
    marker = tmp_path / "unpickled"
    (submit / "parsl_workflow.pickle").write_bytes(pickle.dumps(_Trap(marker)))
    (submit / "u_someone_run1_config.yaml").write_text("computeSite: local\nuniqProcName: u_someone_run1\n")
    (submit / "u_someone_run1.env.info.yaml").write_text(
        yaml.dump({"PWD": str(submitted_from), "HOME": "/x"})
    )
    (submit / "u_someone_run1.qgraph").write_bytes(b"")
    (submit / "logs" / "pipetaskInit.stdout").write_text("init\n")
    (submit / "logs" / "calib" / "7" / "calib_7.stdout").write_text("calibrating\n")
    checkpoint = submitted_from / "runinfo" / "000" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "tasks.pkl").write_bytes(pickle.dumps({"hash": "0" * 32, "exception": None, "result": 0}))
    (submitted_from / "runinfo" / "000" / "parsl.log").write_text("")
    return submit, submitted_from, marker


def test_old_plugin_run_is_named_with_what_to_do(tmp_path, env):
    """report, status and restart --id on a run of the old plugin say in one
    line that it is one and how to resume it, and never unpickle its file."""
    submit, submitted_from, marker = old_plugin_submit_dir(tmp_path)
    for args in (
        ["report", "--id", str(submit)],
        ["status", "--id", str(submit)],
        ["restart", "--id", str(submit)],
    ):
        result = bps(env, *args, cwd=tmp_path, check=False)
        output = result.stdout + result.stderr
        lines = [line for line in output.splitlines() if "old ctrl_bps_parsl plugin" in line]
        assert len(lines) == 1, (args, output)
        line = lines[0]
        assert "not a submit directory" not in output, output
        assert f"cd {shlex.quote(str(submitted_from))} " in line, line
        assert f"then run: bps restart --id {shlex.quote(str(submit))};" in line, line
        assert "lsst-ctrl-bps-parsl<=30.2026.4300" in line and f"{submit}/logs" in line, line
    assert not marker.exists()
    # Without ctrl_bps's environment file the line still says where to go.
    (submit / "u_someone_run1.env.info.yaml").unlink()
    result = bps(env, "report", "--id", str(submit), cwd=tmp_path, check=False)
    assert "cd to the directory 'bps submit' ran in" in result.stdout + result.stderr
    assert not marker.exists()


_TORQUE_SITE = """computeSite: torque
site:
  torque:
    class: lsst.ctrl.bps.parsl.sites.Torque
    nodes: 1
    walltime: "00:10:00"
"""


def _fake_command(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_ping_checks_every_command_the_provider_runs_and_that_the_scheduler_answers(tmp_path, env):
    """``bps ping`` of a Torque site: refused with one line naming ``qsub``
    when it is not on PATH (Torque is not installable here, so ``qsub``,
    ``qstat`` and ``qdel`` are small scripts on PATH: the only fakes); refused
    naming the server's error when ``qstat -B`` fails; 0 once all three exist
    and the server answers."""
    site = tmp_path / "torque.yaml"
    site.write_text(_TORQUE_SITE)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    env = dict(env, PATH=f"{fake}:{env['PATH']}")
    result = bps(env, "ping", "--pass-thru", str(site), check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "runs 'qsub', which is not on PATH" in text, text
    assert "Traceback" not in text
    _fake_command(fake, "qsub", "exit 0")
    _fake_command(fake, "qdel", "exit 0")
    _fake_command(fake, "qstat", 'echo "qstat: cannot connect to server pbs01 (errno=111)" >&2; exit 1')
    result = bps(env, "ping", "--pass-thru", str(site), check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "'qstat -B' failed: qstat: cannot connect to server pbs01" in text, text
    _fake_command(fake, "qstat", '[ "$1" = -B ] && echo "Server Max Queued"; exit 0')
    result = bps(env, "ping", "--pass-thru", str(site), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
