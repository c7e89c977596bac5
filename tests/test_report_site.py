"""`WmsRunReport.site` is the run's compute site; another user's run is
reported read-only when the file system lets that user read it, and cancel
and restart of it stay refused.

The second user is a real local account made with ``useradd`` (root only,
removed afterwards); its commands run through ``runuser``. Without root or
``useradd`` those tests are skipped, saying why.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lsst.ctrl.bps.parsl
import pytest
from lsst.ctrl.bps import WmsRunReport, WmsStates
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.store.runstore import DB_NAME
from synthetic import job, make_config, run, workflow

HAS_SITE = "site" in {f.name for f in dataclasses.fields(WmsRunReport)}
OTHER = "bpsparsl_other"
BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
BPS = "import sys; from lsst.ctrl.bps.cli.bps import main; sys.exit(main())"


def test_report_site_is_the_compute_site(tmp_path):
    submit = tmp_path / "submit"
    run(workflow([job("a")]), submit)
    reports, message = ParslService(make_config()).report(str(submit))
    assert message == "" and reports[0].state == WmsStates.SUCCEEDED
    if HAS_SITE:
        assert reports[0].site == "local"


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    """A second local user, made for these tests and removed after them."""
    if os.geteuid() != 0:
        pytest.skip("making a second local user needs root")
    if not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("useradd and runuser are needed to make and act as a second local user")
    made = subprocess.run(["id", OTHER], capture_output=True).returncode != 0
    if made:
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", OTHER], check=True)
    try:
        yield OTHER
    finally:
        if made:
            subprocess.run(["userdel", OTHER], check=False)


@pytest.fixture
def shared_run() -> Iterator[Path]:
    """A finished run of this user in a directory other users may enter."""
    root = Path(tempfile.mkdtemp(prefix="bps-parsl-shared-"))
    try:
        os.chmod(root, 0o755)
        submit = root / "submit"
        run(workflow([job("a"), job("b")]), submit)
        yield submit
    finally:
        shutil.rmtree(root, ignore_errors=True)


def other_python(user: str) -> list[str]:
    """A command that runs this Python, with this environment's packages,
    as ``user`` (this interpreter, or the system's of the same version when
    ``user`` may not run this one)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}"):
        probe = subprocess.run([RUNUSER, "-u", user, "--", candidate, "-c", ""], capture_output=True)
        if probe.returncode == 0:
            return [candidate]
    pytest.skip(
        f"user {user} can run neither {sys.executable} (it lives in a private directory) nor a system {version}"
    )


def as_other(user: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``python ARGV`` as ``user``, with this environment's packages."""
    home = tempfile.mkdtemp(prefix="bps-parsl-other-home-")
    shutil.chown(home, user)
    paths = [str(Path(lsst.ctrl.bps.parsl.__file__).parents[4]), *site.getsitepackages(), str(HERE)]
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": home,
        "XDG_STATE_HOME": home,
        "PYTHONPATH": ":".join(paths),
        "BPS_WMS_SERVICE_CLASS": "lsst.ctrl.bps.parsl.ParslService",
    }
    try:
        return subprocess.run(
            [RUNUSER, "-u", user, "--", *other_python(user), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


REPORT = """
import sys
from lsst.ctrl.bps import BpsConfig
from lsst.ctrl.bps.parsl import ParslService
reports, message = ParslService(BpsConfig({})).report(sys.argv[1])
print(message or "OK")
for r in reports:
    print(r.state.name, getattr(r, "site", "local"), r.total_number_jobs, r.operator)
"""


def test_another_users_run_is_reported_read_only(other_user, shared_run):
    (shared_run / DB_NAME).chmod(0o644)  # the owner lets others read the run
    os.chmod(shared_run, 0o755)
    result = as_other(other_user, "-c", REPORT, str(shared_run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["OK", "SUCCEEDED local 2 tester"]

    # Cancel and restart stay the owner's.
    cancel = "import sys; from lsst.ctrl.bps.parsl import ParslService; print(ParslService({}).cancel(sys.argv[1]))"
    refused = as_other(other_user, "-c", cancel, str(shared_run))
    assert refused.stdout.startswith("(False,") and "only its owner may act on it" in refused.stdout
    refused = as_other(other_user, "-c", BPS, "restart", "--id", str(shared_run))
    assert "only its owner may act on it" in refused.stdout + refused.stderr
    assert (shared_run / DB_NAME).stat().st_uid == os.getuid()
    reports, _ = ParslService(make_config()).report(str(shared_run))
    assert reports[0].state == WmsStates.SUCCEEDED


def test_another_users_unreadable_run_says_so_in_one_line(other_user, shared_run):
    (shared_run / DB_NAME).chmod(0o600)  # as prepared: the owner's only
    result = as_other(other_user, "-c", REPORT, str(shared_run))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "not readable by you" in first and str(shared_run) in first
