"""The old plugin's public API works for site code written against it.

`OldStyleSite` is written the way the old plugin's documentation ("Adding a
site") and its ``sites/`` modules write sites: a `SiteConfig` subclass that
reads its keys with ``get_bps_config_value(self.site, ...)``, builds its own
executors, picks one from ``job.generic.request_memory`` and overrides
``get_address``, ``get_command_prefix`` and ``get_monitor``. It runs a real
workflow unchanged; the other tests check each helper against the old
plugin's documented behaviour.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from lsst.ctrl.bps import GenericWorkflowFile, GenericWorkflowJob, WmsStates
from lsst.ctrl.bps.parsl import ParslJob, ParslService, ParslWorkflow, SiteConfig
from lsst.ctrl.bps.parsl.configuration import (
    ConfigurationError,
    get_bps_config_value,
    get_workflow_filename,
    get_workflow_name,
    set_parsl_logging,
)
from lsst.ctrl.bps.parsl.environment import export_environment
from lsst.ctrl.bps.parsl.job import get_file_paths
from lsst.ctrl.bps.parsl.records import JobRow
from synthetic import BASH, attempts, job, make_config, run, workflow

S = WmsStates.SUCCEEDED.value

SEEN: list[tuple] = []
"""(name, label, tags, request_memory) of every job OldStyleSite was asked about."""


class OldStyleSite(SiteConfig):
    """Two thread pools, ``small`` and ``large``, chosen by memory."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cores = get_bps_config_value(self.site, "cores", int, required=True)
        self.small_memory = get_bps_config_value(self.site, "small_memory", float, 2.0)
        self.qos = get_bps_config_value(self.site, "qos", str)

    def get_executors(self):
        from parsl.executors import ThreadPoolExecutor

        return [
            ThreadPoolExecutor(label="small", max_threads=self.cores),
            ThreadPoolExecutor(label="large", max_threads=1),
        ]

    def select_executor(self, job: ParslJob) -> str:
        SEEN.append((job.name, job.generic.label, dict(job.tags), job.generic.request_memory))
        memory = job.generic.request_memory / 1024  # GB
        if memory <= self.small_memory:
            return "small"
        return "large"

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_command_prefix(self) -> str:
        prefix = super().get_command_prefix()
        return prefix + f"\nexport OLD_SITE_QOS={self.qos or 'none'}"

    def get_monitor(self):
        if not get_bps_config_value(self.site, "monitorEnable", bool, False):
            return None
        return super().get_monitor()


class MemoryListSite(OldStyleSite):
    """Asks for each job's memory to be passed to its (thread pool) executor."""

    def __init__(self, *args, **kwargs):
        kwargs["resource_list"] = ["memory"]
        super().__init__(*args, **kwargs)


def old_style_config(tmp_path, **site):
    """A BpsConfig whose compute site ``old`` is `OldStyleSite` with keys ``site``."""
    values = {"class": f"{__name__}.OldStyleSite", "cores": 2, **site}
    return make_config(
        {"computeSite": "old", "site": {"old": values}, "submitPath": str(tmp_path / "submit")}
    )


def test_old_style_site_runs_a_workflow_unchanged(tmp_path, monkeypatch):
    """Its executors, choice, command prefix and environment are used for real jobs."""
    monkeypatch.setenv("OLD_SITE_FROM_SUBMITTER", "carried")
    out = tmp_path / "out"
    out.mkdir()
    script = f'echo "$OLD_SITE_QOS $OLD_SITE_FROM_SUBMITTER" > {out}/$0'
    jobs = [
        GenericWorkflowJob(
            name,
            "calib",
            executable=BASH,
            arguments=f"-c '{script}' {name}",
            request_memory=memory,
            tags={"visit": visit},
            number_of_retries=0,
        )
        for name, memory, visit in (("calib_1", 1024, 11), ("calib_2", 4096, 12))
    ]
    config = old_style_config(tmp_path, commandPrefix="export OLD_SITE_PREFIX=1", environment=True)
    SEEN.clear()
    result = run(workflow(jobs), tmp_path / "submit", config)
    assert {name: row[0] for name, row in result.items()} == {"calib_1": S, "calib_2": S}
    # get_command_prefix (with the base class's commandPrefix and environment) ran before each job.
    assert (out / "calib_1").read_text() == "none carried\n"
    assert (out / "calib_2").read_text() == "none carried\n"
    # select_executor saw the generic job's label, tags and memory, and its choice was used.
    assert ("calib_1", "calib", {"visit": 11}, 1024) in SEEN
    assert ("calib_2", "calib", {"visit": 12}, 4096) in SEEN
    assert attempts(tmp_path / "submit", "calib_1")[0][7] == "small"
    assert attempts(tmp_path / "submit", "calib_2")[0][7] == "large"


