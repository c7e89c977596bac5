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

"""The executor's side of the spawner's wire protocol (documented in
`lsst_ctrl_bps_parsl_worker.spawner`): request lines out, reply lines in.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any

from lsst_ctrl_bps_parsl_worker.job import NotStartedError

from ..records import AttemptResult

__all__ = ("DRAIN", "STOP", "encode", "job_request", "parse_reply", "resume_request")

_HOST = socket.gethostname()

STOP = b'{"op": "stop"}\n'
"""The request that fails queued jobs and kills running ones."""
DRAIN = b'{"op": "drain"}\n'
"""The request that fails queued jobs (and any later one) and lets running ones end."""


def job_request(
    token: str,
    prefix: str,
    env: str,
    command: str,
    out_path: str,
    err_path: str,
    pid_file: str,
    time_limit: float | None = None,
    shell: str = "/bin/bash",
    warm: bool = False,
    inputs: Sequence[Any] = (),
    parsl_resource_specification: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spawner request of a `run_job` call with these arguments (its
    signature, so a call `run_job` would refuse is refused here); 1 core and
    no memory until the executor sets them from the resource specification.

    Parameters
    ----------
    token, prefix, env, command, out_path, err_path, pid_file, time_limit, shell, warm
        As `run_job`.
    inputs, parsl_resource_specification
        Not sent (Parsl and the executor read them).

    Returns
    -------
    request : `dict` [`str`, `~typing.Any`]
        The request, without its id.
    """
    return {
        "shell": shell,
        "prefix": prefix,
        "env": env,
        "command": command,
        "out": out_path,
        "err": err_path,
        "pid_file": pid_file,
        "token": token,
        "cores": 1,
        "memory": 0,
        "time_limit": time_limit,
        "warm": warm,
    }


def encode(request: dict[str, Any]) -> bytes:
    """One request line.

    Parameters
    ----------
    request : `dict` [`str`, `~typing.Any`]
        The request.

    Returns
    -------
    line : `bytes`
        It as one JSON line.
    """
    return (json.dumps(request) + "\n").encode()


def resume_request(dead_spawner: int, jobs: list[dict[str, Any]]) -> bytes:
    """First line for a spawner taking over the unanswered ``jobs`` of one that died.

    Parameters
    ----------
    dead_spawner : `int`
        Process id of the spawner that died.
    jobs : `list` [`dict` [`str`, `~typing.Any`]]
        Its unanswered requests.

    Returns
    -------
    line : `bytes`
        The request line.
    """
    return encode({"op": "resume", "spawner": dead_spawner, "jobs": jobs})


def parse_reply(line: bytes) -> tuple[int, AttemptResult | BaseException]:
    """Decode one reply line.

    Parameters
    ----------
    line : `bytes`
        One reply line of the spawner.

    Returns
    -------
    number : `int`
        Id of the request.
    result : `AttemptResult` or `BaseException`
        How the job ended, or `NotStartedError`.
    """
    number, code, sig, start, end, timed_out = line.split()
    if start == b"-":
        return int(number), NotStartedError("the job was not started: the pool is stopping")
    return int(number), AttemptResult(
        int(code),
        None if sig == b"-" else int(sig),
        None if start in (b"?", b"!") else float(start),
        float(end),
        _HOST,
        timed_out == b"1",
    )
