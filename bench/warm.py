#!/usr/bin/env python
# This file is part of ctrl_bps_parsl.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This software is dual licensed under the GNU General Public License and also
# under a 3-clause BSD license. Recipients may choose which of these licenses
# to use; please see the files gpl-3.0.txt and/or bsd_license.txt,
# respectively.  If you choose the GPL option then the following text applies
# (but note that there is still no warranty even if you opt for BSD instead):
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""Warm quantum starts on a real pipeline: the same quanta run by ``bps submit``
warm (the default), cold (``warmStart: false``), ``pipetask run -j CORES``, and the
fork limit (one process that imported the stack forks each quantum's
``run-qbb``, CORES at a time).

The pipeline is tests/e2e_pipeline's with a third per-detector task: ``source``,
``middle``, ``middle2`` per detector, ``gather`` over all of them, so N detectors
give 3N+1 quanta (20: 61, 50: 151). Each run has its own output collection and
run log; the span is from the first quantum's task start to the last one's end
(``start``/``ok`` lines of the run log, written by the tasks themselves, so the
same clock for every runner). Figures of one invocation are ratios of one run.

With ``--slurm-nodes N`` (root only) the same pipeline runs through
``sites.Slurm`` with ``nodes: N`` on the multi-node Slurm of
tests/multinode_slurm.py (N compute nodes in network + UTS namespaces on this
machine), warm and cold only, one block of N nodes and ``--workers`` Parsl
workers per node. Each run's quanta per node, and how many ran in a child of
a warm process, come from the run's own records: the store's host per job and
the tasks' probe log (``probe_log``: whether the quantum's process was forked
from a warm process).

Usage::

    .venv/bin/python bench/warm.py [--quanta 61,151] [--cores 2] [--only warm,cold,...] [--workdir DIR]
    .venv/bin/python bench/warm.py --slurm-nodes 2 [--workers 1] [--quanta 61,151]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from e2e_pipeline import repo as e2e  # noqa: E402

RUNNERS = ("fork", "warm", "cold", "pipetask")
SLURM_RUNNERS = ("warm", "cold")
PIPELINE = """\
description: e2e pipeline with three per-detector tasks and a fan-in (bench/warm.py)
tasks:
  source:
    class: e2e_pipeline.tasks.SourceTask
  middle:
    class: e2e_pipeline.tasks.MiddleTask
  middle2:
    class: e2e_pipeline.tasks.MiddleTask
    config:
      connections.inp: e2e_b
      connections.out: e2e_c
  gather:
    class: e2e_pipeline.tasks.GatherTask
    config:
      connections.inp: e2e_c
"""


def span(run_log: Path) -> tuple[float, int]:
    """(seconds from the first quantum's start to the last one's end, quanta that ended ok)."""
    rows = e2e.read_run_log(run_log)
    starts = [t for _, _, _, t, status in rows if status == "start"]
    ends = [t for _, _, _, t, status in rows if status == "ok"]
    return (max(ends) - min(starts), len(ends)) if starts and ends else (float("nan"), 0)


def bps(
    workdir: Path,
    repo: Path,
    pipeline: Path,
    name: str,
    site: dict,
    command: str = "submit",
    compute_site: str = "local",
) -> str:
    """Run ``bps <command>`` of the pipeline on site ``compute_site``; its output."""
    submit_yaml = e2e.write_submit_yaml(
        workdir,
        repo,
        pipeline,
        output_run_suffix=name,
        extra={"computeSite": compute_site, "site": {compute_site: site}},
    )
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=workdir)
    proc = subprocess.run(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), command, str(submit_yaml)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"bps {command} ({name}) failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def run_pipetask(workdir: Path, repo: Path, pipeline: Path, name: str, cores: int) -> None:
    """``pipetask run -j CORES`` of the pipeline (a process per quantum too)."""
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=workdir)
    output, output_run = e2e.output_names(name)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "pipetask.log", "w") as log:
        subprocess.run(
            [
                str(e2e.VENV_PREFIX / "bin" / "pipetask"),
                "--long-log",
                "run",
                "-b",
                str(repo),
                "-i",
                e2e.INPUT_RUN,
                "-o",
                output,
                "--output-run",
                output_run,
                "-p",
                str(pipeline),
                "-j",
                str(cores),
                "--register-dataset-types",
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def run_fork_limit(workdir: Path, repo: Path, pipeline: Path, name: str, cores: int) -> None:
    """``bps transform`` and ``pre-exec-init-qbb`` (not timed), then `fork_quanta` in a fresh process."""
    bps(workdir, repo, pipeline, name, {}, command="transform")
    submit = workdir / "submit" / e2e.output_names(name)[1]
    (qgraph,) = submit.glob("*.qg")
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=workdir)
    pipetask = str(e2e.VENV_PREFIX / "bin" / "pipetask")
    subprocess.run(
        [pipetask, "--long-log", "pre-exec-init-qbb", str(repo), str(qgraph)],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, __file__, "--fork-quanta", str(submit), str(repo), str(qgraph), str(cores)],
        env=env,
        cwd=workdir,
        check=True,
    )