def test_get_bps_config_value_semantics(tmp_path, monkeypatch):
    """The old overloads: None, default, KeyError when required, RuntimeError on a wrong type."""
    monkeypatch.setenv("OLD_SITE_DIR", "/data/x")
    config = old_style_config(tmp_path, qos="normal", path="${OLD_SITE_DIR}/y", small={"max_blocks": 7})
    site = SiteConfig.get_site_subconfig(config)
    # No default and not required: None.
    assert get_bps_config_value(site, "absent", str) is None
    # A default is returned when the key is absent, required or not.
    assert get_bps_config_value(site, "absent", int, 3) == 3
    assert get_bps_config_value(site, "absent", int, 3, required=True) == 3
    # Required and no default: KeyError (also our one-line ConfigurationError).
    with pytest.raises(KeyError) as info:
        get_bps_config_value(site, "absent", str, required=True)
    assert isinstance(info.value, ConfigurationError) and "absent" in str(info.value)
    assert "\n" not in str(info.value) and not str(info.value).startswith("'")
    # Present: the value, with environment variables expanded; ".a.b" paths work.
    assert get_bps_config_value(site, "qos", str, "other") == "normal"
    assert get_bps_config_value(site, "path", str) == "/data/x/y"
    assert get_bps_config_value(site, ".small.max_blocks", int, 3000) == 7
    assert get_bps_config_value(config, "computeSite", str, required=True) == "old"
    # Wrong type: RuntimeError, as the old plugin raised (and a ConfigurationError).
    with pytest.raises(RuntimeError) as info:
        get_bps_config_value(site, "qos", int)
    assert isinstance(info.value, ConfigurationError) and "qos" in str(info.value)
    # Keyword name of the old signature.
    assert get_bps_config_value(site, "cores", dataType=int) == 2


def test_workflow_name_filename_and_parsl_logging(tmp_path):
    """``project.campaign``, the file holding the workflow, the level of Parsl's loggers."""
    config = make_config({"project": "proj", "campaign": "camp"})
    assert get_workflow_name(config) == "proj.camp"
    assert get_workflow_name(make_config({"project": "proj", "operator": "someone"})) == "proj.someone"
    # No project: uniqProcName, as the old plugin (30.2026.4300); bps submit always sets it.
    assert get_workflow_name(make_config({"operator": "someone", "uniqProcName": "u_run_1"})) == "u_run_1"
    assert get_workflow_name(make_config({"operator": "someone"})) == "bps.someone"
    assert os.path.dirname(get_workflow_filename(str(tmp_path))) == str(tmp_path)

    assert set_parsl_logging(make_config({"parsl": {"log_level": "DEBUG"}})) == logging.DEBUG
    assert logging.getLogger("parsl").level == logging.DEBUG
    assert set_parsl_logging(make_config()) == logging.WARNING
    with pytest.raises(ConfigurationError, match="'parsl.log_level' is 'LOUD'"):
        set_parsl_logging(make_config({"parsl": {"log_level": "LOUD"}}))


