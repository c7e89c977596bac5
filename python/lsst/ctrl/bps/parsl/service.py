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

"""`ParslService`: the BPS plugin entry point."""

from __future__ import annotations

import os
import sys
from typing import Any

from lsst.ctrl.bps import BaseWmsService, BpsConfig, GenericWorkflow, WmsRunReport, WmsStates
from lsst.resources import ResourcePath

from .configuration import ConfigurationError, RunSettings
from .control.checks import check_executables, check_submit_path
from .oneline import one_line, open_private, safe_component
from .run.session import RunFailedError
from .site import SiteConfig
from .store.runindex import resolve_run
from .store.runstore import StateStoreError
from .workflow import ParslWorkflow

__all__ = ("ParslService", "RunFailedError")


def _fail_bps_command(message: str | None, exit_status: int = 1, now: bool = False) -> bool:
    """Under ``bps``, print ``message`` (if any) and exit with ``exit_status`` at
    the end (``now``: at once); whether it did.
    """
    try:
        import click
    except ImportError:
        return False
    context = click.get_current_context(silent=True)
    if context is None or not type(context.find_root().command).__module__.startswith("lsst.ctrl.bps."):
        return False
    if message is not None:
        print(message, file=sys.stderr, flush=True)
    if now:
        raise click.exceptions.Exit(exit_status) from None

    def exit_with_failure() -> None:
        raise click.exceptions.Exit(exit_status)

    context.call_on_close(exit_with_failure)
    return True


