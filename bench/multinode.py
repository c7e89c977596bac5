#!/usr/bin/env python
"""Many short jobs on a real multi-node Slurm: the plugin vs raw Parsl HTEX.

Starts the multi-node Slurm of ``tests/multinode_slurm.py`` on this machine
(root only: compute nodes in network namespaces), then runs the same wide
workflow of ``/bin/true`` jobs (``bench/_worker.py``'s ``wide`` DAG, the
command lines ``bps`` would render) two ways, in turn, each in a fresh
process:

- **ours**: ``ParslService.prepare`` + ``submit`` on ``sites.Slurm`` with
  blocks of ``--nodes`` nodes, ``--blocks`` of them at once;
- **raw**: one Parsl ``bash_app`` per job on a HighThroughputExecutor with
  the same ``SlurmProvider`` settings, launcher, address and workers.

Both clocks include the blocks' start (``sbatch`` until the worker pools
connect). Prints the medians and the ratio ours / raw (target <= 1.0x)::

    .venv/bin/python bench/multinode.py                 # 5000 jobs, 2 blocks x 2 nodes
    .venv/bin/python bench/multinode.py --jobs 500 --repeat 1
    .venv/bin/python bench/multinode.py --json out.json --keep

The rig is removed at the end (also after an error or Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.join(os.path.dirname(BENCH_DIR), "tests")
VENV_BIN = os.path.dirname(sys.executable)


def slurm_settings(args: argparse.Namespace, partition: str) -> dict[str, Any]:
    """Block settings shared by both runners."""
    return {
        "nodes": args.nodes,
        "blocks": args.blocks,
        "workers": args.workers,
        "partition": partition,
        "walltime": "01:00:00",
        "exclusive": True,
        "worker_init": f"export PATH={VENV_BIN}:$PATH",
    }


def ours_site(settings: dict[str, Any]) -> dict[str, Any]:
    """The site section of the plugin's run."""
    return {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": settings["nodes"],
        "walltime": settings["walltime"],
        "partition": settings["partition"],
        "exclusive": settings["exclusive"],
        "init_blocks": settings["blocks"],
        "min_blocks": 0,
        "max_blocks": settings["blocks"],
        "worker_init": settings["worker_init"],
        "executor_options": {"max_workers_per_node": settings["workers"]},
    }