def test_export_environment_recreates_variables(monkeypatch):
    """Sourcing the script in an empty environment gives back an awkward value exactly."""
    value = 'it\'s "quoted" $HOME `x`\nsecond line'
    monkeypatch.setenv("OLD_SITE_ODD_VALUE", value)
    script = export_environment()
    shown = subprocess.run(
        ["/bin/sh", "-c", script + '\nprintf %s "$OLD_SITE_ODD_VALUE"'],
        env={},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == value


def test_resource_list_is_used_or_refused(tmp_path):
    """Named requests reach the executor; names an executor does not take are refused."""
    from parsl.executors import HighThroughputExecutor

    config = old_style_config(tmp_path)
    job_ = ParslJob.from_row(
        JobRow(
            1,
            "j",
            "l",
            0,
            False,
            request_cpus=2,
            request_memory=3000,
            request_disk=10,
            request_walltime="90",
            priority="5",
        )
    )

    class HtexSite(OldStyleSite):
        def get_executors(self):
            return [HighThroughputExecutor(label="small", address=self.get_address())]

    site = HtexSite(config, resource_list=["priority"])
    site.validate()
    assert site.resource_specification(job_, "small") == {"priority": 5}
    assert SiteConfig.resource_specification(
        OldStyleSite(config, ["memory", "cores", "disk", "running_time_min", "priority"]), job_, "small"
    ) == {"memory": 3000, "cores": 2, "disk": 10, "running_time_min": 90, "priority": 5}
    assert OldStyleSite(config).resource_specification(job_, "small") is None

    with pytest.raises(ConfigurationError) as info:
        HtexSite(config, resource_list=["priority", "memory"]).validate()
    assert "executor 'small' (HighThroughputExecutor) does not take ['memory']" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        OldStyleSite(config, resource_list=["cores"]).validate()
    assert "executor 'small' (ThreadPoolExecutor) does not take ['cores']" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"\['gpus'\] are not job resources"):
        OldStyleSite(config, resource_list=["gpus"])
    # Set by the class, as the old sites did, and refused before anything runs.
    config = old_style_config(tmp_path, **{"class": f"{__name__}.MemoryListSite"})
    with pytest.raises(ConfigurationError, match="resource_list") as info:
        ParslService(config).run_submission_checks()
    assert "\n" not in str(info.value)


def test_parsl_job_old_constructor_and_attributes(tmp_path):
    """``ParslJob(generic, config, file_paths)`` and the attributes sites read."""
    config = old_style_config(tmp_path, small_memory=1.0)
    gwjob = GenericWorkflowJob(
        "calib_9", "calib", executable=BASH, arguments="-c true", request_memory=2048, tags={"visit": 9}
    )
    gwjob.request_cpus = 4
    gw = workflow([gwjob])
    gw.add_job_inputs("calib_9", [GenericWorkflowFile("butlerConfig", src_uri="/repo/butler.yaml")])
    paths = get_file_paths(gw, "calib_9")
    assert paths == {"butlerConfig": "/repo/butler.yaml"}
    job_ = ParslJob(gwjob, config, paths)
    assert job_.generic is gwjob and job_.name == "calib_9" and job_.config is config
    assert job_.file_paths == paths and job_.future is None and job_.done is False
    assert job_.tags == {"visit": 9} and job_.request_memory == 2048 and job_.request_cpus == 4
    assert job_.stdout == str(tmp_path / "submit" / "logs" / "calib" / "9" / "calib_9.stdout")
    assert job_.stderr == str(tmp_path / "submit" / "logs" / "calib" / "9" / "calib_9.stderr")
    assert job_.get_resources()["memory"] == 2048
    site = SiteConfig.from_config(config)
    assert site.select_executor(job_) == "large"

    # The view the driver hands over: tags decoded from the store, generic is the job itself.
    view = ParslJob.from_row(
        JobRow(1, "calib_9", "calib", 0, False, request_cpus=4, request_memory=1024, tags='{"visit": 9}'), 2
    )
    assert view.tags == {"visit": 9} and view.generic is view and view.attempt == 2
    assert site.select_executor(view) == "small"


def test_parsl_workflow_attributes(tmp_path):
    """The old names of a prepared workflow's attributes, also after ``read``."""
    config = old_style_config(tmp_path)
    submit = tmp_path / "submit"
    prepared = ParslService(config).prepare(config, workflow([job("a", request_memory=2048)]), str(submit))
    for wf in (prepared, ParslWorkflow.read(str(submit))):
        assert isinstance(wf, ParslWorkflow)
        assert wf.path == wf.submit_path == str(submit) and wf.name == "wf" and wf.run_id
        assert isinstance(wf.site, OldStyleSite) and wf.site.submit_path == str(submit)
    assert prepared.bps_config is config
    assert os.path.exists(get_workflow_filename(str(submit)))


