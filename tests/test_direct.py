"""A job's program started without its shell (`lsst_ctrl_bps_parsl_worker.direct`)
sees what it would have seen under the shell.

Every case runs a real probe program twice, from the same `Launcher`: once
through the job's shell (`job_argv`, what happens when the script is not
plain) and once as `Launcher.spawn_job` starts it, and compares the
arguments, environment, working directory, exit status and log files. The
cases the fast path must leave to the shell are checked to be left to it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from lsst.ctrl.bps.parsl.prepare.commands import export_lines
from lsst_ctrl_bps_parsl_worker import direct
from lsst_ctrl_bps_parsl_worker.processes import ATTEMPT_ENV, Launcher, job_argv, job_script

SHELLS = ("/bin/bash", "/bin/sh")
TOKEN = "run-d/job1/1"

PROBE = f"""#!{sys.executable} -S
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}))
"""


@pytest.fixture
def probe(tmp_path: Path) -> str:
    path = tmp_path / "bin" / "probe"
    path.parent.mkdir()
    path.write_text(PROBE)
    path.chmod(0o755)
    return str(path)


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _both(launcher: Launcher, tmp: Path, shell: str, env: str, command: str, prefix: str = "") -> list[tuple]:
    """(exit code, stdout, stderr) through the shell, then through `spawn_job`."""
    results = []
    for how in ("shell", "fast"):
        out, err = tmp / how / "job.out", tmp / how / "job.err"
        out.parent.mkdir(exist_ok=True)
        if how == "shell":
            items = [*launcher._items, f"{ATTEMPT_ENV}={TOKEN}".encode()]
            argv = job_argv(shell, str(out), str(err), job_script(TOKEN, prefix, env, command))
            pid = launcher._spawn(argv, items, ())
        else:
            pid = launcher.spawn_job(shell, TOKEN, prefix, env, command, str(out), str(err))
        code = _wait(pid)
        results.append((code, out.read_text(), err.read_text()))
    return results


def _plan(launcher: Launcher, shell: str, env: str, command: str, prefix: str = ""):
    kind = direct.shell_kind(shell)
    shell_environ = direct.shell_environment(shell, launcher._base) if kind else None
    return direct.direct_start(kind, shell_environ, ATTEMPT_ENV, TOKEN, prefix, env, command)


def _base_environ(**changes: str | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in direct._STARTUP}
    environ.update({"HOME": "/home/someone", "DIRV": "/usr/share", "EMPTY": ""})
    for key, value in changes.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


HOSTILE = {
    "A": "it's 'quoted' and \"double\"",
    "B": "$(touch x) `touch y` ${HOME} $((1+1))",
    "C": "line1\nline2\n",
    "D": "* ? [a-z] ~ ~root a:~/x !! \\ \\\\",
    "E": "",
    "F": "δ ünïcödé",
    "G": "<ENV:HOME>/sub and <ENV:EMPTY>-<ENV:DIRV>",
    "H": "<ENV:C>",
}

PLAIN_COMMANDS = [
    "{probe}",
    "{probe} a b --opt=x,y:z@w%v+u -1 ./rel",
    "{probe} ${{HOME}} $HOME/x pre$DIRV.post",
    "{probe} $EMPTY a $EMPTY b",
    '{probe} "$EMPTY" \'\' "" c',
    '{probe} "a b"  \'c  d\' \'it\'"\'"\'s\' "${{C}}" "$A"',
    "{probe} \"${{B}}\" \"x${{D}}y\" '$HOME' '*'",
    "\t{probe}\ta\t",
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("command", PLAIN_COMMANDS)
def test_plain_jobs_start_directly_and_see_what_the_shell_would_give_them(
    tmp_path: Path, probe: str, shell: str, command: str
) -> None:
    launcher = Launcher(_base_environ())
    env = export_lines(HOSTILE)
    command = command.format(probe=probe)
    assert _plan(launcher, shell, env, command) is not None, "expected the fast path"
    through_shell, fast = _both(launcher, tmp_path, shell, env, command)
    assert through_shell[0] == fast[0] == 0
    assert json.loads(through_shell[1]) == json.loads(fast[1])
    assert through_shell[2] == fast[2] == ""


ENVIRONMENTS = {
    "no_shlvl_pwd_oldpwd": {"SHLVL": None, "PWD": None, "OLDPWD": None, "_": None},
    "shlvl_3": {"SHLVL": "3"},
    "shlvl_leading_zero": {"SHLVL": "03"},
    "shlvl_negative": {"SHLVL": "-1"},
    "shlvl_999": {"SHLVL": "999"},
    "wrong_pwd": {"PWD": "/"},
    "relative_pwd": {"PWD": "tmp"},
    "unnormalized_pwd": {"PWD": "/tmp/../tmp"},
    "oldpwd_and_underscore": {"OLDPWD": "/somewhere", "_": "/bin/whatever"},
    "ifs": {"IFS": "x"},
    "ps4": {"PS4": "z"},
    "optind": {"OPTIND": "3"},
    "exported_function": {"BASH_FUNC_f%%": "() { echo; }"},
    "not_a_name": {"not-a-name": "1"},
    "digit_name": {"1X": "2"},
    "lc_all_invalid": {"LC_ALL": "xx_NOT.A-LOCALE"},
    "lc_all_c": {"LC_ALL": "C"},
}
TAKES_THE_FAST_PATH = {
    "no_shlvl_pwd_oldpwd",
    "shlvl_3",
    "shlvl_leading_zero",
    "wrong_pwd",
    "relative_pwd",
    "oldpwd_and_underscore",
    "ifs",
    "ps4",
    "exported_function",
    "not_a_name",
    "lc_all_c",
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_what_the_shell_changes_in_the_environment_is_reproduced(
    tmp_path: Path, probe: str, shell: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell is asked once what it passes on; the job gets exactly that
    (or, where the shell would warn or fail, runs under the shell)."""
    link = tmp_path / "here"
    link.symlink_to(tmp_path)
    monkeypatch.chdir(link)
    changes = dict(ENVIRONMENTS[name])
    if name == "oldpwd_and_underscore":
        changes["PWD"] = str(link)  # a symbolic link naming the working directory is kept
    launcher = Launcher(_base_environ(**changes))
    command = f"{probe} x"
    if name in TAKES_THE_FAST_PATH:
        assert _plan(launcher, shell, "", command) is not None, "expected the fast path"
    through_shell, fast = _both(launcher, tmp_path, shell, "export K='v'", command)
    assert through_shell[0] == fast[0]
    if through_shell[0] == 0:
        assert json.loads(through_shell[1]) == json.loads(fast[1])
    assert through_shell[2] == fast[2]