def raw_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Raw Parsl in this process: `_worker.measure_raw_parsl` on an HTEX whose
    blocks are Slurm jobs of the same shape as the plugin's."""
    import _worker
    from lsst.ctrl.bps.parsl.sites.slurm import default_launcher
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import SlurmProvider

    settings = spec["slurm"]

    def executor(kind: str, run_dir: str) -> HighThroughputExecutor:
        return HighThroughputExecutor(
            label="raw",
            address=spec["address"],
            max_workers_per_node=settings["workers"],
            worker_logdir_root=os.path.join(run_dir, "worker_logs"),
            provider=SlurmProvider(
                partition=settings["partition"],
                nodes_per_block=settings["nodes"],
                init_blocks=settings["blocks"],
                min_blocks=0,
                max_blocks=settings["blocks"],
                exclusive=settings["exclusive"],
                walltime=settings["walltime"],
                worker_init=settings["worker_init"],
                launcher=default_launcher(),
            ),
        )

    _worker._raw_executor = executor
    return _worker.measure_raw_parsl(spec)


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's ended children (a runner: its driver, interchange...)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class MultiNodeBench:
    """Runs the measurements on a started rig."""

    def __init__(self, args: argparse.Namespace, rig: Any):
        self.args = args
        self.rig = rig
        self.root = args.workdir or tempfile.mkdtemp(prefix="bps_parsl_multinode_")
        os.makedirs(self.root, exist_ok=True)
        self.env = dict(os.environ, **rig.env)
        self.env["PATH"] = VENV_BIN + os.pathsep + self.env.get("PATH", "")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH_DIR, self.env.get("PYTHONPATH")) if p)
        self.env["XDG_STATE_HOME"] = os.path.join(self.root, "state")
        self.settings = slurm_settings(args, rig.partition)
        self.count = 0

    def run(self, runner: str, jobs: int | None = None) -> dict[str, Any]:
        """One measurement in a fresh process (``jobs``: default ``--jobs``)."""
        self.count += 1
        workdir = os.path.join(self.root, f"{self.count:02d}-{runner}")
        spec: dict[str, Any] = {"workdir": workdir, "dag": "wide", "n": jobs or self.args.jobs}
        if runner == "ours":
            spec.update(measure="submit", site=ours_site(self.settings))
            argv = [sys.executable, os.path.join(BENCH_DIR, "_worker.py"), json.dumps(spec)]
            if self.args.profile:
                os.makedirs(self.args.profile, exist_ok=True)
                stats = os.path.join(os.path.abspath(self.args.profile), f"{self.count:02d}-ours.prof")
                argv[1:1] = ["-m", "cProfile", "-o", stats]
        else:
            spec.update(
                measure="raw_parsl", executor="slurm", slurm=self.settings, address=self.rig.head_address
            )
            argv = [sys.executable, os.path.abspath(__file__), "--raw-worker", json.dumps(spec)]
        if not self.rig.wait_idle(60):
            raise RuntimeError(f"the rig is not idle before {runner}: {self.rig.squeue()}")
        t0 = time.time()
        machine0, children0 = machine_busy_seconds(), children_cpu_seconds()
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, cwd=self.root)
        machine_cpu, process_cpu = machine_busy_seconds() - machine0, children_cpu_seconds() - children0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{runner} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        result = json.loads(lines[-1][len("BENCH_RESULT ") :])
        result.update(
            machine_cpu_seconds=machine_cpu, process_cpu_seconds=process_cpu, load=os.getloadavg()[0]
        )
        print(
            f"  {runner}: {result['jobs']} jobs in {result['seconds']:.2f} s, first job ended after "
            f"{result['first_end_seconds']:.2f} s (process {time.time() - t0:.1f} s; CPU: machine "
            f"{machine_cpu:.1f} s, {runner}'s process and its children {process_cpu:.1f} s; load {result['load']:.2f})",
            flush=True,
        )
        return result

    def compare(self) -> dict[str, Any]:
        """Interleaved runs (ours, raw, ours, raw...); medians and ratio."""
        if self.args.warmup:
            # The first blocks after the rig started, and the first imports, are slower: not timed.
            print(f"warm-up ({self.args.warmup} jobs each, not counted):", flush=True)
            for runner in ("raw", "ours"):
                self.run(runner, self.args.warmup)
        seconds: dict[str, list[float]] = {"ours": [], "raw": []}
        for k in range(self.args.repeat):
            for runner in ("ours", "raw") if k % 2 == 0 else ("raw", "ours"):
                seconds[runner].append(self.run(runner)["seconds"])
        ours, raw = statistics.median(seconds["ours"]), statistics.median(seconds["raw"])
        return {
            "jobs": self.args.jobs,
            "blocks": self.args.blocks,
            "nodes_per_block": self.args.nodes,
            "workers_per_node": self.args.workers,
            "ours_seconds": seconds["ours"],
            "raw_seconds": seconds["raw"],
            "ours_median": ours,
            "raw_median": raw,
            "ratio": ours / raw,
        }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs of the wide workflow (default 5000)")
    parser.add_argument("--blocks", type=int, default=2, help="Slurm blocks at once (default 2)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes per block (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers per node (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=200, help="jobs of an untimed first run of each (default 200; 0: none)"
    )
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--workdir", help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile", metavar="DIR", help="run ours under cProfile (the driver's thread), stats in DIR"
    )
    parser.add_argument("--raw-worker", metavar="SPEC", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.raw_worker:
        sys.path.insert(0, BENCH_DIR)
        spec = json.loads(args.raw_worker)
        os.makedirs(spec["workdir"], exist_ok=True)
        print("BENCH_RESULT " + json.dumps(raw_worker(spec)), flush=True)
        return 0

    sys.path.insert(0, TESTS_DIR)
    from multinode_slurm import MultiNodeSlurm, SlurmUnavailable

    rig = MultiNodeSlurm(n_nodes=args.blocks * args.nodes)
    try:
        rig.start()
    except SlurmUnavailable as exc:
        print(f"cannot start the multi-node Slurm: {exc}", file=sys.stderr)
        return 2
    bench = MultiNodeBench(args, rig)
    try:
        print(
            f"{args.jobs} /bin/true jobs, {args.blocks} blocks x {args.nodes} nodes x {args.workers} workers "
            f"(rig up in {rig.timings['start']:.1f} s; work dir {bench.root})",
            flush=True,
        )
        result = bench.compare()
    finally:
        rig.stop()
        if not args.keep and not args.workdir:
            subprocess.run(["rm", "-rf", bench.root], check=False)
    print(
        f"ours {result['ours_median']:.2f} s, raw Parsl HTEX {result['raw_median']:.2f} s: "
        f"ratio {result['ratio']:.2f}x (medians of {args.repeat})"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
