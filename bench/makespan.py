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

"""Makespan of a workflow of chains of different lengths feeding fan-ins,
dispatched by priority and critical path (the default) and first come first
served (``parslDispatchOrder: fifo``), on the local site.

The workflow: a *spine*, one chain of long jobs whose last job is a fan-in
of everything, and groups of chains of short jobs (lengths 1 to 10) each
feeding a fan-in job that feeds the spine's last job. Every job is ``sleep
D`` with ``requestWalltime`` proportional to ``D`` (so the critical path
is known to the plugin; the limit is far above ``D``).

The lower bound of the makespan is ``max(critical path, total work /
slots)``, computed from each job's measured run time (start to end in the
run's store) and, for reference, from the nominal ``D``. The makespan is
from the first job's start to the last job's end.

Usage::

    python bench/makespan.py [--jobs 2000] [--cores 2] [--spine 150] [--long 0.6] [--short 0.06]
                             [--only priority|fifo] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

WALLTIME_FACTOR = 50.0
"""``requestWalltime`` (minutes) = WALLTIME_FACTOR * D / 60: proportional to
the job's duration and far above it."""


def build(n_jobs: int, spine: int, long_s: float, short_s: float) -> tuple[Any, dict[str, float], list]:
    """The generic workflow, each job's nominal seconds and the edges."""
    from lsst.ctrl.bps import GenericWorkflow, GenericWorkflowExec, GenericWorkflowJob

    sh = GenericWorkflowExec("sh", "/bin/sh", False)
    gw = GenericWorkflow("makespan")
    seconds: dict[str, float] = {}
    edges: list[tuple[str, str]] = []

    def add(name: str, label: str, duration: float) -> None:
        gw.add_job(
            GenericWorkflowJob(
                name,
                label,
                executable=sh,
                arguments=f"-c 'sleep {duration}'",
                request_walltime=str(WALLTIME_FACTOR * duration / 60.0),
                number_of_retries=0,
            )
        )
        seconds[name] = duration

    for k in range(spine):
        add(f"spine{k}", "spine", long_s)
        if k:
            edges.append((f"spine{k - 1}", f"spine{k}"))
    sink = f"spine{spine - 1}"
    left = n_jobs - spine
    group = 0
    while left > 0:
        fan_in = f"fanin{group}"
        add(fan_in, "fanin", short_s)
        edges.append((fan_in, sink))
        left -= 1
        for chain in range(10):
            length = min(1 + (group * 3 + chain * 7) % 10, left)
            previous = None
            for step in range(length):
                name = f"g{group}c{chain}s{step}"
                add(name, "short", short_s)
                if previous:
                    edges.append((previous, name))
                previous = name
            left -= length
            if previous:
                edges.append((previous, fan_in))
            if left <= 0:
                break
        group += 1
    for parent, child in edges:
        gw.add_job_relationships(parent, child)
    return gw, seconds, edges


def lower_bound(seconds: dict[str, float], edges: list[tuple[str, str]], slots: int) -> tuple[float, float]:
    """(critical path, total work / slots) of jobs of the given durations."""
    children: dict[str, list[str]] = {name: [] for name in seconds}
    parents = dict.fromkeys(seconds, 0)
    for parent, child in edges:
        children[parent].append(child)
        parents[child] += 1
    order = [name for name, count in parents.items() if count == 0]
    for name in order:
        for child in children[name]:
            parents[child] -= 1
            if parents[child] == 0:
                order.append(child)
    path: dict[str, float] = {}
    for name in reversed(order):
        path[name] = seconds[name] + max((path[c] for c in children[name]), default=0.0)
    return max(path.values()), sum(seconds.values()) / slots


def run_once(order: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Prepare and submit the workflow with one dispatch order; returns its figures."""
    from lsst.ctrl.bps import BpsConfig
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path

    service_class = "lsst.ctrl.bps.parsl.ParslService"
    config = BpsConfig(
        {
            "wmsServiceClass": service_class,
            "parslProgressInterval": 0,
            "operator": "bench",
            "computeSite": "bench",
            "site": {"bench": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": args.cores}},
            "parslDispatchOrder": order,
        },
        search_order=BPS_SEARCH_ORDER,
        defaults=BPS_DEFAULTS,
        wms_service_class_fqn=service_class,
    )
    gw, nominal, edges = build(args.jobs, args.spine, args.long, args.short)
    submit = os.path.join(workdir, order)
    service = ParslService(config)
    workflow = service.prepare(config, gw, submit)
    began = time.time()
    service.submit(workflow)
    ended = time.time()
    store = RunStore(db_path(submit), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        attempts = store.attempts()
    finally:
        store.close()
    measured = {names[a.job]: (a.end or 0.0) - (a.start or 0.0) for a in attempts}
    first = min(a.start for a in attempts if a.start)
    last = max(a.end for a in attempts if a.end)
    makespan = last - first
    critical, work = lower_bound(measured, edges, args.cores)
    nominal_critical, nominal_work = lower_bound(nominal, edges, args.cores)
    bound = max(critical, work)
    return {
        "order": order,
        "jobs": len(measured),
        "makespan_s": makespan,
        "submit_s": ended - began,
        "critical_path_s": critical,
        "work_per_slot_s": work,
        "ratio": makespan / bound,
        "nominal_ratio": makespan / max(nominal_critical, nominal_work),
        "nominal_critical_path_s": nominal_critical,
        "nominal_work_per_slot_s": nominal_work,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--spine", type=int, default=150, help="jobs of the long chain")
    parser.add_argument("--long", type=float, default=0.6, help="seconds of a spine job")
    parser.add_argument("--short", type=float, default=0.06, help="seconds of every other job")
    parser.add_argument("--only", choices=("priority", "fifo"))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    orders = [args.only] if args.only else ["priority", "fifo"]
    results = []
    with tempfile.TemporaryDirectory(prefix="bps-parsl-makespan-") as workdir:
        for order in orders:
            results.append(run_once(order, args, workdir))
    print(
        f"{'order':<9} {'jobs':>5} {'makespan s':>10} {'crit. path s':>12} {'work/slots s':>12} "
        f"{'ratio':>6} {'nominal ratio':>13}"
    )
    for r in results:
        print(
            f"{r['order']:<9} {r['jobs']:>5} {r['makespan_s']:>10.1f} {r['critical_path_s']:>12.1f} "
            f"{r['work_per_slot_s']:>12.1f} {r['ratio']:>6.3f} {r['nominal_ratio']:>13.3f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
