"""Bad input (issue 6, promise 6): every bad configuration gives a one-line
error naming the key or path and the fix, before anything runs.

Each case is checked through ``ParslService(config).run_submission_checks()``
(what ``bps submit`` calls before the submit directory exists) and, if that
passes, ``prepare`` (which must fail before writing the run-state store).
The table of doc/reliability.md lists these cases.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lsst.ctrl.bps import GenericWorkflowExec, GenericWorkflowJob  # noqa: E402
from lsst.ctrl.bps.parsl import ParslService  # noqa: E402
from lsst.ctrl.bps.parsl.commands import RenderError  # noqa: E402
from lsst.ctrl.bps.parsl.configuration import ConfigurationError  # noqa: E402
from lsst.ctrl.bps.parsl.site import SiteConfig  # noqa: E402
from lsst.ctrl.bps.parsl.state import StateStoreError  # noqa: E402
from synthetic import BASH, job, make_config, workflow  # noqa: E402

LOCAL = "lsst.ctrl.bps.parsl.sites.Local"


class MissingLabelSite(SiteConfig):
    """A site whose select_executor names an executor it does not have."""

    def get_executors(self):
        from parsl.executors import ThreadPoolExecutor

        return [ThreadPoolExecutor(label="real")]

    def select_executor(self, job):
        return "imaginary"


def _site(**keys):
    return {"site": {"local": {"class": LOCAL, **keys}}}


def _generic(executors):
    return {"site": {"local": {"class": "lsst.ctrl.bps.parsl.sites.Generic", "executors": executors}}}


# (id, config values, job keyword arguments, substrings the message must hold)
CASES = [
    (
        "unknown-site-class",
        _site(**{"class": "lsst.ctrl.bps.parsl.sites.NoSuchSite"}),
        {},
        ["site.local.class", "cannot be imported", "use e.g."],
    ),
    (
        "class-not-a-siteconfig",
        _site(**{"class": "collections.OrderedDict"}),
        {},
        ["site.local.class", "not a SiteConfig subclass"],
    ),
    (
        "class-is-a-module",
        _site(**{"class": "lsst.ctrl.bps.parsl.sites"}),
        {},
        ["site.local.class", "not a SiteConfig subclass"],
    ),
    (
        "missing-site-class",
        {"computeSite": "other", "site": {"other": {"cores": 2}}},
        {},
        ["site.other.class", "add it"],
    ),
    ("computeSite-without-section", {"computeSite": "nowhere"}, {}, ["site.nowhere", "computeSite"]),
    ("site-not-a-mapping", {"site": {"local": "fast"}}, {}, ["site.local", "mapping"]),
    ("negative-cores", _site(cores=-2), {}, ["site.local.cores", "greater than 0"]),
    ("zero-memory", _site(memory=0), {}, ["site.local.memory", "greater than 0"]),
    ("cores-wrong-type", _site(cores="many"), {}, ["site.local.cores", "must be a int"]),
    ("cores-bool", _site(cores=True), {}, ["site.local.cores", "bool"]),
    ("negative-retries", _site(retries=-1), {}, ["site.local.retries", "0 or more"]),
    ("retries-wrong-type", _site(retries="three"), {}, ["site.local.retries", "must be a int"]),
    ("strategyPeriod-zero", _site(strategyPeriod=0), {}, ["site.local.strategyPeriod", "greater than 0"]),
    (
        "monitorInterval-negative",
        _site(monitorInterval=-5),
        {},
        ["site.local.monitorInterval", "greater than 0"],
    ),
    ("monitorEnable-string", _site(monitorEnable="yes"), {}, ["site.local.monitorEnable", "bool"]),
    ("commandPrefix-number", _site(commandPrefix=42), {}, ["site.local.commandPrefix", "str"]),
    ("environment-string", _site(environment="sure"), {}, ["site.local.environment", "bool"]),
    ("warmStart-string", _site(warmStart="maybe"), {}, ["site.local.warmStart", "bool"]),
    ("progress-interval-negative", {"parslProgressInterval": -1}, {}, ["parslProgressInterval", "use 0"]),
    ("detach-not-bool", {"parslDetach": "maybe"}, {}, ["parslDetach", "bool"]),
    (
        "generic-no-executors",
        {"site": {"local": {"class": "lsst.ctrl.bps.parsl.sites.Generic"}}},
        {},
        ["site.local.executors", "add one section per executor"],
    ),
    (
        "generic-unknown-provider",
        _generic({"main": {"provider": "pbsxyz"}}),
        {},
        ["site.local.executors.main.provider", "use one of"],
    ),
    (
        "generic-unknown-executor-option",
        _generic({"main": {"provider": "local", "executor_options": {"bogus": 1}}}),
        {},
        ["site.local.executors.main.executor_options.bogus", "remove it or use one of"],
    ),
    (
        "generic-walltime-wrong-format",
        _generic({"main": {"provider": "slurm", "provider_options": {"walltime": "one hour"}}}),
        {},
        ["site.local.executors.main.provider_options.walltime", "HH:MM:SS"],
    ),
    (
        "generic-walltime-unquoted",
        _generic({"main": {"provider": "slurm", "provider_options": {"walltime": 3600}}}),
        {},
        ["site.local.executors.main.provider_options.walltime", "must be a str"],
    ),
    (
        "select-executor-label-missing",
        _site(**{"class": "test_bad_config.MissingLabelSite"}),
        {},
        ["select_executor returned 'imaginary'", "fix the site class"],
    ),
    (
        "job-walltime-wrong-format",
        {},
        {"request_walltime": "one hour"},
        ["requestWalltime of job 'j0'", "HH:MM:SS"],
    ),
    (
        "job-walltime-negative",
        {},
        {"request_walltime": "-5"},
        ["requestWalltime of job 'j0'", "greater than 0"],
    ),
    ("job-more-cores-than-site", _site(cores=2), {"request_cpus": 8}, ["requestCpus", "site.local.cores"]),
    (
        "job-more-memory-than-site",
        _site(memory=1000),
        {"request_memory": 4000},
        ["requestMemory", "site.local.memory"],
    ),
    (
        "missing-executable",
        {},
        {"executable": GenericWorkflowExec("prog", "/no/such/dir/prog", False)},
        ["/no/such/dir/prog", "fix the executable's path"],
    ),
    ("unresolved-placeholder", {}, {"arguments": "{nosuchvalue}", "cmdvals": {}}, ["j0", "nosuchvalue"]),
]


@pytest.mark.parametrize(
    ("values", "job_kwargs", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_configuration_is_refused_before_anything_runs(tmp_path, values, job_kwargs, expected):
    config = make_config(values)
    submit = tmp_path / "submit"
    if "executable" in job_kwargs or "arguments" in job_kwargs:
        first = GenericWorkflowJob("j0", "j", **{"executable": BASH, "arguments": "-c true", **job_kwargs})
    else:
        first = job("j0", "true", label="j", **job_kwargs)
    jobs = [first, job("j1", "true", label="j")]
    with pytest.raises((ConfigurationError, RenderError, StateStoreError)) as info:
        service = ParslService(config)
        service.run_submission_checks()
        service.prepare(config, workflow(jobs), str(submit))
    message = str(info.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert not (submit / "bps_parsl.sqlite3").exists()
    assert not (submit / "bps_parsl.sqlite3.tmp").exists()
    assert not (submit / "logs").exists()


def test_submit_path_under_a_file_is_refused(tmp_path):
    """submitPath whose parent is a regular file (so it can never be made)."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    config = make_config(submitPath=f"{blocker}/submit/{{outputRun}}")
    with pytest.raises(ConfigurationError, match=r"'submitPath' .* is not a directory: set submitPath"):
        ParslService(config).run_submission_checks()


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root may write anywhere; see test_reliability's read-only mount"
)
def test_submit_path_not_writable_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = make_config(submitPath=f"{locked}/submit/{{outputRun}}")
    with pytest.raises(ConfigurationError, match=r"'submitPath' .* not writable by you"):
        ParslService(config).run_submission_checks()


def test_good_configuration_passes(tmp_path):
    """The checks are not over-eager: the plain local site prepares."""
    config = make_config(_site(cores=2))
    service = ParslService(config)
    service.run_submission_checks()
    service.prepare(config, workflow([job("j0", "true", request_walltime="00:10:00")]), str(tmp_path / "s"))
    assert (tmp_path / "s" / "bps_parsl.sqlite3").exists()
