"""Core behaviour on synthetic workflows, run on the real local Parsl site."""

from __future__ import annotations

import os
import re

import pytest
from lsst.ctrl.bps import (
    GenericWorkflow,
    GenericWorkflowFile,
    GenericWorkflowGroup,
    GenericWorkflowNoopJob,
    WmsStates,
)
from synthetic import attempts, job, make_config, run, workflow

S = WmsStates.SUCCEEDED.value
F = WmsStates.FAILED.value
P = WmsStates.PRUNED.value


def order_of(path):
    return path.read_text().split()


def test_wide_workflow_all_succeed(tmp_path):
    gw = workflow([job(f"w{i}", label="wide") for i in range(200)])
    result = run(gw, tmp_path / "submit")
    assert len(result) == 200
    assert {row[0] for row in result.values()} == {S}
    assert not (tmp_path / "runinfo").exists() and not os.path.exists("runinfo")
    assert (tmp_path / "submit" / "parsl" / "runinfo").is_dir()
    assert (tmp_path / "submit" / "logs" / "wide" / "w0.stdout").exists()


def test_diamond_order(tmp_path):
    log = tmp_path / "order"
    jobs = [job(n, f"echo {n} >> {log}") for n in ("a", "b", "c", "d")]
    gw = workflow(jobs, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    result = run(gw, tmp_path / "submit")
    assert all(r[0] == S for r in result.values())
    order = order_of(log)
    assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]


def test_failure_prunes_descendants_and_final_job_still_runs(tmp_path):
    log = tmp_path / "order"
    jobs = [
        job("a", f"echo a >> {log}"),
        job("b", "exit 7"),
        job("c", f"echo c >> {log}"),
        job("d", f"echo d >> {log}"),
        job("e", f"echo e >> {log}"),
    ]
    gw = workflow(jobs, [("a", "b"), ("b", "c"), ("c", "d"), ("a", "e")])
    gw.add_final(job("finalJob", f"echo final >> {log}"))
    result = run(gw, tmp_path / "submit", expect_fail=True)
    assert result["b"][0] == F and result["b"][2] == 7
    assert result["c"][0] == P and result["d"][0] == P
    assert result["e"][0] == S and result["finalJob"][0] == S
    assert order_of(log)[-1] == "final" and "c" not in order_of(log)


def test_final_job_runs_after_all_other_jobs(tmp_path):
    log = tmp_path / "order"
    jobs = [job(f"j{i}", f"sleep 0.{i}; echo j{i} >> {log}") for i in range(4)]
    gw = workflow(jobs)
    gw.add_final(job("finalJob", f"echo final >> {log}"))
    result = run(gw, tmp_path / "submit")
    assert result["finalJob"][0] == S
    assert order_of(log)[-1] == "final" and len(order_of(log)) == 5


def test_noop_nodes_only_order(tmp_path):
    log = tmp_path / "order"
    gw = workflow([job("a", f"echo a >> {log}"), job("b", f"echo b >> {log}")])
    gw.add_node(GenericWorkflowNoopJob("noop1", "noop"))
    gw.add_job_relationships("a", "noop1")
    gw.add_job_relationships("noop1", "b")
    result = run(gw, tmp_path / "submit")
    assert result["noop1"][0] == S and result["noop1"][1] == 0  # never ran a process
    assert order_of(log) == ["a", "b"]
    assert not list((tmp_path / "submit" / "logs").rglob("noop1*"))


def _grouped(tmp_path, blocking: bool, fail: bool):
    """init -> group1 (g1a, g1b -> g1c) -> group2 (g2a) -> after."""
    log = tmp_path / "order"
    gw = GenericWorkflow("grouped")
    gw.add_job(job("init", f"echo init >> {log}"))
    g1 = GenericWorkflowGroup("group1", "group", blocking=blocking)
    g1.add_job(job("g1a", f"echo g1a >> {log}"))
    g1.add_job(job("g1b", "exit 5" if fail else f"echo g1b >> {log}"))
    g1.add_job(job("g1c", f"echo g1c >> {log}"))
    g1.add_job_relationships("g1b", "g1c")
    g2 = GenericWorkflowGroup("group2", "group", blocking=blocking)
    g2.add_job(job("g2a", f"echo g2a >> {log}"))
    gw.add_node(g1)
    gw.add_node(g2)
    gw.add_job(job("after", f"echo after >> {log}"))
    gw.add_edge("init", "group1")
    gw.add_edge("group1", "group2")
    gw.add_edge("group2", "after")
    return gw, log


