"""Every use of Parsl's internals (`lsst.ctrl.bps.parsl.parslcompat`) against
the Parsl that is installed: `.ci/run` runs this file on the oldest and the
newest Parsl that ``pyproject.toml`` allows. Real executors, a real
interchange; nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import parsl
import pytest
from lsst.ctrl.bps.parsl import parslcompat
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.jobs.states import JobState
from parsl.providers import LocalProvider


def test_the_installed_parsl_is_in_the_checked_range():
    version = tuple(int(part) for part in parsl.__version__.split(".")[:3])
    low, high = (tuple(int(p) for p in v.split(".")) for v in parslcompat.CHECKED_ON)
    assert low <= version <= high, parsl.__version__


def test_start_kernel_runs_and_a_failed_start_stops_what_it_started(tmp_path):
    dfk = parslcompat.start_kernel(
        Config(executors=[ThreadPoolExecutor(label="ok")], run_dir=str(tmp_path / "a")), print
    )
    try:
        assert dfk.executors["ok"].submit(lambda: 42, {}).result(timeout=30) == 42
    finally:
        dfk.cleanup()

    class Refuses(ThreadPoolExecutor):
        def start(self):
            raise RuntimeError("refused to start")

    first = ThreadPoolExecutor(label="first")
    errors: list[str] = []
    with pytest.raises(RuntimeError, match="refused to start"):
        parslcompat.start_kernel(
            Config(executors=[first, Refuses(label="second")], run_dir=str(tmp_path / "b")),
            lambda name, exc: errors.append(name),
        )
    # The executor that had started was shut down: it takes no task.
    with pytest.raises(RuntimeError):
        first.executor.submit(print)


@pytest.fixture
def htex(tmp_path):
    if shutil.which("interchange.py") is None and not os.access(
        os.path.join(os.path.dirname(sys.executable), "interchange.py"), os.X_OK
    ):
        pytest.skip("interchange.py is not installed")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1),
    )
    executor.run_dir = str(tmp_path)
    executor.run_id = "compat"
    executor.start()
    yield executor
    executor.shutdown()


def test_interchange_helpers_on_a_real_interchange(htex):
    assert parslcompat.interchange_alive(htex)
    assert parslcompat.interchange_exit_code(htex) is None
    assert parslcompat.interchange_command(htex, "MANAGERS", 30) == []
    assert parslcompat.outstanding_tasks(htex) == 0
    assert parslcompat.hold_block(htex, "0")  # no pool of block 0: nothing to hold, no error
    parslcompat.mark_scaled_in(htex, "7", "released")
    assert htex.status_facade["7"].state == JobState.SCALED_IN
    os.kill(htex.interchange_proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while parslcompat.interchange_exit_code(htex) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert parslcompat.interchange_exit_code(htex) == -signal.SIGKILL
    assert not parslcompat.interchange_alive(htex)


def test_hold_block_leaves_an_executor_without_blocks_alone():
    assert not parslcompat.hold_block(ThreadPoolExecutor(label="t"), "0")


def test_unwrap_monitoring_finds_the_task_inside_the_wrapper():
    def task(x: int) -> int:
        return x + 1

    def wrapper(*args, **kwargs):
        return task(*args, **kwargs)

    wrapper.__wrapped__ = task  # as functools.wraps in parsl.monitoring.remote.monitor_wrapper
    func, kwargs, ids = parslcompat.unwrap_monitoring(
        wrapper, {"_parsl_monitoring_task_id": 3, "_parsl_monitoring_try_id": 0, "x": 1}
    )
    assert func is task and kwargs == {"x": 1} and ids == (3, 0)
    assert parslcompat.unwrap_monitoring(task, {"x": 1}) == (task, {"x": 1}, None)
