"""Pytest fixture ``local_slurm``: a real one-node Slurm on localhost.

Use it from a test module with::

    from slurm_fixture import local_slurm  # noqa: F401

(or import it in ``conftest.py``). It is session-scoped: the daemons start
once (installing Slurm from Debian packages if needed, as root) and stop at
the end of the session. Tests are skipped with the reason when no Slurm can
be provided. While it is active ``os.environ`` holds ``SLURM_CONF`` so that
``sbatch``/``squeue`` and Parsl's ``SlurmProvider`` find the cluster.
"""

from __future__ import annotations

__all__ = ["local_slurm"]

import os

import pytest

try:
    from .slurm_localhost import LocalSlurm, SlurmUnavailable
except ImportError:  # tests/ is not a package: imported via sys.path
    from slurm_localhost import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def local_slurm():
    """Yield a started `LocalSlurm`; skip if Slurm is unavailable here."""
    slurm = LocalSlurm()
    try:
        slurm.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no local Slurm: {exc}")
    saved = {key: os.environ.get(key) for key in slurm.env}
    os.environ.update(slurm.env)
    try:
        yield slurm
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        slurm.stop()
