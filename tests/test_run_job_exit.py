"""`run_job` (what HTEX workers run for each attempt) logs the job's exit
status itself, so the job's shell needs no trap and runs a simple command in
its own place instead of forking for it (issue 10, the multi-node bench: the
fork cost about 0.35 ms of CPU per job).

Real processes, real files, real signals; `run_job` is called in this
process, as a worker's main thread calls it.
"""

from __future__ import annotations

import os
import stat

from lsst_ctrl_bps_parsl_worker.exits import recorded_exits
from lsst_ctrl_bps_parsl_worker.job import run_job


def _run(tmp_path, name: str, command: str, shell: str = "/bin/bash") -> tuple[int, int | None, str]:
    err = tmp_path / "logs" / f"{name}.err"
    code, sig, *_ = run_job(
        f"exit{os.getpid()}/{name}/1",
        "",
        "export STEP=1",
        command,
        str(tmp_path / "logs" / f"{name}.out"),
        str(err),
        str(tmp_path / "running" / name),
        shell=shell,
    )
    return code, sig, err.read_text() if err.exists() else ""


def test_exit_status_is_logged_for_exits_and_signals(tmp_path):
    """Exit codes and deaths by signal (128 + N) are recorded (the exit
    records of the pid file's directory), as the local pool records them;
    the pid file is gone afterwards."""
    for name, command, want in [
        ("ok", "/bin/true", (0, None)),
        ("three", "exit 3", (3, None)),
        ("term", "kill -TERM $$", (143, 15)),
        ("kill", "/bin/sh -c 'kill -KILL $$'", (137, 9)),
        ("compound", "echo a && /bin/false", (1, None)),
    ]:
        code, sig, log = _run(tmp_path, name, command)
        assert (code, sig) == want, name
        assert recorded_exits(str(tmp_path / "running"))[f"exit{os.getpid()}/{name}/1"] == want[0], log
        assert not (tmp_path / "running" / name).exists()


def test_a_simple_command_replaces_the_shell(tmp_path):
    """The job's last command, a simple command (no redirection of its own,
    as BPS renders them), is the process `run_job` started (its parent is the
    caller) under bash, and carries its token under bash and sh."""
    for shell in ("/bin/bash", "/bin/sh"):
        name = os.path.basename(shell)
        code, _, _ = _run(tmp_path, name, "/bin/sh -c 'echo $PPID $BPS_PARSL_ATTEMPT'", shell)
        assert code == 0
        parent, token = (tmp_path / "logs" / f"{name}.out").read_text().split()
        if shell == "/bin/bash":  # dash forks for the last command of a script of several
            assert int(parent) == os.getpid()
        assert token == f"exit{os.getpid()}/{name}/1"


def test_no_log_is_created_for_a_job_that_could_not_start(tmp_path):
    """A job whose logs cannot be created exits 127 and gets no log made for
    it by the exit status (an attempt counts as launched when its log exists)."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(tmp_path / "logs", os.W_OK):  # root ignores the mode: use a file as the directory
            (tmp_path / "logs").chmod(stat.S_IRWXU)
            (tmp_path / "logs").rmdir()
            (tmp_path / "logs").write_text("not a directory")
        code, _, _ = _run(tmp_path, "nolog", "/bin/true")
        assert code == 127
        assert not (tmp_path / "logs" / "nolog.err").exists()
    finally:
        if (tmp_path / "logs").is_dir():
            (tmp_path / "logs").chmod(stat.S_IRWXU)


def test_a_changed_environment_reaches_the_next_job(tmp_path, monkeypatch):
    """The worker's converted environment is reused between jobs, and made
    again when the worker's environment changed."""
    monkeypatch.setenv("BENCH_PROBE", "first")
    _run(tmp_path, "env1", f"/bin/sh -c 'echo $BENCH_PROBE' > {tmp_path / 'env1'}")
    monkeypatch.setenv("BENCH_PROBE", "second")
    _run(tmp_path, "env2", f"/bin/sh -c 'echo $BENCH_PROBE' > {tmp_path / 'env2'}")
    assert (tmp_path / "env1").read_text() == "first\n"
    assert (tmp_path / "env2").read_text() == "second\n"
