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

"""Errors as the one line the plugin shows, and workflow or store text made safe on a terminal."""

from __future__ import annotations

import re

__all__ = ("ShownMessageError", "one_line", "shown")

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""Characters a terminal acts on rather than shows: C0 and C1 controls, DEL,
line and paragraph separators, bidirectional marks and overrides."""


def _escape(match: re.Match) -> str:
    """The match as escapes."""
    return match.group().encode("unicode_escape").decode("ascii")


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
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(_escape, text)
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