def test_groups_expand_with_inner_dependencies(tmp_path):
    gw, log = _grouped(tmp_path, blocking=True, fail=False)
    result = run(gw, tmp_path / "submit")
    assert all(r[0] == S for r in result.values())
    order = order_of(log)
    assert order[0] == "init" and order[-2:] == ["g2a", "after"]
    assert order.index("g1b") < order.index("g1c")


def test_blocking_group_holds_children_after_failure(tmp_path):
    gw, log = _grouped(tmp_path, blocking=True, fail=True)
    result = run(gw, tmp_path / "submit", expect_fail=True)
    assert result["g1b"][0] == F and result["g1c"][0] == P
    assert result["g1a"][0] == S
    assert result["group1"][0] == P and result["g2a"][0] == P and result["after"][0] == P


def test_non_blocking_group_lets_next_group_run(tmp_path):
    gw, log = _grouped(tmp_path, blocking=False, fail=True)
    result = run(gw, tmp_path / "submit", expect_fail=True)
    assert result["g1b"][0] == F and result["g1c"][0] == P
    assert result["g2a"][0] == S and result["after"][0] == S


def test_retries_respect_retry_unless_exit_and_scale_memory(tmp_path):
    counter = tmp_path / "count"
    script = f"echo x >> {counter}; exit 3"
    gw = workflow(
        [
            job(
                "retried",
                script,
                number_of_retries=3,
                retry_unless_exit=[1, 2],
                request_memory=1000,
                memory_multiplier=2.0,
                request_memory_max=5000,
            ),
            job("not_retried", "exit 2", number_of_retries=3, retry_unless_exit=[1, 2]),
            job(
                "flaky",
                f"test -e {tmp_path}/flag || {{ touch {tmp_path}/flag; exit 4; }}",
                number_of_retries=2,
            ),
        ]
    )
    result = run(
        gw,
        tmp_path / "submit",
        config=make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "memory": 20000}}),
        expect_fail=True,
    )
    assert result["retried"][:3] == (F, 4, 3)
    assert [a[6] for a in attempts(tmp_path / "submit", "retried")] == [1000, 2000, 4000, 5000]
    assert result["not_retried"][:3] == (F, 1, 2)
    assert result["flaky"][:2] == (S, 2)
    logs = sorted(p.name for p in (tmp_path / "submit" / "logs").rglob("retried.stderr*"))
    assert logs == ["retried.stderr", "retried.stderr.2", "retried.stderr.3", "retried.stderr.4"]


def test_site_retries_is_the_default_when_job_sets_none(tmp_path):
    config = make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "retries": 2}})
    j = job("x", "exit 9")
    j.number_of_retries = None
    result = run(workflow([j]), tmp_path / "submit", config=config, expect_fail=True)
    assert result["x"][1] == 3


def test_command_rendering_env_file_and_cmdvals(tmp_path, monkeypatch):
    monkeypatch.setenv("BPS_TEST_VALUE", "from-env")
    out = tmp_path / "out"
    gw = GenericWorkflow("render")
    gw.add_job(job("r", "unused"))
    r = gw.get_job("r")
    r.arguments = "-c 'echo {greeting} <ENV:BPS_TEST_VALUE> <FILE:qgraph> $JOB_VAR > " + str(out) + "'"
    r.cmdvals = {"greeting": "{word}", "word": "hello"}
    r.environment = {"JOB_VAR": "exported-<ENV:BPS_TEST_VALUE>"}
    gw.add_job_inputs("r", [GenericWorkflowFile("qgraph", src_uri="/data/run.qgraph")])
    result = run(gw, tmp_path / "submit")
    assert result["r"][0] == S
    assert out.read_text().split() == ["hello", "from-env", "/data/run.qgraph", "exported-from-env"]


def test_unresolvable_placeholder_is_a_prepare_error(tmp_path):
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.prepare.commands import RenderError

    gw = workflow([job("r")])
    gw.get_job("r").arguments = "run {missingKey}"
    config = make_config()
    with pytest.raises(RenderError, match=r"job 'r'.*\{missingKey\}"):
        ParslService(config).prepare(config, gw, str(tmp_path / "submit"))
    gw.get_job("r").arguments = "run <FILE:nope>"
    with pytest.raises(RenderError, match=r"job 'r'.*<FILE:nope>"):
        ParslService(config).prepare(config, gw, str(tmp_path / "submit2"))


