"""Tiny PipelineTasks for the ctrl_bps_parsl end-to-end tests.

Graph (with N detectors of instrument ``E2ECam``)::

    e2e_raw[det] --source--> e2e_a[det] --middle--> e2e_b[det] --gather--> e2e_sum[instrument]

``source`` and ``middle`` run once per detector, ``gather`` once (fan-in).

Every quantum appends one line to a run log (path from the task config
``run_log`` or, if empty, from the environment variable ``E2E_RUN_LOG``;
no log when both are empty)::

    <label> <data id key> <pid> <unix time> <status>

with status ``start``, ``ok`` or ``fail``.  ``count_runs`` (in ``repo.py``)
turns the log into per-quantum counts.

``middle`` can be made to fail (``fail_ids``), to fail only on its first
attempts (``fail_attempts``, needs the run log) and to exit with a given
code instead of raising (``fail_exit_code``); every task can be made slow
(``sleep``).
"""

from __future__ import annotations

import os
import time

import lsst.pex.config as pexConfig  # noqa: N812
import lsst.pipe.base as pipeBase  # noqa: N812
import lsst.pipe.base.connectionTypes as cT

__all__ = [
    "GatherTask",
    "GatherTaskConfig",
    "MiddleTask",
    "MiddleTaskConfig",
    "SourceTask",
    "SourceTaskConfig",
    "RUN_LOG_ENV",
]

RUN_LOG_ENV = "E2E_RUN_LOG"
STORAGE_CLASS = "StructuredDataDict"


def _data_id_key(data_id) -> str:
    """Short, stable text form of a data id, e.g. ``E2ECam.3`` or ``E2ECam``."""
    return ".".join(str(data_id[k]) for k in data_id.dimensions.required)


def _log_path(config) -> str:
    return config.run_log or os.environ.get(RUN_LOG_ENV, "")


def _append(config, label: str, key: str, status: str) -> None:
    path = _log_path(config)
    if not path:
        return
    line = f"{label} {key} {os.getpid()} {time.time():.3f} {status}\n"
    # One short O_APPEND write: atomic enough for concurrent local processes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


_POLLUTED: list[str] = []
"""Set by a quantum with ``pollute``: a later quantum must never see it (each runs in its own process)."""


def _probe(config, label: str, key: str) -> None:
    """With ``probe_log`` set: append ``label key warm dirty token`` to it, where
    ``warm`` is 1 if this process was forked from a warm process
    (``sys.orig_argv`` is that process's ``python -c``), ``dirty`` lists
    the global state an earlier quantum's ``pollute`` left here (``-``: none)
    and ``token`` is 1 if ``/proc/self/environ`` (where the plugin's killer
    looks) shows this process's ``BPS_PARSL_ATTEMPT``; then, with
    ``pollute``, change that state.
    """
    if not config.probe_log:
        return
    import logging
    import signal
    import sys

    dirty = []
    if _POLLUTED:
        dirty.append("module")
    if "E2E_POLLUTED" in os.environ:
        dirty.append("environ")
    if logging.getLogger("e2e.polluted").handlers:
        dirty.append("logging")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        dirty.append("signal")
    if "/e2e/polluted" in sys.path:
        dirty.append("sys.path")
    warm = int(sys.orig_argv[1:2] == ["-c"])
    with open("/proc/self/environ", "rb") as stream:
        token = f"BPS_PARSL_ATTEMPT={os.environ.get('BPS_PARSL_ATTEMPT')}".encode()
        seen = int(token in stream.read().split(b"\0"))
    line = f"{label} {key} {warm} {','.join(dirty) or '-'} {seen}\n"
    fd = os.open(config.probe_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if config.pollute:
        _POLLUTED.append(key)
        os.environ["E2E_POLLUTED"] = key
        logging.getLogger("e2e.polluted").addHandler(logging.NullHandler())
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.path.append("/e2e/polluted")


def _previous_starts(config, label: str, key: str) -> int:
    path = _log_path(config)
    if not path or not os.path.exists(path):
        return 0
    n = 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0] == label and parts[1] == key and parts[4] == "start":
                n += 1
    return n


# ---------------------------------------------------------------------------
# source: e2e_raw[det] -> e2e_a[det]
# ---------------------------------------------------------------------------


class SourceConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument", "detector")):
    raw = cT.Input(
        name="e2e_raw",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument", "detector"),
        doc="Starting input written by make_repo.",
    )
    out = cT.Output(
        name="e2e_a",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument", "detector"),
        doc="Per-detector output of source.",
    )


class SourceTaskConfig(pipeBase.PipelineTaskConfig, pipelineConnections=SourceConnections):
    run_log = pexConfig.Field[str](doc="Run log path; empty: use $E2E_RUN_LOG.", default="")
    sleep = pexConfig.Field[float](doc="Seconds to sleep in run().", default=0.0)
    probe_log = pexConfig.Field[str](doc="Probe log path (see _probe); empty: no probe.", default="")
    pollute = pexConfig.Field[bool](doc="Change global state after the probe (see _probe).", default=False)


class SourceTask(pipeBase.PipelineTask):
    ConfigClass = SourceTaskConfig
    _DefaultName = "e2eSource"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):  # noqa: N802, N803
        label = self.getName()
        key = _data_id_key(butlerQC.quantum.dataId)
        _probe(self.config, label, key)
        _append(self.config, label, key, "start")
        raw = butlerQC.get(inputRefs.raw)
        if self.config.sleep:
            time.sleep(self.config.sleep)
        out = {"detector": raw["detector"], "value": raw["value"] * 2, "stage": "a"}
        butlerQC.put(pipeBase.Struct(out=out), outputRefs)
        _append(self.config, label, key, "ok")


