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

"""The prepared workflow: a generic workflow flattened, rendered and saved.

`ParslWorkflow.from_generic_workflow` turns BPS's `GenericWorkflow` (jobs,
no-op ordering nodes, nested job groups, a final job) into a flat list of
nodes in topological order with integer edges, renders every command line,
and writes it all to the run-state database (`state.RunStore`) in the submit
directory. Everything later (submit, report, cancel, restart) reads that
database only: no pickle, no `BpsConfig` search per job.
"""

from __future__ import annotations

import gc
import getpass
import json
import os
import secrets
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from lsst.ctrl.bps import (
    BaseWmsWorkflow,
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowGroup,
    GenericWorkflowJob,
    GenericWorkflowNoopJob,
)

from . import batch
from .attemptlogs import log_dir_template
from .commands import export_lines, render
from .configuration import ConfigurationError
from .files import safe_component
from .jobattrs import check_job_attributes
from .state import FORMAT_VERSION, JobKind, RunStore, db_path

__all__ = ("ParslWorkflow",)


_NO_CHILDREN: tuple[int, ...] = ()


class _Flattener:
    """Flatten a generic workflow, expanding groups, without recursion.

    Node ``i`` is described by parallel arrays rather than an object per
    node: a 100,000-job workflow then costs a few MB here.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
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

    def item(self, i: int) -> Any:
        """The generic workflow's job, no-op job or group of node ``i``."""
        return self.graphs[self.graph_of[i]].get_job(self.names[i])

    def _sort_names(self) -> None:
        """(Re)build `by_name`; a name used twice is an error."""
        names = self.names
        self.by_name = array("i", sorted(range(len(names)), key=names.__getitem__))
        by_name = self.by_name
        for k in range(1, len(by_name)):
            if names[by_name[k]] == names[by_name[k - 1]]:
                raise ConfigurationError(f"job name '{names[by_name[k]]}' appears twice in the workflow")

    def index(self, name: str) -> int:
        """Id of the node called ``name``."""
        return self.by_name[bisect_left(self.by_name, name, key=self.names.__getitem__)]

    def _add(self, name: str, kind: int, graph_id: int, final: bool) -> None:
        self.names.append(name)
        self.graph_of.append(graph_id)
        self.kinds.append(kind)
        self.finals.append(final)
        self.children.append(_NO_CHILDREN)
        self.nparents.append(0)

    def _edge(self, parent: int, child: int) -> None:
        kids = self.children[parent]
        if kids is _NO_CHILDREN:
            self.children[parent] = [child]
        else:
            assert isinstance(kids, list)
            kids.append(child)
        self.nparents[child] += 1

    def add_workflow(self, top: GenericWorkflow, final: bool) -> None:
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
            graph_id = len(self.graphs)
            self.graphs.append(graph)
            for name in graph:
                item = graph.get_job(name)
                if isinstance(item, GenericWorkflowGroup):
                    self._add(name, JobKind.JOIN if item.blocking else JobKind.TOLERANT_JOIN, graph_id, final)
                    group_entries[name] = []
                    pending.append(item)
                elif isinstance(item, GenericWorkflowNoopJob):
                    self._add(name, JobKind.NOOP, graph_id, final)
                elif isinstance(item, GenericWorkflowJob):
                    self._add(name, JobKind.PAYLOAD, graph_id, final)
                else:
                    raise ConfigurationError(
                        f"workflow node '{name}' has unsupported type {type(item).__name__}"
                    )
        self._sort_names()
        # Group entries: the entries of the group's source nodes, innermost
        # groups first.
        for graph in reversed(levels):
            if isinstance(graph, GenericWorkflowGroup):
                found: list[int] = []
                for name in graph:
                    if graph.in_degree(name) == 0:
                        found.extend(entries(name))
                group_entries[graph.name] = found
        # Pass 2: edges. Every node of a group leads to the group's join.
        for graph in levels:
            for parent, child in graph.edges():
                for entry in entries(child):
                    self._edge(index(parent), entry)
            if isinstance(graph, GenericWorkflowGroup):
                join = index(graph.name)
                for name in graph:
                    self._edge(index(name), join)

    def topological_order(self) -> array:
        """Kahn's algorithm over main nodes, then final nodes."""
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


