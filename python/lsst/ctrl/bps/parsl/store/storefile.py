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

"""The run-state store's file: its errors, the check that its path still
names the file a writer opened, and disk space for it on a full disk (the
reserve the driver gives back once drained: state.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat

from ..oneline import ShownMessageError, one_line, open_private

__all__ = (
    "READ_ERRORS",
    "FileIdentity",
    "RunTakenOverError",
    "StateStoreError",
    "StoreLostError",
    "damaged",
    "draining_message",
    "out_of_space_message",
    "store_error",
)


class StateStoreError(ShownMessageError, RuntimeError):
    """The run-state database is missing, unreadable or damaged."""


class StoreLostError(StateStoreError):
    """The database was deleted, truncated or replaced under an open store."""


class RunTakenOverError(StoreLostError):
    """Another process (restart, cancel) claimed the run: write nothing more."""


_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_IOERR, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 10, 5, 6, 13
READ_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)
"""What reading a damaged store raises (a damaged text is not UTF-8)."""


def damaged(path: str, what: str) -> StateStoreError:
    """The one line for a store whose values read back are not possible.

    Parameters
    ----------
    path, what : `str`
        Path of the store; which values, e.g. ``job 3 has state 18``.

    Returns
    -------
    error : `StateStoreError`
        The error.
    """
    return StateStoreError(
        f"{path}: the run-state database is damaged ({what}): restore it from a backup or submit the run "
        "again (nothing was re-run)"
    )


def _locked(exc: BaseException) -> bool:
    """Whether an SQLite error is another connection's lock (busy or locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _is_out_of_space(exc: BaseException) -> bool:
    """Whether an SQLite or OS error means the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)) or "full" in str(exc)


def store_error(path: str, exc: BaseException, writing: bool = False, waited: float = 0.0) -> StateStoreError:
    """A one-line `StateStoreError`, saying what to do, for an SQLite error.

    Parameters
    ----------
    path : `str`
        Path of the store.
    exc : `BaseException`
        The SQLite or OS error.
    writing : `bool`, optional
        Whether it happened while writing.
    waited : `float`, optional
        Seconds spent waiting for another connection's lock.

    Returns
    -------
    error : `StateStoreError`
        The error.
    """
    text = one_line(exc)
    directory = os.path.dirname(path) or "."
    if _locked(exc):
        return StateStoreError(
            f"{path}: the run-state database stayed locked by another process for {waited:.0f} s ({text}): "
            "a reader holds a transaction open (a sqlite3 shell, a script): end it"
            + (f", then 'bps restart --id {directory}'" if writing else " and try again")
        )
    if (
        isinstance(exc, sqlite3.OperationalError | OSError)
        and "malformed" not in text
        and "decode" not in text
    ):
        if writing:
            fix = "free space" if _is_out_of_space(exc) else "fix the permissions or the disk"
            return StateStoreError(
                f"{path}: cannot write the run-state database ({text}): the state up to the last "
                f"completed step is kept; {fix} in {directory}, then 'bps restart --id {directory}'"
            )
        return StateStoreError(
            f"{path}: cannot read the run-state database ({text}): check the disk and permissions of "
            f"{directory}"
        )
    return damaged(path, text)


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


class _SpaceReserve:
    """``size`` bytes held in file ``path`` (0600) for the store of a running
    driver (best effort: on a full disk it is smaller or absent).
    """

    def __init__(self, path: str, size: int):
        self.path = path
        self.held = False
        try:
            fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
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
        """Give the space back; whether it was held."""
        held, self.held = self.held, False
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        return held


class FileIdentity:
    """What a writer of the store checks of its file (mixed into `RunStore`)."""

    path: str
    lost: str | None = None
    reserve: _SpaceReserve | None = None
    _fd: int | None = None
    _identity: tuple[int, int]
    _size: int

    def _open_file(self, writing: bool) -> None:
        """Keep a descriptor of the store; a writer refuses one that is not a regular file of this user."""
        path = self.path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if writing else 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP and writing:
                raise StateStoreError(
                    f"{path}: is a symbolic link, not the run's own database: refused; use the submit "
                    "directory that holds the database itself"
                ) from None
            raise StateStoreError(f"{path}: cannot open the run-state database ({exc.strerror})") from None
        info = os.fstat(self._fd)
        if not writing:
            return
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(self._fd)
            self._fd = None
            raise StateStoreError(
                f"{path}: not a regular file owned by you (uid {info.st_uid}): refused; only the run's "
                "owner may act on it"
            )
        self._identity = (info.st_dev, info.st_ino)
        self._size = info.st_size

    def check_identity(self) -> None:
        """Raise `StoreLostError` (and write nothing more) if the path no longer
        names the file this store opened: deleted, replaced or truncated.
        """
        if self.lost:
            raise StoreLostError(self.lost)
        if self._fd is None:
            return
        what = None
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError as exc:
            what = f"made unreadable ({exc.strerror})"
        else:
            if (info.st_dev, info.st_ino) != self._identity:
                what = "replaced by another file"
            elif info.st_size < self._size or os.pread(self._fd, len(_SQLITE_HEADER), 0) != _SQLITE_HEADER:
                what = "truncated or overwritten"
            else:
                self._size = info.st_size
        if what is not None:
            directory = os.path.dirname(self.path) or "."
            self.lost = (
                f"{self.path}: the run-state database was {what} while the run was running: the run "
                "stopped and nothing more was recorded; restore the file and 'bps restart --id "
                f"{directory}', or submit the run again"
            )
            raise StoreLostError(self.lost)

    def keep_reserve(self, size: int) -> None:
        """Hold ``size`` bytes in ``<submit>/parsl/space.reserve`` for the store's last commits on a full disk.

        Parameters
        ----------
        size : `int`
            Bytes to hold.
        """
        directory = os.path.join(os.path.dirname(self.path), "parsl")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.reserve = _SpaceReserve(os.path.join(directory, "space.reserve"), size)