def fork_quanta(submit: str, repo: str, qgraph: str, cores: int) -> None:
    """The fork limit: import the stack and the tasks once, then fork each
    quantum's ``pipetask run-qbb`` (in dependency order, ``cores`` at a time)
    calling the ``pipetask`` click group in the child.
    """
    from lsst.ctrl.bps import GenericWorkflow

    with open(os.path.join(submit, "bps_generic_workflow.pickle"), "rb") as stream:
        workflow = GenericWorkflow.load(stream, "pickle")
    import e2e_pipeline.tasks  # noqa: F401
    import lsst.daf.butler  # noqa: F401
    import lsst.pipe.base  # noqa: F401
    from lsst.ctrl.mpexec.cli.pipetask import cli

    quanta = {
        name: workflow.get_job(name).cmdvals["qgraphNodeId"]
        for name in workflow
        if "qgraphNodeId" in (workflow.get_job(name).cmdvals or {})
    }
    waiting = {name: {p for p in workflow.predecessors(name) if p in quanta} for name in quanta}
    logs = os.path.join(submit, "fork_logs")
    os.makedirs(logs, exist_ok=True)
    running: dict[int, str] = {}
    while waiting or running:
        for name in [n for n, deps in waiting.items() if not deps][: cores - len(running)]:
            del waiting[name]
            args = [
                "--long-log",
                "--log-level=VERBOSE",
                "run-qbb",
                repo,
                qgraph,
                "--qgraph-node-id",
                quanta[name],
            ]
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.setsid()
                    for fd, suffix in ((1, "out"), (2, "err")):
                        log = os.open(os.path.join(logs, f"{name}.{suffix}"), os.O_WRONLY | os.O_CREAT, 0o644)
                        os.dup2(log, fd)
                        os.close(log)
                    cli.main(args, prog_name="pipetask", standalone_mode=True)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                finally:
                    os._exit(code)
            running[pid] = name
        pid, _ = os.wait()
        done = running.pop(pid)
        for deps in waiting.values():
            deps.discard(done)


def probe_pipeline(root: Path, name: str) -> tuple[Path, Path]:
    """`PIPELINE` with every task's ``probe_log`` set (tests/e2e_pipeline/tasks.py:
    each quantum appends ``label key warm dirty token``); (its file, the probe log).
    """
    import yaml

    probe_log = root / name / "probe.log"
    pipeline = yaml.safe_load(PIPELINE)
    for task in pipeline["tasks"].values():
        task.setdefault("config", {})["probe_log"] = str(probe_log)
    path = root / f"pipeline3_{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path, probe_log


def slurm_site(rig: Any, nodes: int, workers: int, warm: bool) -> dict:
    """``sites.Slurm`` on the rig: one block of ``nodes`` nodes, ``workers`` Parsl workers per node."""
    return {
        "class": "lsst.ctrl.bps.parsl.sites.Slurm",
        "nodes": nodes,
        "walltime": "01:00:00",
        "partition": rig.partition,
        "exclusive": False,
        "max_blocks": 1,
        "worker_init": f"export PATH={e2e.VENV_PREFIX / 'bin'}:$PATH",
        "executor_options": {"max_workers_per_node": workers},
        "warmStart": warm,
    }


def placement(submit: Path, probe_log: Path) -> dict[str, dict[str, int]]:
    """Per host: the quanta it ran (the store's host of each job) and how many
    of them ran in a child of a warm process (the probe log, joined on the
    quantum's label and detector through the job's name).
    """
    from lsst.ctrl.bps.parsl.store.runstore import DB_NAME, RunStore

    store = RunStore(str(submit / DB_NAME), readonly=True)
    try:
        jobs, statuses = store.jobs(), store.statuses()
    finally:
        store.close()
    probes = [line.split() for line in probe_log.read_text().splitlines()] if probe_log.exists() else []
    warm = {(label, key.rsplit(".", 1)[-1]) for label, key, flag, *_ in probes if flag == "1"}
    found: dict[str, dict[str, int]] = {}
    for job, row in zip(jobs, statuses, strict=True):
        if job.label not in ("source", "middle", "middle2", "gather"):
            continue
        counts = found.setdefault(str(row.host), {"quanta": 0, "warm": 0})
        counts["quanta"] += 1
        detector = job.name.rsplit("_", 1)[-1] if job.label != "gather" else "E2ECam"
        counts["warm"] += (job.label, detector) in warm
    return found


def warm_processes(submit: Path) -> dict[str, list[int]]:
    """Warm processes that became ready, per ``srun`` task (one task per node:
    ``0`` is the block's first node), from the notes the Parsl workers wrote to
    the Slurm blocks' stderr.
    """
    found: dict[str, list[int]] = {}
    for path in submit.glob("parsl/runinfo/*/submit_scripts/*.stderr"):
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"(\d+): \[bps-parsl\] warm process (\d+) .*: ready", line)
            if match:
                found.setdefault(match[1], []).append(int(match[2]))
    return found


