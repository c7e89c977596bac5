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

"""The job rows of a prepared workflow: commands rendered, values checked (doc/performance.md)."""

from __future__ import annotations

import json
import json.encoder
import re
from array import array
from collections.abc import Callable, Generator, Iterator
from operator import attrgetter
from typing import Any

from lsst.ctrl.bps import BpsConfig, GenericWorkflow, GenericWorkflowJob

from ..configuration import ConfigurationError
from ..job import ParslJob, parse_walltime
from ..records import JobKind, JobRow
from ..store.attemptlogs import log_dir_template
from .commands import _FILE as FILE_PLACEHOLDER
from .commands import export_lines, render
from .flatten import Flattener
from .jobattrs import check_job_values, job_attribute_check

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
    """The rows and edges of a generic workflow, in topological order.

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

    Raises
    ------
    ConfigurationError
        If the graph is not a DAG or a name appears twice.
    """
    flat = Flattener()
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
    checks = (
        _resource_check(site),
        job_attribute_check(config, site.compute_site, site.executor_labels()),
    )
    rows = _rows(config, generic_workflow, site, flat, order, checks)
    return rows, edges, lambda name: new_id[flat.index(name)]


def _rows(
    config: BpsConfig,
    generic_workflow: GenericWorkflow,
    site: Any,
    flat: Flattener,
    order: array,
    checks: tuple[Callable[[JobRow], None], ...],
) -> Generator[JobRow, None, list[str]]:
    """The checked job rows; returns the distinct environment scripts."""
    site_retries, default_retries = site.settings.retries, site.default_retries
    subdir = _SubdirCache(log_dir_template(config))
    retry_codes = _PerValueCache(_retry_unless_exit)
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
            files = templates[graph_id] = _Templates(_file_lookup([flat.graphs[graph_id], generic_workflow]))
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
        walltime = job.request_walltime
        limit = job.concurrency_limit
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
            request_walltime=None if walltime is None else str(walltime),
            priority=None if job.priority is None else str(job.priority),
            retries=site_retries
            if site_retries is not None
            else default_retries
            if job.number_of_retries is None
            else int(job.number_of_retries),
            retry_unless_exit=retry_codes(job.retry_unless_exit),
            log_dir=subdir(job.label, tags),
            tags=_TAGS_JSON(tags) if tags else None,
            concurrency_limit=None if limit is None or limit == "" else str(limit),
            abort_on_value=job.abort_on_value,
            abort_return_value=job.abort_return_value,
            compute_site=job.compute_site or None,
            queue=job.queue or None,
        )
        for check in checks:
            check(row)
        yield row
    return list(envs)


def _resource_check(site: Any) -> Callable[[JobRow], None]:
    """A check that a job goes to an existing executor that can ever hold it."""
    labels = set(site.executor_labels())
    capacities = {label: site.capacity(label) for label in labels}
    seen: set[tuple] = set()

    def check(row: JobRow) -> None:
        if row.kind != _PAYLOAD:
            return
        key = (row.label, row.request_cpus, row.request_memory, row.request_disk, row.request_walltime)
        if key in seen:
            return
        seen.add(key)
        if row.request_walltime is not None:
            _check_walltime(row.request_walltime, row.name, row.label)
        cpus = row.request_cpus or 1
        job = ParslJob.from_row(row)
        try:
            label = site.select_executor(job)
        except Exception as exc:
            raise ConfigurationError(
                f"site class {type(site).__name__}.select_executor failed for job '{row.name}' (label "
                f"'{row.label}'): {type(exc).__name__}: {exc}: fix the site class or the job's requests"
            ) from None
        if label not in labels:
            raise ConfigurationError(
                f"site class {type(site).__name__}.select_executor returned '{label}' for job '{row.name}', "
                f"but the site's executors are {sorted(labels)}: fix the site class or its executor labels"
            )
        cap = capacities[label]
        # The final job runs alone, after every other job ended, so it gets
        # the whole executor: its request (bps defaults: 16 cores, 32 GB) is
        # clamped to the capacity when it runs, never rejected.
        if cap is None or row.final:
            return
        if cpus > cap.cores:
            raise ConfigurationError(
                f"job '{row.name}' asks for {cpus} cores (requestCpus) but executor '{label}' of "
                f"{site.where} has {cap.cores}: lower requestCpus for label '{row.label}' or raise "
                f"{site.where}.cores"
            )
        if cap.memory and row.request_memory and row.request_memory > cap.memory:
            raise ConfigurationError(
                f"job '{row.name}' asks for {row.request_memory} MB (requestMemory) but executor '{label}' of "
                f"{site.where} has {cap.memory} MB: lower requestMemory for label '{row.label}' or raise "
                f"{site.where}.memory"
            )

    return check


def _check_walltime(value: str, name: str, label: str) -> None:
    """``requestWalltime`` must be a positive number of minutes or HH:MM:SS."""
    where = f"requestWalltime of job '{name}' (label '{label}')"
    try:
        minutes = float(value)
    except ValueError:
        parse_walltime(value, where)
        return
    if not minutes > 0 or minutes == float("inf"):
        raise ConfigurationError(f"'{where}' is {value!r}: it must be a number of minutes greater than 0")


def _file_lookup(graphs: list[GenericWorkflow]) -> Callable[[str], str | None]:
    """The path of a workflow file by name (first of ``graphs``), or `None`; cached."""
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


def _retry_unless_exit(value: Any) -> str | None:
    """A job's ``retryUnlessExit`` (a code or codes) as stored: a JSON list."""
    if value is None:
        return None
    codes = [value] if isinstance(value, int) else list(value)
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


class _PerValueCache:
    """``function(value)`` remembered by identity for the last few value objects a label's jobs
    share (the objects are held here, so an id is not reused while cached).
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


class _SubdirCache:
    """A job's log sub-directory, computed once per label and template field values."""

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


class _Templates:
    """One graph's command-line templates, fixed ``<FILE:name>`` resolved once (others: `render`)."""

    def __init__(self, lookup: Callable[[str], str | None]):
        self.lookup = lookup
        self._resolved: dict[str, str] = {}
        self._commands: dict[tuple[str, str | None], str] = {}

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
