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

"""The job rows of a workflow: its graph flattened, commands rendered, values checked (doc/performance.md)."""

from __future__ import annotations

import functools
import json
import json.encoder
import re
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Generator, Iterator
from operator import attrgetter
from typing import Any

from lsst.ctrl.bps import (
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowGroup,
    GenericWorkflowJob,
    GenericWorkflowNoopJob,
)

from ..configuration import ConfigurationError
from ..records import JobKind, JobRow
from ..store.recorder import log_dir_template
from .commands import _FILE as FILE_PLACEHOLDER
from .commands import export_lines, render
from .jobattrs import _job_row_check, check_job_values

__all__ = ("job_rows",)

_PAYLOAD = int(JobKind.PAYLOAD)
_CHECKED = attrgetter(
    *"""label request_cpus request_memory request_memory_max memory_multiplier request_disk priority
    number_of_retries abort_on_value abort_return_value concurrency_limit compute_site queue""".split()
)
"""The values `check_job_values` checks (with ``retry_unless_exit``)."""


def job_rows(
    config: BpsConfig, generic_workflow: GenericWorkflow, site: Any
) -> tuple[Generator[JobRow, None, list[str]], Iterator[tuple[int, int]], Callable[[str], int]]:
    """The rows and edges of a generic workflow, in topological order (`ConfigurationError` for a cycle).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration.
    generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
        The workflow, with its final job.
    site : `SiteConfig`
        The run's site, validated.

    Returns
    -------
    rows : `~collections.abc.Generator`
        The job rows, each checked (`ConfigurationError` for a bad one);
        the generator returns the environment scripts their ``env_id`` index.
    edges : `~collections.abc.Iterator` [`tuple` [`int`, `int`]]
        (parent, child) ids.
    node_id : `~collections.abc.Callable` [[`str`], `int`]
        The id of a node by name.
    """
    flat = _Flattener()
    flat.add_workflow(generic_workflow, final=False)
    final = generic_workflow.get_final()
    if isinstance(final, GenericWorkflowJob):
        final_wf = GenericWorkflow(f"{generic_workflow.name}_final")
        final_wf.add_job(final)
        flat.add_workflow(final_wf, final=True)
    elif isinstance(final, GenericWorkflow):
        flat.add_workflow(final, final=True)
    order = flat.topological_order()
    new_id = array("i", bytes(order.itemsize * len(order)))
    for new, old in enumerate(order):
        new_id[old] = new
    edges = ((new_id[i], new_id[c]) for i, kids in enumerate(flat.children) for c in kids)
    rows = _rows(config, generic_workflow, site, flat, order, _job_row_check(config, site))
    return rows, edges, lambda name: new_id[flat.index(name)]


def _rows(
    config: BpsConfig,
    generic_workflow: GenericWorkflow,
    site: Any,
    flat: _Flattener,
    order: array,
    check: Callable[[JobRow], None],
) -> Generator[JobRow, None, list[str]]:
    """The checked job rows; returns the distinct environment scripts."""
    site_retries, default_retries = site.settings.retries, site.default_retries
    subdir = _SubdirCache(log_dir_template(config))
    templates: dict[int, _Templates] = {}
    names, items, kinds, finals, graph_of = flat.names, flat.items, flat.kinds, flat.finals, flat.graph_of
    # Value tuples of the jobs whose values were checked (the jobs of a label share theirs).
    checked: set[tuple] = set()
    kept: list[Any] = []
    envs: dict[str, int] = {}
    for new, old in enumerate(order):
        job = items[old]
        kind = kinds[old]
        if kind != _PAYLOAD:
            yield JobRow(new, names[old], job.label, kind, finals[old])
            continue
        graph_id = graph_of[old]
        files = templates.get(graph_id)
        if files is None:
            files = templates[graph_id] = _Templates([flat.graphs[graph_id], generic_workflow])
        values = (*_CHECKED(job), id(job.retry_unless_exit))
        try:
            known = values in checked
        except TypeError:  # an unhashable value: not one ctrl_bps gives
            known = False
        if not known:
            check_job_values(job)
            if len(checked) < 65_536:
                checked.add(values)
                kept.append(job.retry_unless_exit)  # its id stays this object's
        if job.executable is None:
            raise ConfigurationError(f"job '{job.name}' has no executable: check the job's configuration")
        cmdvals, lookup = job.cmdvals, files.lookup
        command = render(files.command(job.executable.src_uri, job.arguments), cmdvals, lookup, job.name)
        if job.pre_cmdline:
            command = render(files.resolve(job.pre_cmdline), cmdvals, lookup, job.name) + "\n" + command
        if job.post_cmdline:
            command = command + "\n" + render(files.resolve(job.post_cmdline), cmdvals, lookup, job.name)
        if "\0" in command:
            raise ConfigurationError(
                f"job {job.name!r}: its command line holds a NUL character, which no process can be "
                "given: remove it from the job's arguments"
            )
        env_id = None
        if job.environment:
            rendered = {
                k: render(str(v), cmdvals, lookup, job.name, expand_env=False)
                for k, v in job.environment.items()
            }
            env_id = envs.setdefault(export_lines(rendered, job.name), len(envs))
        tags = job.tags
        row = JobRow(
            id=new,
            name=job.name,
            label=job.label,
            kind=_PAYLOAD,
            final=finals[old],
            command=command,
            env_id=env_id,
            request_cpus=job.request_cpus,
            request_memory=job.request_memory,
            request_memory_max=job.request_memory_max,
            memory_multiplier=job.memory_multiplier,
            request_disk=job.request_disk,
            request_walltime=None if job.request_walltime is None else str(job.request_walltime),
            priority=None if job.priority is None else str(job.priority),
            retries=site_retries
            if site_retries is not None
            else default_retries
            if job.number_of_retries is None
            else int(job.number_of_retries),
            retry_unless_exit=_retry_unless_exit(job.retry_unless_exit),
            log_dir=subdir(job.label, tags),
            tags=_TAGS_JSON(tags) if tags else None,
            concurrency_limit=str(job.concurrency_limit) if job.concurrency_limit else None,
            abort_on_value=job.abort_on_value,
            abort_return_value=job.abort_return_value,
            compute_site=job.compute_site or None,
            queue=job.queue or None,
        )
        check(row)
        yield row
    return list(envs)


