"""``<WMS:attemptNum>`` (ctrl_bps's ``{wmsAttemptNum}``) is each attempt's
number, from 0, in job arguments and environment values; an unknown
``<WMS:x>`` stops prepare.

Jobs are real processes on the local site. The transform test runs ctrl_bps's
own functions (``_enhance_command``, ``gather_job_environment``) on a
GenericWorkflowJob: lsst-ctrl-bps 30.2026.4300 (Python 3.12) turns
``{wmsAttemptNum}`` in the arguments into ``<WMS:attemptNum>`` there and
leaves it in environment values (the plugin rewrites those); it is skipped
with older releases, where the other tests write the text directly.
"""

from __future__ import annotations

import pytest
from lsst.ctrl.bps import GenericWorkflowJob, WmsStates
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.prepare.commands import RenderError
from synthetic import BASH, attempts, job, make_config, run, workflow

S = WmsStates.SUCCEEDED.value
F = WmsStates.FAILED.value

# Attempt 0 fails, attempt 1 succeeds; each leaves a file named by its number
# holding the environment value, which carries the number too.
SCRIPT = 'echo "$ATTEMPT_ENV" > {out}/attempt.{n}; test {n} -ge 1'


def _check_attempt_files(out, submit) -> None:
    """Each attempt wrote its number, in its file name and its environment value."""
    assert (out / "attempt.0").read_text() == "env-0\n"
    assert (out / "attempt.1").read_text() == "env-1\n"
    assert sorted(p.name for p in out.iterdir()) == ["attempt.0", "attempt.1"]
    rows = attempts(submit, "flaky")
    assert [(r[1], r[3]) for r in rows] == [(1, F), (2, S)]


@pytest.mark.parametrize("spelling", ["<WMS:attemptNum>", "{wmsAttemptNum}"])
def test_attempt_number_in_arguments_and_environment(tmp_path, spelling):
    """Both spellings, written directly: attempt 0 fails, attempt 1 succeeds."""
    out = tmp_path / "out"
    out.mkdir()
    flaky = job(
        "flaky",
        SCRIPT.format(out=out, n=spelling),
        number_of_retries=2,
        environment={"ATTEMPT_ENV": f"env-{spelling}"},
    )
    result = run(workflow([flaky]), tmp_path / "submit")
    assert result["flaky"][0] == S and result["flaky"][1] == 2
    _check_attempt_files(out, tmp_path / "submit")


def test_attempt_number_through_ctrl_bps_transform(tmp_path):
    """The arguments and environment as ctrl_bps's transform writes them."""
    from lsst.ctrl.bps import BpsConfig, transform

    if not hasattr(BpsConfig, "get_search_opts"):
        pytest.skip(
            "this lsst-ctrl-bps predates <WMS:...> placeholders (30.2026.4300 has them, on Python 3.12)"
        )
    out = tmp_path / "out"
    out.mkdir()
    config = make_config(
        {"environment": {"ATTEMPT_ENV": "env-{wmsAttemptNum}"}, "submitPath": str(tmp_path / "submit")}
    )
    gwjob = GenericWorkflowJob(
        "flaky",
        "flaky",
        executable=BASH,
        arguments="-c '" + SCRIPT.format(out=out, n="{wmsAttemptNum}") + "'",
        number_of_retries=2,
    )
    gw = workflow([gwjob])
    transform._enhance_command(config, gw, gwjob, {})
    gwjob.environment = transform.gather_job_environment(config, config.get_search_opts(gwjob.label))
    assert "<WMS:attemptNum>" in gwjob.arguments and "{wms" not in gwjob.arguments
    result = run(gw, tmp_path / "submit", config)
    assert result["flaky"][0] == S
    _check_attempt_files(out, tmp_path / "submit")


@pytest.mark.parametrize("where", ["arguments", "environment"])
def test_unknown_wms_placeholder_stops_prepare(tmp_path, where):
    """One line naming the job and the placeholder, before anything runs."""
    text = "<WMS:jobId>" if where == "arguments" else "{wmsJobId}"
    bad = job("bad_job", f"echo {text}" if where == "arguments" else "true")
    if where == "environment":
        bad.environment = {"X": f"a-{text}"}
    config = make_config()
    with pytest.raises(RenderError) as info:
        ParslService(config).prepare(config, workflow([bad]), str(tmp_path / "submit"))
    message = str(info.value)
    assert "'bad_job'" in message and "'<WMS:jobId>'" in message and "<WMS:attemptNum>" in message
    assert "\n" not in message
