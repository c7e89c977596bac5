"""A writer of the run-state store killed mid-transaction: readers and the
next writer open the store at once, with the dead writer's changes undone.

Both journals are made by a real SQLite writer process killed with SIGKILL:
one before its journal was synced (a "cold" journal whose header starts with
a zero byte, nothing to restore: what a driver killed while it builds a
transaction leaves), one after its changes reached the database file (a
"hot" journal that must be rolled back).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from lsst.ctrl.bps.parsl.store.runstore import RunStore, journal_is_hot

WRITER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA synchronous=FULL")
conn.execute(f"PRAGMA cache_size={sys.argv[2]}")
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE meta SET value = '\"changed\"' WHERE key = 'run_id'")
if sys.argv[2] == "1":
    # More pages than the cache holds: SQLite syncs the journal and writes to the file.
    conn.execute("CREATE TABLE filler(x)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(2000)])
print("in transaction", flush=True)
time.sleep(60)
"""


def _store_with_dead_writer(tmp_path, cache_size: int) -> str:
    path = str(tmp_path / "bps_parsl.sqlite3")
    RunStore.create(path, {"run_id": "original"}, iter(()), []).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(cache_size)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "in transaction"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert os.path.getsize(path + "-journal") > 0
    return path


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
def test_cold_journal_of_a_killed_writer_is_ignored(tmp_path, readonly):
    path = _store_with_dead_writer(tmp_path, cache_size=2000)
    assert not journal_is_hot(path)
    started = time.monotonic()
    store = RunStore(path, readonly=readonly)
    assert store.meta()["run_id"] == "original"
    store.close()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
def test_hot_journal_of_a_killed_writer_is_rolled_back(tmp_path, readonly):
    path = _store_with_dead_writer(tmp_path, cache_size=1)
    assert journal_is_hot(path)
    store = RunStore(path, readonly=readonly)
    assert store.meta()["run_id"] == "original"
    store.close()
    assert not journal_is_hot(path)
