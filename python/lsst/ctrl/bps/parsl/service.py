"""`ParslService`: the BPS plugin entry point."""

from __future__ import annotations

import logging
import os

from lsst.ctrl.bps import BaseWmsService, BpsConfig, GenericWorkflow
from lsst.resources import ResourcePath

from .configuration import ConfigurationError, get_bps_config_value
from .site import SiteConfig
from .workflow import ParslWorkflow

__all__ = ("ParslService", "RunFailedError")

_LOG = logging.getLogger(__name__)


class RunFailedError(SystemExit):
    """Some jobs of the run did not succeed.

    A `SystemExit`, so ``bps submit`` prints one line and exits non-zero.
    """


class ParslService(BaseWmsService):
    """BPS workflow management service that runs workflows with Parsl.

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
        """Check the site configuration before the submit directory exists.

        Raises
        ------
        ConfigurationError
            With a one-line message naming the key and the fix.
        """
        site = SiteConfig.from_config(self.config)
        site.validate()
        _progress_interval(self.config)

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
        if out_prefix is None:
            raise ConfigurationError("prepare needs the submit directory (out_prefix)")
        workflow = ParslWorkflow.from_generic_workflow(
            config, generic_workflow, out_prefix, f"{type(self).__module__}.{type(self).__name__}"
        )
        _save_config(config, workflow.submit_path)
        return workflow

    def submit(self, workflow: ParslWorkflow, **kwargs) -> ParslWorkflow:
        """Run the workflow until every job ended.

        Raises
        ------
        RunFailedError
            If any job failed, was pruned or the run was cancelled; the
            final job has run by then (unless cancelled).
        """
        from .control import run_driver

        config = kwargs.get("config") or workflow.config or self.config
        run_driver(workflow.submit_path, config, kind="submit")
        return workflow


def _progress_interval(config: BpsConfig) -> float:
    value = get_bps_config_value(config, "parslProgressInterval", float, 30.0)
    if value < 0:
        raise ConfigurationError(f"'parslProgressInterval' is {value}: use 0 (off) or a number of seconds")
    return value


def _save_config(config: BpsConfig, submit_path: str) -> None:
    path = os.path.join(submit_path, "parsl", "bps_config.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as stream:
        config.dump(stream)
