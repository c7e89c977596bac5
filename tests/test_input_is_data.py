"""Job input is data: environment values, names and labels never run as code
or lead files outside the submit directory; configuration and environment
values are written privately; Local site resource values are checked.

Every run here is real: prepare and submit in this process (the driver, the
local pool's spawner and the jobs' shells are real processes), real files
and real modes.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.configuration import ConfigurationError
from lsst.ctrl.bps.parsl.store.runstore import SUCCEEDED, db_path
from synthetic import job, make_config, run, workflow

LOCAL = "lsst.ctrl.bps.parsl.sites.Local"
PRINT_ENVIRONMENT = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"


def _site(**keys) -> dict:
    return {"site": {"local": {"class": LOCAL, "cores": 2, **keys}}}


def _job_environment(submit: Path, label: str, name: str) -> dict[str, str]:
    return json.loads((submit / "logs" / label / f"{name}.stdout").read_text())


# ---- 1. Environment is data ---------------------------------------------------

HOSTILE_VALUES = {
    "command_substitution": "$(touch {canary})",
    "backticks": "`touch {canary}`",
    "ifs": "a${{IFS}}b",
    "arithmetic": "$((1+1))",
    "parameter": "$HOME and ${{HOME}}",
    "backslash": "a\\b\\\\c\\",
    "single_quote": "it's 'quoted'",
    "double_quote": 'say "hi" \\"',
    "newline": "line1\nline2\n",
    "bang": "!! !$ hello!",
    "glob": "* ? [a-z]",
    "tilde": "~ ~root a:~/x",
    "unicode": "δ ünïcödé 🚀",
    "empty": "",
    "semicolon": "x; touch {canary}; y",
    "ansi_c": "$'\\x41'",
    "process_substitution": "<(touch {canary})",
    "marker_like": "[bps-parsl] exit status 0",
}


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_environment_values_reach_the_job_byte_for_byte(tmp_path, monkeypatch, shell):
    """Every value of a job's ``environment`` reaches the job's process
    exactly as written, under both job shells; only ``<ENV:X>`` references
    are expanded (where the job runs), alone, inside text and next to
    hostile text."""
    canary = tmp_path / "canary"
    monkeypatch.setenv("BPS_TEST_REF", "ref value with $(touch x) and spaces")
    expected = {f"V_{key}": value.format(canary=canary) for key, value in HOSTILE_VALUES.items()}
    environment = dict(expected)
    environment["R_ALONE"] = "<ENV:BPS_TEST_REF>"
    environment["R_HOME"] = "<ENV:HOME>/sub"
    environment["R_MIXED"] = f"$(touch {canary})'<ENV:BPS_TEST_REF>'\"<ENV:HOME>\"`x`"
    environment["R_BAD_NAME"] = "<ENV:1X> <ENV:A B> <ENV:>"
    submit = tmp_path / "submit"
    config = make_config(_site(jobShell=shell))
    result = run(workflow([job("envjob", PRINT_ENVIRONMENT, environment=environment)]), submit, config)
    assert result["envjob"][0] == SUCCEEDED
    seen = _job_environment(submit, "envjob", "envjob")
    for key, value in expected.items():
        assert seen[key] == value, key
    ref, home = os.environ["BPS_TEST_REF"], os.environ["HOME"]
    assert seen["R_ALONE"] == ref
    assert seen["R_HOME"] == f"{home}/sub"
    assert seen["R_MIXED"] == f"$(touch {canary})'{ref}'\"{home}\"`x`"
    assert seen["R_BAD_NAME"] == "<ENV:1X> <ENV:A B> <ENV:>"
    assert not canary.exists()


BAD_KEYS = ["X=1; touch {canary}; Y", "A B", "A\nB", "", "1X", "A-B", "δ", "$(touch {canary})", "A=B"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_environment_keys_are_refused_before_anything_runs(tmp_path, key):
    """A key that is not a shell variable name is refused at prepare, in one
    line naming the job and the key; no store is written, nothing runs."""
    canary = tmp_path / "canary"
    key = key.format(canary=canary)
    submit = tmp_path / "submit"
    gw = workflow([job("j0", f"touch {canary}", environment={"OK": "1", key: "value"})])
    config = make_config(_site())
    service = ParslService(config)
    with pytest.raises(ValueError) as error:
        service.prepare(config, gw, str(submit))
    message = str(error.value)
    assert "\n" not in message and "'j0'" in message and repr(key) in message, message
    assert "environment" in message
    assert not os.path.exists(db_path(str(submit)))
    assert not canary.exists()


def test_nul_in_an_environment_value_or_command_is_refused(tmp_path):
    """No process can be given a NUL: prepare refuses it in one line instead
    of the spawner failing later."""
    config = make_config(_site())
    service = ParslService(config)
    for n, gw in enumerate(
        [
            workflow([job("j0", "true", environment={"K": "a\0b"})]),
            workflow([job("j0", "echo a\0b")]),
        ]
    ):
        with pytest.raises(ValueError, match="NUL") as error:
            service.prepare(config, gw, str(tmp_path / f"s{n}"))
        assert "\n" not in str(error.value) and "'j0'" in str(error.value)


# ---- 2. Nothing is written outside the submit directory ---------------------

HOSTILE_NAMES = [
    "../../../../x",
    "{outside}/abs",
    "a/../../../../../b",
    "..",
    ".",
    "x\0y",
    "x\ny\x1b[31m",
    "n" * 300,
    "é" * 150,
    "-rf",
    "/",
    "./.",
]


def _files_outside(root: Path, submit: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and submit not in path.parents:
            found[str(path)] = path.read_bytes()
    return found


@pytest.mark.parametrize("where", ["name", "label", "tag", "template", "run_name"])
def test_names_labels_and_log_dirs_never_lead_outside_the_submit_dir(tmp_path, where):
    """Job names, labels, tag values used by ``subDirTemplate``, the template
    itself and the run name may hold ``..``, absolute paths, NUL and control
    characters or be very long: every job still runs, its logs are under
    ``<submit>/logs``, no file appears outside the submit directory and no
    existing file there is changed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "a").mkdir()
    submit = tmp_path / "a" / "b" / "c" / "submit"
    names = [n.format(outside=outside) for n in HOSTILE_NAMES]
    # Files the hostile names would have written to or truncated.
    for target in ["x.stdout", "x.stderr", "b.stdout", "abs.stdout", "abs.stderr"]:
        for directory in (tmp_path, tmp_path / "a", outside):
            (directory / target).write_text("keep")
    before = _files_outside(tmp_path, submit)
    extra: dict = _site()
    jobs = []
    run_name = "wf"
    for n, hostile in enumerate(names):
        marker = f"ran {n}"
        if where == "name":
            jobs.append(job(hostile, f"echo '{marker}'", label="lab"))
        elif where == "label":
            jobs.append(job(f"j{n}", f"echo '{marker}'", label=hostile))
        elif where == "tag":
            jobs.append(job(f"j{n}", f"echo '{marker}'", label="lab", tags={"tag": hostile}))
        else:
            jobs.append(job(f"j{n}", f"echo '{marker}'", label=hostile if where == "template" else "lab"))
    if where == "tag":
        extra["subDirTemplate"] = "{label}/{tag}/../../{tag}"
    elif where == "template":
        extra["subDirTemplate"] = f"../../../../{outside}/../{{label}}/.."
    elif where == "run_name":
        run_name = "../../../../x"
    result = run(workflow(jobs, name=run_name), submit, make_config(extra))
    assert {state for state, *_ in result.values()} == {SUCCEEDED}, result
    outputs = sorted((submit / "logs").rglob("*.stdout"))
    assert sorted(p.read_text() for p in outputs) == sorted(f"ran {n}\n" for n in range(len(names)))
    assert all(len(part.encode()) <= 255 for p in outputs for part in p.parts)
    assert _files_outside(tmp_path, submit) == before


