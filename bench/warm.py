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
warm (the default), cold (``warmStart: false``), cold without the direct start
(a job shell the launcher does not reproduce), ``pipetask run -j CORES``, and the
fork limit (one process that imported the stack forks each quantum's
``run-qbb``, CORES at a time).

The pipeline is tests/e2e_pipeline's with a third per-detector task: ``source``,
``middle``, ``middle2`` per detector, ``gather`` over all of them, so N detectors
give 3N+1 quanta (20: 61, 50: 151). Each run has its own output collection and
run log; the span is from the first quantum's task start to the last one's end
(``start``/``ok`` lines of the run log, written by the tasks themselves, so the
same clock for every runner). Figures of one invocation are ratios of one run.

Usage::

    .venv/bin/python bench/warm.py [--quanta 61,151] [--cores 2] [--only warm,cold,...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from e2e_pipeline import repo as e2e  # noqa: E402

RUNNERS = ("fork", "warm", "cold", "cold_shell", "pipetask")
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


def bps(workdir: Path, repo: Path, pipeline: Path, name: str, site: dict, command: str = "submit") -> str:
    """Run ``bps <command>`` of the pipeline; its output."""
    submit_yaml = e2e.write_submit_yaml(
        workdir, repo, pipeline, output_run_suffix=name, extra={"site": {"local": site}}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quanta", default="61,151", help="sizes, 3N+1 quanta each")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--only", default=",".join(RUNNERS), help=f"runners among {', '.join(RUNNERS)}")
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
    shell = root / "jobsh"  # bash under another name: the launcher starts the shell (no direct start)
    if not shell.exists():
        shell.symlink_to("/bin/bash")
    runners = [r for r in args.only.split(",") if r]
    results = {}
    for quanta in (int(q) for q in args.quanta.split(",")):
        detectors = (quanta - 1) // 3
        repo = e2e.make_repo(root / f"repo{quanta}", n_detectors=detectors)
        for runner in runners:
            name = f"{runner}{quanta}"
            workdir = root / name
            began = time.monotonic()
            note = ""
            if runner == "warm":
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
            elif runner == "cold_shell":
                bps(
                    workdir,
                    repo,
                    pipeline,
                    name,
                    {"cores": args.cores, "warmStart": False, "jobShell": str(shell)},
                )
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
                "note": note,
            }
            print(
                f"{name:>14}: span {seconds:7.2f} s, {ok} quanta ok, wall {results[name]['wall_s']:.1f} s {note}",
                flush=True,
            )
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
