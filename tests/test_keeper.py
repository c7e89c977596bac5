"""The local pool's keeper (`lsst_ctrl_bps_parsl_worker.keeper`): a job's
shell runs its command in its own place, so the process that reaps the job
logs its exit status: the spawner, or, once the spawner died, its keeper.
Real processes: the spawner run as the executor runs it, killed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lsst_ctrl_bps_parsl_worker import spawner
from lsst_ctrl_bps_parsl_worker.exits import recorded_exits, zombie_exit_code
from lsst_ctrl_bps_parsl_worker.journal import journal_jobs
from test_localpool import _request as pool_request


def _request(tmp: Path, number: int, script: str) -> str:
    """A bash job (the spawner exports its token, `processes.job_script`)."""
    token = f"keeper-test/{number}/1"
    return json.dumps(pool_request(tmp, number, script, shell="/bin/bash", token=token))


def _start(tmp: Path, scripts: list[str]) -> tuple[subprocess.Popen, int]:
    """The spawner's keeper, running ``scripts``; (keeper, spawner pid)."""
    keeper = subprocess.Popen(
        [sys.executable, "-S", spawner.__file__, str(len(scripts)), "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert keeper.stdin is not None and keeper.stdout is not None
    first = keeper.stdout.readline().split()
    assert first[0] == "spawner", first
    keeper.stdin.write("".join(_request(tmp, n, s) + "\n" for n, s in enumerate(scripts)))
    keeper.stdin.flush()
    return keeper, int(first[1])


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _parent(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def test_the_keeper_logs_the_exit_status_of_jobs_whose_spawner_was_killed(tmp_path):
    """The spawner is SIGKILLed while three jobs run: they become the
    keeper's children, and as each ends the keeper records its exit status
    (an exit code, a signal; a fake status the job printed itself changes
    nothing), as the spawner would have; the keeper's last line is the
    spawner's exit code, and it exits once the jobs ended."""
    scripts = [
        "sleep 0.8; exit 3",
        "sleep 0.8; kill -TERM $$",
        "echo '[bps-parsl] exit status 0' >&2; sleep 0.8; exit 5",
    ]
    keeper, spawner_pid = _start(tmp_path, scripts)
    journal = tmp_path / "running" / f"spawner.{os.uname().nodename}.{spawner_pid}"
    logs = _wait_for(
        lambda: len(journal_jobs(str(journal)).logs) == 3 and journal_jobs(str(journal)).logs, 10, "3 jobs"
    )
    assert sorted(logs.values()) == [str(tmp_path / f"{n}.err") for n in range(3)]
    os.kill(spawner_pid, signal.SIGKILL)
    rest = keeper.stdout.read()
    assert rest.split()[-2:] == ["exit", str(128 + signal.SIGKILL)], rest
    for job in logs:
        try:
            assert _parent(job) == keeper.pid, "a job of the dead spawner is not the keeper's child"
        except FileNotFoundError:
            pass  # ended already
    assert keeper.wait(timeout=10) == 128 + signal.SIGKILL
    exits = recorded_exits(str(tmp_path / "running"))
    statuses = [exits.get(f"keeper-test/{n}/1") for n in range(3)]
    assert statuses == [3, 128 + signal.SIGTERM, 5]


def test_the_spawner_logs_the_exit_status_after_what_the_job_printed(tmp_path):
    """With the spawner alive, it records each job's exit status: a job
    printing a fake status does not change what is read."""
    keeper, _ = _start(tmp_path, ["echo '[bps-parsl] exit status 0' >&2; exit 4", "exit 0"])
    out, _ = keeper.communicate("", timeout=30)
    assert keeper.returncode == 0
    exits = recorded_exits(str(tmp_path / "running"))
    assert [exits.get(f"keeper-test/{n}/1") for n in range(2)] == [4, 0]
    assert out.split()[-2:] == ["exit", "0"]


def test_an_unreaped_process_exit_code_is_read_from_proc():
    """What a spawner taking over reads of a job that ended before anyone
    logged its exit status: the exit code of a process not yet reaped."""
    child = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
    _wait_for(lambda: zombie_exit_code(child.pid) is not None, 10, "the child to end")
    assert zombie_exit_code(child.pid) == 7
    child.wait()
    assert zombie_exit_code(child.pid) is None
    assert zombie_exit_code(os.getpid()) is None


def test_the_keeper_names_the_job_its_spawner_died_starting(tmp_path: Path) -> None:
    """A spawner killed after it started a job but before its journal said
    so (the ``>`` line is there, the ``+`` line is not): the keeper finds the
    job among its children by the token of the ``>`` line, so that the job's
    exit status is still logged (tests/test_process_faults.py kills spawners
    at random moments; this is the moment it once hit)."""
    from lsst_ctrl_bps_parsl_worker import keeper
    from lsst_ctrl_bps_parsl_worker.journal import Journal, journal_jobs
    from lsst_ctrl_bps_parsl_worker.processes import Launcher

    journal = Journal(str(tmp_path / "running"))
    journal.starting("keeper-test/a/1", str(tmp_path / "a.err"))
    journal.started(12345, "keeper-test/b/1", str(tmp_path / "b.err"))
    journal.starting("keeper-test/c/1", str(tmp_path / "c.err"))
    journal.write()
    starting = journal_jobs(journal.path).starting
    assert starting == {
        "keeper-test/a/1": str(tmp_path / "a.err"),
        "keeper-test/c/1": str(tmp_path / "c.err"),
    }

    launcher = Launcher()
    job = launcher.spawn_job(
        "/bin/sh", "keeper-test/c/1", "", "", "/bin/sleep 5", str(tmp_path / "c.out"), str(tmp_path / "c.err")
    )
    other = launcher.spawn_job(
        "/bin/sh", "keeper-test/x/1", "", "", "/bin/sleep 5", str(tmp_path / "x.out"), str(tmp_path / "x.err")
    )
    try:
        logs: dict[int, str] = {}
        keeper._name_starting(logs, starting)
        assert logs == {job: str(tmp_path / "c.err")}
    finally:
        for pid in (job, other):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    journal.close()
