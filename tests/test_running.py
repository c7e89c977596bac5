"""The record of running attempts: spawner journals and per-attempt files."""

from __future__ import annotations

import os
import subprocess
import sys

from lsst.ctrl.bps.parsl.control.running import kill_running_jobs, running_job_ids
from lsst_ctrl_bps_parsl_worker import journal as spawner_journal


def test_journal_records_starts_and_ends_and_compacts(tmp_path, monkeypatch):
    monkeypatch.setattr(spawner_journal, "_JOURNAL_COMPACT_BYTES", 200)
    journal = spawner_journal.Journal(str(tmp_path))
    for pid in range(1000, 1040):
        journal.started(pid, f"run/{pid}/1", f"/logs/{pid}.err")
        journal.write()
    for pid in range(1000, 1038):
        journal.ended(pid)
        journal.write()
    assert spawner_journal.journal_jobs(journal.path).running == {1038: "run/1038/1", 1039: "run/1039/1"}
    # Compaction rewrote the file with only the running jobs, and appends continue.
    assert os.path.getsize(journal.path) < 200
    journal.started(7, "run/7/2", "/logs/7.err")
    journal.write()
    assert set(spawner_journal.journal_jobs(journal.path).running) == {7, 1038, 1039}
    journal.close()
    assert not os.path.exists(journal.path)


def test_running_job_ids_reads_journals_and_attempt_files(tmp_path):
    journal = spawner_journal.Journal(str(tmp_path))
    journal.started(4242, "20261125T000000-abcdef/12/1", "/logs/12.1.err")
    journal.write()
    (tmp_path / "5.2").write_text("somehost 99 20261125T000000-abcdef/5/2\n")
    assert running_job_ids(str(tmp_path)) == {5, 12}
    journal.close()
    assert running_job_ids(str(tmp_path)) == {5}


def test_journal_of_a_dead_spawner_is_removed_and_no_stranger_is_killed(tmp_path):
    # A process that is not a job of this run (its command line has no token).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / spawner_journal.journal_name(dead.pid)
    path.write_text(f"+ {stranger.pid} run/1/1\n")
    try:
        assert kill_running_jobs(str(tmp_path), "run") == 0
        assert stranger.poll() is None
        assert not path.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_kill_running_jobs_waits_for_a_live_spawner_to_reap_an_ended_job(tmp_path):
    """A job of a live spawner (this process stands for it: its journal names
    this pid) that ended but is not reaped yet has no exit status in its log:
    the restart's clean-up waits until the spawner reaped it (and so logged
    it), here 0.5 s later, before the logs are read."""
    import threading
    import time

    from lsst_ctrl_bps_parsl_worker.exits import zombie_exit_code

    ended = subprocess.Popen(["true"])
    while zombie_exit_code(ended.pid) is None:
        time.sleep(0.01)
    journal = spawner_journal.Journal(str(tmp_path))  # named after this (live) process
    journal.started(ended.pid, "run/1/1", str(tmp_path / "1.1.err"))
    journal.write()
    reaper = threading.Timer(0.5, ended.wait)
    started = time.monotonic()
    reaper.start()
    try:
        kill_running_jobs(str(tmp_path), "run")
        took = time.monotonic() - started
    finally:
        reaper.join()
        journal.close()
    assert 0.45 <= took < 2.0, took
    assert zombie_exit_code(ended.pid) is None
