#!/usr/bin/env python
"""Per-job cost of the local pool: through Parsl's DataFlowKernel vs direct.

Runs N ``/bin/true`` job attempts (`job.run_job` arguments, one log pair
each) on a `LocalPoolExecutor` of all usable cores, two ways, interleaved in
one process, and prints the wall time per job and the ratio:

- **dfk**: ``python_app(run_job)`` through a DataFlowKernel
  (``Config(initialize_logging=False)``), one app future per job (what the
  driver does on every site);
- **direct**: ``executor.submit(run_job, spec, ...)`` without a kernel: the
  executor's own cost, so that the difference is the kernel's per task.

Timed: from the first submission to the last result (the kernel's and the
pool's start and shut-down are not). Usage::

    python bench/localpool.py [--jobs 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import parsl
from lsst.ctrl.bps.parsl.localpool import LocalPoolExecutor
from lsst_ctrl_bps_parsl_worker.job import run_job
from parsl import python_app
from parsl.config import Config

CORES = len(os.sched_getaffinity(0))


def job_args(root: str, i: int) -> tuple:
    logs = os.path.join(root, "logs")
    return (
        f"bench/{i}/1",
        "",
        "",
        "/bin/true",
        os.path.join(logs, f"{i}.out"),
        os.path.join(logs, f"{i}.err"),
        os.path.join(root, "running", f"{i}.1"),
    )


def run_dfk(n: int, root: str) -> float:
    dfk = parsl.load(
        Config(
            executors=[LocalPoolExecutor(label="local", cores=CORES)],
            run_dir=os.path.join(root, "runinfo"),
            initialize_logging=False,
        )
    )
    try:
        app = python_app(run_job, executors=["local"])
        start = time.perf_counter()
        futures = [app(*job_args(root, i), shell="/bin/sh") for i in range(n)]
        for future in futures:
            future.result()
        return time.perf_counter() - start
    finally:
        dfk.cleanup()
        parsl.clear()


def run_direct(n: int, root: str) -> float:
    executor = LocalPoolExecutor(label="local", cores=CORES)
    executor.start()
    try:
        start = time.perf_counter()
        futures = [executor.submit(run_job, {}, *job_args(root, i), shell="/bin/sh") for i in range(n)]
        for future in futures:
            future.result()
        return time.perf_counter() - start
    finally:
        executor.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"dfk": [], "direct": []}
    runners = {"dfk": run_dfk, "direct": run_direct}
    for k in range(args.repeat):
        for name in ("dfk", "direct") if k % 2 == 0 else ("direct", "dfk"):
            with tempfile.TemporaryDirectory(prefix=f"bench-localpool-{name}-") as root:
                elapsed = runners[name](args.jobs, root)
            seconds[name].append(elapsed)
            print(f"  {name:6s} {args.jobs} jobs: {elapsed:.2f} s ({elapsed / args.jobs * 1e6:.0f} us/job)")
    dfk, direct = (statistics.median(seconds[k]) for k in ("dfk", "direct"))
    print(f"{CORES} cores, {args.jobs} /bin/true jobs, medians of {args.repeat}:")
    print(f"  dfk    {dfk / args.jobs * 1e6:7.0f} us/job")
    print(f"  direct {direct / args.jobs * 1e6:7.0f} us/job")
    print(f"  ratio dfk/direct: {dfk / direct:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
