"""Dispatch order: priority first, then the longest path of work below a
job, then first come (issue 15 item 2); real jobs on a 1-core local pool.
"""

from __future__ import annotations

from lsst.ctrl.bps.parsl.records import JobKind, JobRow, JobState
from lsst.ctrl.bps.parsl.run.scheduling import ReadyQueue, critical_paths
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path
from synthetic import job, make_config, run, workflow


def _row(i: int, priority: str | None = None, walltime: str | None = None, kind: int = JobKind.PAYLOAD):
    return JobRow(i, f"j{i}", "l", kind, False, request_walltime=walltime, priority=priority)


def test_critical_path_is_the_longest_chain_of_walltimes_below():
    # 0 -> 1 -> 3, 0 -> 2 -> 3; node 2 asks for 10 minutes, node 1 none (one unit); 4 alone; 5 a no-op.
    rows = [_row(0), _row(1), _row(2, walltime="10"), _row(3, walltime="00:30:00"), _row(4), _row(5, kind=1)]
    children = [[1, 2], [3], [3], [], [], []]
    assert list(critical_paths(rows, children)) == [41.0, 31.0, 40.0, 30.0, 1.0, 0.0]


def test_ready_queue_orders_by_priority_then_path_then_arrival():
    rows = [_row(0), _row(1, priority="5"), _row(2), _row(3), _row(4, priority="-1")]
    children = [[], [], [3], [], []]
    queue = ReadyQueue(rows, children)
    for i in (0, 4, 2, 3, 1):
        queue.append(i)
    assert [queue.popleft() for _ in range(len(queue))] == [1, 2, 0, 3, 4]
    fifo = ReadyQueue(rows, children, fifo=True)
    for i in (0, 4, 2, 3, 1):
        fifo.append(i)
    assert [fifo.popleft() for _ in range(len(fifo))] == [0, 4, 2, 3, 1]


def _start_order(submit) -> list[str]:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        attempts = sorted(store.attempts(), key=lambda a: a.start or 0.0)
        return [names[a.job] for a in attempts]
    finally:
        store.close()


def test_starts_on_one_slot_follow_priority_then_critical_path(tmp_path):
    """Six roots ready at once on a 1-core pool: the urgent one first, then
    the one with the longest chain below it, ..., the lone low one last;
    equal ones in the order they came.
    """
    jobs = [
        job("lone"),
        job("short_root"),
        job("long_root"),
        job("urgent", priority="10"),
        job("lone_later"),
        job("low", priority="-5"),
        job("short_child"),
        job("long_child1"),
        job("long_child2"),
    ]
    edges = [("short_root", "short_child"), ("long_root", "long_child1"), ("long_child1", "long_child2")]
    config = make_config(
        computeSite="one", site={"one": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 1}}
    )
    result = run(workflow(jobs, edges), tmp_path / "submit", config)
    assert all(row[0] == JobState.SUCCEEDED for row in result.values())
    order = _start_order(tmp_path / "submit")
    roots = [
        name for name in order if name in {"lone", "short_root", "long_root", "urgent", "lone_later", "low"}
    ]
    assert roots == ["urgent", "long_root", "short_root", "lone", "lone_later", "low"]
