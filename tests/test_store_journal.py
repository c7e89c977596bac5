"""A writer of the run-state store killed mid-transaction: readers and the
next writer open the store at once, with the dead writer's changes undone.
A reader holding a read transaction open for long delays the driver's
commits but never stops its run (reliability P3 of issue 20).

Both journals are made by a real SQLite writer process killed with SIGKILL:
one before its journal was synced (a "cold" journal whose header starts with
a zero byte, nothing to restore: what a driver killed while it builds a
transaction leaves), one after its changes reached the database file (a
"hot" journal that must be rolled back).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lsst.ctrl.bps.parsl.records import JobRow
from lsst.ctrl.bps.parsl.store import runstore as state
from lsst.ctrl.bps.parsl.store import storewrites
from lsst.ctrl.bps.parsl.store.runstore import RunStore, StateStoreError, journal_is_hot

sys.path.insert(0, os.path.dirname(__file__))
from cli import cli_environment, wait_for  # noqa: E402
from synthetic import statuses  # noqa: E402

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


# ---- readers that hold a transaction open ---------------------------------------

PY_READER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM status").fetchall()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _hold_read(kind: str, path: str, seconds: float) -> subprocess.Popen:
    """A real reader process holding a read transaction (its shared lock) on the store."""
    if kind == "sqlite3-shell":
        # Like any reader, it waits for a commit in progress (``.timeout``) rather than failing its SELECT.
        script = (
            f".timeout 10000\nBEGIN;\nSELECT count(*) FROM status;\n.shell echo holding\n"
            f".shell sleep {seconds}\nCOMMIT;\n"
        )
        reader = subprocess.Popen(["sqlite3", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert reader.stdin is not None
        reader.stdin.write(script)
        reader.stdin.close()
    else:
        reader = subprocess.Popen(
            [sys.executable, "-c", PY_READER, path, str(seconds)], stdout=subprocess.PIPE, text=True
        )
    assert reader.stdout is not None
    while "holding" not in reader.stdout.readline():
        assert reader.poll() is None, "the reader ended before it held its transaction"
    return reader


@pytest.mark.parametrize("kind", ["sqlite3-shell", "python"])
def test_reader_holding_a_transaction_delays_but_never_stops_a_run(tmp_path, monkeypatch, kind):
    """P3: a reader holds a read transaction for 20 s from the run's first
    success to past its end (a real ``sqlite3`` shell, or a Python
    connection with BEGIN + SELECT): the driver logs the wait, keeps
    running jobs meanwhile, and the run succeeds with every job recorded
    once the reader lets go."""
    if kind == "sqlite3-shell" and subprocess.run(["which", "sqlite3"], capture_output=True).returncode:
        pytest.skip("no sqlite3 shell on this machine")
    env = cli_environment(tmp_path, monkeypatch)
    log = tmp_path / "ok.log"
    n = 40
    spec = {
        "jobs": [
            {"name": f"j{i}", "label": "j", "script": f"sleep 0.2; echo j{i} >> {log}"} for i in range(n)
        ],
        "site": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    submit = tmp_path / "submit"
    driver = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "synthetic_driver.py"), str(submit), str(spec_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: log.exists(), what="a first job", proc=driver)
    started = time.monotonic()
    reader = _hold_read(kind, str(submit / "bps_parsl.sqlite3"), 20)
    wait_for(lambda: len(log.read_text().split()) >= n, timeout=150, what="every job ran", proc=driver)
    ran_while_held = time.monotonic() - started < 20
    out, _ = driver.communicate(timeout=150)
    reader.wait(timeout=60)
    assert driver.returncode == 0, out[-3000:]
    assert ran_while_held, "jobs waited for the reader: the driver's loop was blocked"
    assert "locked by another process" in out and "the lock was released after" in out, out[-3000:]
    assert "Traceback" not in out and "free space" not in out, out[-3000:]
    assert sorted(log.read_text().split()) == sorted(f"j{i}" for i in range(n))
    assert all(row[0] == state.SUCCEEDED for row in statuses(submit).values())


def test_commit_that_must_be_made_waits_for_the_lock_then_names_it(tmp_path, monkeypatch):
    """P3 (bound and message): a commit that cannot be left for later waits
    for a reader's lock with a growing pause for up to WRITE_WAIT_SECONDS
    (shortened here), then fails in one line naming the lock, never "free
    space or fix permissions"; a commit that may wait stays queued at once."""
    path = str(tmp_path / "bps_parsl.sqlite3")
    RunStore.create(path, {"run_id": "r"}, iter([JobRow(0, "a", "a", 0, False)]), []).close()
    store = RunStore(path)
    monkeypatch.setattr(storewrites, "WRITE_WAIT_SECONDS", 3.0)
    reader = _hold_read("python", path, 30)
    try:
        store.set_state(0, state.RUNNING, 1)
        began = time.monotonic()
        store.flush(wait=False)
        assert store.dirty and time.monotonic() - began < 2
        with pytest.raises(StateStoreError) as info:
            store.flush(wait=True)
        waited = time.monotonic() - began
        message = str(info.value)
        assert 3 <= waited < 15, waited
        assert "locked by another process" in message and path in message and "\n" not in message
        assert "free space" not in message and "permissions" not in message
        assert store.dirty
    finally:
        reader.kill()
        reader.wait()
    store.flush(wait=True)
    assert not store.dirty
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT state FROM status WHERE job = 0").fetchone()[0] == state.RUNNING
    conn.close()