def _file_lookup(graphs: list[GenericWorkflow]) -> Callable[[str], str | None]:
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


def _job_attributes(job: GenericWorkflowJob) -> tuple:
    """The jobs columns after ``tags``: what `jobattrs` enforces."""
    limit = job.concurrency_limit
    return (
        None if limit is None or limit == "" else str(limit),
        job.abort_on_value,
        job.abort_return_value,
        job.compute_site or None,
        job.queue or None,
    )


def _retry_unless_exit(value: Any) -> str | None:
    if value is None:
        return None
    codes = [value] if isinstance(value, int) else list(value)
    return json.dumps([int(c) for c in codes])


class ParslWorkflow(BaseWmsWorkflow):
    """A BPS workflow prepared to run with Parsl.

    Parameters
    ----------
    name : `str`
        Run name.
    config : `lsst.ctrl.bps.BpsConfig` or `None`
        BPS configuration (`None` when loaded back from a submit directory).
    submit_path : `str`
        Submit directory holding the run-state database.
    run_id : `str`
        Run id printed by ``bps submit``.
    """

    def __init__(self, name: str, config: BpsConfig | None, submit_path: str, run_id: str):
        super().__init__(name, config)
        self.submit_path = submit_path
        self.run_id = run_id
        self.payload: batch.Payload | None = None
        """Jobs that `add_to_parent_workflow` adds to a running run."""

    @property
    def db_path(self) -> str:
        """The run-state database."""
        return db_path(self.submit_path)

    @property
    def path(self) -> str:
        """The submit directory (the old plugin's name for it)."""
        return self.submit_path

    @property
    def bps_config(self) -> BpsConfig | None:
        """The BPS configuration (the old plugin's name for ``config``)."""
        return self.config

    @property
    def site(self) -> Any:
        """The run's `SiteConfig`, built from the BPS configuration (the
        one saved in the submit directory when loaded from there).
        """
        site = self.__dict__.get("_site")
        if site is None:
            from .control import load_config
            from .site import SiteConfig

            config = self.config if self.config is not None else load_config(self.submit_path)
            site = SiteConfig.from_config(config)
            site.submit_path = self.submit_path
            self.__dict__["_site"] = site
        return site

    @classmethod
    def read(cls, out_prefix: str) -> ParslWorkflow:
        """Return the workflow prepared in ``out_prefix`` (as `load`)."""
        return cls.load(out_prefix)

    @classmethod
    def from_generic_workflow(
        cls,
        config: BpsConfig,
        generic_workflow: GenericWorkflow,
        out_prefix: str,
        service_class: str,
    ) -> ParslWorkflow:
        """Flatten, render and save a generic workflow in ``out_prefix``.

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration.
        generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
            The workflow to run.
        out_prefix : `str`
            Submit directory.
        service_class : `str`
            Name of the service class, stored for report/restart.

        Returns
        -------
        workflow : `ParslWorkflow`
            The prepared workflow.

        Raises
        ------
        ConfigurationError
            If a command line cannot be rendered or the graph is not a DAG.
        """
        # Prepare allocates an object or two per job on top of the generic
        # workflow's own; collecting garbage meanwhile only rescans the heap.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return cls._prepare(config, generic_workflow, out_prefix, service_class)
        finally:
            if gc_was_enabled:
                gc.enable()

    @classmethod
    def _prepare(
        cls, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str, service_class: str
    ) -> ParslWorkflow:
        from .site import SiteConfig

        submit_path = os.path.abspath(out_prefix)
        site = SiteConfig.from_config(config)
        site.validate()
        default_retries = site.default_retries

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

        subdir = log_dir_template(config)
        envs: dict[str, int] = {}
        lookups: dict[int, Any] = {}

        def generate_rows() -> Iterator[tuple]:
            for new, old in enumerate(order):
                job = flat.item(old)
                kind = flat.kinds[old]
                if kind != JobKind.PAYLOAD:
                    yield (new, flat.names[old], job.label, kind, flat.finals[old]) + (None,) * 18
                    continue
                graph_id = flat.graph_of[old]
                if graph_id not in lookups:
                    lookups[graph_id] = _file_lookup([flat.graphs[graph_id], generic_workflow])
                lookup = lookups[graph_id]
                if job.executable is None:
                    raise ConfigurationError(
                        f"job '{job.name}' has no executable: check the job's configuration"
                    )
                parts = [job.executable.src_uri, job.arguments or ""]
                command = render(" ".join(p for p in parts if p), job.cmdvals, lookup, job.name)
                if job.pre_cmdline:
                    command = render(job.pre_cmdline, job.cmdvals, lookup, job.name) + "\n" + command
                if job.post_cmdline:
                    command = command + "\n" + render(job.post_cmdline, job.cmdvals, lookup, job.name)
                if "\0" in command:
                    raise ConfigurationError(
                        f"job {job.name!r}: its command line holds a NUL character, which no process can be "
                        "given: remove it from the job's arguments"
                    )
                env_id = None
                if job.environment:
                    rendered = {
                        k: render(str(v), job.cmdvals, lookup, job.name, expand_env=False)
                        for k, v in job.environment.items()
                    }
                    script = export_lines(rendered, job.name)
                    env_id = envs.setdefault(script, len(envs))
                tags = job.tags
                yield (
                    (
                        new,
                        job.name,
                        job.label,
                        JobKind.PAYLOAD,
                        flat.finals[old],
                        command,
                        env_id,
                        job.request_cpus,
                        job.request_memory,
                        job.request_memory_max,
                        job.memory_multiplier,
                        job.request_disk,
                        None if job.request_walltime is None else str(job.request_walltime),
                        None if job.priority is None else str(job.priority),
                        default_retries if job.number_of_retries is None else int(job.number_of_retries),
                        _retry_unless_exit(job.retry_unless_exit),
                        subdir(job.label, tags),
                        json.dumps(tags, default=str) if tags else None,
                        *_job_attributes(job),
                    )
                )

        rows = check_job_attributes(
            _checked_rows(site, generate_rows()), config, site.compute_site, site.executor_labels()
        )
        edges = ((new_id[i], new_id[c]) for i, kids in enumerate(flat.children) for c in kids)

        control = batch.control_run(submit_path)
        if control is not None:
            # `bps batch-prepare` of a running control run: `add_to_parent_workflow` adds these jobs.
            workflow = cls(generic_workflow.name, config, submit_path, control["run_id"])
            workflow.payload = batch.Payload(list(rows), list(edges), list(envs))
            return workflow
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        meta = _run_meta(config, generic_workflow.name, run_id, submit_path, service_class)
        meta.update(batch.lazy_group_ids(generic_workflow, lambda name: new_id[flat.index(name)]))
        os.makedirs(submit_path, exist_ok=True)
        RunStore.create(db_path(submit_path), meta, envs, rows, edges).close()
        return cls(generic_workflow.name, config, submit_path, run_id)

    def add_to_parent_workflow(self, config: BpsConfig) -> None:
        """Add this payload workflow's jobs to the running run that prepared
        it (``bpsBatchSubmission``; see `batch`).

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration of the payload.

        Raises
        ------
        ConfigurationError
            If this workflow was not prepared into a control run's submit
            directory.
        """
        if self.payload is None:
            raise ConfigurationError(
                f"workflow {self.name}: not prepared by 'bps batch-prepare' into the submit directory of a "
                "run submitted with 'bpsBatchSubmission: true', so it has no run to join"
            )
        batch.join_payload(self.submit_path, self.payload)

    @classmethod
    def load(cls, submit_path: str) -> ParslWorkflow:
        """Return the workflow prepared in a submit directory."""
        store = RunStore(db_path(os.path.abspath(submit_path)), readonly=True)
        try:
            meta = store.meta()
        finally:
            store.close()
        return cls(meta["run_name"], None, meta["submit_path"], meta["run_id"])

    def write(self, out_prefix: str) -> None:
        """Nothing to do: `from_generic_workflow` already saved everything."""