def test_site_command_prefix_runs_first(tmp_path):
    out = tmp_path / "out"
    config = make_config(
        site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "commandPrefix": "export PREFIXED=yes"}}
    )
    result = run(workflow([job("p", f"echo $PREFIXED > {out}")]), tmp_path / "submit", config=config)
    assert result["p"][0] == S and out.read_text().strip() == "yes"


def test_site_environment_export(tmp_path, monkeypatch):
    monkeypatch.setenv("BPS_EXPORTED_TOKEN", "secret")
    out = tmp_path / "out"
    config = make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "environment": True}})
    result = run(
        workflow([job("p", f"echo $BPS_EXPORTED_TOKEN > {out}")]), tmp_path / "submit", config=config
    )
    assert result["p"][0] == S and out.read_text().strip() == "secret"
    env_file = tmp_path / "submit" / "parsl" / "environment.sh"
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_job_killed_by_signal_is_recorded(tmp_path):
    result = run(workflow([job("k", "kill -KILL $$")]), tmp_path / "submit", expect_fail=True)
    state, attempt, code, signal = result["k"][:4]
    assert state == F and signal == 9 and code == 137


def test_state_is_readable_while_running(tmp_path):
    import threading

    from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path

    gw = workflow([job(f"s{i}", "sleep 0.3", label="slow") for i in range(6)])
    seen = []
    submit = tmp_path / "submit"

    def poll():
        import time

        while not (submit / "bps_parsl.sqlite3").exists():
            time.sleep(0.05)
        for _ in range(20):
            store = RunStore(db_path(str(submit)), readonly=True)
            seen.append({r[1] for r in store.statuses()})
            store.close()
            time.sleep(0.1)

    thread = threading.Thread(target=poll)
    thread.start()
    run(
        gw,
        submit,
        config=make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}}),
    )
    thread.join()
    assert any(WmsStates.PENDING.value in s for s in seen)


def test_local_site_never_overlaps_two_core_jobs(tmp_path):
    log = tmp_path / "spans"
    script = f"echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}"
    jobs = [job(f"big{i}", script, label="big", request_cpus=2) for i in range(3)]
    config = make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}})
    run(workflow(jobs), tmp_path / "submit", config=config)
    events = [line.split() for line in log.read_text().splitlines()]
    running = peak = 0
    for kind, _ in sorted(events, key=lambda e: float(e[1])):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1


