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

"""Warm starts (lsst_ctrl_bps_parsl_worker.warm): the same real quanta run
through ``bps submit`` warm (the default) and cold (``warmStart: false``)
give the same outputs, provenance datasets, logs (but for timestamps and
durations), exit statuses and stored states, including a quantum that
raises, one that dies of SIGSEGV, one that calls ``os._exit``, one killed
at its walltime and quanta that change global state (which no later quantum
sees).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_pipeline import repo as e2e
from lsst.ctrl.bps import WmsStates
from lsst.ctrl.bps.parsl.prepare.commands import export_lines
from lsst_ctrl_bps_parsl_worker.processes import job_script
from lsst_ctrl_bps_parsl_worker.warm import _environment_key, _pipetask_python, _plain_job
from test_e2e_bps import bps_submit, find, log_files, read_state, submit_dir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (e2e.VENV_PREFIX / "bin" / "bps").exists() or not (e2e.VENV_PREFIX / "bin" / "pipetask").exists(),
        reason="bps and pipetask must be installed next to this Python",
    ),
]

DATASET_TYPES = (
    "e2e_a",
    "e2e_b",
    "e2e_sum",
    "source_metadata",
    "middle_metadata",
    "source_log",
    "middle_log",
)
_TIMES = (
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d"), "T"),
    (re.compile(r"took [\d.]+ seconds"), "took S seconds"),
    (re.compile(r"[\d.]+ (seconds|s|Gibyte|GiB|MB|MiB)\b"), r"N \1"),
    # Each run has its own quantum graph (quantum ids) and output names.
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"(?<=[/_])(warm|cold)(?=[/_])"), "RUN"),
)


FAULTS = (
    "-c middle:fail_ids=[1]",
    "-c middle:segfault_ids=[2]",
    "-c middle:exit_ids=[3]",
    "-c middle:hang_ids=[4]",
    "-c source:pollute=True",
    "-c middle:pollute=True",
    "-c source:sleep=1",  # the warm process is ready by the time the middle quanta start
)


def _run(
    tmp_path: Path, repo: Path, suffix: str, warm: bool, site: dict | None = None, faults: tuple = FAULTS
) -> tuple[Path, str, Path]:
    probe = tmp_path / suffix / "probe.log"
    options = [*faults] + [f"-c {label}:probe_log={probe}" for label in ("source", "middle", "gather")]
    extra = {
        "extraQgraphOptions": " ".join(options),
        "numberOfRetries": 0,
        "pipetask": {"middle": {"requestWalltime": "00:00:15"}},
        "site": {"local": {**(site or {}), "warmStart": warm}},
    }
    workdir = tmp_path / suffix
    submit_yaml = e2e.write_submit_yaml(workdir, repo, e2e.PIPELINE, output_run_suffix=suffix, extra=extra)
    proc = bps_submit(workdir, submit_yaml)
    assert proc.returncode == 1, proc.stderr[-3000:]
    return submit_dir(workdir, suffix), proc.stdout + proc.stderr, probe


def _normalized(path: Path) -> str:
    """The text of a log without timestamps, durations, quantum ids and run names."""
    return _normalized_text(path.read_text())


def _normalized_text(text: str) -> str:
    for pattern, replacement in _TIMES:
        text = pattern.sub(replacement, text)
    return text


def _by_quantum(jobs: dict[str, dict]) -> dict[tuple, dict]:
    return {
        (job["row"].label, job["tags"].get("detector")): job
        for job in jobs.values()
        if job["row"].label in ("source", "middle", "gather")
    }


def _contents(repo: Path, collection: str) -> dict:
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(repo), collections=[collection])
    try:
        found = {}
        for name in ("e2e_a", "e2e_b"):
            for ref in butler.query_datasets(name, explain=False):
                if ref.run != e2e.INPUT_RUN:
                    found[(name, ref.dataId["detector"])] = butler.get(ref)
        return found
    finally:
        butler.close()


def _warm_processes(workdir: Path, jobs_too: bool = False) -> list[int]:
    """Live warm processes (their command line loads the warm module) of the
    run in ``workdir``; with ``jobs_too``, also its jobs.
    """
    mark = f"{e2e.RUN_LOG_ENV}={workdir.resolve() / e2e.RUN_LOG_NAME}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != b"Z" and mark in environ.split(b"\0") and (jobs_too or b"_bps_parsl_warm" in cmdline):
                found.append(int(entry))
    return found


def test_warm_and_cold_quanta_are_indistinguishable(e2e_repo, tmp_path):
    warm_submit, warm_output, warm_probe = _run(tmp_path, e2e_repo, "warm", True)
    cold_submit, cold_output, cold_probe = _run(tmp_path, e2e_repo, "cold", False)

    # The warm run forked its quanta; the cold one did not start any warm process.
    assert re.search(r"\d+ job\(s\) started warm", warm_output), warm_output[-3000:]
    assert "started warm" not in cold_output and "warm process" not in cold_output
    warm_lines = [line.split() for line in warm_probe.read_text().splitlines()]
    cold_lines = [line.split() for line in cold_probe.read_text().splitlines()]
    assert {(label, key) for label, key, warm, *_ in warm_lines if label == "middle" and warm == "1"} >= {
        ("middle", f"{e2e.INSTRUMENT}.{d}") for d in (1, 2, 3, 4)
    }, warm_lines
    assert {warm for _, _, warm, *_ in cold_lines} == {"0"}
    # Every job, warm or cold, shows its token where the killer looks for it.
    assert {token for *_, token in warm_lines + cold_lines} == {"1"}
    # Global state changed by a quantum (module, environment, logging, signals, sys.path) never
    # reaches another one.
    assert {dirty for *_, dirty, _ in warm_lines + cold_lines} == {"-"}
    assert len(warm_lines) == len(cold_lines) == 10

    # Same states, exit codes and signals, job by job.
    warm_jobs, cold_jobs = _by_quantum(read_state(warm_submit)), _by_quantum(read_state(cold_submit))
    assert warm_jobs.keys() == cold_jobs.keys()
    summary = {
        key: (job["state"], job["exit_code"], job["signal"], len(job["attempts"]))
        for key, job in warm_jobs.items()
    }
    assert summary == {
        key: (job["state"], job["exit_code"], job["signal"], len(job["attempts"]))
        for key, job in cold_jobs.items()
    }
    failed = WmsStates.FAILED.value
    assert summary[("middle", 1)][:3] == (failed, 1, None)  # raised
    assert summary[("middle", 2)][:3] == (failed, 139, 11)  # SIGSEGV
    assert summary[("middle", 3)][:3] == (failed, 4, None)  # os._exit(4)
    # Killed at its walltime: its quantum ignores SIGTERM (``pollute``), so SIGKILL ends it.
    assert summary[("middle", 4)][:3] == (failed, 137, 9)
    assert summary[("gather", None)][0] == WmsStates.PRUNED.value
    for final in (find(read_state(warm_submit), "finalJob"), find(read_state(cold_submit), "finalJob")):
        assert final[0]["state"] == WmsStates.SUCCEEDED.value

    # Same outputs and provenance (metadata and log datasets), with the same contents.
    warm_out, cold_out = e2e.output_names("warm")[0], e2e.output_names("cold")[0]
    counts = e2e.check_outputs(e2e_repo, warm_out, DATASET_TYPES)
    assert counts == e2e.check_outputs(e2e_repo, cold_out, DATASET_TYPES)
    assert counts["e2e_a"] == 5 and counts["e2e_b"] == 1 and counts["middle_metadata"] == 1
    assert _contents(e2e_repo, warm_out) == _contents(e2e_repo, cold_out)

    # Same logs, line for line, once timestamps and durations are set aside.
    for key, job in warm_jobs.items():
        if key == ("gather", None):
            continue  # pruned: never ran
        for warm_log, cold_log in zip(
            log_files(warm_submit, job, 1), log_files(cold_submit, cold_jobs[key], 1), strict=True
        ):
            assert _normalized(warm_log) == _normalized(cold_log), (key, warm_log.name)

    # The warm process stopped with the run.
    assert _warm_processes(tmp_path / "warm") == []


def test_warm_starts_on_htex_workers(e2e_repo, tmp_path):
    """On Parsl workers (a local HTEX, `run_job`): each worker process forks its
    quanta from a warm process of its own; statuses as cold, no state shared,
    tokens where the killer looks, nothing left behind.
    """
    faults = (
        "-c middle:fail_ids=[1]",
        "-c middle:segfault_ids=[2]",
        "-c middle:pollute=True",
        "-c source:sleep=1",
    )
    submit, output, probe = _run(
        tmp_path, e2e_repo, "htex", True, {"class": "test_reliability.HtexSite"}, faults
    )
    lines = [line.split() for line in probe.read_text().splitlines()]
    assert len(lines) == 10
    assert {key for label, key, warm, *_ in lines if label == "middle" and warm == "1"} >= {
        f"{e2e.INSTRUMENT}.{d}" for d in (1, 2)
    }, lines
    assert {(dirty, token) for *_, dirty, token in lines} == {("-", "1")}
    summary = {
        key: (job["state"], job["exit_code"], job["signal"])
        for key, job in _by_quantum(read_state(submit)).items()
    }
    failed, ok = WmsStates.FAILED.value, WmsStates.SUCCEEDED.value
    assert summary[("middle", 1)] == (failed, 1, None)
    assert summary[("middle", 2)] == (failed, 139, 11)
    assert {summary[("middle", d)] for d in (0, 3, 4)} == {(ok, 0, None)}
    # Why jobs started cold reaches the driver's log with the results, once per reason.
    notes = [line for line in output.splitlines() if "Parsl worker: " in line]
    assert any("warm process" in n and "ready" in n for n in notes), output[-3000:]
    cold = [n.split("Parsl worker: ", 1)[1] for n in notes if "jobs started cold" in n]
    assert any("is not ctrl_mpexec's pipetask script" in n for n in cold), notes  # the final job
    assert len(cold) == len(set(cold)), notes
    assert _warm_processes(tmp_path / "htex") == []


def test_what_decides_between_warm_and_cold(tmp_path):
    venv_pipetask = str(e2e.VENV_PREFIX / "bin" / "pipetask")
    environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/a"}
    python, script_dir = _pipetask_python(venv_pipetask, environ)
    assert os.path.samefile(script_dir, os.path.dirname(os.path.realpath(venv_pipetask)))
    assert python.startswith(sys.prefix) or os.path.samefile(python, sys.executable)
    # The stack's bin/pipetask (an env shebang) is recognised too, its Python found on PATH.
    stack = tmp_path / "bin" / "pipetask"
    stack.parent.mkdir()
    stack.write_text(
        '#!/usr/bin/env python3\nfrom lsst.ctrl.mpexec.cli.pipetask import main\n\nif __name__ == "__main__":\n'
        "    main()\n"
    )
    found = _pipetask_python(str(stack), {"PATH": str(e2e.VENV_PREFIX / "bin")})
    assert found == (str(e2e.VENV_PREFIX / "bin" / "python3"), str(stack.parent))
    # Anything else starts cold, with the reason.
    other = tmp_path / "bin" / "other"
    other.write_text('#!/bin/sh\nexec pipetask "$@"\n')
    assert "is not ctrl_mpexec's pipetask script" in _pipetask_python(str(other), environ)
    evil = tmp_path / "bin" / "evil"
    evil.write_text(stack.read_text() + "import os\n")
    assert "is not ctrl_mpexec's pipetask script" in _pipetask_python(str(evil), environ)
    # Variables read while the stack imports need a warm process of their own; others do not.
    key = _environment_key(python, script_dir, environ)
    assert key == _environment_key(
        python, script_dir, {**environ, "E2E_RUN_LOG": "/x", "BPS_PARSL_ATTEMPT": "t"}
    )
    for name in (
        "PYTHONPATH",
        "CTRL_MPEXEC_DIR",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "SETUP_DAF_BUTLER",
        "LANG",
    ):
        assert key != _environment_key(python, script_dir, {**environ, name: "/other"}), name


# Values a job's exports may carry: each must reach the program exactly as bash gives it.
HOSTILE = {
    "A": "it's 'quoted' and \"double\"",
    "B": "$(touch x) `touch y` ${HOME} $((1+1))",
    "D": "* ? [a-z] ~ ~root a:~/x !! \\ \\\\",
    "E": "",
    "F": "δ ünïcödé",
}
PLAIN = [
    "{probe}",
    "{probe} a b --opt=x,y:z@w%v+u -1 ./rel",
    "{probe} ${{HOME}} $HOME/x pre$DIRV.post",
    "{probe} $E a $E b",
    '{probe} "$E" \'\' "" c',
    '{probe} "a b"  \'c  d\' \'it\'"\'"\'s\' "${{F}}" "$A"',
    "{probe} \"${{B}}\" \"x${{D}}y\" '$HOME' '*'",
    "\t{probe}\ta\t",
]
NOT_PLAIN = {  # (exports, command, prefix): the analysis must leave each to the shell
    "prefix": ("", "{probe}", "source /dev/null"),
    "two_commands": ("", "{probe}; {probe}", ""),
    "newline": ("", "{probe}\n{probe}", ""),
    "pipe": ("", "{probe} | cat", ""),
    "redirect": ("", "{probe} >/dev/null", ""),
    "glob": ("", "{probe} *", ""),
    "tilde": ("", "{probe} ~/x", ""),
    "braces": ("", "{probe} a{{b,c}}", ""),
    "comment": ("", "{probe} #x", ""),
    "backslash": ("", "{probe} a\\ b", ""),
    "backquote": ("", "{probe} `true`", ""),
    "command_substitution": ("", '{probe} "$(true)"', ""),
    "positional": ("", "{probe} $1", ""),
    "default_value": ("", "{probe} ${{X:-y}}", ""),
    "unset_variable": ("", "{probe} $NOT_SET_ANYWHERE", ""),
    "unquoted_value_with_blank": ("export S='a b'", "{probe} $S", ""),
    "unquoted_value_with_glob": ("export S='*'", "{probe} $S", ""),
    "no_path": ("", "env", ""),
    "assignment_first": ("", "X=1 {probe}", ""),
    "export_ifs": ("export IFS=x", "{probe}", ""),
    "export_not_plain": ("export X=$(true)", "{probe}", ""),
    "export_over_lines": ("export X='a\nb'", "{probe}", ""),
}


@pytest.fixture
def probe(tmp_path: Path) -> str:
    path = tmp_path / "probe"
    path.write_text(
        f"#!{sys.executable} -S\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'env': dict(os.environ)}))\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("command", PLAIN)
def test_the_warm_command_line_analysis_gives_what_bash_gives(probe: str, command: str) -> None:
    """A plain job line: the argv and variables the warm start uses are what
    bash itself hands the program, whatever the exported values hold.
    """
    base = {"PATH": os.environ["PATH"], "HOME": "/home/someone", "DIRV": "/usr/share"}
    env, command = export_lines(HOSTILE), command.format(probe=probe)
    found = _plain_job(base, "run/1/1", "", env, command)
    assert found is not None, "a plain job line was left to the shell"
    argv, changes = found
    script = job_script("run/1/1", "", env, command)
    shell = json.loads(subprocess.run(["/bin/bash", "-c", script], env=base, capture_output=True).stdout)
    assert argv == shell["argv"]
    assert {name: shell["env"][name] for name in changes} == changes


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_job_lines_that_are_not_plain_start_cold(probe: str, name: str) -> None:
    env, command, prefix = NOT_PLAIN[name]
    base = {"PATH": os.environ["PATH"], "HOME": "/home/someone"}
    assert _plain_job(base, "run/1/1", prefix, env, command.format(probe=probe)) is None


LIFECYCLE = r"""
import json, os, shlex, signal, subprocess, sys, time
from lsst_ctrl_bps_parsl_worker.warm import WarmStarts

