"""Every job attempt is a task of Parsl's data-flow kernel, on the default
(local) site too, with its parents' futures as dependencies: seen through
Parsl's monitoring database and through the kernel's own task records.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

from lsst.ctrl.bps import WmsStates
from lsst.ctrl.bps.parsl.run.dispatch import Dispatch
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path
from synthetic import job, make_config, run, workflow

S = WmsStates.SUCCEEDED.value
F = WmsStates.FAILED.value


def _workflow(tmp_path):
    """A -> (b, c); b fails its first attempt, c fails both of its attempts."""
    flag = tmp_path / "b-failed-once"
    jobs = [
        job("a", "true"),
        job("b", f"[ -e {flag} ] || {{ touch {flag}; exit 3; }}", number_of_retries=1),
        job("c", "exit 4", number_of_retries=1),
        job("d", "true"),
    ]
    return workflow(jobs, [("a", "b"), ("a", "c"), ("b", "d")])


def _attempts(submit) -> dict[str, int]:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        counts: dict[str, int] = {}
        for row in store.attempts():
            counts[names[row.job]] = counts.get(names[row.job], 0) + 1
        return counts
    finally:
        store.close()


def _check_outcome(result) -> None:
    assert result["a"][0] == S and result["b"][0] == S and result["d"][0] == S
    assert result["c"][0] == F and result["c"][2] == 4


def test_every_attempt_is_a_task_and_a_try_in_parsl_monitoring(tmp_path):
    """With ``monitorEnable`` the local site keeps its pool, and Parsl's
    monitoring database has one task with one try per attempt (retries
    included: they are the plugin's, each a task of its own), every task
    of the one app, and a child's task depends on its parent's.
    """
    site = {
        "local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "monitorEnable": True, "monitorInterval": 1}
    }
    submit = tmp_path / "submit"
    result = run(_workflow(tmp_path), submit, config=make_config(site=site), expect_fail=True)
    _check_outcome(result)
    attempts = _attempts(submit)
    assert attempts == {"a": 1, "b": 2, "c": 2, "d": 1}
    with sqlite3.connect(submit / "parsl" / "monitoring.db") as conn:
        tasks = conn.execute("SELECT task_id, task_func_name, task_depends FROM task").fetchall()
        tries = conn.execute("SELECT task_id, try_id, task_executor FROM try").fetchall()
    assert len(tasks) == sum(attempts.values())
    assert {name for _, name, _ in tasks} == {"run_job"}
    assert sorted((task_id, 0, "local") for task_id, *_ in tasks) == sorted(tries)
    # a is task 0 (the only job without parents); every attempt of b and c depends on it.
    depends = {task_id: deps.split(",") if deps else [] for task_id, _, deps in tasks}
    assert depends[0] == []
    assert sum(1 for deps in depends.values() if deps == ["0"]) == 4


def test_every_attempt_is_a_task_of_the_data_flow_kernel(tmp_path, monkeypatch):
    """Without monitoring, every attempt passes through the kernel's task
    table (recorded here as the kernel removes each ended task from it), as
    a task of one app on the local pool, with its parents' app futures as
    ``inputs`` and its cores and memory as its resource specification.
    """
    from parsl.dataflow.dflow import DataFlowKernel

    seen: list[dict] = []
    wipe = DataFlowKernel.wipe_task

    def recording_wipe(self, task_id):
        seen.append(dict(self.tasks[task_id]))
        wipe(self, task_id)

    monkeypatch.setattr(DataFlowKernel, "wipe_task", recording_wipe)
    site = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "memory": 4000}}
    submit = tmp_path / "submit"
    result = run(_workflow(tmp_path), submit, config=make_config(site=site), expect_fail=True)
    _check_outcome(result)
    assert len(seen) == sum(_attempts(submit).values()) == 6
    assert {record["func_name"] for record in seen} == {"run_job"}
    assert len({id(record["func"]) for record in seen}) == 1
    assert {record["executor"] for record in seen} == {"local"}
    assert all(record["fail_count"] == 0 and record["try_id"] == 0 for record in seen)
    assert all(record["resource_specification"].get("cores") == 1 for record in seen)
    by_id = {record["id"]: record for record in seen}
    first = seen[0]  # a: the only job without parents
    assert first["depends"] == []
    children = [r for r in seen if [d.task_record["id"] for d in r["depends"]] == [first["id"]]]
    assert len(children) == 4  # b twice, c twice: each attempt depends on a's task
    assert set(by_id) == set(range(6))


def test_the_driver_loop_wait_ends_on_time_while_signals_arrive():
    """The driver's loop waits for ended attempts with a timeout, and sees a
    SIGTERM's stop request when the wait ends. With real signals arriving all
    the time (a Python handler, as the driver's), no wait overruns its timeout
    by more than 0.5 s. A `queue.SimpleQueue` here blocked until the next
    attempt ended (a SIGTERM was acted on only when a 60 s job finished)."""
    dispatch = Dispatch(site=None)  # type: ignore[arg-type]  # the wait needs no site
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    until = time.monotonic() + 3.0
    me = os.getpid()

    def pester() -> None:
        while time.monotonic() < until:
            os.kill(me, signal.SIGUSR1)
            time.sleep(0.0003)
        dispatch._ended.put(("done", None))  # ends a wait stuck past its timeout

    thread = threading.Thread(target=pester)
    thread.start()
    worst = 0.0
    try:
        while time.monotonic() < until:
            began = time.monotonic()
            dispatch.wait(0.002)
            worst = max(worst, time.monotonic() - began)
    finally:
        thread.join()
        signal.signal(signal.SIGUSR1, old)
    assert worst < 0.5, f"a wait of 2 ms took {worst:.2f} s"