def _retry_unless_exit(value: Any) -> str | None:
    """A job's ``retryUnlessExit`` (a code or codes) as stored: a JSON list."""
    if value is None:
        return None
    return _codes_json((value,) if isinstance(value, int) else tuple(value))


@functools.lru_cache(maxsize=64)
def _codes_json(codes: tuple[int, ...]) -> str:
    """Exit codes as a JSON list, for the few distinct lists of a workflow."""
    return json.dumps([int(c) for c in codes])


def _tags_json() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(tags, default=str)`` without an encoder built per job (a third of the cost)."""
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return json.JSONEncoder(default=str).encode
    encoder = make_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )

    def encode(tags: dict[str, Any]) -> str:
        return "".join(encoder(tags, 0))

    return encode


_TAGS_JSON = _tags_json()


class _SubdirCache:
    """A job's log sub-directory, computed once per label and template field values."""

    def __init__(self, template: Any):
        self.template = template
        self.fields = tuple(field for _, field, _, _ in template.parts if field not in (None, "label"))
        self.cache: dict[tuple, str] = {}

    def __call__(self, label: str, tags: dict[str, Any]) -> str:
        key = (label, tuple(map(tags.get, self.fields)))
        try:
            found = self.cache.get(key)
        except TypeError:  # an unhashable tag value
            return self.template(label, tags)
        if found is None:
            if len(self.cache) >= 65_536:  # a template of per-job values: keep the memory bounded
                self.cache.clear()
            found = self.cache[key] = self.template(label, tags)
        return found


class _Templates:
    """One graph's command-line templates, fixed ``<FILE:name>`` resolved once (others: `render`)."""

    def __init__(self, graphs: list[GenericWorkflow]):
        self._graphs = graphs
        self._paths: dict[str, str | None] = {}
        self._resolved: dict[str, str] = {}
        self._commands: dict[tuple[str, str | None], str] = {}

    def lookup(self, name: str) -> str | None:
        """The path of a workflow file by name (from the first graph that has it), or `None`."""
        if name not in self._paths:
            self._paths[name] = None
            for graph in self._graphs:
                try:
                    self._paths[name] = str(graph.get_file(name).src_uri).removeprefix("file://")
                    break
                except KeyError:
                    continue
        return self._paths[name]

    def _file(self, match: re.Match) -> str:
        name = match.group(1)
        path = None if "{" in name else self.lookup(name)
        return match.group(0) if path is None else path

    def resolve(self, text: str) -> str:
        """``text`` with its fixed ``<FILE:name>`` placeholders resolved."""
        found = self._resolved.get(text)
        if found is None:
            found = FILE_PLACEHOLDER.sub(self._file, text) if "<FILE:" in text else text
            if len(self._resolved) < 10_000:
                self._resolved[text] = found
        return found

    def command(self, executable: str, arguments: str | None) -> str:
        """The template of a job's command line, fixed placeholders resolved."""
        key = (executable, arguments)
        found = self._commands.get(key)
        if found is None:
            found = self.resolve(" ".join(p for p in key if p))
            if len(self._commands) < 10_000:
                self._commands[key] = found
        return found


_NO_CHILDREN: tuple[int, ...] = ()


