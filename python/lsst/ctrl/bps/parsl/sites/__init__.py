"""Site configurations: one module per kind of site.

The old plugin's class paths work: ``sites.Local``, ``sites.Slurm``,
``sites.TripleSlurm``, ``sites.Torque``, ``sites.work_queue.LocalSrunWorkQueue``,
``sites.princeton.Tiger``, ``sites.slac.Sdf``, ``sites.nersc.CoriKnl`` and
``sites.ccin2p3.Ccin2p3``; ``sites.Generic`` is a site built from YAML alone.

Each class is imported from its module when first used, so that naming one
site does not import every scheduler's Parsl provider.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "Local": "local",
    "Ccin2p3": "ccin2p3",
    "CoriKnl": "nersc",
    "Generic": "generic",
    "LocalSrunWorkQueue": "work_queue",
    "Sdf": "slac",
    "Slurm": "slurm",
    "Tiger": "princeton",
    "Torque": "torque",
    "TripleSlurm": "slurm",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))
