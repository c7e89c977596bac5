"""One benchmark measurement, run by ``bench/run.py`` in a fresh process.

Usage: ``python bench/_worker.py '<json spec>'``. The spec names a
measurement (``"measure"``) and its parameters; the result is printed as one
line ``BENCH_RESULT <json>`` on stdout.

Every workflow is described once, as a list of `Node` (name, label, data id,
command line, parents), and turned either into a BPS ``GenericWorkflow`` for
the plugin or handed as is to raw Parsl and to the subprocess floor, so all
three run the same command lines with the same log files.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor as PoolExecutor
from dataclasses import dataclass, field
from typing import Any

SERVICE = "lsst.ctrl.bps.parsl.ParslService"
CORES = len(os.sched_getaffinity(0))
BUTLER = "/repo/butler.yaml"
QGRAPH = "/submit/qg.qgraph"
PRE_OPTS = "--long-log --log-level=VERBOSE"  # bps_defaults.yaml: defaultPreCmdOpts
DETECTORS = 189  # science detectors of the LSST camera
REALISTIC_LABELS = ("isr", "calibrateImage", "makeDirectWarp", "makePsfMatchedWarp", "selectDeepCoaddVisits")


# ---- workflows ----------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """One job of a benchmark workflow."""

    name: str
    label: str
    kind: str  # "init", "quantum" or "final"
    visit: int | None = None
    detector: int | None = None
    node_id: str = ""
    parents: list[int] = field(default_factory=list)

    @property
    def command(self) -> str:
        """The command line BPS would render for this job (pipetask -> /bin/true)."""
        if self.kind == "init":
            return f"/bin/true {PRE_OPTS} pre-exec-init-qbb {BUTLER} {QGRAPH}"
        if self.kind == "final":
            return f"/bin/true {QGRAPH} {BUTLER}"
        return f"/bin/true {PRE_OPTS} run-qbb {BUTLER} {QGRAPH} --qgraph-node-id {self.node_id}"

    def log_base(self, submit: str) -> str:
        """Log file stem, as the plugin lays it out (subDirTemplate: label/visit)."""
        parts = [submit, "logs", self.label] + ([str(self.visit)] if self.visit is not None else [])
        return os.path.join(*parts, f"{self.name}.1")


def _quantum(label: str, i: int, parents: list[int]) -> Node:
    visit, detector = 100000 + i // DETECTORS, i % DETECTORS
    return Node(
        f"{label}_{visit}_{detector}", label, "quantum", visit, detector, str(uuid.UUID(int=i + 1)), parents
    )


def iter_wide(n: int) -> Iterator[Node]:
    """``n`` independent quanta of one label."""
    return (_quantum("isr", i, []) for i in range(n))


def iter_chain(n: int) -> Iterator[Node]:
    """A linear chain of ``n`` quanta."""
    return (_quantum("step", i, [i - 1] if i else []) for i in range(n))


def dag_wide(n: int) -> list[Node]:
    """`iter_wide` as a list."""
    return list(iter_wide(n))


def dag_chain(n: int) -> list[Node]:
    """`iter_chain` as a list."""
    return list(iter_chain(n))


def dag_realistic(n: int) -> list[Node]:
    """pipetaskInit; per data id a chain of 3-5 labels; a fan-in per visit
    (``consolidateVisitSummary``, over its detectors' last jobs); finalJob.

    About ``n`` jobs in all.
    """
    per_visit = 10  # detectors per visit
    per_visit_jobs = sum(3 + d % 3 for d in range(per_visit)) + 1
    visits = max(1, round((n - 2) / per_visit_jobs))
    nodes = [Node("pipetaskInit", "pipetaskInit", "init")]
    count = 0
    for v in range(visits):
        ends = []
        for d in range(per_visit):
            prev = 0
            for label in REALISTIC_LABELS[: 3 + d % 3]:
                node = _quantum(label, v * DETECTORS + d, [prev])
                node.node_id = str(uuid.UUID(int=count + 1))
                count += 1
                nodes.append(node)
                prev = len(nodes) - 1
            ends.append(prev)
        visit = 100000 + v
        nodes.append(
            Node(
                f"consolidateVisitSummary_{visit}",
                "consolidateVisitSummary",
                "quantum",
                visit,
                None,
                str(uuid.UUID(int=10**9 + v)),
                ends,
            )
        )
    nodes.append(Node("finalJob", "finalJob", "final"))
    return nodes


DAGS = {"wide": dag_wide, "chain": dag_chain, "realistic": dag_realistic}
STREAMS = {"wide": iter_wide, "chain": iter_chain}
"""Workflows that can be built without holding a list of their nodes."""


def generic_workflow(nodes: Iterable[Node], name: str = "bench"):
    """The BPS GenericWorkflow of a benchmark workflow, shaped like ctrl_bps's
    transform makes it: cmdvals, a <FILE:runQgraphFile> input, bps default
    resources and retry policy, data-id tags."""
    from collections import Counter

    from lsst.ctrl.bps import GenericWorkflow, GenericWorkflowExec, GenericWorkflowFile, GenericWorkflowJob

    pipetask = GenericWorkflowExec("pipetask", "/bin/true", False)
    qgraph = GenericWorkflowFile("runQgraphFile", src_uri=QGRAPH, wms_transfer=True, job_shared=True)
    cmdvals_common = {"initPreCmdOpts": PRE_OPTS, "runPreCmdOpts": PRE_OPTS, "butlerConfig": BUTLER}
    arguments = {
        "init": "{initPreCmdOpts} pre-exec-init-qbb {butlerConfig} <FILE:runQgraphFile>",
        "quantum": "{runPreCmdOpts} run-qbb {butlerConfig} <FILE:runQgraphFile> --qgraph-node-id {qgraphNodeId}",
        "final": "<FILE:runQgraphFile> {butlerConfig}",
    }
    # ctrl_bps's transform takes these values from per-label caches, so every
    # job of a label shares the same object; so do the jobs here.
    retry_unless_exit = {"init": [1, 2], "quantum": [1, 2], "final": [2]}
    gw = GenericWorkflow(name)
    gw.add_file(qgraph)
    final = None
    names: list[str] = []
    for node in nodes:
        names.append(node.name)
        tags = {"visit": node.visit} if node.visit is not None else {}
        if node.detector is not None:
            tags["detector"] = node.detector
        job = GenericWorkflowJob(
            node.name,
            node.label,
            executable=pipetask,
            arguments=arguments[node.kind],
            cmdvals={**cmdvals_common, "qgraphNodeId": node.node_id},
            tags=tags,
            quanta_counts=Counter({node.label: 1}),
            request_cpus=1,
            request_memory=32768 if node.kind == "final" else 2048,
            memory_multiplier=2.0,
            number_of_retries=5,
            retry_unless_exit=retry_unless_exit[node.kind],
        )
        if node.kind == "final":
            final = job
            continue
        gw.add_job(job, parent_names=[names[p] for p in node.parents] or None)
        gw.add_job_inputs(job.name, [qgraph])
    if final is not None:
        gw.add_final(final)
        gw.add_job_inputs(final.name, [qgraph])
    return gw


def bps_config(workdir: str, site: dict | None = None):
    """A BpsConfig as ``bps submit`` builds it; default: the local site
    (its ``jobShell`` from ``BENCH_JOB_SHELL`` when that is set).
    """
    from lsst.ctrl.bps import BpsConfig
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER

    if site is None:
        site = {"class": "lsst.ctrl.bps.parsl.sites.Local"}
        if os.environ.get("BENCH_JOB_SHELL"):
            site["jobShell"] = os.environ["BENCH_JOB_SHELL"]
    values: dict[str, Any] = {
        "wmsServiceClass": SERVICE,
        "parslProgressInterval": 0,
        "operator": "bench",
        "computeSite": "local",
        "site": {"local": site},
        "submitPath": os.path.join(workdir, "submit"),
        "payloadName": "bench",
    }
    return BpsConfig(
        values, search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS, wms_service_class_fqn=SERVICE
    )


# ---- helpers --------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def prepare(nodes: Iterable[Node], submit: str, workdir: str, site: dict | None = None):
    """Prepare ``nodes`` with the plugin; returns (service, workflow, seconds, peak RSS before)."""
    from lsst.ctrl.bps.parsl import ParslService

    gw = generic_workflow(nodes)
    config = bps_config(workdir, site)
    service = ParslService(config)
    try:
        service.run_submission_checks()
    except NotImplementedError:  # the old plugin (bench/README.md: old_plugin) has none
        pass
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    wf = service.prepare(config, gw, submit)
    return service, wf, time.perf_counter() - t0, rss_before


def attempt_summary(submit: str) -> dict[str, Any]:
    """Succeeded attempts and the earliest job start, from the run's database."""
    from lsst.ctrl.bps.parsl.store.runstore import SUCCEEDED, RunStore, db_path

    store = RunStore(db_path(submit), readonly=True)
    try:
        rows = store.attempts()
    finally:
        store.close()
    starts = [r[9] for r in rows if r[9] is not None]
    ends = [r[10] for r in rows if r[10] is not None]
    return {
        "attempts": len(rows),
        "succeeded": sum(1 for r in rows if r[3] == SUCCEEDED),
        "first_start": min(starts) if starts else None,
        "first_end": min(ends) if ends else None,
    }


# ---- measurements: the plugin -------------------------------------------------


def measure_prepare(spec: dict) -> dict:
    """Prepare time, peak RSS and bytes written for a workflow."""
    # Streamed: the process holds the GenericWorkflow, as bps does, not also
    # the benchmark's own description of it.
    stream = STREAMS.get(spec["dag"])
    nodes = stream(spec["n"]) if stream else DAGS[spec["dag"]](spec["n"])
    submit = os.path.join(spec["workdir"], "submit")
    _, _, seconds, rss_before = prepare(nodes, submit, spec["workdir"])
    return {
        "seconds": seconds,
        "jobs": spec["n"],
        "parsl_imported": "parsl" in sys.modules,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_prepare_mb": rss_before,
        "bytes": tree_bytes(submit),
    }


def measure_submit(spec: dict) -> dict:
    """Prepare (untimed here) then time ``ParslService.submit`` to the end."""
    nodes = DAGS[spec["dag"]](spec["n"])
    submit = os.path.join(spec["workdir"], "submit")
    service, wf, prep_seconds, _ = prepare(nodes, submit, spec["workdir"], spec.get("site"))
    poller = _start_report_poller(submit, spec["workdir"]) if spec.get("poll_report") else None
    # Imports are not timed: prepare no longer imports Parsl, so do it here.
    import lsst.ctrl.bps.parsl.localpool.executor  # noqa: F401
    import lsst.ctrl.bps.parsl.run.driver  # noqa: F401
    import parsl.dataflow.dflow  # noqa: F401
    import parsl.executors  # noqa: F401

    t0 = time.time()
    service.submit(wf)
    wall = time.time() - t0
    polls = _stop_report_poller(poller, spec["workdir"]) if poller else None
    summary = attempt_summary(submit)
    if summary["succeeded"] != len(nodes):
        raise RuntimeError(f"{summary['succeeded']} of {len(nodes)} jobs succeeded")
    return {
        "seconds": wall,
        "jobs": len(nodes),
        "prepare_seconds": prep_seconds,
        "first_job_seconds": summary["first_start"] - t0,
        "first_end_seconds": summary["first_end"] - t0,
        "submit_path": submit,
        **({"report_polls": polls[0], "report_failures": polls[1]} if polls else {}),
    }


_POLLER = """
import os, sys, time
from lsst.ctrl.bps.parsl import ParslService
submit, stop = sys.argv[1], sys.argv[2]
print("ready", flush=True)
polls = failures = 0
while not os.path.exists(stop):
    if os.path.exists(os.path.join(submit, "bps_parsl.sqlite3")):
        reports, message = ParslService({}).report(submit)
        polls += 1
        failures += 0 if reports and not message else 1
    time.sleep(1.0)
print(polls, failures)
"""


def _start_report_poller(submit: str, workdir: str) -> subprocess.Popen:
    """Another process asking for ``report`` every second, as a user would."""
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, submit, os.path.join(workdir, "stop_poller")],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Its imports are paid before the timed submit: only the polling counts.
    assert poller.stdout.readline().strip() == "ready"
    return poller