def _checked_rows(site: Any, rows: Iterator[tuple]) -> Iterator[tuple]:
    """Pass rows on, checking that every job goes to an existing executor
    that can ever hold it.
    """
    from .job import ParslJob

    labels = set(site.executor_labels())
    capacities = {label: site.capacity(label) for label in labels}
    seen: set[tuple] = set()
    for row in rows:
        yield row
        if row[3] != JobKind.PAYLOAD:
            continue
        key = (row[2], row[7], row[8], row[11], row[12])
        if key in seen:
            continue
        seen.add(key)
        if row[12] is not None:
            _check_walltime(row[12], row[1], row[2])
        cpus = row[7] or 1
        job = ParslJob.for_attempt(
            row[1], row[2], cpus, row[8], row[11], row[12], row[13], final=bool(row[4]), tags=row[17]
        )
        try:
            label = site.select_executor(job)
        except Exception as exc:
            raise ConfigurationError(
                f"site class {type(site).__name__}.select_executor failed for job '{row[1]}' (label "
                f"'{row[2]}'): {type(exc).__name__}: {exc}: fix the site class or the job's requests"
            ) from None
        if label not in labels:
            raise ConfigurationError(
                f"site class {type(site).__name__}.select_executor returned '{label}' for job '{row[1]}', "
                f"but the site's executors are {sorted(labels)}: fix the site class or its executor labels"
            )
        cap = capacities[label]
        # The final job runs alone, after every other job ended, so it gets
        # the whole executor: its request (bps defaults: 16 cores, 32 GB) is
        # clamped to the capacity when it runs, never rejected.
        if cap is None or row[4]:
            continue
        if cpus > cap.cores:
            raise ConfigurationError(
                f"job '{row[1]}' asks for {cpus} cores (requestCpus) but executor '{label}' of "
                f"{site.where} has {cap.cores}: lower requestCpus for label '{row[2]}' or raise "
                f"{site.where}.cores"
            )
        if cap.memory and row[8] and row[8] > cap.memory:
            raise ConfigurationError(
                f"job '{row[1]}' asks for {row[8]} MB (requestMemory) but executor '{label}' of "
                f"{site.where} has {cap.memory} MB: lower requestMemory for label '{row[2]}' or raise "
                f"{site.where}.memory"
            )


