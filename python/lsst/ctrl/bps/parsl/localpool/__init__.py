"""The local site's Parsl executor: `LocalPoolExecutor` and its spawner.

`LocalPoolExecutor` (module `executor`) is a Parsl executor that runs every
task as a process started by a small spawner process (module `spawner`,
whose docstring documents the wire protocol), within a core and memory
budget. Importing this package does not import Parsl: the spawner and the
names below are loaded when first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ("JobPoolExecutor", "LocalPoolExecutor", "PoolLostError", "TaskProcessError")


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import executor

        return getattr(executor, name)
    raise AttributeError(name)
