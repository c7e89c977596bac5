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

"""A generic workflow flattened, without recursion, into integer-indexed nodes in parallel arrays."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from typing import Any

from lsst.ctrl.bps import GenericWorkflow, GenericWorkflowGroup, GenericWorkflowJob, GenericWorkflowNoopJob

from ..configuration import ConfigurationError
from ..records import JobKind

__all__ = ("Flattener",)

_NO_CHILDREN: tuple[int, ...] = ()


class Flattener:
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

    def __len__(self) -> int:
        return len(self.names)

    def _sort_names(self) -> None:
        """(Re)build `by_name`; a name used twice is an error."""
        names = self.names
        self.by_name = array("i", sorted(range(len(names)), key=names.__getitem__))
        by_name = self.by_name
        for k in range(1, len(by_name)):
            if names[by_name[k]] == names[by_name[k - 1]]:
                raise ConfigurationError(f"job name '{names[by_name[k]]}' appears twice in the workflow")

    def index(self, name: str) -> int:
        """Id of the node called ``name``.

        Parameters
        ----------
        name : `str`
            Node name.

        Returns
        -------
        i : `int`
            The node's id.
        """
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
        """Add every node and edge of ``top`` and of the groups in it.

        Parameters
        ----------
        top : `lsst.ctrl.bps.GenericWorkflow`
            The workflow (or the final workflow).
        final : `bool`
            Whether its nodes run after every other node ended.
        """
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
        for graph in levels[1:]:  # the groups
            group_entries[graph.name] = []
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
        """Kahn's algorithm over main nodes, then final nodes.

        Returns
        -------
        order : `array.array`
            Node ids, every parent before its children and the final nodes last.

        Raises
        ------
        ConfigurationError
            If the workflow has a dependency cycle.
        """
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
        if len(order) != len(self):
            stuck = [self.names[i] for i, r in enumerate(remaining) if r > 0][:5]
            raise ConfigurationError(f"the workflow has a dependency cycle through jobs {stuck}")
        return order