class ParslService(BaseWmsService):
    """BPS workflow management service that runs workflows with Parsl (doc/operations.md).

    Parameters
    ----------
    config : `lsst.ctrl.bps.BpsConfig`
        BPS configuration.
    """

    @property
    def defaults_uri(self) -> ResourcePath:
        """Plugin defaults: a ``local`` site that uses this machine's cores."""
        return ResourcePath("resource://lsst.ctrl.bps.parsl/etc/bps_parsl_defaults.yaml")

    @property
    def defaults(self):
        """The plugin defaults as a `lsst.daf.butler.Config`."""
        from lsst.daf.butler import Config

        return Config(self.defaults_uri)

    def run_submission_checks(self) -> None:
        """Check every plugin key and build the site's executors before the quantum graph is built.

        Raises
        ------
        ConfigurationError
            One line naming the key and the fix.
        """
        from .prepare.jobattrs import concurrency_limits

        try:
            site = SiteConfig.from_config(self.config)
            try:
                site.validate()
            except ConfigurationError:
                raise
            except Exception as exc:
                raise ConfigurationError(
                    f"'{site.where}' ({type(site).__name__}) cannot build its executors: {one_line(exc)}"
                ) from None
            RunSettings.read(self.config)
            check_submit_path(self.config)
            concurrency_limits(self.config, site.compute_site)
        except ConfigurationError as exc:
            _fail_bps_command(str(exc), now=True)
            raise

    def prepare(
        self, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str | None = None
    ) -> ParslWorkflow:
        """Flatten, render and save the workflow in the submit directory.

        Parameters
        ----------
        config : `lsst.ctrl.bps.BpsConfig`
            BPS configuration.
        generic_workflow : `lsst.ctrl.bps.GenericWorkflow`
            Workflow to run.
        out_prefix : `str`
            Submit directory.

        Returns
        -------
        workflow : `ParslWorkflow`
            The prepared workflow; its state is in ``out_prefix``.
        """
        try:
            if out_prefix is None:
                raise ConfigurationError("prepare needs the submit directory (out_prefix)")
            check_executables(config, generic_workflow)
            try:
                os.makedirs(out_prefix, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"submit directory {os.path.abspath(out_prefix)}: cannot create it ({exc.strerror}): "
                    "set submitPath to a writable directory"
                ) from None
            workflow = ParslWorkflow.from_generic_workflow(
                config, generic_workflow, out_prefix, f"{type(self).__module__}.{type(self).__name__}"
            )
            # `bps restart` reads this file; `bps submit` writes it (umask's mode:
            # tightened here), other callers of prepare may not.
            try:
                os.chmod(_save_config(config, workflow), 0o600)
            except OSError as exc:
                raise StateStoreError(
                    f"{workflow.submit_path}: cannot write the run's configuration ({exc.strerror or exc}): free "
                    "space or fix its permissions, then submit again (no job ran)"
                ) from None
            return workflow
        except (ConfigurationError, StateStoreError) as exc:
            _fail_bps_command(one_line(exc), now=True)
            raise

    def submit(self, workflow: ParslWorkflow, **kwargs: Any) -> ParslWorkflow:
        """Run the workflow to its end (in the background with ``parslDetach``).

        Parameters
        ----------
        workflow : `ParslWorkflow`
            The workflow `prepare` returned.
        **kwargs : `~typing.Any`
            BPS's other arguments; ``config``, if given, is the run's configuration.

        Returns
        -------
        workflow : `ParslWorkflow`
            ``workflow``.

        Raises
        ------
        RunFailedError
            If a job failed or was pruned, or the run was cancelled.
        """
        from .run.session import DriverBusyError, run_driver, start_detached

        if workflow.payload is not None:
            raise ConfigurationError(
                f"{workflow.submit_path}: already holds run {workflow.run_id}: 'bps restart --id "
                f"{workflow.submit_path}' resumes it; submit with another submitPath"
            )
        config = kwargs.get("config") or workflow.config or self.config
        if RunSettings.read(config).detach:
            pid = start_detached(workflow.submit_path, "submit")
            print(
                f"bps-parsl: driver running in the background (pid {pid}); log: "
                f"{workflow.submit_path}/parsl/driver.log"
            )
            return workflow
        print(f"bps-parsl: run {workflow.run_id} in {workflow.submit_path}", flush=True)
        try:
            run_driver(workflow.submit_path, config, kind="submit")
        except (RunFailedError, StateStoreError, DriverBusyError) as exc:
            if not _fail_bps_command(str(exc), getattr(exc, "exit_status", 1)):
                raise
        return workflow

    def restart(self, wms_workflow_id: str) -> tuple[str | None, str | None, str]:
        """Resume a run from its state: succeeded jobs are not run again.

        Parameters
        ----------
        wms_workflow_id : `str`
            Submit directory or run id.

        Returns
        -------
        wms_id, run_name, message : `tuple`
            The run id and name (`None` if it could not restart) and a message.
        """
        from .run.session import (
            DriverBusyError,
            checked_run,
            driver_alive,
            load_config,
            run_driver,
            start_detached,
        )

        try:
            submit_path = resolve_run(wms_workflow_id)
            run_id = checked_run(submit_path)
            workflow = ParslWorkflow.read(submit_path)
            alive = driver_alive(submit_path, run_id)
            if alive is not None:
                raise DriverBusyError(
                    f"{submit_path}: its driver ({alive.describe()}) is still running: wait for it or "
                    "'bps cancel' it first"
                )
            config = load_config(submit_path)
            # ctrl_bps reads this copy after a restart; a submit killed while it created the run may not
            # have written it.
            _save_config(config, workflow)
            if RunSettings.read(config).detach:
                pid = start_detached(submit_path, "restart")
                return workflow.run_id, workflow.name, f"restarted in the background (pid {pid})"
            run_driver(submit_path, config, kind="restart")
        except RunFailedError as exc:
            _fail_bps_command(str(exc), exc.exit_status)
            return workflow.run_id, workflow.name, str(exc)
        except (StateStoreError, DriverBusyError, OSError, RuntimeError, ConfigurationError) as exc:
            # DriverBusyError also when another restart took the lock since the check above.
            # A refusal: ctrl_bps prints "Restart failed: <message>"; the command exits 1.
            _fail_bps_command(None)
            return None, None, one_line(exc)
        return workflow.run_id, workflow.name, "restarted run completed"

    def report(
        self,
        wms_workflow_id: str | None = None,
        user: str | None = None,
        hist: float = 0,
        pass_thru: str | None = None,
        is_global: bool = False,
        return_exit_codes: bool = False,
    ) -> tuple[list[WmsRunReport], str]:
        """Report one run in detail, or list runs (`report.reports.listed_reports`).

        Parameters
        ----------
        wms_workflow_id : `str`, optional
            Submit directory or run id; without it, list runs of ``hist`` days.
        user : `str`, optional
            Only runs of this operator (another user's read-only, when readable).
        hist : `float`
            Days of history for the list.
        pass_thru, is_global
            Unused.
        return_exit_codes : `bool`
            Include non-zero exit codes per label.

        Returns
        -------
        reports, message : `tuple`
            Run reports and a message (empty if all went well).
        """
        from .report.reports import listed_reports, readable_run, run_report

        if not wms_workflow_id:
            return listed_reports(user, hist, return_exit_codes)
        try:
            submit_path = resolve_run(wms_workflow_id)
            readable_run(submit_path)
            return [run_report(submit_path, True, return_exit_codes)], ""
        except (StateStoreError, OSError) as exc:
            _fail_bps_command(None)  # ctrl_bps prints the message
            return [], str(exc)

    def get_status(
        self, wms_workflow_id: str, hist: float = 1, is_global: bool = False
    ) -> tuple[WmsStates, str]:
        from .report.reports import run_status

        return run_status(wms_workflow_id)

    def list_submitted_jobs(
        self,
        wms_id: str | None = None,
        user: str | None = None,
        require_bps: bool = True,
        pass_thru: str | None = None,
        is_global: bool = False,
    ) -> list[str]:
        from .report.reports import cancellable_runs

        return cancellable_runs(wms_id, user)

    def cancel(self, wms_id: str, pass_thru: str | None = None) -> tuple[bool, str]:
        from .run.session import DriverBusyError, cancel_run

        try:
            return cancel_run(resolve_run(wms_id))
        except (StateStoreError, DriverBusyError, OSError) as exc:
            _fail_bps_command(None)  # ctrl_bps prints the message
            return False, str(exc)

    def ping(self, pass_thru: str | None = None) -> tuple[int, str]:
        from .control.checks import ping_site

        return ping_site(pass_thru, self.config)


def _save_config(config: BpsConfig, workflow: ParslWorkflow) -> str:
    """Write ``config`` as YAML (mode 0600) where ctrl_bps reads the run's copy, unless it is there; the path."""
    path = os.path.join(workflow.submit_path, f"{safe_component(workflow.name)}_config.yaml")
    if not os.path.exists(path):
        with os.fdopen(open_private(path), "w") as stream:
            config.dump(stream)
    return path
