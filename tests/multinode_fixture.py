"""Pytest fixture ``multinode_slurm``: a real multi-node Slurm on this machine.

Use it from a test module with::

    from multinode_fixture import multinode_rig, multinode_slurm  # noqa: F401

The rig (`multinode_slurm.MultiNodeSlurm`, 4 nodes unless
``BPS_PARSL_MULTINODE_NODES`` says otherwise) starts once per session
(~0.5 s once the packages are installed) and is removed at the end of the
session, also when a test fails or the session is interrupted (and, after a
``kill -9`` of pytest, by the next session's start). Tests are skipped with
the reason when it cannot run here (not root, no ``ip netns``, no Slurm and
no apt).

``multinode_slurm`` (function-scoped) sets ``SLURM_CONF`` for the test only,
so that it can share a session with the one-node ``local_slurm`` fixture,
cancels the jobs earlier tests left, brings back nodes they killed and
waits for every node to be idle.
"""

from __future__ import annotations

__all__ = ["multinode_rig", "multinode_slurm"]

import os

import pytest

try:
    from .multinode_slurm import MultiNodeSlurm, SlurmUnavailable
except ImportError:  # tests/ is not a package: imported via sys.path
    from multinode_slurm import MultiNodeSlurm, SlurmUnavailable


_SHARED: dict[str, MultiNodeSlurm | str] = {}
"""The session's one rig (or why it cannot start): every test module that
imports the fixture gets its own fixture definition, and a second rig
would wait for the first one's lock."""


@pytest.fixture(scope="session")
def multinode_rig():
    """Yield a started `MultiNodeSlurm`; skip if it cannot run here."""
    rig = _SHARED.get("rig")
    if rig is None:
        rig = MultiNodeSlurm(n_nodes=int(os.environ.get("BPS_PARSL_MULTINODE_NODES", "4")))
        try:
            rig.start()
        except SlurmUnavailable as exc:
            rig = f"no multi-node Slurm: {exc}"
        _SHARED["rig"] = rig
    if isinstance(rig, str):
        pytest.skip(rig)
    try:
        yield rig
    finally:
        # The first module's finalizer stops it, at the end of the session.
        rig.stop()


@pytest.fixture
def multinode_slurm(multinode_rig, monkeypatch):
    """The session's rig, with ``SLURM_CONF`` set for this test and every
    node idle (a node an earlier test killed is brought back first)."""
    monkeypatch.setenv("SLURM_CONF", multinode_rig.env["SLURM_CONF"])
    multinode_rig.cancel_all()
    multinode_rig.revive_nodes()
    if not multinode_rig.wait_idle(60):
        pytest.fail(
            f"multi-node Slurm not idle: jobs {multinode_rig.squeue()}, nodes {multinode_rig.sinfo()}"
        )
    multinode_rig.reap_leftovers()
    return multinode_rig