def test_job_larger_than_machine_is_a_prepare_error(tmp_path):
    from lsst.ctrl.bps.parsl import ConfigurationError, ParslService

    config = make_config(site={"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2}})
    gw = workflow([job("huge", request_cpus=64)])
    with pytest.raises(ConfigurationError, match="huge.*64"):
        ParslService(config).prepare(config, gw, str(tmp_path / "submit"))


def test_parsl_monitoring_database_is_created_and_reported(tmp_path):
    import sqlite3

    from lsst.ctrl.bps.parsl import ParslService

    config = make_config(
        site={
            "local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "monitorEnable": True, "monitorInterval": 1}
        }
    )
    submit = tmp_path / "submit"
    result = run(workflow([job(f"m{i}", "sleep 0.2", label="mon") for i in range(3)]), submit, config=config)
    assert all(r[0] == S for r in result.values())
    db = submit / "parsl" / "monitoring.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "task" in tables and conn.execute("SELECT count(*) FROM task").fetchone()[0] == 3
    (report,), _ = ParslService({}).report(str(submit))
    assert str(db) in str(report.specific_info)


def test_progress_lines_with_labels(tmp_path, capsys):
    config = make_config(parslProgressInterval=0.2, parslProgressByLabel=True)
    gw = workflow([job(f"p{i}", "sleep 0.3", label="prog") for i in range(4)])
    run(gw, tmp_path / "submit", config=config)
    out = capsys.readouterr().out
    assert "4 succeeded" in out and "  prog: 4 succeeded" in out


def test_select_executor_error_fails_only_that_job(tmp_path):
    config = make_config(computeSite="picky", site={"picky": {"class": "picky_site.PickySite"}})
    gw = workflow([job("ok"), job("refused"), job("after_refused")], [("refused", "after_refused")])
    result = run(gw, tmp_path / "submit", config=config, expect_fail=True)
    assert result["ok"][0] == S
    assert result["refused"][0] == F and result["after_refused"][0] == P
    err = next((tmp_path / "submit" / "logs").rglob("refused.stderr")).read_text()
    assert "select_executor failed" in err and "no executor for you" in err


def test_job_over_its_walltime_is_killed_and_recorded(tmp_path):
    j = job("slowpoke", "sleep 30", request_walltime="0.02")  # minutes: 1.2 s
    result = run(workflow([j]), tmp_path / "submit", expect_fail=True)
    state, attempt, code, signal = result["slowpoke"][:4]
    assert state == F and signal == 15
    err = next((tmp_path / "submit" / "logs").rglob("slowpoke.stderr")).read_text()
    assert "killed after walltime" in err


def test_job_shell_defaults_and_override(tmp_path):
    out = tmp_path / "out"
    # The job's shell runs the line before the command itself: `$$` is the shell.
    probe = f"readlink /proc/$$/exe > {out}"
    run(workflow([job("bash_default", "true", pre_cmdline=probe)]), tmp_path / "s1")
    assert out.read_text().strip() == os.path.realpath("/bin/bash")
    opt_in = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "jobShell": "/bin/sh"}}
    sh_job = job("sh_opt_in", "true", pre_cmdline=probe)
    run(workflow([sh_job]), tmp_path / "s2", config=make_config(site=opt_in))
    assert out.read_text().strip() == os.path.realpath("/bin/sh")


def test_local_site_holds_back_jobs_whose_memory_does_not_fit(tmp_path):
    log = tmp_path / "spans"
    script = f"echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}"
    jobs = [job(f"fat{i}", script, label="fat", request_memory=2000) for i in range(3)]
    site = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2, "memory": 3000}}
    run(workflow(jobs), tmp_path / "submit", config=make_config(site=site))
    events = [line.split() for line in log.read_text().splitlines()]
    running = peak = 0
    for kind, _ in sorted(events, key=lambda e: float(e[1])):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1  # two 2000 MB jobs never run at once in 3000 MB


def test_job_whose_log_cannot_be_created_fails_with_127_and_says_why(tmp_path, capfd):
    """The job's shell creates its log files; if it cannot, the job fails
    with exit status 127 (nothing ran) and the shell's reason reaches the
    driver's stderr, while the other jobs run."""
    submit = tmp_path / "submit"
    (submit / "logs" / "broken" / "broken.stderr").mkdir(parents=True)  # a directory where the log goes
    ran = tmp_path / "ran"
    gw = workflow([job("broken", f"touch {ran}"), job("fine", "true")])
    rows = run(gw, submit, expect_fail=True)
    assert rows["broken"][0] == WmsStates.FAILED.value and rows["broken"][2] == 127, rows["broken"]
    assert rows["fine"][0] == WmsStates.SUCCEEDED.value
    assert not ran.exists()
    assert "broken.stderr" in capfd.readouterr().err


PROGRESS = re.compile(r"^bps-parsl \S+: (\d+) succeeded, (\d+) running, (\d+) pending, (\d+) failed, ")


def test_progress_lines_count_running_and_pending_apart(tmp_path, capsys):
    """ "running" counts attempts that run (at most the pool's one core here),
    "pending" those handed over that have not started; at the end, all
    succeeded. ``parslProgressInterval: 0`` prints no progress line at all."""
    site = {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 1}}
    config = make_config(parslProgressInterval=0.05, site=site)
    run(workflow([job(f"p{i}", "sleep 0.4", label="prog") for i in range(4)]), tmp_path / "a", config=config)
    counts = [
        tuple(map(int, m.groups())) for m in map(PROGRESS.match, capsys.readouterr().out.splitlines()) if m
    ]
    assert counts and counts[-1] == (4, 0, 0, 0), counts
    assert all(running <= 1 for _, running, _, _ in counts), counts
    assert any(pending for _, _, pending, _ in counts), counts

    config = make_config(parslProgressInterval=0, site=site)
    run(workflow([job("q", "sleep 0.2")]), tmp_path / "b", config=config)
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("bps-parsl 2")]