# ---- 3. Secrets private -------------------------------------------------------

SECRET = "s3cret-token-value"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_configuration_and_environment_files_are_private_under_umask_022(tmp_path, monkeypatch):
    """After a real prepare and a detached submit under ``umask 022``, every
    file of the submit directory holding the secret (configuration copies,
    exported environments, the store) is 0600, ``parsl/`` is 0700 and so is
    everything that holds them; ``driver.log`` is 0600; the run index is
    0700/0600. Files that existed with looser modes are tightened."""
    old_umask = os.umask(0o022)
    try:
        monkeypatch.setenv("BPS_TEST_SECRET", SECRET)
        submit = tmp_path / "submit"
        (submit / "parsl").mkdir(parents=True, mode=0o755)
        for loose in (submit / "parsl" / "bps_config.yaml", submit / "wf_config.yaml"):
            loose.write_text("old")
            loose.chmod(0o644)
        config = make_config(
            _site(environment=True),
            parslDetach=True,
            environment={"TOKEN": SECRET},
        )
        gw = workflow([job("j0", "true", environment={"TOKEN": SECRET, "REF": "<ENV:BPS_TEST_SECRET>"})])
        service = ParslService(config)
        service.run_submission_checks()
        wf = service.prepare(config, gw, str(submit))
        service.submit(wf)
        from lsst.ctrl.bps.parsl.run.session import driver_alive

        deadline = time.monotonic() + 120
        while driver_alive(str(submit)) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver_alive(str(submit)) is None
    finally:
        os.umask(old_umask)
    parsl_dir = submit / "parsl"
    assert _mode(parsl_dir) == 0o700
    claims = sorted(parsl_dir.glob("driver.claim.*"))
    assert claims
    for path in [
        *(parsl_dir / name for name in ("bps_config.yaml", "environment.sh", "driver.log")),
        *claims,
    ]:
        assert _mode(path) == 0o600, path.name
    assert _mode(submit / "wf_config.yaml") == 0o600
    assert _mode(submit / "bps_parsl.sqlite3") == 0o600
    assert SECRET in (parsl_dir / "bps_config.yaml").read_text()
    holders = [p for p in submit.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert parsl_dir / "environment.sh" in holders
    for path in holders:
        assert _mode(path) & 0o077 == 0, path
    index = Path(os.environ["XDG_STATE_HOME"]) / "lsst-ctrl-bps-parsl" / "runs"
    assert _mode(index) == 0o700
    assert [_mode(r) for r in index.glob("*.json")] == [0o600]


# ---- 13. Local site resource values --------------------------------------------


def test_local_memory_larger_than_the_machine_is_refused(tmp_path):
    """``memory`` above the machine's physical memory is refused in one line
    naming the key, before anything runs."""
    from lsst.ctrl.bps.parsl.sites.local import machine_memory_mb

    config = make_config(_site(memory=machine_memory_mb() + 1))
    with pytest.raises(ConfigurationError) as error:
        ParslService(config).run_submission_checks()
    message = str(error.value)
    assert "\n" not in message and "'site.local.memory'" in message and "lower it" in message


def test_local_cores_larger_than_the_machine_are_warned_about_once(caplog):
    """``cores`` above what this process may use is allowed (jobs share
    cores) with one warning line naming the key, given once."""
    from lsst.ctrl.bps.parsl.sites.local import usable_cores

    config = make_config(_site(cores=usable_cores() + 7))
    with caplog.at_level(logging.WARNING, logger="lsst.ctrl.bps.parsl"):
        ParslService(config).run_submission_checks()
        ParslService(config).run_submission_checks()
    lines = [r.getMessage() for r in caplog.records if "'site.local.cores'" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines


@pytest.mark.parametrize("walltime", [30, 30.5, "00:30:00"])
def test_local_walltime_is_warned_about(caplog, walltime):
    """The Local site has no ``walltime`` (a job's limit is its
    ``requestWalltime``): any value is named in one warning line."""
    config = make_config(_site(walltime=walltime))
    with caplog.at_level(logging.WARNING, logger="lsst.ctrl.bps.parsl"):
        ParslService(config).run_submission_checks()
    lines = [r.getMessage() for r in caplog.records if "'site.local.walltime'" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "requestWalltime" in lines[0], lines


@pytest.mark.parametrize(
    "site, key",
    [
        ({"class": "lsst.ctrl.bps.parsl.sites.Slurm", "nodes": 1, "walltime": 30}, "site.local.walltime"),
        ({"class": "lsst.ctrl.bps.parsl.sites.Slurm", "nodes": 1, "walltime": 30.5}, "site.local.walltime"),
        ({"class": "lsst.ctrl.bps.parsl.sites.Torque", "nodes": 1, "walltime": 90}, "site.local.walltime"),
        (
            {"class": "lsst.ctrl.bps.parsl.sites.TripleSlurm", "nodes": 1, "small_walltime": 10.0},
            "site.local.small_walltime",
        ),
        (
            {
                "class": "lsst.ctrl.bps.parsl.sites.Generic",
                "executors": {"main": {"provider": "slurm", "provider_options": {"walltime": 30.5}}},
            },
            "site.local.executors.main.provider_options.walltime",
        ),
    ],
)
def test_non_string_walltime_of_batch_sites_is_refused(site, key):
    """A batch site's walltime that YAML read as a number (``walltime: 30``,
    or an unquoted ``1:00:00``) is refused in one line naming the key."""
    config = make_config({"site": {"local": site}})
    with pytest.raises(ConfigurationError) as error:
        ParslService(config).run_submission_checks()
    message = str(error.value)
    assert "\n" not in message and f"'{key}'" in message, message


# ---- text is shown as text (issue 20, P10) ----------------------------------------

_HOSTILE_TEXT = {
    "non-ascii": "café_ß_日本",
    "esc": "esc\x1b[31mred\x1b]0;title\x07",
    "cr": "cr\rover",
    "rlo": "rlo\u202egnp.exe",
    "c1": "csi\x9b2J",
    "long": "L" * 10_000,
}
_RAW = ("\x1b", "\r", "\u202e", "\x9b", "\x07")


def _raw_controls(text: str) -> list[str]:
    return [repr(c) for c in _RAW if c in text]


def test_hostile_labels_and_names_are_shown_as_text(tmp_path, capfd, monkeypatch):
    """P10: labels and job names with non-ASCII characters, ESC sequences,
    CR, a right-to-left override, a C1 control and 10 KB of text: the
    driver's progress lines (per label too) and its failure line, ``bps
    report --id`` (ctrl_bps's astropy table included) under a C and a UTF-8
    locale, ``bps report`` (the list) and ``bps status`` never crash and
    never write a raw control character."""
    import subprocess

    from cli import BIN, cli_environment

    env = cli_environment(tmp_path, monkeypatch)
    jobs = [
        job(f"{kind[:4]}_{text[:40]}_{k}", "true", label=text)
        for k, (kind, text) in enumerate(_HOSTILE_TEXT.items())
    ]
    jobs.append(job(f"bad_{_HOSTILE_TEXT['esc']}", "exit 3", label=_HOSTILE_TEXT["rlo"]))
    config = make_config(
        _site(), parslProgressInterval=0.01, parslProgressByLabel=True, submitPath=str(tmp_path / "submit")
    )
    submit = tmp_path / "submit"
    run(workflow(jobs), submit, config, expect_fail=True)
    out, err = capfd.readouterr()
    assert not _raw_controls(out + err), (_raw_controls(out + err), (out + err)[-2000:])
    assert "caf" in out and "\\x1b" in out, out[-2000:]
    for locale in ("C", "C.UTF-8"):
        run_env = {**env, "LC_ALL": locale, "LANG": locale}
        for args in (
            ["report", "--id", str(submit)],
            ["report", "--hist", "1"],
            ["status", "--id", str(submit)],
        ):
            result = subprocess.run([str(BIN / "bps"), *args], env=run_env, capture_output=True, timeout=120)
            text = result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")
            assert "Traceback" not in text and "codec" not in text, (locale, args, text[-3000:])
            assert not _raw_controls(text), (locale, args, _raw_controls(text))
            if args[0] == "report":
                assert result.returncode == 0, (locale, args, text[-3000:])
            if args[:2] == ["report", "--id"]:
                assert "caf\\xe9" in text and "rlo\\u202egnp" in text and "characters)" in text, text[-3000:]


@pytest.mark.parametrize("kind", sorted(_HOSTILE_TEXT))
def test_errors_quoting_hostile_names_show_them_as_text(tmp_path, kind):
    """P10 (errors): a refusal at prepare that quotes a job name and label
    holding control characters, a right-to-left override or 10 KB (here a
    concurrency limit nothing defines, which quotes both as written) is one
    line of text: no raw control character, at most 4000 characters."""
    text = _HOSTILE_TEXT[kind]
    bad = job(f"n_{text}", "true", label=text, concurrency_limit="nolimit")
    config = make_config(_site())
    with pytest.raises(ConfigurationError) as info:
        ParslService(config).prepare(config, workflow([bad]), str(tmp_path / "submit"))
    message = str(info.value)
    assert not _raw_controls(message) and "\n" not in message and len(message) < 4100, message[:300]
    assert "nolimit" in message