def load() -> str:
    """The 1-minute load average."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quanta", default="61,151", help="sizes, 3N+1 quanta each")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--only", help=f"runners among {', '.join(RUNNERS)} (default: all; Slurm: warm,cold)")
    parser.add_argument("--slurm-nodes", type=int, default=0, help="run on a multi-node Slurm of N nodes")
    parser.add_argument("--workers", type=int, default=1, help="Parsl workers per Slurm node (default 1)")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--fork-quanta", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fork_quanta:
        submit, repo, qgraph, cores = args.fork_quanta
        fork_quanta(submit, repo, qgraph, int(cores))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_warm_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pipeline = root / "pipeline3.yaml"
    pipeline.write_text(PIPELINE)
    runners = [
        r for r in (args.only or ",".join(SLURM_RUNNERS if args.slurm_nodes else RUNNERS)).split(",") if r
    ]
    rig = None
    if args.slurm_nodes:
        if set(runners) - set(SLURM_RUNNERS):
            parser.error(f"--slurm-nodes runs only {', '.join(SLURM_RUNNERS)}")
        sys.path.insert(0, str(e2e.TESTS_DIR))
        from multinode_slurm import MultiNodeSlurm

        rig = MultiNodeSlurm(n_nodes=args.slurm_nodes)
        rig.start()
        os.environ.update(rig.env)
        print(f"multi-node Slurm: {rig.hosts} ({rig.cores} CPUs each as Slurm sees them), work dir {root}")
    results = {}
    try:
        for quanta in (int(q) for q in args.quanta.split(",")):
            detectors = (quanta - 1) // 3
            repo = e2e.make_repo(root / f"repo{quanta}", n_detectors=detectors)
            for runner in runners:
                name = f"{runner}{quanta}"
                workdir = root / name
                if rig is not None and not rig.wait_idle(60):
                    raise RuntimeError(f"the rig is not idle before {name}: {rig.squeue()}")
                load_before = load()
                began = time.monotonic()
                note = ""
                hosts: dict[str, dict[str, int]] = {}
                servers: dict[str, list[int]] = {}
                if rig is not None:
                    probed, probe_log = probe_pipeline(root, name)
                    site = slurm_site(rig, args.slurm_nodes, args.workers, runner == "warm")
                    bps(workdir, repo, probed, name, site, compute_site="multinode")
                    submit = workdir / "submit" / e2e.output_names(name)[1]
                    hosts = placement(submit, probe_log)
                    servers = warm_processes(submit)
                    note = ", ".join(
                        f"{h}: {c['quanta']} quanta, {c['warm']} warm" for h, c in sorted(hosts.items())
                    )
                    note += "; warm processes per srun task: " + (
                        ", ".join(f"{task}: {pids}" for task, pids in sorted(servers.items())) or "none"
                    )
                elif runner == "warm":
                    output = bps(workdir, repo, pipeline, name, {"cores": args.cores})
                    note = next(
                        (
                            line.split("local job pool: ")[-1]
                            for line in output.splitlines()
                            if "started warm" in line
                        ),
                        "",
                    )
                elif runner == "cold":
                    bps(workdir, repo, pipeline, name, {"cores": args.cores, "warmStart": False})
                elif runner == "pipetask":
                    run_pipetask(workdir, repo, pipeline, name, args.cores)
                elif runner == "fork":
                    run_fork_limit(workdir, repo, pipeline, name, args.cores)
                seconds, ok = span(workdir / e2e.RUN_LOG_NAME)
                results[name] = {
                    "quanta": quanta,
                    "runner": runner,
                    "span_s": seconds,
                    "ok": ok,
                    "wall_s": time.monotonic() - began,
                    "load": [load_before, load()],
                    "note": note,
                    "hosts": hosts,
                    "warm_processes": servers,
                }
                print(
                    f"{name:>14}: span {seconds:7.2f} s, {ok} quanta ok, wall {results[name]['wall_s']:.1f} s, "
                    f"load {load_before} -> {results[name]['load'][1]}; {note}",
                    flush=True,
                )
    finally:
        if rig is not None:
            rig.stop()
    print("\n| quanta | " + " | ".join(runners) + " | warm / fork | cold / warm | pipetask / warm |")
    print("|---" * (len(runners) + 4) + "|")
    for quanta in (int(q) for q in args.quanta.split(",")):
        spans = {r: results[f"{r}{quanta}"]["span_s"] for r in runners}

        def ratio(a: str, b: str, spans: dict = spans) -> str:
            return f"{spans[a] / spans[b]:.2f}x" if a in spans and b in spans else "-"

        cells = " | ".join(f"{spans[r]:.1f} s" for r in runners)
        print(
            f"| {quanta} | {cells} | {ratio('warm', 'fork')} | {ratio('cold', 'warm')} | {ratio('pipetask', 'warm')} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
