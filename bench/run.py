#!/usr/bin/env python
"""Benchmark of the Parsl BPS plugin against raw Parsl and a subprocess floor.

Every measurement runs in a fresh process (``bench/_worker.py``); this script
only starts them, takes medians and prints one table. See ``bench/README.md``
for what each figure means.

Usage::

    python bench/run.py [--quick] [--full] [--repeat K] [--only NAME,...] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(BENCH_DIR, "_worker.py")
CORES = len(os.sched_getaffinity(0))

# Measured on the old plugin (/work/shared/README.md, 2 cores, medians of 3).
OLD_PLUGIN = {
    "prepare_100k_s": 15.3,
    "prepare_100k_mb": 688.0,
    "prepare_100k_mib": 27.5,
    "restart_50k_s": 51.0,
}


@dataclass
class Sizes:
    """Workflow sizes of one benchmark run."""

    wide: int = 10_000
    prepare: int = 100_000
    prepare_chain: int = 100_000
    chain: int = 10_000
    raw_chain: int = 2_000
    realistic: int = 10_000
    report: int = 100_000
    restart: int = 50_000
    scaling: tuple[int, ...] = (1_000, 10_000)
    prepare_1m: int = 1_000_000
    prepare_old: int = 100_000
    scale: tuple[int, int] = (20_000, 200_000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            wide=300,
            prepare=2_000,
            prepare_chain=2_000,
            chain=100,
            raw_chain=100,
            realistic=300,
            report=2_000,
            restart=1_000,
            scaling=(100, 300),
            prepare_1m=20_000,
            prepare_old=2_000,
            scale=(1_000, 10_000),
        )


@dataclass
class Row:
    """One line of the result table."""

    metric: str
    ours: float | None
    reference: float | None = None
    ref_name: str = ""
    target: str = ""
    ratio: float | None = None
    ok: bool | None = None


def _fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


class Bench:
    """Runs the workers and collects table rows."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sizes = Sizes.quick() if args.quick else Sizes()
        if args.full:
            self.sizes.scaling = (*self.sizes.scaling, self.sizes.report)
        self.repeat = args.repeat
        self.root = args.workdir or tempfile.mkdtemp(prefix="bps_parsl_bench_")
        self.rows: dict[str, list[Row]] = {}
        self._group = threading.local()
        self.results: dict[str, Any] = {}
        self.env = dict(os.environ)
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", "")
        self.env["PYTHONPATH"] = BENCH_DIR + (
            os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else ""
        )
        # Keep the benchmark's runs out of the user's run index.
        self.env["XDG_STATE_HOME"] = os.path.join(self.root, "state")
        self._counter = itertools.count(1)

    # ---- running workers ----------------------------------------------------

    def worker(self, measure: str, python: str | None = None, **spec: Any) -> dict[str, Any]:
        """Run one measurement in a fresh process (of ``python``, default this
        interpreter); return its result."""
        workdir = os.path.join(self.root, f"{next(self._counter):03d}-{measure}")
        spec = {"measure": measure, "workdir": workdir, **spec}
        t0 = time.time()
        proc = subprocess.run(
            [python or sys.executable, WORKER, json.dumps(spec)],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"worker {spec} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        result = json.loads(lines[-1][len("BENCH_RESULT ") :])
        self.log(
            f"  {self._group.name}: {measure} {spec.get('dag', '')} {spec.get('n', '')}: {result.get('seconds', 0):.3f} s "
            f"(process {time.time() - t0:.1f} s)"
        )
        return result

    def median(self, measure: str, **spec: Any) -> dict[str, Any]:
        """Median over ``--repeat`` fresh processes of every numeric field."""
        return self._median_of([self.worker(measure, **spec) for _ in range(self.repeat)])

    def interleaved(self, *measures: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Like `median` for several measurements compared with each other:
        they run in turn (A B C, A B C, ...), so a machine that slows down
        or speeds up during the benchmark affects each of them alike."""
        runs: list[list[dict[str, Any]]] = [[] for _ in measures]
        for _ in range(self.repeat):
            for k, (measure, spec) in enumerate(measures):
                runs[k].append(self.worker(measure, **spec))
        return [self._median_of(r) for r in runs]

    def _median_of(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(runs[-1])
        for key, value in runs[-1].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = statistics.median(r[key] for r in runs)
        if self.repeat > 1:
            out["all_seconds"] = [r.get("seconds") for r in runs]
        return out

    def record(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.results[name] = result
        return result

    def add(
        self,
        metric: str,
        ours: float | None,
        reference: float | None = None,
        ref_name: str = "",
        max_ratio: float | None = None,
        max_value: float | None = None,
    ) -> None:
        """Add a table row; a target is either a ratio to the reference or an absolute bound."""
        ratio = ours / reference if ours is not None and reference else None
        target, ok = "", None
        if max_ratio is not None:
            target, ok = f"<= {max_ratio:g}x", ratio is not None and ratio <= max_ratio
        elif max_value is not None:
            target, ok = f"<= {max_value:g}", ours is not None and ours <= max_value
        self.rows.setdefault(self._group.name, []).append(
            Row(metric, ours, reference, ref_name, target, ratio, ok)
        )

    def run(self, name: str) -> str | None:
        """Run one measurement; returns its name if it failed."""
        self._group.name = name
        self.log(f"{name}: start")
        try:
            MEASUREMENTS[name](self)
        except Exception as exc:  # noqa: BLE001
            self.log(f"{name}: FAILED: {exc}")
            return name
        return None

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    # ---- measurements ---------------------------------------------------------

    def bench_prepare(self) -> None:
        """Prepare a wide workflow: time, peak RSS, bytes written."""
        n = self.sizes.prepare
        r = self.record("prepare", self.median("prepare", dag="wide", n=n))
        k = _fmt_n(n)
        old = n == 100_000
        self.add(
            f"prepare wide {k}: time (s)",
            r["seconds"],
            OLD_PLUGIN["prepare_100k_s"] if old else None,
            "old plugin",
            max_value=3.0 if old else None,
        )
        self.add(
            f"prepare wide {k}: peak RSS (MB)",
            r["peak_rss_mb"],
            OLD_PLUGIN["prepare_100k_mb"] if old else None,
            "old plugin",
            max_value=350.0 if old else None,
        )
        self.add(f"prepare wide {k}: RSS before prepare (MB)", r["rss_before_prepare_mb"])
        self.add(
            f"prepare wide {k}: written (MiB)",
            r["bytes"] / 2**20,
            OLD_PLUGIN["prepare_100k_mib"] if old else None,
            "old plugin",
        )

    def bench_prepare_chain(self) -> None:
        """Prepare a deep chain (the old plugin hit RecursionError at ~490)."""
        n = self.sizes.prepare_chain
        r = self.record("prepare_chain", self.median("prepare", dag="chain", n=n))
        self.add(f"prepare chain {_fmt_n(n)}: time (s)", r["seconds"])

    def bench_wide(self) -> None:
        """Wide submit on the default local site vs raw Parsl threads and the floor."""
        n = self.sizes.wide
        k = _fmt_n(n)
        ours, floor, floor_exec, raw = self.interleaved(
            ("submit", {"dag": "wide", "n": n}),
            ("floor", {"dag": "wide", "n": n}),
            ("floor_exec", {"dag": "wide", "n": n}),
            ("raw_parsl", {"dag": "wide", "n": n, "executor": "threads"}),
        )
        self.record("wide", ours)
        self.record("wide_floor", floor)
        self.record("wide_floor_exec", floor_exec)
        self.record("wide_raw_threads", raw)
        floor_name = f"floor: {os.path.basename(floor['shell'])} -c"
        self.add(f"wide {k} submit, local (s)", ours["seconds"], floor["seconds"], floor_name, max_ratio=1.15)
        self.add(
            f"wide {k} submit, local (s)",
            ours["seconds"],
            floor_exec["seconds"],
            "floor: exec, no shell",
        )
        self.add(
            f"wide {k} submit, local (s)", ours["seconds"], raw["seconds"], "raw Parsl threads", max_ratio=0.7
        )
        self.add(f"wide {k} jobs/s, local", n / ours["seconds"], n / floor["seconds"], floor_name)
        self.add(f"wide {k}: first job start after submit (s)", ours["first_job_seconds"], max_value=0.2)

    def bench_monitoring(self) -> None:
        """Wide submit on the local site with Parsl monitoring on vs off."""
        n = self.sizes.wide
        monitored = {"class": "lsst.ctrl.bps.parsl.sites.Local", "monitorEnable": True}
        raw = {"dag": "wide", "n": n, "executor": "threads"}
        base, ours, raw_base, raw_on = self.interleaved(
            ("submit", {"dag": "wide", "n": n}),
            ("submit", {"dag": "wide", "n": n, "site": monitored}),
            ("raw_parsl", raw),
            ("raw_parsl", {**raw, "monitoring": True}),
        )
        self.record("wide_monitoring_off", base)
        self.record("wide_monitoring_on", ours)
        self.record("wide_raw_monitoring_off", raw_base)
        self.record("wide_raw_monitoring_on", raw_on)
        self.add(
            f"wide {_fmt_n(n)} submit, local, monitoring on (s)",
            ours["seconds"],
            base["seconds"],
            "monitoring off",
            max_ratio=1.5,
        )
        self.add(
            f"wide {_fmt_n(n)} raw Parsl threads, monitoring on (s)",
            raw_on["seconds"],
            raw_base["seconds"],
            "monitoring off",
        )
        self.add(
            f"wide {_fmt_n(n)}: monitoring's cost per task, ours / raw Parsl (ms)",
            (ours["seconds"] - base["seconds"]) * 1000 / n,
            (raw_on["seconds"] - raw_base["seconds"]) * 1000 / n,
            "raw Parsl's",
        )

    def bench_report_polling(self) -> None:
        """A wide submit while another process asks for ``report`` every second."""
        n = self.sizes.wide
        k = _fmt_n(n)
        base, polled = self.interleaved(
            ("submit", {"dag": "wide", "n": n}), ("submit", {"dag": "wide", "n": n, "poll_report": True})
        )
        self.record("wide_unpolled", base)
        self.record("wide_polled", polled)
        self.add(
            f"wide {k} submit while report polls every 1 s (s)",
            polled["seconds"],
            base["seconds"],
            "same, no polling",
            max_ratio=1.05,
        )
        self.add(f"wide {k}: report polls that failed", polled["report_failures"], max_value=0)

    def bench_htex(self) -> None:
        """Wide submit on a local HighThroughputExecutor: ours vs raw Parsl."""
        n = self.sizes.wide
        site = {"class": "htex_site.BenchHtex"}
        ours, raw = self.interleaved(
            ("submit", {"dag": "wide", "n": n, "site": site}),
            ("raw_parsl", {"dag": "wide", "n": n, "executor": "htex"}),
        )
        self.record("htex", ours)
        self.record("htex_raw", raw)
        self.add(
            f"wide {_fmt_n(n)} submit, HTEX (s)",
            ours["seconds"],
            raw["seconds"],
            "raw Parsl HTEX",
            max_ratio=1.05,
        )
        self.add(
            f"wide {_fmt_n(n)} HTEX: first job end after submit (s)",
            ours["first_end_seconds"],
            raw["first_end_seconds"],
            "raw Parsl HTEX",
        )

    def bench_chain(self) -> None:
        """Cost per link of a linear chain: ours (local) vs raw Parsl threads."""
        d, raw_d = self.sizes.chain, self.sizes.raw_chain
        ours, raw = self.interleaved(
            ("submit", {"dag": "chain", "n": d}),
            ("raw_parsl", {"dag": "chain", "n": raw_d, "executor": "threads"}),
        )
        self.record("chain", ours)
        self.record("chain_raw", raw)
        self.add(
            f"chain per link, ours {_fmt_n(d)} / raw {_fmt_n(raw_d)} deep (ms)",
            1000 * ours["seconds"] / d,
            1000 * raw["seconds"] / raw_d,
            "raw Parsl threads",
            max_ratio=1.0,
        )

    def bench_realistic(self) -> None:
        """pipetaskInit, per-data-id chains of 3-5 labels, per-visit fan-in, finalJob."""
        n = self.sizes.realistic
        ours, raw = self.interleaved(
            ("submit", {"dag": "realistic", "n": n}),
            ("raw_parsl", {"dag": "realistic", "n": n, "executor": "threads"}),
        )
        self.record("realistic", ours)
        self.record("realistic_raw", raw)
        self.add(
            f"realistic {ours['jobs']} jobs submit, local (s)",
            ours["seconds"],
            raw["seconds"],
            "raw Parsl threads",
        )
        self.add(f"realistic {ours['jobs']} jobs: prepare (s)", ours["prepare_seconds"])

    def _finished_run(self, n: int) -> str:
        """Submit dir of a finished wide run of ``n`` jobs: the real one from
        the scaling measurement if it ran (--full), else a synthetic one."""
        real = self.results.get(f"scaling_{n}")
        if real:
            return real["submit_path"]
        return self.worker("make_finished", dag="wide", n=n)["submit_path"]

    def bench_report(self) -> None:
        """``bps report`` of a finished run: the API call and the CLI."""
        n = self.sizes.report
        submit = self._finished_run(n)
        api = self.record("report", self.median("report", submit_path=submit))
        cli = self.record("report_cli", self.median("report_cli", submit_path=submit))
        self.add(f"report finished {_fmt_n(n)}: ParslService.report (s)", api["seconds"], max_value=1.0)
        self.add(f"report finished {_fmt_n(n)}: 'bps report --id' wall (s)", cli["seconds"])

    def bench_restart(self) -> None:
        """Restart of a run whose jobs all succeeded (nothing to run)."""
        n = self.sizes.restart
        submit = self.worker("make_finished", dag="wide", n=n)["submit_path"]
        r = self.record("restart", self.median("restart", submit_path=submit))
        old = n == 50_000
        self.add(
            f"restart finished {_fmt_n(n)} (s)",
            r["seconds"],
            OLD_PLUGIN["restart_50k_s"] if old else None,
            "old plugin",
            max_value=3.0 if old else None,
        )

    def bench_scaling(self) -> None:
        """Submit wall per job at growing sizes (wide, local): should be flat."""
        base = None
        for n in self.sizes.scaling:
            if n == self.sizes.wide and "wide" in self.results:
                r = self.results["wide"]
            else:
                r = self.median("submit", dag="wide", n=n)
            self.results[f"scaling_{n}"] = r
            cost = 1000 * r["seconds"] / n
            base = base or cost
            self.add(
                f"submit cost per job, wide {_fmt_n(n)} (ms)",
                cost,
                base,
                f"wide {_fmt_n(self.sizes.scaling[0])}",
            )

    # ---- issue 15: a million jobs, and runs of 200k -----------------------------

    def bench_prepare_1m(self) -> None:
        """Prepare of a 1M-job wide workflow vs the old plugin's at 100k (per job)."""
        n, n_old = self.sizes.prepare_1m, self.sizes.prepare_old
        old_python = self.args.old_plugin_python
        old = None
        if old_python and os.path.exists(old_python):
            old = self.record(
                "prepare_old", self.median("prepare_added", python=old_python, dag="wide", n=n_old)
            )
        else:
            self.log(f"  {self._group.name}: no old plugin at {old_python!r} (see bench/README.md)")
        ours = self.record("prepare_1m", self.median("prepare_added", dag="wide", n=n))
        k, k_old = _fmt_n(n), _fmt_n(n_old)
        ref = f"old plugin at {k_old}"
        self.add(
            f"prepare wide {k}: wall per job (us)",
            ours["us_per_job"],
            old["us_per_job"] if old else None,
            ref,
            max_ratio=0.1,
        )
        self.add(
            f"prepare wide {k}: CPU per job (us)",
            ours["cpu_us_per_job"],
            old["cpu_us_per_job"] if old else None,
            ref,
            max_ratio=0.1,
        )
        self.add(
            f"prepare wide {k}: added to the process (MB)",
            ours["added_mb"],
            old["added_mb"] if old else None,
            ref,
            max_value=200.0,
        )

    def bench_scale_200k(self) -> None:
        """Runs of cheap jobs at 20k and 200k; restart, report and 'bps report' of the 200k run."""
        small_n, big_n = self.sizes.scale
        small, big = self.interleaved(
            ("scale", {"dag": "wide", "n": small_n}), ("scale", {"dag": "wide", "n": big_n})
        )
        self.record("scale_small", small)
        self.record("scale_big", big)
        ks, kb = _fmt_n(small_n), _fmt_n(big_n)
        self.add(
            f"wide {kb} run: wall per job (ms)",
            big["us_per_job"] / 1000,
            small["us_per_job"] / 1000,
            f"wide {ks}",
            max_ratio=1.15,
        )
        self.add(
            f"wide {kb} run: driver memory growth (KB/job)", big["driver_growth_kb_per_job"], max_value=1.0
        )
        self.add(f"wide {kb} run: Parsl task records left", big["driver_tasks_left"], max_value=0)
        submit = big["submit_path"]
        restart = self.record("restart_big", self.median("restart_rerun", submit_path=submit))
        self.add(f"restart finished {kb} (s)", restart["seconds"], max_value=4.0)
        self.add(f"restart finished {kb}: attempts run again", restart["attempts_added"], max_value=0)
        report = self.record("report_big", self.median("report", submit_path=submit))
        self.add(f"report finished {kb}: ParslService.report (s)", report["seconds"], max_value=2.0)
        rows = self.record("report_rows_big", self.median("report_rows", submit_path=submit))
        self.add(f"'bps report --id' of {kb}: store rows read", rows["rows_read"], max_value=100)
        self.add(f"'bps report --id' of {kb}: wall in-process (s)", rows["seconds"])
        self.add(f"report of {kb} with its jobs listed: store rows read", rows["rows_read_with_jobs"])


MEASUREMENTS: dict[str, Callable[[Bench], None]] = {
    "prepare": Bench.bench_prepare,
    "prepare_chain": Bench.bench_prepare_chain,
    "wide": Bench.bench_wide,
    "report_polling": Bench.bench_report_polling,
    "monitoring": Bench.bench_monitoring,
    "htex": Bench.bench_htex,
    "chain": Bench.bench_chain,
    "realistic": Bench.bench_realistic,
    "scaling": Bench.bench_scaling,
    "report": Bench.bench_report,
    "restart": Bench.bench_restart,
    "prepare_1m": Bench.bench_prepare_1m,
    "scale_200k": Bench.bench_scale_200k,
}


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(rows: list[Row]) -> None:
    """Print the rows as one aligned table."""
    header = ("metric", "ours", "reference", "ratio", "target", "ok")
    lines = [header]
    for row in rows:
        ref = f"{_num(row.reference)} ({row.ref_name})" if row.reference is not None else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        ok = "-" if row.ok is None else ("yes" if row.ok else "NO")
        lines.append((row.metric, _num(row.ours), ref, ratio, row.target or "-", ok))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for j, line in enumerate(lines):
        print(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import parsl

    return {
        "host": platform.node(),
        "cores": CORES,
        "python": platform.python_version(),
        "parsl": parsl.__version__,
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    parser.add_argument(
        "--full",
        action="store_true",
        help="also run 100k wide jobs for real (cost per job at 100k; report uses that run)",
    )
    parser.add_argument("--repeat", type=int, default=1, metavar="K", help="median of K fresh processes")
    parser.add_argument(
        "--only",
        default="",
        metavar="NAME,...",
        help=f"run only these measurements: {','.join(MEASUREMENTS)}",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--old-plugin-python",
        default="/tmp/oldplugin/bin/python",
        metavar="PATH",
        help="Python of a venv with the old plugin, for prepare_1m (bench/README.md: the old plugin)",
    )
    parser.add_argument("--workdir", help="where runs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="P",
        help="measurements run side by side (default 1; more skews every figure: use only to smoke-test)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(only) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}: choose from {','.join(MEASUREMENTS)}")
    args.names = only or list(MEASUREMENTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    info = machine()
    bench.log(f"bench: work directory {bench.root}, {CORES} cores, load {info['loadavg_start']}")
    t0 = time.time()
    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            failed = [name for name in pool.map(bench.run, args.names) if name]
    finally:
        if not args.keep:
            shutil.rmtree(bench.root, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["total_seconds"] = time.time() - t0
    rows = [row for name in args.names for row in bench.rows.get(name, [])]
    print_table(rows)
    print(
        f"\n{CORES} cores, {args.repeat} run(s) per figure (median), load average "
        f"{info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}, {info['total_seconds']:.0f} s in all"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    if args.json:
        out = {
            "machine": info,
            "sizes": asdict(bench.sizes),
            "repeat": args.repeat,
            "failed": failed,
            "table": [asdict(row) for row in rows],
            "results": bench.results,
        }
        with open(args.json, "w") as stream:
            json.dump(out, stream, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
