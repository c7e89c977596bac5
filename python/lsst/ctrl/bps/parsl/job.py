"""The view of one job that sites see when they choose an executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ("ParslJob",)


@dataclass(slots=True)
class ParslJob:
    """One attempt of one job, as handed to `SiteConfig.select_executor`.

    The resource attributes carry the names of
    `lsst.ctrl.bps.GenericWorkflowJob`, so site code written against the
    generic job (``job.generic.request_memory``) keeps working.
    """

    name: str
    label: str
    request_cpus: int = 1
    request_memory: int | None = None
    """Memory asked for by this attempt, in MB (after memory scaling)."""
    request_disk: int | None = None
    request_walltime: str | None = None
    priority: str | None = None
    attempt: int = 1
    tags: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    """Whether this is the final job (it runs alone, after all others)."""

    @property
    def generic(self) -> ParslJob:
        """This object, for code written against the old ``job.generic``."""
        return self
