"""Disk space for the run-state store when its file system fills up.

A running driver holds a small reserve file next to its store
(`SpaceReserve`); when a commit fails for lack of space, the reserve is given
back so that the driver can record how the run stopped
(`out_of_space_message`).
"""

from __future__ import annotations

import errno
import os

__all__ = ("RESERVE_NAME", "SpaceReserve", "is_out_of_space", "out_of_space_message")

_SQLITE_FULL = 13
_SQLITE_IOERR = 10
RESERVE_NAME = "space.reserve"
"""File in ``<submit>/parsl/`` whose space a driver gives back to its store
when the file system fills up, so that it can record how the run stopped."""


def out_of_space_message(submit_path: str) -> str:
    """The one line a driver stops with when its submit directory's disk is full."""
    return (
        f"{submit_path}: the file system of the submit directory is full: the run stopped after "
        f"recording every job that ended; free space, then 'bps restart --id {submit_path}'"
    )


def is_out_of_space(exc: BaseException) -> bool:
    """Whether an SQLite or OS error means the disk (or quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)) or "full" in str(exc)


class SpaceReserve:
    """Disk space held for the run-state database of a running driver.

    Parameters
    ----------
    path : `str`
        The reserve file; created (mode 0600) with ``size`` bytes allocated.
    size : `int`
        Bytes to hold.

    Notes
    -----
    Best effort: on a file system that is already full the reserve is
    smaller or absent. Copy-on-write file systems may give the space back
    late.
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
        """Give the space back; returns whether there was any to give."""
        held, self.held = self.held, False
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return held
