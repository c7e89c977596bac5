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
from lsst.ctrl.bps.parsl.configuration import ConfigurationError  # noqa: E402
from lsst.ctrl.bps.parsl.prepare.commands import RenderError  # noqa: E402
from lsst.ctrl.bps.parsl.site import SiteConfig  # noqa: E402
from lsst.ctrl.bps.parsl.store.runstore import StateStoreError  # noqa: E402
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
    assert not list(submit.glob("bps_parsl.sqlite3.*tmp")) if submit.exists() else True
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


def _doc_rows() -> dict[str, str]:
    """doc/configuration.md's key table: key cell -> default cell."""
    rows = {}
    for line in (Path(__file__).parents[1] / "doc" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            for key in cells[0].split(","):
                for name in key.split(" / "):
                    rows[name.strip().split(" ")[0].strip("`")] = cells[2]
    return rows


def _renderings(default) -> set[str]:
    if default is None:  # no value: the row says what happens then
        return {""}
    if isinstance(default, bool):
        return {str(default).lower()}
    if isinstance(default, float):
        return {f"{default:g}", str(default)}
    if default == "":
        return {'`""`'}
    return {str(default), f"`{default}`"}


def test_every_plugin_key_has_one_default_and_the_doc_table_says_it():
    """Each run-wide and site key is read through one table with one default
    (configuration.RUN_KEYS / SITE_KEYS), and doc/configuration.md's row
    for the key shows that default."""
    from lsst.ctrl.bps.parsl.configuration import RUN_KEYS, SITE_KEYS

    rows = _doc_rows()
    wrong = []
    for key in RUN_KEYS + SITE_KEYS:
        name = key.name.lstrip(".") if key in RUN_KEYS else f"site.<name>.{key.name}"
        cell = rows.get(name)
        if cell is None or not any(cell.startswith(r) for r in _renderings(key.default)):
            wrong.append(f"{name}: doc says {cell!r}, the code {key.default!r}")
    assert not wrong, "\n".join(wrong)
    assert len({key.name for key in RUN_KEYS + SITE_KEYS}) == len(RUN_KEYS + SITE_KEYS)


PLUGIN_KEY_CASES = {
    "parslDispatchOrder": ("random", "'parslDispatchOrder' is 'random'"),
    "parslProgressInterval": (-1, "parslProgressInterval"),
    "parslProgressByLabel": ("sometimes", "parslProgressByLabel"),
    "parslDriverStaleAfter": (1, "parslDriverStaleAfter"),
    "parslDetach": ("maybe", "parslDetach"),
    "concurrencyLimits": ("lots", "'concurrencyLimits'"),
    "parsl": ({"log_level": "LOUD"}, "'parsl.log_level' is 'LOUD'"),
}
"""A bad value of every key of the plugin's own (outside the site section)."""


@pytest.mark.parametrize("key", sorted(PLUGIN_KEY_CASES))
def test_every_plugin_key_is_checked_before_the_graph_is_built(key):
    """``run_submission_checks`` alone (what bps calls before it builds the
    quantum graph) refuses each plugin key's bad value in one line."""
    value, expected = PLUGIN_KEY_CASES[key]
    with pytest.raises(ConfigurationError) as info:
        ParslService(make_config({key: value})).run_submission_checks()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_plugin_key_table_is_complete():
    """Every ``parsl...`` key the plugin's code reads has a case above."""
    import re

    source = Path(__file__).parents[1] / "python" / "lsst" / "ctrl" / "bps" / "parsl"
    read = set()
    for path in source.rglob("*.py"):
        read.update(re.findall(r"\"(parsl[A-Z][A-Za-z]+)\"", path.read_text()))
    assert read and read <= set(PLUGIN_KEY_CASES), read - set(PLUGIN_KEY_CASES)


def test_site_errors_are_one_line_in_bps_submit_and_ping(tmp_path, monkeypatch):
    """Through the real ``bps``: a bad plugin key and a site whose executors
    cannot be built (Tiger's InfiniBand address on a host without one) stop
    ``bps submit`` before the quantum graph with one line and no traceback;
    ``bps ping`` says the same line."""
    psutil = pytest.importorskip("psutil")
    from cli import bps, cli_environment

    env = cli_environment(tmp_path, monkeypatch)
    no_infiniband = not any(name[:2] in ("ib", "op") for name in psutil.net_if_addrs())
    cases = [("parslDispatchOrder: random\n", "Local", "'parslDispatchOrder' is 'random'")]
    if no_infiniband:
        cases.append(("", "princeton.Tiger", "no InfiniBand interface (ib*, op*) on this host"))
    for extra, site_class, expected in cases:
        submit_yaml = tmp_path / "submit.yaml"
        submit_yaml.write_text(
            f"{extra}computeSite: here\nsite:\n  here:\n    class: lsst.ctrl.bps.parsl.sites.{site_class}\n"
            f"pipelineYaml: {tmp_path}/no-pipeline.yaml\nsubmitPath: {tmp_path}/submit\n"
            f"payload:\n  payloadName: p\n  butlerConfig: {tmp_path}/no-repo\n  inCollection: a\n"
        )
        result = bps(env, "submit", str(submit_yaml), cwd=tmp_path, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 1 and "Traceback" not in output, output
        assert [line for line in output.splitlines() if expected in line], output
        assert not list((tmp_path / "submit").rglob("*.qgraph"))
        if site_class != "Local":
            pinged = bps(env, "ping", "--pass-thru", str(submit_yaml), cwd=tmp_path, check=False)
            output = pinged.stdout + pinged.stderr
            assert pinged.returncode != 0 and "Traceback" not in output and expected in output, output
