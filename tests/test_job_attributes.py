"""BPS job attributes the HTCondor plugin honours (issue 12 item 7):
``concurrencyLimit``, ``abortOnValue``/``abortReturnValue``, ``computeSite``
and ``queue``; real jobs on the local pool.
"""

from __future__ import annotations

import logging
import math
import time

import pytest
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.configuration import ConfigurationError
from lsst.ctrl.bps.parsl.records import JobState
from lsst.ctrl.bps.parsl.service import RunFailedError
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path
from synthetic import job, make_config, run, workflow


def _site(cores: int = 2, **extra) -> dict:
    return {
        "computeSite": "here",
        "site": {"here": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": cores}},
        **extra,
    }


def _attempts(submit) -> dict[str, list]:
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        found: dict[str, list] = {}
        for attempt in store.attempts():
            found.setdefault(names[attempt.job], []).append(attempt)
        return found
    finally:
        store.close()


def test_concurrency_limit_one_never_overlaps(tmp_path):
    """Six 0.5 s jobs holding limit 'db' (1 unit) on 4 cores run one at a time;
    two jobs without the limit run beside them.
    """
    jobs = [job(f"db{k}", "sleep 0.5", label="db", concurrency_limit="db") for k in range(6)]
    jobs += [job(f"free{k}", "sleep 0.5", label="free") for k in range(2)]
    config = make_config(_site(cores=4, concurrencyLimits={"db": 1}))
    result = run(workflow(jobs), tmp_path / "submit", config)
    assert all(row[0] == JobState.SUCCEEDED for row in result.values())
    spans = sorted(
        (a[0].start, a[0].end) for name, a in _attempts(tmp_path / "submit").items() if name.startswith("db")
    )
    assert len(spans) == 6
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.01, spans
    free = [a[0].start for name, a in _attempts(tmp_path / "submit").items() if name.startswith("free")]
    assert min(free) < spans[2][0], "jobs without the limit must not wait for it"


def test_unknown_concurrency_limit_is_refused_at_prepare(tmp_path):
    config = make_config(_site())
    gw = workflow([job("a", concurrency_limit="nosuch:2")])
    with pytest.raises(ConfigurationError, match=r"job 'a' .*concurrency limit 'nosuch'.*concurrencyLimits"):
        ParslService(config).prepare(config, gw, str(tmp_path / "submit"))
    assert not (tmp_path / "submit" / "bps_parsl.sqlite3").exists()


def test_final_jobs_db_limit_is_known_by_default(tmp_path):
    gw = workflow([job("a")])
    gw.add_final(job("final", concurrency_limit="db_limit"))
    result = run(gw, tmp_path / "submit", make_config(_site()))
    assert result["final"][0] == JobState.SUCCEEDED


def test_abort_value_stops_the_run_with_its_status_and_kills_running_jobs(tmp_path):
    """'bad' exits 3 (its abortOnValue) while 'slow' runs: the run stops with
    status 7, 'slow' is killed and DELETED, 'after' never runs (DELETED), and
    the final job still runs, as DAGMan's FINAL node after ABORT-DAG-ON.
    """
    jobs = [
        job("slow", "sleep 30"),
        job("bad", "sleep 0.5; exit 3", abort_on_value=3, abort_return_value=7, number_of_retries=3),
        job("after"),
        job("other"),
    ]
    gw = workflow(jobs, [("bad", "after"), ("slow", "other")])
    gw.add_final(job("final"))
    config = make_config(_site())
    service = ParslService(config)
    wf = service.prepare(config, gw, str(tmp_path / "submit"))
    began = time.monotonic()
    with pytest.raises(RunFailedError, match=r"job 'bad' .*exited with 3.*aborted with status 7") as caught:
        service.submit(wf)
    assert time.monotonic() - began < 20, "the running job was not killed"
    assert caught.value.exit_status == 7
    store = RunStore(db_path(str(tmp_path / "submit")), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        states = {names[s.job]: (s.state, s.attempt) for s in store.statuses()}
    finally:
        store.close()
    assert states["bad"] == (JobState.FAILED, 1), "an abort value is not retried"
    assert states["slow"][0] == JobState.DELETED
    assert states["after"][0] == JobState.DELETED
    assert states["other"][0] == JobState.DELETED
    assert states["final"][0] == JobState.SUCCEEDED


def test_compute_site_or_queue_naming_an_executor_routes_else_warns_once_per_label(tmp_path, caplog):
    """A computeSite/queue naming this site's executor is used; others are
    ignored with one warning per label (not per job).
    """
    jobs = [job(f"odd{k}", label="odd", compute_site="elsewhere", queue="big") for k in range(5)]
    jobs += [job(f"same{k}", label="same", compute_site="here") for k in range(3)]
    jobs += [job("routed", compute_site="local")]
    with caplog.at_level(logging.WARNING, logger="lsst.ctrl.bps.parsl"):
        result = run(workflow(jobs), tmp_path / "submit", make_config(_site()))
    assert all(row[0] == JobState.SUCCEEDED for row in result.values())
    lines = [r.getMessage() for r in caplog.records if "not an executor of site" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any("label 'odd' ask for computeSite 'elsewhere'" in line for line in lines)
    assert any("label 'odd' ask for queue 'big'" in line for line in lines)
    assert _attempts(tmp_path / "submit")["routed"][0].executor == "local"


# ---- every value checked at prepare (issue 20, P9) --------------------------------

_INT_RANGES = {
    "request_cpus": ("requestCpus", 1, 10**6),
    "request_memory": ("requestMemory", 1, 2**53),
    "request_memory_max": ("requestMemoryMax", 1, 2**53),
    "request_disk": ("requestDisk", 0, 2**53),
    "number_of_retries": ("numberOfRetries", 0, 10**6),
    "abort_on_value": ("abortOnValue", 0, 255),
    "abort_return_value": ("abortReturnValue", 0, 255),
}
_GARBAGE = {
    "str": "abc",
    "empty-str": "",
    "numeric-str": "4",
    "negative": -5,
    "minus-one": -1,
    "zero": 0,
    "float": 2.5,
    "small-float": 0.5,
    "nan": math.nan,
    "inf": math.inf,
    "minus-inf": -math.inf,
    "huge": 10**30,
    "bool": True,
    "int-list": [1],
    "str-list": ["a"],
    "dict": {"a": 1},
    "bytes": b"x",
}


def _valid(attribute: str, value) -> bool:
    """The rule of each attribute, written out independently of the plugin."""
    if isinstance(value, bool):
        return False
    if attribute in _INT_RANGES:
        _, low, high = _INT_RANGES[attribute]
        return isinstance(value, int) and low <= value <= high
    if attribute == "memory_multiplier":
        return isinstance(value, int | float) and math.isfinite(value) and 1 <= value <= 10**6
    if attribute == "priority":
        try:
            return math.isfinite(float(value))
        except (TypeError, ValueError):
            return False
    if attribute == "retry_unless_exit":
        codes = value if isinstance(value, list) else [value]
        return all(type(c) is int and 0 <= c <= 255 for c in codes)
    return isinstance(value, str)  # concurrency_limit, compute_site, queue


_KEYS = {
    **{a: k for a, (k, _, _) in _INT_RANGES.items()},
    "memory_multiplier": "memoryMultiplier",
    "priority": "priority",
    "retry_unless_exit": "retryUnlessExit",
    "concurrency_limit": "concurrencyLimit",
    "compute_site": "computeSite",
    "queue": "queue",
}


@pytest.mark.parametrize("attribute", sorted(_KEYS))
def test_every_job_value_is_checked_by_type_and_range_before_anything_runs(tmp_path, attribute):
    """P9: each numeric, list or text attribute of a GenericWorkflowJob the
    plugin reads, given garbage of every kind (strings, negatives, zero,
    floats where integers, NaN, infinities, huge, booleans, lists of wrong
    types, mappings, bytes): a value outside the attribute's type and range
    fails prepare with one line naming the job, its label and the BPS key,
    before any store is written; a value inside passes the check."""
    config = make_config(_site())
    key = _KEYS[attribute]
    refused = 0
    for kind, value in _GARBAGE.items():
        submit = tmp_path / f"{attribute}-{kind}"
        bad = job("j_bad", "true", label="lab")
        setattr(bad, attribute, value)
        jobs = [job("j_ok", "true", label="ok"), bad]
        service = ParslService(config)
        if _valid(attribute, value):
            from lsst.ctrl.bps.parsl.prepare.jobattrs import check_job_values

            check_job_values(bad)
            continue
        refused += 1
        with pytest.raises(ConfigurationError) as info:
            service.prepare(config, workflow(jobs), str(submit))
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message, (kind, message)
        for text in (key, "'j_bad'", "'lab'"):
            assert text in message, (kind, text, message)
        assert not (submit / "bps_parsl.sqlite3").exists(), kind
    assert refused >= 8, refused


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("request_cpus", 0),
        ("request_memory", -1),
        ("request_cpus", -3),
        ("memory_multiplier", -2),
        ("number_of_retries", -5),
        ("request_cpus", "abc"),
        ("label", 5),
        ("label", ""),
    ],
)
def test_values_seen_starting_runs_are_refused(tmp_path, attribute, value):
    """P9, the cases seen: each is one line at prepare, never a run that
    fails later (``requestCpus: 0`` holding no core, ``numberOfRetries: -5``
    silently 0, ``memoryMultiplier: -2`` asking negative memory)."""
    config = make_config(_site())
    bad = job("j_bad", "true", label="lab")
    setattr(bad, attribute, value)
    with pytest.raises(ConfigurationError) as info:
        ParslService(config).prepare(config, workflow([bad]), str(tmp_path / "submit"))
    assert "j_bad" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "submit" / "bps_parsl.sqlite3").exists()
