"""Helpers for tests that drive runs through the real ``bps`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def cli_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of drivers and ``bps`` commands: a private run index, the
    venv's ``bin`` on ``PATH`` (HTEX workers), ``tests/`` on ``PYTHONPATH``."""
    state_home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    environ = dict(os.environ)
    environ["XDG_STATE_HOME"] = str(state_home)
    environ["BPS_WMS_SERVICE_CLASS"] = "lsst.ctrl.bps.parsl.ParslService"
    environ["PATH"] = f"{BIN}:{environ.get('PATH', '')}"
    environ["PYTHONPATH"] = f"{HERE}:{environ.get('PYTHONPATH', '')}"
    return environ


def bps(env, *args, cwd=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    """Run ``bps ARGS``; fail the test if it fails and ``check``."""
    result = subprocess.run(
        [str(BIN / "bps"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(f"bps {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def wait_for(predicate, timeout=120.0, what="condition", proc=None):
    """Poll ``predicate`` until it is true; fail on timeout or if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process ended ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")
