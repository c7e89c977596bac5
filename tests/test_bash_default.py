"""Jobs run under ``/bin/bash`` by default, as the old plugin's ``bash_app``
ran them: bash syntax in command lines and in ``commandPrefix`` works
(``[[ ]]``, arrays, ``source``; on Debian ``/bin/sh`` is dash). ``jobShell:
/bin/sh`` stays an opt-in. Real runs of real job processes.
"""

from __future__ import annotations

import os

from synthetic import job, make_config, run, workflow

# Bash only: dash fails on each of `[[`, arrays and `source`.
BASH_ONLY = (
    '[[ -n "$HOME" ]] && words=(first second) && source /dev/null && echo "${words[1]} $BASH_VERSION" > {out}'
)


def local_site(**keys: str) -> dict:
    return {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", **keys}}


def test_bash_syntax_in_command_line_and_prefix_by_default(tmp_path):
    out = tmp_path / "out"
    prefix_out = tmp_path / "prefix_out"
    bash_job = job("bashism", "true", pre_cmdline=BASH_ONLY.replace("{out}", str(out)))
    config = make_config(site=local_site(commandPrefix=BASH_ONLY.replace("{out}", str(prefix_out))))
    run(workflow([bash_job]), tmp_path / "submit", config=config)
    assert out.read_text().split()[0] == "second"
    assert out.read_text().split()[1]  # $BASH_VERSION: the job's shell is bash
    assert prefix_out.read_text().split()[0] == "second"


def test_sh_is_an_opt_in(tmp_path):
    out = tmp_path / "out"
    # The job's shell runs the line before the command itself: `$$` is the shell.
    probe = job("probe", "true", pre_cmdline=f"readlink /proc/$$/exe > {out}")
    run(workflow([probe]), tmp_path / "s1", config=make_config(site=local_site(jobShell="/bin/sh")))
    assert out.read_text().strip() == os.path.realpath("/bin/sh")
    run(workflow([probe]), tmp_path / "s2")
    assert out.read_text().strip() == os.path.realpath("/bin/bash")
    # Under dash the bash-only line fails, and the job with it.
    if os.path.realpath("/bin/sh").endswith("dash"):
        bash_job = job("bashism", "true", pre_cmdline=BASH_ONLY.replace("{out}", str(tmp_path / "never")))
        states = run(
            workflow([bash_job]),
            tmp_path / "s3",
            config=make_config(site=local_site(jobShell="/bin/sh")),
            expect_fail=True,
        )
        assert states["bashism"][2] != 0
