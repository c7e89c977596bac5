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

"""The prepared workflow: job rows in the submit directory's store, which later commands read."""

from __future__ import annotations

import contextlib
import functools
import gc
import getpass
import os
import secrets
import time
from collections.abc import Generator, Iterable
from typing import Any

from lsst.ctrl.bps import BaseWmsWorkflow, BpsConfig, GenericWorkflow

from .configuration import ConfigurationError
from .oneline import safe_component
from .prepare import batch
from .prepare.jobrows import job_rows
from .records import JobRow
from .store.runindex import add_run, remove_run
from .store.runstore import FORMAT_VERSION, RunStore, StateStoreError, db_path

__all__ = ("ParslWorkflow",)


class ParslWorkflow(BaseWmsWorkflow):
    """A BPS workflow prepared to run with Parsl.

    Parameters
    ----------
    name : `str`
        Run name.
    config : `lsst.ctrl.bps.BpsConfig` or `None`
        BPS configuration (`None` when loaded back from a submit directory).
    submit_path, run_id : `str`
        Submit directory; run id printed by ``bps submit``.
    """

    def __init__(self, name: str, config: BpsConfig | None, submit_path: str, run_id: str):
        super().__init__(name, config)
        self.submit_path = submit_path
        self.run_id = run_id
        self.payload: batch.Payload | None = None
        """Jobs that `add_to_parent_workflow` adds to a running run."""

    @property
    def path(self) -> str:
        """The submit directory (the old plugin's name for it)."""
        return self.submit_path

    @property
    def bps_config(self) -> BpsConfig | None:
        """The BPS configuration (the old plugin's name for ``config``)."""
        return self.config

    @functools.cached_property
    def site(self) -> Any:
        """The run's `SiteConfig` (from the saved configuration when loaded)."""
        from .run.session import load_config
        from .site import SiteConfig

        site = SiteConfig.from_config(
            self.config if self.config is not None else load_config(self.submit_path)
        )
        site.submit_path = self.submit_path
        return site

    @classmethod
    def read(cls, out_prefix: str) -> ParslWorkflow:
        """Return the workflow prepared in a submit directory.

        Parameters
        ----------
        out_prefix : `str`
            Submit directory.

        Returns
        -------
        workflow : `ParslWorkflow`
            The workflow (without its configuration).
        """
        with contextlib.closing(RunStore(db_path(os.path.abspath(out_prefix)), readonly=True)) as store:
            meta = store.meta()
        return cls(meta["run_name"], None, meta["submit_path"], meta["run_id"])

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
        out_prefix, service_class : `str`
            Submit directory; name of the service class, stored for report/restart.

        Returns
        -------
        workflow : `ParslWorkflow`
            The prepared workflow.

        Raises
        ------
        ConfigurationError
            If a job cannot be rendered or checked, or the graph is not a DAG.
        """
        from .site import SiteConfig

        # Prepare allocates an object or two per job on top of the generic
        # workflow's own; collecting garbage meanwhile only rescans the heap.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            submit_path = os.path.abspath(out_prefix)
            site = SiteConfig.from_config(config)
            site.validate()
            rows, edges, node_id = job_rows(config, generic_workflow, site)
            control = batch.control_run(submit_path)
            if control is not None:
                # `bps batch-prepare` of a running control run: `add_to_parent_workflow` adds these jobs.
                workflow = cls(generic_workflow.name, config, submit_path, control["run_id"])
                jobs, envs = _drain(rows)
                workflow.payload = batch.Payload(jobs, list(edges), envs)
                return workflow
            run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
            meta = _run_meta(config, generic_workflow.name, run_id, submit_path, service_class)
            meta.update(batch.lazy_group_ids(generic_workflow, node_id))
            _create_run(config, meta, rows, edges)
            return cls(generic_workflow.name, config, submit_path, run_id)
        finally:
            if gc_was_enabled:
                gc.enable()

    def add_to_parent_workflow(self, config: BpsConfig) -> None:
        """Add this payload's jobs to the running run that prepared it (``bpsBatchSubmission``).

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration of the payload.
        """
        if self.payload is None:
            raise ConfigurationError(
                f"workflow {self.name}: not prepared by 'bps batch-prepare' into the submit directory of a "
                "run submitted with 'bpsBatchSubmission: true', so it has no run to join"
            )
        batch.join_payload(self.submit_path, self.payload)

    def write(self, out_prefix: str) -> None:
        """Nothing to do: `from_generic_workflow` already saved everything.

        Parameters
        ----------
        out_prefix : `str`
            Submit directory (unused).
        """


def _drain(rows: Generator[JobRow, None, list[str]]) -> tuple[list[JobRow], list[str]]:
    """All the rows of ``rows``, and what it returned (the environment scripts)."""
    jobs: list[JobRow] = []
    while True:
        try:
            jobs.append(next(rows))
        except StopIteration as stop:
            return jobs, stop.value


def _create_run(
    config: BpsConfig,
    meta: dict[str, Any],
    rows: Generator[JobRow, None, list[str]],
    edges: Iterable[tuple[int, int]],
) -> None:
    """Create a run so that a kill at any point leaves none or a complete one (doc/design.md)."""
    from .run.session import install_config, save_pending_config

    submit_path, run_id = meta["submit_path"], meta["run_id"]
    os.makedirs(submit_path, exist_ok=True)
    try:
        pending = save_pending_config(config, submit_path, run_id)
    except OSError as exc:
        raise StateStoreError(
            f"{submit_path}: cannot write the run's configuration ({exc.strerror or exc}): free space or fix "
            f"permissions in {submit_path}, then submit again (no job ran)"
        ) from None
    add_run(run_id, submit_path, meta["run_name"])
    try:
        RunStore.create(db_path(submit_path), meta, rows, edges).close()
    except BaseException:
        remove_run(run_id, submit_path)
        with contextlib.suppress(OSError):
            os.unlink(pending)
        raise
    install_config(submit_path, run_id)


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