def _stop_report_poller(poller: subprocess.Popen, workdir: str) -> tuple[int, int]:
    open(os.path.join(workdir, "stop_poller"), "w").close()
    out, _ = poller.communicate(timeout=60)
    polls, failures = (int(x) for x in out.split())
    return polls, failures


def measure_make_finished(spec: dict) -> dict:
    """Set-up, not timed: prepare a workflow and record every job as
    succeeded through the plugin's own store API, as a driver would."""
    from lsst.ctrl.bps.parsl.store.runstore import SUCCEEDED, JobKind, RunStore, db_path

    nodes = DAGS[spec["dag"]](spec["n"])
    submit = os.path.join(spec["workdir"], "submit")
    prepare(nodes, submit, spec["workdir"])
    host = socket.gethostname()
    store = RunStore(db_path(submit))
    try:
        store.begin_session("submit", os.getpid(), host)
        now = time.time()
        for row in store.jobs():
            if row.kind == JobKind.PAYLOAD:
                store.record_attempt(
                    row.id, 1, SUCCEEDED, 0, None, row.request_memory, "local", now, now, now, host
                )
                store.set_state(row.id, SUCCEEDED, 1, 0, None, now, now, host)
            else:
                store.set_state(row.id, SUCCEEDED, 0)
        store.end_session("succeeded")
        store.flush()
    finally:
        store.close()
    return {"submit_path": submit, "jobs": len(nodes)}