out_dir = sys.argv[1]
pipetask = sys.argv[2]
notes = []
warm = WarmStarts(notes.append)
base = dict(os.environ)
environ = {**base, "BPS_PARSL_ATTEMPT": "run/1/1"}
argv = [pipetask, "--long-log", "run-qbb", os.path.join(out_dir, "no-repo"), os.path.join(out_dir, "no.qg"),
        "--qgraph-node-id", "00000000-0000-0000-0000-000000000000"]


def start(name, argv=argv):
    out, err = os.path.join(out_dir, name + ".out"), os.path.join(out_dir, name + ".err")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pid = warm.start_job("/bin/bash", "run/1/1", "", "", shlex.join(argv), out, err, base)
        if pid is not None:
            return pid, err
        if any("not started warm" in n for n in notes[-1:]):
            return None, err
        time.sleep(0.2)
    raise SystemExit("no warm start within 300 s: " + repr(notes))


result = {}
pid, err = start("warm1")
server = next(iter(warm._servers.values())).proc.pid
result["warm_status"] = os.waitpid(pid, 0)[1]
result["warm_err"] = open(err).read()
cold = subprocess.run(argv, env=environ, capture_output=True, text=True)
result["cold_status"] = cold.returncode
result["cold_err"] = cold.stderr
result["init"] = start("init", [pipetask, "pre-exec-init-qbb", "x", "y"])[0]
os.kill(server, signal.SIGKILL)
time.sleep(0.5)
pid, err = start("warm2")
os.waitpid(pid, 0)
replacement = next(iter(warm._servers.values())).proc.pid
result["replaced"] = replacement != server
warm.close()
result["left"] = os.path.exists(f"/proc/{replacement}") and open(f"/proc/{replacement}/stat").read().split()[2] != "Z"
result["notes"] = notes
print(json.dumps(result))
"""


def test_warm_process_lifecycle(tmp_path):
    """A warm process starts lazily, forks a job whose exit status and stderr
    are a cold start's, refuses what it does not start warm (said once), is
    replaced when it dies (said once) and is gone after ``close``.
    """
    import json
    import subprocess

    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", LIFECYCLE, str(tmp_path), str(e2e.VENV_PREFIX / "bin" / "pipetask")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert (
        os.WIFEXITED(result["warm_status"])
        and os.WEXITSTATUS(result["warm_status"]) == result["cold_status"] != 0
    )
    assert _normalized_text(result["warm_err"]) == _normalized_text(result["cold_err"]), result
    assert result["init"] is None
    assert result["replaced"] and not result["left"]
    notes = result["notes"]
    assert sum("ready" in n for n in notes) == 2, notes
    assert sum("pipetask pre-exec-init-qbb is not started warm" in n for n in notes) == 1, notes
    assert sum(" died" in n for n in notes) == 1, notes
    assert notes[-1].startswith("2 job(s) started warm"), notes


def test_bps_cancel_stops_warm_jobs_and_their_warm_process(e2e_repo, tmp_path):
    """``bps cancel`` of a run whose quanta hang in warm jobs kills them and
    the warm process goes with the run: nothing of the run is left.
    """
    import subprocess

    from cli import bps, wait_for

    probe = tmp_path / "probe.log"
    options = ["-c middle:hang_ids=[0,1,2,3,4]"] + [
        f"-c {label}:probe_log={probe}" for label in ("source", "middle")
    ]
    submit_yaml = e2e.write_submit_yaml(
        tmp_path,
        e2e_repo,
        e2e.PIPELINE,
        output_run_suffix="cancel",
        extra={"extraQgraphOptions": " ".join(options)},
    )
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=tmp_path)
    proc = subprocess.Popen(
        [str(e2e.VENV_PREFIX / "bin" / "bps"), "submit", str(submit_yaml)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def hanging_warm() -> bool:
            lines = probe.read_text().splitlines() if probe.exists() else []
            return sum(line.startswith("middle ") and line.split()[2] == "1" for line in lines) >= 2

        wait_for(hanging_warm, timeout=300, what="two warm middle quanta hanging", proc=proc)
        assert _warm_processes(tmp_path)
        cancel_env = {**env, "BPS_WMS_SERVICE_CLASS": "lsst.ctrl.bps.parsl.ParslService"}
        result = bps(cancel_env, "cancel", "--id", str(submit_dir(tmp_path, "cancel")))
        assert "Successfully canceled" in result.stdout, result.stdout + result.stderr
        proc.wait(timeout=120)
        wait_for(
            lambda: not _warm_processes(tmp_path, jobs_too=True), timeout=30, what="nothing of the run left"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
