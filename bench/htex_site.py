"""A benchmark site: the plugin on a local HighThroughputExecutor.

Used as ``site.local.class: htex_site.BenchHtex`` with ``bench/`` on
``PYTHONPATH`` and the venv's ``bin/`` on ``PATH`` (HTEX starts its
interchange and worker pool from ``PATH``). Raw Parsl's HTEX reference uses
the same `htex_executor`, so both run on identical executors.
"""

from __future__ import annotations

import os

from lsst.ctrl.bps.parsl.job import ParslJob
from lsst.ctrl.bps.parsl.site import SiteConfig
from parsl.executors import HighThroughputExecutor
from parsl.executors.base import ParslExecutor
from parsl.providers import LocalProvider

__all__ = ("BenchHtex", "htex_executor")


def htex_executor(workers: int, log_dir: str | None = None) -> HighThroughputExecutor:
    """One local block of ``workers`` single-core workers."""
    return HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=workers,
        cores_per_worker=1,
        worker_logdir_root=log_dir,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )


class BenchHtex(SiteConfig):
    """Every job on a local HTEX with one worker per core (key ``cores``)."""

    def get_executors(self) -> list[ParslExecutor]:
        cores = self.get("cores", int, len(os.sched_getaffinity(0)), positive=True)
        log_dir = os.path.join(self.submit_path, "parsl", "worker_logs") if self.submit_path else None
        return [htex_executor(cores, log_dir)]

    def select_executor(self, job: ParslJob) -> str:
        return "htex"