def measure_report(spec: dict) -> dict:
    """Time ``ParslService({}).report(submit)`` (imports excluded)."""
    from lsst.ctrl.bps.parsl import ParslService

    service = ParslService({})
    t0 = time.perf_counter()
    reports, message = service.report(spec["submit_path"])
    seconds = time.perf_counter() - t0
    if not reports or message:
        raise RuntimeError(f"report failed: {message!r}")
    return {"seconds": seconds, "jobs": reports[0].total_number_jobs}


def measure_report_cli(spec: dict) -> dict:
    """Wall time of ``bps report --id <submit>`` as a user runs it."""
    env = dict(os.environ, BPS_WMS_SERVICE_CLASS=SERVICE)
    bps = os.path.join(os.path.dirname(sys.executable), "bps")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [bps, "report", "--id", spec["submit_path"]], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bps report exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"seconds": seconds, "output_lines": proc.stdout.count("\n")}


def measure_restart(spec: dict) -> dict:
    """Time ``ParslService({}).restart(submit)`` of a run whose jobs all succeeded."""
    from lsst.ctrl.bps.parsl import ParslService

    service = ParslService({})
    t0 = time.perf_counter()
    wms_id, _, message = service.restart(spec["submit_path"])
    seconds = time.perf_counter() - t0
    if wms_id is None:
        raise RuntimeError(f"restart failed: {message}")
    return {"seconds": seconds}