# ---------------------------------------------------------------------------
# middle: e2e_a[det] -> e2e_b[det]  (can fail on purpose)
# ---------------------------------------------------------------------------


class MiddleConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument", "detector")):
    inp = cT.Input(
        name="e2e_a",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument", "detector"),
        doc="Per-detector output of source.",
    )
    out = cT.Output(
        name="e2e_b",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument", "detector"),
        doc="Per-detector output of middle.",
    )


class MiddleTaskConfig(pipeBase.PipelineTaskConfig, pipelineConnections=MiddleConnections):
    run_log = pexConfig.Field[str](doc="Run log path; empty: use $E2E_RUN_LOG.", default="")
    sleep = pexConfig.Field[float](doc="Seconds to sleep in run().", default=0.0)
    probe_log = pexConfig.Field[str](doc="Probe log path (see _probe); empty: no probe.", default="")
    pollute = pexConfig.Field[bool](doc="Change global state after the probe (see _probe).", default=False)
    fail_ids = pexConfig.ListField[int](
        doc="Detector ids whose quantum fails.",
        default=[],
    )
    fail_attempts = pexConfig.Field[int](
        doc=(
            "If > 0, a quantum in fail_ids fails only on its first fail_attempts executions "
            "(counted from the run log, which must then be set) and succeeds afterwards. "
            "0: fail every time."
        ),
        default=0,
    )
    segfault_ids = pexConfig.ListField[int](doc="Detector ids whose quantum dies of SIGSEGV.", default=[])
    exit_ids = pexConfig.ListField[int](doc="Detector ids whose quantum calls os._exit(4).", default=[])
    hang_ids = pexConfig.ListField[int](doc="Detector ids whose quantum sleeps 300 s.", default=[])
    fail_exit_code = pexConfig.Field[int](
        doc=(
            "0: fail by raising an exception (pipetask exits non-zero, 1). "
            "Otherwise: terminate the process at once with os._exit(fail_exit_code)."
        ),
        default=0,
    )


class MiddleTask(pipeBase.PipelineTask):
    ConfigClass = MiddleTaskConfig
    _DefaultName = "e2eMiddle"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):  # noqa: N802, N803
        label = self.getName()
        data_id = butlerQC.quantum.dataId
        key = _data_id_key(data_id)
        previous = _previous_starts(self.config, label, key)
        _probe(self.config, label, key)
        _append(self.config, label, key, "start")
        inp = butlerQC.get(inputRefs.inp)
        if data_id["detector"] in self.config.exit_ids:
            os._exit(4)
        if data_id["detector"] in self.config.hang_ids:
            time.sleep(300)
        if data_id["detector"] in self.config.segfault_ids:
            import ctypes

            ctypes.string_at(0)  # a real segmentation fault
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if data_id["detector"] in self.config.fail_ids and (
            self.config.fail_attempts <= 0 or previous < self.config.fail_attempts
        ):
            _append(self.config, label, key, "fail")
            if self.config.fail_exit_code:
                os._exit(self.config.fail_exit_code)
            raise RuntimeError(f"e2e: deliberate failure of {label} for {key} (attempt {previous + 1})")
        out = {"detector": inp["detector"], "value": inp["value"] + 1, "stage": "b"}
        butlerQC.put(pipeBase.Struct(out=out), outputRefs)
        _append(self.config, label, key, "ok")


# ---------------------------------------------------------------------------
# gather: e2e_b[all dets] -> e2e_sum[instrument]  (fan-in)
# ---------------------------------------------------------------------------


class GatherConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument",)):
    inp = cT.Input(
        name="e2e_b",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument", "detector"),
        multiple=True,
        doc="All per-detector outputs of middle.",
    )
    out = cT.Output(
        name="e2e_sum",
        storageClass=STORAGE_CLASS,
        dimensions=("instrument",),
        doc="Aggregate over detectors.",
    )


class GatherTaskConfig(pipeBase.PipelineTaskConfig, pipelineConnections=GatherConnections):
    run_log = pexConfig.Field[str](doc="Run log path; empty: use $E2E_RUN_LOG.", default="")
    sleep = pexConfig.Field[float](doc="Seconds to sleep in run().", default=0.0)
    probe_log = pexConfig.Field[str](doc="Probe log path (see _probe); empty: no probe.", default="")
    pollute = pexConfig.Field[bool](doc="Change global state after the probe (see _probe).", default=False)


class GatherTask(pipeBase.PipelineTask):
    ConfigClass = GatherTaskConfig
    _DefaultName = "e2eGather"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):  # noqa: N802, N803
        label = self.getName()
        key = _data_id_key(butlerQC.quantum.dataId)
        _probe(self.config, label, key)
        _append(self.config, label, key, "start")
        inputs = [butlerQC.get(ref) for ref in inputRefs.inp]
        if self.config.sleep:
            time.sleep(self.config.sleep)
        out = {
            "detectors": sorted(d["detector"] for d in inputs),
            "total": sum(d["value"] for d in inputs),
            "stage": "sum",
        }
        butlerQC.put(pipeBase.Struct(out=out), outputRefs)
        _append(self.config, label, key, "ok")
