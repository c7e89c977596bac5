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

"""Errors as one line, text safe on a terminal, safe file names, private files (0600 whatever the umask)."""

from __future__ import annotations

import functools
import hashlib
import os
import re

__all__ = (
    "ShownMessageError",
    "one_line",
    "open_private",
    "private_dir",
    "safe_component",
    "safe_subdir",
    "shown",
    "write_private",
)

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""Characters a terminal acts on rather than shows: C0 and C1 controls, DEL,
line and paragraph separators, bidirectional marks and overrides."""


def shown(text: object, limit: int = 200, ascii: bool = False) -> str:
    """``text`` safe to show: what a terminal would act on escaped, cut at ``limit`` characters.

    Parameters
    ----------
    text : `object`
        The value to show (its `str`).
    limit : `int`, optional
        Most characters shown; a longer text is cut and its length added.
    ascii : `bool`, optional
        Escape every non-ASCII character too (ctrl_bps's report tables).

    Returns
    -------
    shown : `str`
        The text, cut and escaped.
    """
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text)} characters)"
    text = _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
    if ascii and not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text


class ShownMessageError(Exception):
    """Base of the plugin's errors: their message is `shown`, the middle of a very long one cut."""

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) > 4000:
            text = f"{text[:2500]}...({len(text)} characters)...{text[-1500:]}"
        return shown(text, limit=len(text))


def one_line(exc: BaseException) -> str:
    """The text of ``exc`` on one line, `shown` (its type's name if it has none).

    Parameters
    ----------
    exc : `BaseException`
        The error.

    Returns
    -------
    text : `str`
        Its text, whitespace runs as one space.
    """
    return shown(" ".join(str(exc).split()), limit=4000) or type(exc).__name__


_MAX_COMPONENT_BYTES = 200  # of 255 bytes a file system allows: suffixes such as ``.stdout.12`` follow

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\ud800-\udfff]")


def private_dir(path: str) -> str:
    """Create directory ``path`` (and missing parents) and make it mode 0700.

    Parameters
    ----------
    path : `str`
        The directory.

    Returns
    -------
    path : `str`
        The directory.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_private(path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """Open ``path`` as a file of mode 0600 (tightened before anything is written); its descriptor.

    Parameters
    ----------
    path : `str`
        The file.
    flags : `int`, optional
        `os.open` flags (``O_CLOEXEC`` is added).

    Returns
    -------
    fd : `int`
        The open descriptor; the caller closes it.
    """
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str, text: str) -> str:
    """Write ``text`` to ``path`` (mode 0600) in a directory of mode 0700.

    Parameters
    ----------
    path, text : `str`
        The file; what to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    private_dir(os.path.dirname(path) or ".")
    with os.fdopen(open_private(path), "w") as stream:
        stream.write(text)
    return path


def safe_component(name: str) -> str:
    """Return ``name`` as one safe file-name component (if changed: with ``~`` and a hash).

    Parameters
    ----------
    name : `str`
        A job's name or other text from the workflow.

    Returns
    -------
    component : `str`
        A file-name component with no ``/`` and not ``.`` or ``..``.
    """
    # A surrogate is unsafe, and found before encode() would fail on it.
    if (
        name not in ("", ".", "..")
        and not _UNSAFE_CHARS.search(name)
        and len(name.encode()) <= _MAX_COMPONENT_BYTES
    ):
        return name
    return _made_safe(name)


@functools.lru_cache(maxsize=4096)
def _made_safe(name: str) -> str:
    """The safe form of an unsafe ``name``."""
    digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:12]
    cleaned = _UNSAFE_CHARS.sub("_", name)
    if cleaned in ("", ".", ".."):
        cleaned = "_" * len(cleaned)
    room = _MAX_COMPONENT_BYTES - len(digest) - 1
    encoded = cleaned.encode()
    if len(encoded) > room:
        cleaned = encoded[:room].decode(errors="ignore")
    return f"{cleaned}~{digest}"


@functools.lru_cache(maxsize=4096)
def safe_subdir(subdir: str | None) -> str:
    """Return a relative directory path made of safe components (empty and ``.`` segments dropped).

    Parameters
    ----------
    subdir : `str` or `None`
        A job's log sub-directory from the workflow.

    Returns
    -------
    path : `str`
        The relative path (empty for none).
    """
    if not subdir:
        return ""
    return "/".join(safe_component(part) for part in subdir.split("/") if part not in ("", "."))