# ---- measurements: the references --------------------------------------------


def _raw_executor(kind: str, run_dir: str):
    if kind == "threads":
        from parsl.executors import ThreadPoolExecutor

        return ThreadPoolExecutor(label="threads", max_threads=CORES)
    from htex_site import htex_executor

    return htex_executor(CORES, os.path.join(run_dir, "worker_logs"))


def measure_raw_parsl(spec: dict) -> dict:
    """The same DAG with raw Parsl: one bash_app, parents' futures as inputs,
    submitted in topological order; final job after everything else."""
    import parsl
    from _rawapp import run_command
    from parsl.config import Config

    nodes = DAGS[spec["dag"]](spec["n"])
    root = os.path.join(spec["workdir"], "raw")
    monitoring = None
    if spec.get("monitoring"):
        from parsl.monitoring import MonitoringHub

        os.makedirs(root, exist_ok=True)
        monitoring = MonitoringHub(logging_endpoint=f"sqlite:///{os.path.join(root, 'monitoring.db')}")
    config = Config(
        executors=[_raw_executor(spec["executor"], root)],
        monitoring=monitoring,
        retries=0,
        run_dir=os.path.join(root, "runinfo"),
        strategy_period=1.0,
        initialize_logging=False,
    )
    first_end: list[float] = []

    def note_end(_future: Any) -> None:
        if not first_end:
            first_end.append(time.time())

    t0 = time.time()
    dfk = parsl.load(config)
    try:
        futures: list[Any] = [None] * len(nodes)
        final = []
        for i, node in enumerate(nodes):
            if node.kind == "final":
                final.append(i)
                continue
            base = node.log_base(root)
            futures[i] = run_command(
                node.command,
                inputs=[futures[p] for p in node.parents],
                stdout=base + ".out",
                stderr=base + ".err",
            )
            futures[i].add_done_callback(note_end)
        for f in futures:
            if f is not None:
                f.result()
        for i in final:
            base = nodes[i].log_base(root)
            run_command(nodes[i].command, stdout=base + ".out", stderr=base + ".err").result()
    finally:
        dfk.cleanup()
        parsl.clear()
    return {"seconds": time.time() - t0, "jobs": len(nodes), "first_end_seconds": first_end[0] - t0}