@pytest.mark.parametrize(
    ("template", "tags", "subdir"),
    [
        # The old plugin's own unit tests (tests/test_job.py upstream).
        ("{label}/{tract}/{patch}/{band}/{visit}/{exposure}", {"exposure": 903344}, "label1/903344"),
        ("{label}/{tract}/{patch}/{band}/{visit}/{exposure}", None, "label1"),
        ("", {"exposure": 903344}, ""),
        # BPS's default template.
        (None, {"visit": 12, "band": "r"}, "label1/r/12"),
    ],
)
def test_parsl_job_log_names_are_the_old_plugins(tmp_path, template, tags, subdir):
    """``<submitPath>/logs/<subDirTemplate expanded>/<job name>.stdout|.stderr``."""
    values = {"submitPath": str(tmp_path)}
    if template is not None:
        values["subDirTemplate"] = template
    gwjob = GenericWorkflowJob("job1", label="label1")
    gwjob.tags = tags
    job_ = ParslJob(gwjob, make_config(values), {})
    base = (
        os.path.join(tmp_path, "logs", subdir, "job1") if subdir else os.path.join(tmp_path, "logs", "job1")
    )
    assert (job_.stdout, job_.stderr) == (base + ".stdout", base + ".stderr")
    # Later attempts add their number; the first keeps the old names.
    view = ParslJob.from_row(
        JobRow(1, "job1", "label1", 0, False, log_dir=subdir), 3, submit_path=str(tmp_path)
    )
    assert (view.stdout, view.stderr) == (base + ".stdout.3", base + ".stderr.3")


def test_first_attempt_logs_have_the_old_names_in_a_real_run(tmp_path):
    """A run writes the first attempt's output to the old names, a retry's to
    numbered ones; bps report and the run page point at those files."""
    import re

    from lsst.ctrl.bps.parsl.report.page import write_page

    submit = tmp_path / "submit"
    marker = tmp_path / "failed-once"
    script = f"echo out-$0; echo err-$0 >&2; [ -e {marker} ] || {{ touch {marker}; exit 3; }}"
    jobs = [
        GenericWorkflowJob(
            "calib_7",
            "calib",
            executable=BASH,
            arguments=f"-c '{script}' calib_7",
            tags={"visit": 7},
            number_of_retries=1,
        )
    ]
    config = make_config({"submitPath": str(submit), "subDirTemplate": "{label}/{visit}/{detector}"})
    result = run(workflow(jobs), submit, config)
    assert result["calib_7"][:2] == (S, 2)
    logs = submit / "logs" / "calib" / "7"
    assert sorted(p.name for p in logs.iterdir()) == [
        "calib_7.stderr",
        "calib_7.stderr.2",
        "calib_7.stdout",
        "calib_7.stdout.2",
    ]
    assert (logs / "calib_7.stdout").read_text() == "out-calib_7\n"
    assert (logs / "calib_7.stderr").read_text().startswith("err-calib_7\n")
    (report,), _ = ParslService(config).report(str(submit))
    assert f"Job logs: {submit / 'logs'}" in str(report.specific_info)
    # The run page links the failed first attempt's stderr by its old name.
    page = open(write_page(str(submit))).read()
    assert "calib/7/calib_7.stderr" in page and not re.search(r"\.\d+\.(out|err)\b", page)


def test_get_resources_as_the_old_plugin():
    """cores, disk, memory (and walltime) always; priority only when set."""
    unset = ParslJob.from_row(JobRow(1, "j", "l", 0, False)).get_resources()
    assert set(unset) == {"memory", "cores", "disk", "running_time_min"}
    assert unset["memory"] is None and unset["disk"] is None and unset["running_time_min"] is None
    gwjob = GenericWorkflowJob("j", "l", request_memory=2048, request_disk=10, priority=3)
    gwjob.request_cpus = 2
    assert ParslJob(gwjob).get_resources() == {
        "memory": 2048,
        "cores": 2,
        "disk": 10,
        "running_time_min": None,
        "priority": 3,
    }