LEFT_TO_THE_SHELL = {
    "prefix": ("", "{probe}", "source /dev/null"),
    "two_commands": ("", "{probe}; {probe}", ""),
    "newline": ("", "{probe}\n{probe}", ""),
    "pipe": ("", "{probe} | cat", ""),
    "redirect": ("", "{probe} >/dev/null", ""),
    "glob": ("", "{probe} *", ""),
    "tilde": ("", "{probe} ~/x", ""),
    "tilde_after_equals": ("", "{probe} --o=~/x", ""),
    "braces": ("", "{probe} a{{b,c}}", ""),
    "comment": ("", "{probe} #x", ""),
    "backslash": ("", "{probe} a\\ b", ""),
    "backquote": ("", "{probe} `true`", ""),
    "command_substitution": ("", '{probe} "$(true)"', ""),
    "positional": ("", "{probe} $1", ""),
    "default_value": ("", "{probe} ${{X:-y}}", ""),
    "lone_dollar": ("", "{probe} $", ""),
    "unquoted_value_with_blank": ("export S='a b'", "{probe} $S", ""),
    "unquoted_value_with_glob": ("export S='*'", "{probe} $S", ""),
    "no_path": ("", "env", ""),
    "builtin": ("", "echo hi", ""),
    "assignment_first": ("", "X=1 {probe}", ""),
    "exec_word": ("", "exec {probe}", ""),
    "export_ifs": ("export IFS=x", "{probe}", ""),
    "export_shlvl": ("export SHLVL=7", "{probe}", ""),
    "export_bash_env": ("export BASH_ENV=/tmp/x", "{probe}", ""),
    "export_not_ours": ("X=1; export X", "{probe}", ""),
    "export_unquoted_reference": ("export X=$HOME", "{probe}", ""),
    "expand_special": ("", "{probe} $RANDOM", ""),
    "expand_shlvl": ("", "{probe} $SHLVL", ""),
    "expand_unset": ("", "{probe} $UNSET_VAR", ""),
    "expand_unexported_shell_variable": ("", "{probe} $HOSTTYPE", ""),
    "export_expands_unset": ('export X="${{UNSET_VAR}}"', "{probe}", ""),
    "unclosed_quote": ("", "{probe} 'a", ""),
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", sorted(LEFT_TO_THE_SHELL))
def test_scripts_that_are_not_plain_are_left_to_the_shell(probe: str, shell: str, name: str) -> None:
    env, command, prefix = LEFT_TO_THE_SHELL[name]
    assert _plan(Launcher(_base_environ()), shell, env, command.format(probe=probe), prefix) is None


@pytest.mark.parametrize("name", sorted(direct._STARTUP))
@pytest.mark.parametrize("shell", SHELLS)
def test_variables_that_change_how_the_shell_starts_leave_the_job_to_the_shell(
    probe: str, shell: str, name: str
) -> None:
    assert _plan(Launcher(_base_environ(**{name: "/dev/null"})), shell, "", probe) is None


@pytest.mark.parametrize("shell", ["/bin/zsh", "/usr/bin/env", sys.executable, "/nonexistent/bash"])
def test_other_shells_always_run_the_script(probe: str, shell: str) -> None:
    assert _plan(Launcher(_base_environ()), shell, "", probe) is None


@pytest.mark.parametrize("shell", SHELLS)
def test_programs_that_cannot_start_get_the_shells_answer(tmp_path: Path, shell: str) -> None:
    """Missing, not executable, a directory, a script without ``#!``: the
    fast path gives up and the shell says why (or runs the script), with
    the same exit status and message.
    """
    missing = tmp_path / "missing"
    unexecutable = tmp_path / "unexecutable"
    unexecutable.write_text("echo no\n")
    script = tmp_path / "script"
    script.write_text('echo from-script "$1"\nexit 3\n')
    script.chmod(0o755)
    launcher = Launcher(_base_environ())
    for command, expected in ((missing, 127), (unexecutable, 126), (tmp_path, 126), (script, 3)):
        assert _plan(launcher, shell, "", f"{command} arg") is not None
        through_shell, fast = _both(launcher, tmp_path, shell, "", f"{command} arg")
        assert through_shell == fast
        assert fast[0] == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_a_vanished_log_directory_is_made_again(tmp_path: Path, probe: str, shell: str) -> None:
    launcher = Launcher(_base_environ())
    out, err = tmp_path / "gone" / "logs" / "j.out", tmp_path / "gone" / "logs" / "j.err"
    pid = launcher.spawn_job(shell, TOKEN, "", "", f"{probe} a", str(out), str(err))
    assert _wait(pid) == 0
    assert json.loads(out.read_text())["argv"] == ["a"] and err.read_text() == ""


def test_signals_and_exit_statuses_are_the_programs(tmp_path: Path) -> None:
    """Started directly, the job is the program itself: its exit code and the
    signal that kills it reach the caller as they did through bash's exec.
    """
    launcher = Launcher(_base_environ())
    for command, expected in (
        (f"{sys.executable} -S -c 'raise SystemExit(7)'", 7),
        (f"{sys.executable} -S -c 'import os; os.kill(os.getpid(), 15)'", -15),
    ):
        assert _plan(launcher, "/bin/bash", "", command) is not None
        pid = launcher.spawn_job(
            "/bin/bash", TOKEN, "", "", command, str(tmp_path / "o"), str(tmp_path / "e")
        )
        assert _wait(pid) == expected