class _Flattener:
    """Flatten a generic workflow, expanding groups (nodes in insertion order; see `topological_order`)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.items: list[Any] = []
        """The generic workflow's job, no-op job or group of each node."""
        self.graphs: list[GenericWorkflow] = []
        self.graph_of = array("i")  # index into `graphs` of the graph holding the node
        self.kinds = bytearray()
        self.finals = bytearray()
        # Most jobs of a wide workflow have no children: they share one empty tuple.
        self.children: list[list[int] | tuple[int, ...]] = []
        self.nparents = array("i")
        # Node ids sorted by name: finds a node by name with a binary search,
        # at 4 bytes per node where a dict would take 60.
        self.by_name = array("i")

    def _sort_names(self) -> None:
        """(Re)build `by_name`; a name used twice is an error."""
        names = self.names
        self.by_name = by_name = array("i", sorted(range(len(names)), key=names.__getitem__))
        for k in range(1, len(by_name)):
            if names[by_name[k]] == names[by_name[k - 1]]:
                raise ConfigurationError(f"job name '{names[by_name[k]]}' appears twice in the workflow")

    def index(self, name: str) -> int:
        """Id of the node called ``name``."""
        return self.by_name[bisect_left(self.by_name, name, key=self.names.__getitem__)]

    def _edge(self, parent: int, child: int) -> None:
        """Add an edge."""
        kids = self.children[parent]
        if kids is _NO_CHILDREN:
            self.children[parent] = [child]
        else:
            assert isinstance(kids, list)
            kids.append(child)
        self.nparents[child] += 1

    def _add_nodes(self, graph: GenericWorkflow, final: bool, pending: deque[GenericWorkflow]) -> None:
        """Append a node for every node of one graph level; queue its groups."""
        graph_id = len(self.graphs)
        self.graphs.append(graph)
        names, items, kinds = self.names, self.items, self.kinds
        start = len(names)
        for name, item in graph.nodes(data="job"):
            names.append(name)
            items.append(item)
            if isinstance(item, GenericWorkflowJob):
                kinds.append(JobKind.PAYLOAD)
            elif isinstance(item, GenericWorkflowGroup):
                kinds.append(JobKind.JOIN if item.blocking else JobKind.TOLERANT_JOIN)
                pending.append(item)
            elif isinstance(item, GenericWorkflowNoopJob):
                kinds.append(JobKind.NOOP)
            else:
                raise ConfigurationError(f"workflow node '{name}' has unsupported type {type(item).__name__}")
        added = len(names) - start
        self.graph_of.extend(array("i", [graph_id]) * added)
        self.finals.extend(bytes([final]) * added)
        self.children.extend([_NO_CHILDREN] * added)
        self.nparents.extend(array("i", bytes(4 * added)))

    def add_workflow(self, top: GenericWorkflow, final: bool) -> None:
        """Add every node and edge of ``top`` and of its groups (``final``: they run after all others)."""
        # An edge *out of* node `name` leaves from flat node index(name) (a
        # group's: from its join); an edge *into* it reaches index(name), or
        # for a group every node of group_entries[name].
        index = self.index
        group_entries: dict[str, list[int]] = {}

        def entries(name: str) -> list[int]:
            found = group_entries.get(name)
            return [index(name)] if found is None else found

        # Pass 1: create nodes for every level; groups are visited after
        # their parent level so their entries are known when edges are made.
        pending: deque[GenericWorkflow] = deque([top])
        levels: list[GenericWorkflow] = []
        while pending:
            graph = pending.popleft()
            levels.append(graph)
            self._add_nodes(graph, final, pending)
        self._sort_names()
        # Group entries: the entries of the group's source nodes, innermost
        # groups first.
        for graph in reversed(levels):
            if isinstance(graph, GenericWorkflowGroup):
                found: list[int] = []
                for name, degree in graph.in_degree():
                    if degree == 0:
                        found.extend(entries(name))
                group_entries[graph.name] = found
        # Pass 2: edges. Every node of a group leads to the group's join.
        for graph in levels:
            for parent, child in graph.edges():
                for entry in entries(child):
                    self._edge(index(parent), entry)
            if isinstance(graph, GenericWorkflowGroup):
                join = index(graph.name)
                for name in graph.nodes:
                    self._edge(index(name), join)

    def topological_order(self) -> array:
        """Node ids, every parent before its children, final nodes last (Kahn's algorithm); refuses a cycle."""
        remaining = array("i", self.nparents)
        order = array("i")
        for final in (False, True):
            # `order` is also the queue: the nodes from `head` on are ready.
            head = len(order)
            order.extend(i for i, f in enumerate(self.finals) if f == final and remaining[i] == 0)
            while head < len(order):
                i = order[head]
                head += 1
                for c in self.children[i]:
                    remaining[c] -= 1
                    if remaining[c] == 0:
                        order.append(c)
        if len(order) != len(self.names):
            stuck = [self.names[i] for i, r in enumerate(remaining) if r > 0][:5]
            raise ConfigurationError(f"the workflow has a dependency cycle through jobs {stuck}")
        return order
