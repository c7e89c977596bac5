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
from collections.abc import Callable, Generator
from typing import Any

from lsst.ctrl.bps import (
    BaseWmsWorkflow,
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowJob,
)

from .configuration import ConfigurationError
from .files import safe_component
from .prepare import batch
from .prepare.commands import export_lines, render
from .prepare.flatten import Flattener
from .prepare.jobattrs import check_job_values, job_attribute_check
from .prepare.jobrows import (
    TAGS_JSON,
    PerValueCache,
    SubdirCache,
    Templates,
    drain,
    file_lookup,
    retry_unless_exit,
)
from .records import JobRow
from .store.attemptlogs import log_dir_template
from .store.runindex import add_run, remove_run
from .store.runstore import FORMAT_VERSION, JobKind, RunStore, StateStoreError, db_path

__all__ = ("ParslWorkflow",)


def _job_attributes(job: GenericWorkflowJob) -> dict[str, Any]:
    """The jobs columns after ``tags``: what `jobattrs` enforces."""
    limit = job.concurrency_limit
    return {
        "concurrency_limit": None if limit is None or limit == "" else str(limit),
        "abort_on_value": job.abort_on_value,
        "abort_return_value": job.abort_return_value,
        "compute_site": job.compute_site or None,
        "queue": job.queue or None,
    }


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
            from .run.session import load_config
            from .site import SiteConfig

            config = self.config if self.config is not None else load_config(self.submit_path)
            site = SiteConfig.from_config(config)
            site.submit_path = self.submit_path
            self.__dict__["_site"] = site
        return site

    @classmethod
    def read(cls, out_prefix: str) -> ParslWorkflow:
        """Return the workflow prepared in ``out_prefix`` (as `load`).

        Parameters
        ----------
        out_prefix : `str`
            Submit directory.
        """
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
        site_retries, default_retries = site.site_retries, site.default_retries

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
        templates: dict[int, Templates] = {}
        names, items, kinds, finals, graph_of = flat.names, flat.items, flat.kinds, flat.finals, flat.graph_of
        payload = int(JobKind.PAYLOAD)

        # Value tuples of the jobs whose values were checked (the jobs of a label share theirs).
        checked: set[tuple] = set()
        kept: list[Any] = []
        checks = (
            _resource_check(site),
            job_attribute_check(config, site.compute_site, site.executor_labels()),
        )

        def generate_rows() -> Generator[JobRow, None, list[str]]:
            """The job rows, checked; returns the distinct environment
            scripts the rows' ``env_id`` index.
            """
            envs: dict[str, int] = {}
            for new, old in enumerate(order):
                job = items[old]
                kind = kinds[old]
                if kind != payload:
                    yield JobRow(new, names[old], job.label, kind, finals[old])
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
                row = JobRow(
                    id=new,
                    name=job.name,
                    label=job.label,
                    kind=payload,
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
                    tags=TAGS_JSON(tags) if tags else None,
                    **_job_attributes(job),
                )
                for check in checks:
                    check(row)
                yield row
            return list(envs)

        rows = generate_rows()
        edges = ((new_id[i], new_id[c]) for i, kids in enumerate(flat.children) for c in kids)

        control = batch.control_run(submit_path)
        if control is not None:
            # `bps batch-prepare` of a running control run: `add_to_parent_workflow` adds these jobs.
            workflow = cls(generic_workflow.name, config, submit_path, control["run_id"])
            jobs, envs = drain(rows)
            workflow.payload = batch.Payload(jobs, list(edges), envs)
            return workflow
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        meta = _run_meta(config, generic_workflow.name, run_id, submit_path, service_class)
        meta.update(batch.lazy_group_ids(generic_workflow, lambda name: new_id[flat.index(name)]))
        os.makedirs(submit_path, exist_ok=True)
        _create_run(
            config,
            submit_path,
            run_id,
            generic_workflow.name,
            lambda: RunStore.create(db_path(submit_path), meta, rows, edges).close(),
        )
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
        """Return the workflow prepared in a submit directory.

        Parameters
        ----------
        submit_path : `str`
            Submit directory.
        """
        store = RunStore(db_path(os.path.abspath(submit_path)), readonly=True)
        try:
            meta = store.meta()
        finally:
            store.close()
        return cls(meta["run_name"], None, meta["submit_path"], meta["run_id"])

    def write(self, out_prefix: str) -> None:
        """Nothing to do: `from_generic_workflow` already saved everything.

        Parameters
        ----------
        out_prefix : `str`
            Submit directory (unused).
        """


def _create_run(
    config: BpsConfig, submit_path: str, run_id: str, name: str, create_store: Callable[[], None]
) -> None:
    """Create a run in ``submit_path`` so that a process killed at any point
    leaves either no run (a new submit may use the directory) or a complete
    one (``bps restart`` runs it), listed in the run index.

    The configuration is written under a name of the run's own, the run is
    indexed, then the store is linked into place (exclusively: of two
    submits into one directory at once one wins, the other gets one line);
    only then does the configuration take its place (`run.session.load_config`
    does that for a run whose submit was killed just before).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        The run's configuration.
    submit_path : `str`
        Submit directory.
    run_id : `str`
        The new run's id.
    name : `str`
        The run's name (for the run index).
    create_store : `~collections.abc.Callable`
        Writes the run's store.
    """
    from .run.session import install_config, save_pending_config

    try:
        pending = save_pending_config(config, submit_path, run_id)
    except OSError as exc:
        raise StateStoreError(
            f"{submit_path}: cannot write the run's configuration ({exc.strerror or exc}): free space or fix "
            f"permissions in {submit_path}, then submit again (no job ran)"
        ) from None
    add_run(run_id, submit_path, name)
    try:
        create_store()
    except BaseException:
        remove_run(run_id, submit_path)
        try:
            os.unlink(pending)
        except OSError:
            pass
        raise
    install_config(submit_path, run_id)


def _resource_check(site: Any) -> Callable[[JobRow], None]:
    """A check that a job goes to an existing executor that can ever hold it.

    Parameters
    ----------
    site : `SiteConfig`
        The run's site.

    Returns
    -------
    check : `~collections.abc.Callable`
        Called with every job row; raises `ConfigurationError` for a bad one.
    """
    from .job import ParslJob

    labels = set(site.executor_labels())
    capacities = {label: site.capacity(label) for label in labels}
    seen: set[tuple] = set()
    payload = int(JobKind.PAYLOAD)

    def check(row: JobRow) -> None:
        if row.kind != payload:
            return
        key = (row.label, row.request_cpus, row.request_memory, row.request_disk, row.request_walltime)
        if key in seen:
            return
        seen.add(key)
        if row.request_walltime is not None:
            _check_walltime(row.request_walltime, row.name, row.label)
        cpus = row.request_cpus or 1
        job = ParslJob.for_attempt(
            row.name,
            row.label,
            cpus,
            row.request_memory,
            row.request_disk,
            row.request_walltime,
            row.priority,
            final=bool(row.final),
            tags=row.tags,
        )
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
    from .job import parse_walltime

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
