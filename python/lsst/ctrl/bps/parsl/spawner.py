"""Old home of the job-process functions and of the local pool's spawner.

Kept for modules that still import from here; new code imports
`lsst_ctrl_bps_parsl_worker.processes` (starting, finding and stopping job
processes) and `lsst.ctrl.bps.parsl.localpool.spawner` (the spawner and its
journal).
"""

from lsst_ctrl_bps_parsl_worker.processes import (
    ATTEMPT_ENV,
    EXIT_MARKER,
    kill_attempts,
    logged_exit_status,
)

from .localpool.spawner import JOURNAL_PREFIX, journal_name, read_journal

__all__ = (
    "ATTEMPT_ENV",
    "EXIT_MARKER",
    "JOURNAL_PREFIX",
    "journal_name",
    "kill_attempts",
    "logged_exit_status",
    "read_journal",
)
