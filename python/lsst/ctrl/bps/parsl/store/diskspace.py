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

"""Disk space for the run-state store on a full disk: the reserve file
(`SpaceReserve`) the driver gives back once drained (state.md).
"""

from __future__ import annotations

import errno
import os

__all__ = ("RESERVE_NAME", "SpaceReserve", "draining_message", "is_out_of_space", "out_of_space_message")

_SQLITE_FULL = 13
_SQLITE_IOERR = 10
RESERVE_NAME = "space.reserve"
"""The reserve file, in ``<submit>/parsl/``."""


def out_of_space_message(submit_path: str) -> str:
    """The one line a driver stops with when its submit directory's disk is full.

    Parameters
    ----------
    submit_path : `str`
        Submit directory of the run.

    Returns
    -------
    message : `str`
        The line.
    """
    return (
        f"{submit_path}: the file system of the submit directory is full: the run stopped after "
        f"the running jobs ended and were recorded; free space, then 'bps restart --id {submit_path}'"
    )


def draining_message(submit_path: str, running: int) -> str:
    """The line a driver says when its disk fills and it starts to drain.

    Parameters
    ----------
    submit_path : `str`
        Submit directory.
    running : `int`
        Number of jobs still running, left to end.

    Returns
    -------
    message : `str`
        The line.
    """
    return (
        f"bps-parsl: {submit_path}: the file system of the submit directory is full: no new job starts; "
        f"the {running} running jobs are left to end and be recorded, then the run stops"
    )


def is_out_of_space(exc: BaseException) -> bool:
    """Whether an SQLite or OS error means the disk (or quota) is full.

    Parameters
    ----------
    exc : `BaseException`
        The error.

    Returns
    -------
    full : `bool`
        `True` if the disk or the user's quota is full.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)) or "full" in str(exc)


class SpaceReserve:
    """Disk space held for the store of a running driver (best effort: on a
    full disk it is smaller or absent).

    Parameters
    ----------
    path : `str`
        The reserve file (created, 0600).
    size : `int`
        Bytes to hold.
    """

    def __init__(self, path: str, size: int):
        self.path = path
        self.held = False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            os.fchmod(fd, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                block = b"\0" * 65536
                for _ in range(0, size, len(block)):
                    os.write(fd, block)
            self.held = True
        except OSError:
            self.held = os.fstat(fd).st_size > 0
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the space back.

        Returns
        -------
        held : `bool`
            Whether the space was held before this call.
        """
        held, self.held = self.held, False
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return held