def _check_walltime(value: str, name: str, label: str) -> None:
    """``requestWalltime`` must be a positive number of minutes or HH:MM:SS."""
    from .configuration import parse_walltime

    where = f"requestWalltime of job '{name}' (label '{label}')"
    try:
        minutes = float(value)
    except ValueError:
        parse_walltime(value, where)
        return
    if not minutes > 0 or minutes == float("inf"):
        raise ConfigurationError(f"'{where}' is {value!r}: it must be a number of minutes greater than 0")


def _run_meta(
    config: BpsConfig, name: str, run_id: str, submit_path: str, service_class: str
) -> dict[str, Any]:
    def value(key: str, default: Any = None) -> Any:
        found, val = config.search(key, opt={"default": default})
        return val if found else default

    return {
        "format_version": FORMAT_VERSION,
        "run_name": name,
        "run_id": run_id,
        "submit_path": submit_path,
        "service_class": service_class,
        "compute_site": value("computeSite"),
        "operator": value("operator", getpass.getuser()),
        "owner_uid": os.getuid(),
        "project": value("project"),
        "campaign": value("campaign"),
        "payload": value("payloadName"),
        "output_run": value("outputRun"),
        "created": time.time(),
        "config_file": os.path.join(submit_path, f"{safe_component(name)}_config.yaml"),
    }
