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

"""Job rows of the run-state store, made fast for million-job workflows.

`ParslWorkflow` renders every job of a generic workflow into one row; the
helpers here do the per-template and per-value work once rather than once
per job: ``<FILE:name>`` placeholders resolved once per command-line
template (`Templates`), the log sub-directory once per distinct label and
data id (`SubdirCache`), values ctrl_bps shares between the jobs of a
label converted once per object (`PerValueCache`).
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Generator
from typing import Any

from lsst.ctrl.bps import GenericWorkflow

from ..records import JobRow
from .commands import _FILE as FILE_PLACEHOLDER

__all__ = (
    "TAGS_JSON",
    "drain",
    "PerValueCache",
    "SubdirCache",
    "Templates",
    "file_lookup",
    "retry_unless_exit",
)


def drain(rows: Generator[JobRow, None, list[str]]) -> tuple[list[JobRow], list[str]]:
    """All the rows of a generator of job rows, and what it returned.

    Parameters
    ----------
    rows : `~collections.abc.Generator` [`JobRow`, `None`, `list` [`str`]]
        Job rows; the generator returns the environment scripts they index.

    Returns
    -------
    jobs : `list` [`JobRow`]
        The rows.
    envs : `list` [`str`]
        The environment scripts.
    """
    jobs: list[JobRow] = []
    while True:
        try:
            jobs.append(next(rows))
        except StopIteration as stop:
            return jobs, stop.value


def file_lookup(graphs: list[GenericWorkflow]) -> Callable[[str], str | None]:
    """A function giving the path of a workflow file by name (the first of
    ``graphs`` that has it), or `None`; remembered per name.

    Parameters
    ----------
    graphs : `list` [`lsst.ctrl.bps.GenericWorkflow`]
        The workflows to look in, in order.

    Returns
    -------
    lookup : `~collections.abc.Callable` [[`str`], `str` or `None`]
        Gives a file's path (``file://`` removed) from its name.
    """
    cache: dict[str, str | None] = {}

    def lookup(name: str) -> str | None:
        if name not in cache:
            path = None
            for graph in graphs:
                try:
                    gwfile = graph.get_file(name)
                except KeyError:
                    continue
                path = str(gwfile.src_uri)
                if path.startswith("file://"):
                    path = path[len("file://") :]
                break
            cache[name] = path
        return cache[name]

    return lookup


def retry_unless_exit(value: Any) -> str | None:
    """A job's ``retryUnlessExit`` (a code or codes) as stored: a JSON list.

    Parameters
    ----------
    value : `int`, `list` [`int`] or `None`
        The job's ``retryUnlessExit``.

    Returns
    -------
    codes : `str` or `None`
        The codes as a JSON list, `None` if not set.
    """
    if value is None:
        return None
    codes = [value] if isinstance(value, int) else list(value)
    return json.dumps([int(c) for c in codes])


def _tags_json() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(tags, default=str)``, without building an encoder per job
    (what `json.dumps` does when given ``default``): a third of the cost.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return json.JSONEncoder(default=str).encode
    encoder = make_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )

    def encode(tags: dict[str, Any]) -> str:
        return "".join(encoder(tags, 0))

    return encode


TAGS_JSON = _tags_json()
"""A job's tags as stored: ``json.dumps(tags, default=str)``."""


class PerValueCache:
    """``function(value)`` remembered for the last few value objects.

    ctrl_bps's transform gives every job of a label the same objects for the
    values it caches per label (``retryUnlessExit`` lists, ...): converting
    each once per object instead of once per job is what makes a
    million-job prepare cheap. Keyed by identity (the objects are held
    here, so an id is not reused while cached) and bounded, so a workflow
    with a new object per job costs no memory.

    Parameters
    ----------
    function : `~collections.abc.Callable` [[`~typing.Any`], `~typing.Any`]
        The conversion to remember.
    size : `int`, optional
        Number of values kept before the cache is emptied.
    """

    def __init__(self, function: Callable[[Any], Any], size: int = 64):
        self.function = function
        self.size = size
        self.cache: dict[int, tuple[Any, Any]] = {}

    def __call__(self, value: Any) -> Any:
        found = self.cache.get(id(value))
        if found is not None and found[0] is value:
            return found[1]
        result = self.function(value)
        if len(self.cache) >= self.size:
            self.cache.clear()
        self.cache[id(value)] = (value, result)
        return result


class SubdirCache:
    """A job's log sub-directory (`attemptlogs.log_dir_template`),
    computed once per distinct (label, values of the template's fields).

    Parameters
    ----------
    template : `~typing.Any`
        The run's `attemptlogs.log_dir_template`.
    """

    def __init__(self, template: Any):
        self.template = template
        self.fields = tuple(field for _, field, _, _ in template.parts if field not in (None, "label"))
        self.cache: dict[tuple, str] = {}

    def __call__(self, label: str, tags: dict[str, Any]) -> str:
        key = (label, tuple(map(tags.get, self.fields)))
        try:
            return self.cache[key]
        except (KeyError, TypeError):
            pass
        found = self.template(label, tags)
        if len(self.cache) >= 65_536:  # a template of per-job values: keep the memory bounded
            self.cache.clear()
        try:
            self.cache[key] = found
        except TypeError:  # an unhashable tag value
            pass
        return found


class Templates:
    """Command-line templates of one graph with their ``<FILE:name>``
    placeholders resolved once per template, not once per job (`render`
    then only fills in each job's values).

    Placeholders whose name holds a ``{value}``, or that name no file, are
    left for `render`, which resolves or reports them as before.

    Parameters
    ----------
    lookup : `~collections.abc.Callable` [[`str`], `str` or `None`]
        Gives a file's path from its name (`file_lookup`).
    """

    def __init__(self, lookup: Callable[[str], str | None]):
        self.lookup = lookup
        self._resolved: dict[str, str] = {}
        self._commands: dict[tuple[str, str | None], str] = {}

    def _file(self, match: re.Match) -> str:
        name = match.group(1)
        path = None if "{" in name else self.lookup(name)
        return match.group(0) if path is None else path

    def resolve(self, text: str) -> str:
        """``text`` with its fixed ``<FILE:name>`` placeholders resolved.

        Parameters
        ----------
        text : `str`
            A template.

        Returns
        -------
        resolved : `str`
            The template with the placeholders of known files replaced.
        """
        found = self._resolved.get(text)
        if found is None:
            found = FILE_PLACEHOLDER.sub(self._file, text) if "<FILE:" in text else text
            if len(self._resolved) < 10_000:
                self._resolved[text] = found
        return found

    def command(self, executable: str, arguments: str | None) -> str:
        """The template of a job's command line: executable and arguments.

        Parameters
        ----------
        executable : `str`
            The job's executable (a template).
        arguments : `str` or `None`
            Its arguments (a template).

        Returns
        -------
        template : `str`
            The command line template, fixed placeholders resolved.
        """
        key = (executable, arguments)
        found = self._commands.get(key)
        if found is None:
            found = self.resolve(" ".join(p for p in key if p))
            if len(self._commands) < 10_000:
                self._commands[key] = found
        return found
