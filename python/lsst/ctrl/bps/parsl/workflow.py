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
import os
import secrets
import time
from array import array
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

from lsst.ctrl.bps import (
    BaseWmsWorkflow,
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowJob,
)

from . import batch
from .attemptlogs import log_dir_template
from .commands import export_lines, render
from .configuration import ConfigurationError
from .files import safe_component
from .flatten import Flattener
from .jobattrs import check_job_attributes, check_job_values
from .jobrows import TAGS_JSON, PerValueCache, SubdirCache, Templates, file_lookup, retry_unless_exit
from .state import FORMAT_VERSION, JobKind, RunStore, db_path

__all__ = ("ParslWorkflow",)


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

        subdir = SubdirCache(log_dir_template(config))
        retry_codes = PerValueCache(retry_unless_exit)
        envs: dict[str, int] = {}
        templates: dict[int, Templates] = {}
        names, items, kinds, finals, graph_of = flat.names, flat.items, flat.kinds, flat.finals, flat.graph_of
        payload = int(JobKind.PAYLOAD)

        # Value tuples of the jobs whose values were checked (the jobs of a label share theirs).
        checked: set[tuple] = set()
        kept: list[Any] = []

        def generate_rows() -> Iterator[tuple]:
            for new, old in enumerate(order):
                job = items[old]
                kind = kinds[old]
                if kind != payload:
                    yield (new, names[old], job.label, kind, finals[old]) + (None,) * 18
                    continue
                graph_id = graph_of[old]
                files = templates.get(graph_id)
                if files is None:
                    files = templates[graph_id] = Templates(
                        file_lookup([flat.graphs[graph_id], generic_workflow])
                    )
                values = (
                    job.label,
                    job.request_cpus,
                    job.request_memory,
                    job.request_memory_max,
                    job.memory_multiplier,
                    job.request_disk,
                    job.priority,
                    job.number_of_retries,
                    id(job.retry_unless_exit),
                    job.abort_on_value,
                    job.abort_return_value,
                    job.concurrency_limit,
                    job.compute_site,
                    job.queue,
                )
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
                    raise ConfigurationError(
                        f"job '{job.name}' has no executable: check the job's configuration"
                    )
                cmdvals, lookup = job.cmdvals, files.lookup
                command = render(
                    files.command(job.executable.src_uri, job.arguments), cmdvals, lookup, job.name
                )
                if job.pre_cmdline:
                    command = (
                        render(files.resolve(job.pre_cmdline), cmdvals, lookup, job.name) + "\n" + command
                    )
                if job.post_cmdline:
                    command = (
                        command + "\n" + render(files.resolve(job.post_cmdline), cmdvals, lookup, job.name)
                    )
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
                    script = export_lines(rendered, job.name)
                    env_id = envs.setdefault(script, len(envs))
                tags = job.tags
                walltime = job.request_walltime
                yield (
                    (
                        new,
                        job.name,
                        job.label,
                        payload,
                        finals[old],
                        command,
                        env_id,
                        job.request_cpus,
                        job.request_memory,
                        job.request_memory_max,
                        job.memory_multiplier,
                        job.request_disk,
                        None if walltime is None else str(walltime),
                        None if job.priority is None else str(job.priority),
                        default_retries if job.number_of_retries is None else int(job.number_of_retries),
                        retry_codes(job.retry_unless_exit),
                        subdir(job.label, tags),
                        TAGS_JSON(tags) if tags else None,
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
    request = itemgetter(2, 7, 8, 11, 12)  # label, cores, memory, disk, walltime
    payload = int(JobKind.PAYLOAD)
    for row in rows:
        yield row
        if row[3] != payload:
            continue
        key = request(row)
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
