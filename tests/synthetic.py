"""Build BPS configurations and synthetic generic workflows for tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lsst.ctrl.bps import BpsConfig, GenericWorkflow, GenericWorkflowExec, GenericWorkflowJob
from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER
from lsst.ctrl.bps.parsl.store.runstore import RunStore, db_path

SERVICE = "lsst.ctrl.bps.parsl.ParslService"
BASH = GenericWorkflowExec("bash", "/bin/bash", False)


def make_config(extra: dict[str, Any] | None = None, **kwargs: Any) -> BpsConfig:
    """A BpsConfig as ``bps submit`` builds it, with plugin defaults."""
    values: dict[str, Any] = {"wmsServiceClass": SERVICE, "parslProgressInterval": 0, "operator": "tester"}
    values.update(extra or {})
    values.update(kwargs)
    return BpsConfig(
        values, search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS, wms_service_class_fqn=SERVICE
    )


def job(name: str, script: str = "true", label: str | None = None, **kwargs: Any) -> GenericWorkflowJob:
    """A job that runs ``bash -c script``."""
    kwargs.setdefault("number_of_retries", 0)
    return GenericWorkflowJob(
        name,
        label or name.rstrip("0123456789_") or name,
        executable=BASH,
        arguments="-c {script}",
        cmdvals={"script": _quote(script)},
        **kwargs,
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def workflow(jobs: Iterable[GenericWorkflowJob], edges: Iterable[tuple[str, str]] = (), name: str = "wf"):
    """A GenericWorkflow of the given jobs and edges."""
    gw = GenericWorkflow(name)
    for j in jobs:
        gw.add_job(j)
    for parent, child in edges:
        gw.add_job_relationships(parent, child)
    return gw


def run(gw: GenericWorkflow, submit: Path, config: BpsConfig | None = None, expect_fail: bool = False):
    """Prepare and submit; return {job name: status row} from the store."""
    from lsst.ctrl.bps.parsl import ParslService
    from lsst.ctrl.bps.parsl.service import RunFailedError

    config = config or make_config()
    service = ParslService(config)
    wf = service.prepare(config, gw, str(submit))
    failed = False
    try:
        service.submit(wf)
    except RunFailedError:
        failed = True
    assert failed == expect_fail, f"run failed={failed}, expected {expect_fail}"
    return statuses(submit)


def statuses(submit: Path) -> dict[str, tuple]:
    """{job name: (state, attempt, exit_code, signal, start, end, host)}."""
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        names = {row.id: row.name for row in store.jobs()}
        return {names[r[0]]: r[1:] for r in store.statuses()}
    finally:
        store.close()


def attempts(submit: Path, name: str) -> list[tuple]:
    """Attempt rows of one job: (job, attempt, session, state, exit, signal, memory, executor, ...)."""
    store = RunStore(db_path(str(submit)), readonly=True)
    try:
        ids = {row.name: row.id for row in store.jobs()}
        return store.attempts(ids[name])
    finally:
        store.close()
