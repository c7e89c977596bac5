"""The local pool: its spawner's wire protocol (the spawner run as a
subprocess, requests in, replies out) and `LocalPoolExecutor` as a Parsl
executor under a real DataFlowKernel (real processes, real files)."""

from __future__ import annotations

import inspect
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import parsl
import pytest
from lsst.ctrl.bps.parsl.localpool import LocalPoolExecutor
from lsst.ctrl.bps.parsl.localpool.tasks import job_request, parse_reply
from lsst_ctrl_bps_parsl_worker import spawner
from lsst_ctrl_bps_parsl_worker.job import NotStartedError, run_job
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.executors.errors import InvalidResourceSpecification


def _request(tmp: Path, number: int, script: str, **extra) -> dict:
    return {
        "id": number,
        "shell": "/bin/sh",
        "command": script,
        "out": str(tmp / f"{number}.out"),
        "err": str(tmp / f"{number}.err"),
        "pid_file": str(tmp / "running" / f"{number}.pid"),
        "token": f"lp-test/{number}/1",
        "cores": 1,
        "memory": 0,
        "time_limit": None,
        **extra,
    }


def _spawner(cores: int, memory: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-S", spawner.__file__, str(cores), memory],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _replies(text: str) -> list[list[str]]:
    """The reply lines of the spawner's output, split in fields (not its first
    line, ``spawner <pid>``, nor its keeper's last, ``exit <code>``)."""
    return [fields for fields in (line.split() for line in text.splitlines()) if len(fields) == 6]


def _exchange(proc: subprocess.Popen, requests: list[dict]) -> dict[int, list[str]]:
    """Send requests, read one reply per request, then end the input."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
    proc.stdin.flush()
    replies: list[list[str]] = []
    while len(replies) < len(requests):
        replies += _replies(proc.stdout.readline())
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    return {int(fields[0]): fields for fields in replies}


# ---- the wire protocol ------------------------------------------------------------------


def test_protocol_replies_exit_codes_signals_and_time_limits(tmp_path):
    """One reply line per request: exit code, signal, start, end, timed out;
    the shell's output goes to the request's files."""
    requests = [
        _request(tmp_path, 0, "echo hello; exit 3\n"),
        _request(tmp_path, 1, "kill -9 $$\n"),
        _request(tmp_path, 2, "sleep 30\n", time_limit=0.3),
    ]
    replies = _exchange(_spawner(2), requests)
    assert set(replies) == {0, 1, 2}
    assert replies[0][1:3] == ["3", "-"] and replies[0][5] == "0"
    assert float(replies[0][3]) <= float(replies[0][4])
    assert replies[1][1:3] == ["137", "9"]
    assert replies[2][5] == "1", replies[2]
    assert (tmp_path / "0.out").read_text() == "hello\n"
    assert "killed after walltime" in (tmp_path / "2.err").read_text()


def test_protocol_admission_is_first_come_first_served_within_cores(tmp_path):
    """With 1 core, jobs run one at a time, in request order; a 2-core
    request on a 1-core pool gets the whole pool instead of waiting forever."""
    requests = [_request(tmp_path, i, "sleep 0.1\n", cores=2 if i == 1 else 1) for i in range(4)]
    replies = _exchange(_spawner(1), requests)
    spans = sorted((float(f[3]), float(f[4]), int(f[0])) for f in replies.values())
    assert [n for _, _, n in spans] == [0, 1, 2, 3]
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.005


def test_protocol_stop_fails_queued_and_kills_running(tmp_path):
    """``stop``: the running job is killed (SIGTERM), the queued one is
    answered as never started (start ``-``)."""
    proc = _spawner(1)
    assert proc.stdin is not None and proc.stdout is not None
    for number in (0, 1):
        proc.stdin.write(json.dumps(_request(tmp_path, number, "sleep 30\n")) + "\n")
    proc.stdin.flush()
    time.sleep(0.3)
    proc.stdin.write('{"op": "stop"}\n')
    proc.stdin.close()
    replies = {int(f[0]): f for f in _replies(proc.stdout.read())}
    proc.wait(timeout=30)
    assert replies[1][3] == "-"
    assert replies[0][1:3] == ["143", "15"]


def test_protocol_end_of_input_lets_running_jobs_finish(tmp_path):
    """End of input: queued jobs are dropped, the running one finishes."""
    proc = _spawner(1)
    lines = [json.dumps(_request(tmp_path, n, "sleep 0.3; echo done\n")) + "\n" for n in (0, 1)]
    out, _ = proc.communicate("".join(lines), timeout=30)
    replies = {int(f[0]): f for f in _replies(out)}
    assert replies[0][1] == "0" and (tmp_path / "0.out").read_text() == "done\n"
    assert replies[1][3] == "-"


def test_reply_lines_decode_to_run_job_results():
    """The executor's side of the protocol: a reply is what `run_job` returns
    (``?``: start unknown), or `NotStartedError` for a job never started."""
    number, result = parse_reply(b"7 137 9 1.5 2.5 1")
    assert number == 7 and result[:4] == (137, 9, 1.5, 2.5) and result[5] is True
    assert parse_reply(b"8 0 - ? 3.0 0")[1][:4] == (0, None, None, 3.0)
    number, error = parse_reply(b"9 -1 - - 4.0 0")
    assert number == 9 and isinstance(error, NotStartedError)
    request = job_request("r/1/1", "", "", "true", "o", "e", "p", time_limit=5.0, shell="/bin/sh")
    assert (request["cores"], request["memory"], request["time_limit"], request["shell"]) == (
        1,
        0,
        5.0,
        "/bin/sh",
    )


# ---- the executor under the DataFlowKernel --------------------------------------------


@python_app
def add(a: int, b: int) -> int:
    return a + b


@python_app
def fail(message: str) -> None:
    raise KeyError(message)


@python_app
def overlap(marker_dir: str, index: int) -> int:
    """Record how many tasks run at this moment (files in ``marker_dir``)."""
    import os
    import time

    mine = os.path.join(marker_dir, f"{index}.running")
    open(mine, "w").close()
    try:
        time.sleep(0.02)
        return len([n for n in os.listdir(marker_dir) if n.endswith(".running")])
    finally:
        os.unlink(mine)


@python_app
def nap(seconds: float) -> None:
    import time

    time.sleep(seconds)


@bash_app
def shell(code: int, stdout: str | None = None, stderr: str | None = None) -> str:
    return f"echo to-out; echo to-err >&2; exit {code}"


@pytest.fixture
def dfk(tmp_path):
    """A DataFlowKernel with one `LocalPoolExecutor` of 2 cores and 4000 MB."""
    loaded = parsl.load(
        Config(
            executors=[LocalPoolExecutor(label="pool", cores=2, memory=4000)],
            run_dir=str(tmp_path / "runinfo"),
            initialize_logging=False,
        )
    )
    yield loaded
    loaded.cleanup()


def _job_args(tmp: Path, name: str, command: str) -> tuple:
    return (
        f"lp/{name}/1",
        "",
        "",
        command,
        str(tmp / f"{name}.out"),
        str(tmp / f"{name}.err"),
        str(tmp / name),
    )


def test_python_app_value_exception_and_bash_app(dfk, tmp_path):
    """A python_app's value and exception come back through its future; a
    bash_app has Parsl's semantics: stdout/stderr files, exit code."""
    assert add(2, 3).result(timeout=60) == 5
    with pytest.raises(KeyError, match="nope"):
        fail("nope").result(timeout=60)
    out, err = tmp_path / "b.out", tmp_path / "b.err"
    assert shell(0, stdout=str(out), stderr=str(err)).result(timeout=60) == 0
    assert out.read_text() == "to-out\n" and err.read_text().endswith("to-err\n")
    with pytest.raises(parsl.app.errors.BashExitFailure, match="exit code 7"):
        shell(7).result(timeout=60)


def test_run_job_takes_the_fast_path_and_returns_what_run_job_returns(dfk, tmp_path):
    """`run_job` as a python_app is started by the spawner directly (no
    Python task file); the future gets run_job's tuple."""
    app = python_app(run_job, executors=["pool"])
    code, sig, start, end, host, timed_out = app(
        *_job_args(tmp_path, "j", "echo hi; exit 4"), shell="/bin/sh"
    ).result(timeout=60)
    assert (code, sig, timed_out) == (4, None, False) and start <= end
    assert (tmp_path / "j.out").read_text() == "hi\n"
    assert dfk.executors["pool"]._python.directory is None  # nothing went through a Python process
    inputs = [add(1, 1)]
    chained = app(*_job_args(tmp_path, "k", "true"), shell="/bin/sh", inputs=inputs)
    assert chained.result(timeout=60)[0] == 0


def test_fifty_tasks_on_two_cores_never_run_more_than_two_at_once(dfk, tmp_path):
    """Admission: 50 job attempts submitted at once, each taking 1 of the
    pool's 2 cores (their start and end times, as the spawner saw them),
    and Python tasks under the same admission."""
    app = python_app(run_job, executors=["pool"])
    futures = [app(*_job_args(tmp_path, f"t{i}", "sleep 0.02"), shell="/bin/sh") for i in range(50)]
    spans = [future.result(timeout=120)[2:4] for future in futures]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    counts = [overlap(str(tmp_path), i) for i in range(4)]
    assert max(f.result(timeout=120) for f in counts) <= 2


def test_resource_specification_is_validated_and_honoured(dfk, tmp_path):
    """Unknown keys and requests larger than the pool fail with Parsl's
    InvalidResourceSpecification; ``walltime`` (s) and ``running_time_min``
    kill the task; ``cores`` takes that many of the pool's cores."""
    app = python_app(run_job, executors=["pool"])
    for spec, match in (
        ({"gpus": 1}, "gpus"),
        ({"cores": 3}, "asks for 3 cores"),
        ({"memory": 5000}, "asks for 5000 MB"),
        ({"cores": 0}, "positive"),
    ):
        future = app(*_job_args(tmp_path, "x", "true"), parsl_resource_specification=spec)
        with pytest.raises(InvalidResourceSpecification, match=match):
            future.result(timeout=60)
    started = time.monotonic()
    future = app(
        *_job_args(tmp_path, "w", "sleep 30"), shell="/bin/sh", parsl_resource_specification={"walltime": 0.5}
    )
    assert future.result(timeout=60)[5] is True
    assert time.monotonic() - started < 20
    with pytest.raises(parsl.app.errors.AppTimeout, match="walltime"):
        nap(30, parsl_resource_specification={"running_time_min": 0.02}).result(timeout=60)
    # Two 2-core jobs on a 2-core pool run one after the other.
    spec = {"cores": 2, "memory": 100}
    jobs = [
        app(*_job_args(tmp_path, f"c{i}", "sleep 0.2"), shell="/bin/sh", parsl_resource_specification=spec)
        for i in range(2)
    ]
    (_, _, s0, e0, _, _), (_, _, s1, e1, _, _) = (f.result(timeout=60) for f in jobs)
    assert s1 >= e0 - 0.005 or s0 >= e1 - 0.005


def test_job_request_mirrors_run_job_signature():
    """The fast path binds arguments exactly as `run_job` would."""
    assert inspect.signature(job_request).parameters.keys() == inspect.signature(run_job).parameters.keys()


def test_shutdown_stops_running_tasks_and_fails_queued_ones(tmp_path):
    """`shutdown` kills what runs, fails what waits, and calls Parsl's own
    shutdown (the monitoring receiver); the executor is a ParslExecutor."""
    executor = LocalPoolExecutor(label="pool", cores=1)
    executor.start()
    running = executor.submit(run_job, {}, *_job_args(tmp_path, "r", "sleep 30"), shell="/bin/sh")
    queued = executor.submit(run_job, {}, *_job_args(tmp_path, "q", "sleep 30"), shell="/bin/sh")
    time.sleep(0.3)
    started = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - started < 20
    assert running.result(timeout=5)[1] == 15
    with pytest.raises(RuntimeError, match="not started"):
        queued.result(timeout=5)
    assert executor.monitor_resources() is False


def test_monitoring_records_every_task_and_try(tmp_path):
    """Parsl monitoring with this executor: 5 run_job tasks and 2 python
    apps all have a task and a try row, with the try's running time."""
    from parsl.monitoring import MonitoringHub

    db = tmp_path / "monitoring.db"
    loaded = parsl.load(
        Config(
            executors=[LocalPoolExecutor(label="pool", cores=2)],
            run_dir=str(tmp_path / "runinfo"),
            initialize_logging=False,
            monitoring=MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=1),
        )
    )
    try:
        app = python_app(run_job, executors=["pool"])
        futures = [app(*_job_args(tmp_path, f"m{i}", "true"), shell="/bin/sh") for i in range(5)]
        futures += [add(i, i) for i in range(2)]
        for future in futures:
            future.result(timeout=120)
    finally:
        loaded.cleanup()
    with sqlite3.connect(db) as conn:
        tasks = conn.execute("SELECT task_id, task_func_name FROM task").fetchall()
        tries = conn.execute("SELECT task_id, try_id, task_try_time_running FROM try").fetchall()
    assert len(tasks) == 7
    assert sorted(name for _, name in tasks).count("run_job") == 5
    assert len(tries) == 7
    assert all(running is not None for _, _, running in tries), tries


def test_worker_side_import_is_light():
    """Importing the function Parsl workers run does not import lsst.ctrl.bps."""
    code = "import sys, lsst_ctrl_bps_parsl_worker.job; print('lsst.ctrl.bps' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert run_job.__module__ == "lsst_ctrl_bps_parsl_worker.job"
    assert os.path.exists(spawner.__file__)