def test_site_resource_lists_are_the_old_plugins_table(monkeypatch):
    """``SiteConfig.resource_list`` per executor type (the old plugin's
    testSiteResourceLists), with the local pool's documented entry."""
    import platform

    from lsst.ctrl.bps.parsl.site import EXECUTOR_RESOURCES
    from lsst.ctrl.bps.parsl.sites import Ccin2p3, Local, LocalSrunWorkQueue, Slurm, Torque, TripleSlurm
    from synthetic import make_config as config_of

    expected = {
        "HighThroughputExecutor": {"priority"},
        "WorkQueueExecutor": {"memory", "cores", "disk", "running_time_min", "priority"},
        "LocalPoolExecutor": {"cores", "memory", "running_time_min"},
    }
    assert {kind: set(EXECUTOR_RESOURCES[kind]) for kind in expected} == expected
    config = config_of(
        {
            "submitPath": ".",
            "computeSite": "slurm",
            "outputRun": "test_run",
            "site": {"slurm": {"cores": 1, "nodes": 1, "walltime": "00:01:00", "address": "127.0.0.1"}},
        }
    )
    classes = [Local, Slurm, TripleSlurm, Torque]
    if platform.machine() in ("aarch64", "x86_64"):
        classes.append(Ccin2p3)
    try:
        import ndcctools  # noqa: F401

        classes.append(LocalSrunWorkQueue)
    except ImportError:
        pass
    for site_class in classes:
        site = site_class(config)
        kind = type(site.get_executors()[0]).__name__
        assert set(site.resource_list) == expected[kind], site_class
    # A list given by the site class (or its caller) wins, as in the old plugin.
    assert Slurm(config, resource_list=[]).resource_list == []


@pytest.mark.parametrize("site_class", ["Slurm", "TripleSlurm"])
def test_slurm_launcher_follows_nodes_as_the_old_plugin(site_class):
    """SingleNodeLauncher for one node, SrunLauncher for more; ``launcher`` overrides."""
    from lsst.ctrl.bps.parsl import sites
    from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher

    def executors(**keys):
        values = {"class": f"lsst.ctrl.bps.parsl.sites.{site_class}", "walltime": "00:01:00"}
        values.update(address="127.0.0.1", **keys)
        config = make_config({"computeSite": "slurm", "site": {"slurm": values}})
        return getattr(sites, site_class)(config).get_executors()

    for nodes in (1, 2, 3):
        for executor in executors(nodes=nodes):
            expected = SrunLauncher if nodes > 1 else SingleNodeLauncher
            assert type(executor.provider.launcher) is expected, (nodes, executor.label)
    for executor in executors(nodes=1, launcher="simple"):
        assert type(executor.provider.launcher) is SimpleLauncher
    for executor in executors(nodes=1, launcher="srun"):
        assert type(executor.provider.launcher) is SrunLauncher


@pytest.mark.parametrize(
    ("site_retries", "number_of_retries", "attempts_made"),
    [(0, 5, 1), (2, 5, 3), (None, 2, 3), (None, None, 2), (1, None, 2)],
)
def test_site_retries_win_over_number_of_retries(tmp_path, site_retries, number_of_retries, attempts_made):
    """The site's ``retries`` (the old plugin's only control) sets the
    attempts whatever BPS's default ``numberOfRetries: 5`` says; unset, the
    job's ``numberOfRetries``; neither, 1 retry (the old default)."""
    site = {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 1}
    if site_retries is not None:
        site["retries"] = site_retries
    config = make_config({"site": {"local": site}})
    failing = job("failing", "exit 3")
    failing.number_of_retries = number_of_retries
    failing.retry_unless_exit = None
    result = run(workflow([failing]), tmp_path / "submit", config, expect_fail=True)
    assert result["failing"][:2] == (WmsStates.FAILED.value, attempts_made)


def test_version_sorts_after_the_old_plugin():
    """``lsst.ctrl.bps.parsl.version.__version__`` is the installed
    distribution's version, sorts after every release of the old plugin
    (newest: 30.2026.4300) and follows doc/operations.md's rule (major 99)."""
    import importlib.metadata

    import lsst.ctrl.bps.parsl
    from lsst.ctrl.bps.parsl.version import __version__
    from packaging.version import Version

    assert __version__ == lsst.ctrl.bps.parsl.__version__
    assert importlib.metadata.version("lsst-ctrl-bps-parsl") == __version__
    version = Version(__version__)
    assert version.major == 99 and not version.is_prerelease and not version.local
    for old in ("30.2026.4300", "30.2026.300", "30.0.0", "29.2.1", "31.2027.5200", "98.2090.5300"):
        assert version > Version(old)
    assert "major version is 99" in (Path(__file__).parents[1] / "doc" / "operations.md").read_text()