def plugin_job_shell(workdir: str, site: dict | None = None) -> str:
    """The shell the plugin runs each job's script with on this site
    (`SiteSettings.job_shell`), so that the floor runs the same one."""
    from lsst.ctrl.bps.parsl.sites.local import Local

    return Local(bps_config(workdir, site)).settings.job_shell


def measure_floor(spec: dict) -> dict:
    """The same command lines run by ``<shell> -c`` (subprocess), where
    ``<shell>`` is the plugin's job shell on the local site, ``CORES`` at a
    time, stdout/stderr to the same log files. Wide only."""
    shell = plugin_job_shell(spec["workdir"])
    return {**_run_floor(spec, "floor", lambda command: [shell, "-c", command]), "shell": shell}


def measure_floor_exec(spec: dict) -> dict:
    """The same command lines split into words (`shlex.split`) and started
    directly, without a shell (what no launcher can beat), ``CORES`` at a
    time, stdout/stderr to the same log files. Wide only."""
    return _run_floor(spec, "floor_exec", shlex.split)


def _run_floor(spec: dict, name: str, argv_of: Any) -> dict:
    """Run every job's ``argv_of(command)`` by `subprocess`, ``CORES`` at a time."""
    nodes = DAGS[spec["dag"]](spec["n"])
    if any(node.parents for node in nodes):
        raise ValueError("the floor runs independent jobs only")
    root = os.path.join(spec["workdir"], name)

    def run(node: Node) -> int:
        base = node.log_base(root)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
            return subprocess.run(argv_of(node.command), stdout=out, stderr=err).returncode

    t0 = time.time()
    with PoolExecutor(max_workers=CORES) as pool:
        codes = list(pool.map(run, nodes))
    seconds = time.time() - t0
    if any(codes):
        raise RuntimeError(f"{sum(1 for c in codes if c)} commands failed")
    return {"seconds": seconds, "jobs": len(nodes)}


# ---- measurements: scale (issue 15) -----------------------------------------------


