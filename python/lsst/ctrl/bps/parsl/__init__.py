"""Run Rubin BPS workflows with Parsl."""

from __future__ import annotations

from typing import Any

__all__ = ["ParslService", "ParslWorkflow", "SiteConfig", "ParslJob", "ConfigurationError"]

_LAZY = {
    "ParslService": ".service",
    "ParslWorkflow": ".workflow",
    "SiteConfig": ".site",
    "ParslJob": ".job",
    "ConfigurationError": ".configuration",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that workers importing the job runner stay light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
