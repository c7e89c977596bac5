"""Shared pytest fixtures.

Module-level imports are standard library only, so test modules that need
no butler (e.g. the synthetic core tests) do not pay for one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def e2e_repo_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Return ``make(n_detectors=5) -> Path``: a tiny e2e butler repo, made
    once per session and size, then shared.

    Tests sharing a repo must write to distinct output collections
    (``output_run_suffix``) and use their own work directory (run log,
    submit directory).  See ``tests/e2e_pipeline/README.md``.
    """
    from e2e_pipeline import repo as e2e

    repos: dict[int, Path] = {}

    def make(n_detectors: int = e2e.N_DETECTORS) -> Path:
        if n_detectors not in repos:
            root = tmp_path_factory.mktemp(f"e2e_repo_{n_detectors}")
            repos[n_detectors] = e2e.make_repo(root, n_detectors=n_detectors)
        return repos[n_detectors]

    return make


@pytest.fixture(scope="session")
def e2e_repo(e2e_repo_factory: Callable[..., Path]) -> Path:
    """The shared 5-detector e2e repo (11 quanta for the full pipeline)."""
    return e2e_repo_factory()


@pytest.fixture(autouse=True)
def private_run_index(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's run index out of the real ``~/.local/state``."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out ``long`` tests unless ``-m`` names that marker or the test
    is named on the command line (``pytest -m long`` runs the long tier)."""
    if "long" in (config.getoption("markexpr") or ""):
        return
    named = {arg for arg in config.args if "::" in arg}
    kept, left_out = [], []
    for item in items:
        wanted = item.get_closest_marker("long") is None or any(item.nodeid.startswith(n) for n in named)
        (kept if wanted else left_out).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
        config.stash[_LONG_LEFT_OUT] = len(left_out)


_LONG_LEFT_OUT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say how to run the long tests that were left out."""
    left_out = config.stash.get(_LONG_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} long test(s) not run: run them with 'pytest -m long'")