def rss_now_mb() -> float:
    """Resident set size of this process now, in MB."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> None:
    """Start a new peak: Linux resets VmHWM to the current RSS on '5'."""
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")


def peak_rss_since_reset_mb() -> float:
    """The peak resident set size since `reset_peak_rss`, in MB."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_prepare_added(spec: dict) -> dict:
    """Prepare of a streamed (generator-built) workflow: wall and CPU time per
    job, and what prepare adds to the process (its peak RSS during prepare
    minus its RSS just before, the workflow already built). Runs under our
    plugin or, with bench/run.py's ``--old-plugin-python``, the old one."""
    import gc
    import importlib.util

    from lsst.ctrl.bps.parsl import ParslService

    n = spec["n"]
    gw = generic_workflow(STREAMS[spec["dag"]](n))
    # The old plugin's local site needs its number of cores; ours takes the same key.
    config = bps_config(spec["workdir"], {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": CORES})
    service = ParslService(config)
    try:
        service.run_submission_checks()
    except NotImplementedError:
        pass
    submit = os.path.join(spec["workdir"], "submit")
    os.makedirs(submit, exist_ok=True)  # as bps does before prepare (the old plugin needs it)
    gc.collect()
    before = rss_now_mb()
    reset_peak_rss()
    cpu0, t0 = time.process_time(), time.perf_counter()
    service.prepare(config, gw, submit)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "seconds": seconds,
        "us_per_job": 1e6 * seconds / n,
        "cpu_us_per_job": 1e6 * cpu / n,
        "jobs": n,
        "rss_before_mb": before,
        "added_mb": peak_rss_since_reset_mb() - before,
        "old_plugin": importlib.util.find_spec("lsst.ctrl.bps.parsl.store.runstore") is None,
        "python": sys.executable,
    }


def measure_scale(spec: dict) -> dict:
    """A wide run of cheap jobs: wall per job, and the driver's memory from
    the moment its loop starts (rows loaded, DAG built) to its peak."""
    import lsst.ctrl.bps.parsl.run.driver as driver_module

    marks: dict[str, float] = {}
    real_run = driver_module.Driver.run

    def run(self: Any) -> Any:
        marks["driver_start_mb"] = rss_now_mb()
        reset_peak_rss()
        try:
            return real_run(self)
        finally:
            marks["driver_peak_mb"] = peak_rss_since_reset_mb()
            marks["driver_tasks_left"] = float(len(getattr(self.dispatch.dfk, "tasks", {}) or {}))

    driver_module.Driver.run = run  # type: ignore[method-assign]
    result = measure_submit(spec)
    n = result["jobs"]
    grew = marks["driver_peak_mb"] - marks["driver_start_mb"]
    result.update(marks)
    result.update(
        {
            "us_per_job": 1e6 * result["seconds"] / n,
            "driver_growth_kb_per_job": grew * 1024 / n,
        }
    )
    return result


def measure_report_rows(spec: dict) -> dict:
    """``bps report --id`` as the CLI calls the plugin (``report`` of one run,
    then ctrl_bps's summary), counting the SQLite rows the store handed out
    (every row a cursor returned) and timing it."""
    import sqlite3

    from lsst.ctrl.bps.parsl import ParslService

    counted = {"rows": 0}
    real_connect = sqlite3.connect

    class CountingCursor(sqlite3.Cursor):
        def __next__(self) -> Any:
            row = super().__next__()
            counted["rows"] += 1
            return row

        def fetchall(self) -> list:
            rows = super().fetchall()
            counted["rows"] += len(rows)
            return rows

        def fetchone(self) -> Any:
            row = super().fetchone()
            counted["rows"] += row is not None
            return row

    class CountingConnection(sqlite3.Connection):
        def cursor(self, factory: Any = CountingCursor) -> Any:  # type: ignore[override]
            return super().cursor(factory)

        def execute(self, *args: Any) -> Any:  # type: ignore[override]
            return self.cursor().execute(*args)

    def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("factory", CountingConnection)
        return real_connect(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]
    import contextlib

    from lsst.ctrl.bps.drivers import report_driver

    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        report_driver(wms_service=SERVICE, run_id=spec["submit_path"])
    seconds = time.perf_counter() - t0
    cli_rows = counted["rows"]
    counted["rows"] = 0
    reports, _ = ParslService({}).report(spec["submit_path"])
    jobs = len(reports[0].jobs or [])
    return {
        "seconds": seconds,
        "rows_read": cli_rows,
        "rows_read_with_jobs": counted["rows"],
        "jobs_listed": jobs,
        "total_jobs": reports[0].total_number_jobs,
    }


def measure_restart_rerun(spec: dict) -> dict:
    """`measure_restart`, also counting the attempts the restart ran (the
    attempts table before and after)."""
    before = attempt_summary(spec["submit_path"])["attempts"]
    result = measure_restart(spec)
    result["attempts_added"] = attempt_summary(spec["submit_path"])["attempts"] - before
    return result


MEASURES = {
    "prepare": measure_prepare,
    "submit": measure_submit,
    "make_finished": measure_make_finished,
    "report": measure_report,
    "report_cli": measure_report_cli,
    "restart": measure_restart,
    "raw_parsl": measure_raw_parsl,
    "floor": measure_floor,
    "floor_exec": measure_floor_exec,
    "prepare_added": measure_prepare_added,
    "scale": measure_scale,
    "report_rows": measure_report_rows,
    "restart_rerun": measure_restart_rerun,
}


def main() -> int:
    spec = json.loads(sys.argv[1])
    os.makedirs(spec["workdir"], exist_ok=True)
    result = MEASURES[spec["measure"]](spec)
    result["peak_rss_mb_process"] = peak_rss_mb()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
