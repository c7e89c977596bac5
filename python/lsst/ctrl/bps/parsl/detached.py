"""Entry point of a background driver: ``python -m lsst.ctrl.bps.parsl.detached <submit dir> <kind>``."""

from __future__ import annotations

import sys

from .control import DriverBusyError, RunFailedError, run_driver
from .state import StateStoreError


def main(argv: list[str]) -> int:
    """Run the driver of a submit directory; exit non-zero (after one line
    saying why) if jobs failed or the run could not go on.
    """
    submit_path, kind = argv[1], argv[2]
    try:
        run_driver(submit_path, None, kind=kind)
    except (RunFailedError, StateStoreError, DriverBusyError) as exc:
        print(exc, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
