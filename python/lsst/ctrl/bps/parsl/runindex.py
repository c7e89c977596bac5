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

"""A small per-user index of runs, so that ``bps report`` can list them and
ids printed by ``bps submit`` can be resolved to submit directories.

One JSON file per run under ``$XDG_STATE_HOME/lsst-ctrl-bps-parsl/runs``
(default ``~/.local/state/...``), readable by the user only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import write_private
from .state import DB_NAME, StateStoreError

__all__ = ("INDEX_SUBDIR", "add_run", "index_dir", "list_runs", "remove_run", "resolve_run")

INDEX_SUBDIR = os.path.join(".local", "state", "lsst-ctrl-bps-parsl", "runs")
"""The index under a home directory, where ``XDG_STATE_HOME`` is not set."""


def index_dir() -> Path:
    """Directory of the run index."""
    base = os.environ.get("XDG_STATE_HOME")
    if not base:
        return Path(os.path.expanduser("~")) / INDEX_SUBDIR
    return Path(base) / "lsst-ctrl-bps-parsl" / "runs"


def add_run(run_id: str, submit_path: str, run_name: str) -> None:
    """Record a new run in the index (best effort: a read-only home is not fatal)."""
    record = {"run_id": run_id, "submit_path": submit_path, "run_name": run_name}
    try:
        write_private(str(index_dir() / f"{run_id}.json"), json.dumps(record))
    except OSError:
        pass


def remove_run(run_id: str, submit_path: str) -> None:
    """Forget a run of ``submit_path`` that was never created (best effort)."""
    record = index_dir() / f"{run_id}.json"
    try:
        if json.loads(record.read_text()).get("submit_path") == submit_path:
            os.unlink(record)
    except (OSError, ValueError, AttributeError):
        pass


def list_runs(directory: Path | None = None) -> list[tuple[str, str]]:
    """(run id, submit directory) of every indexed run whose directory still
    exists, in this user's index or in ``directory``.
    """
    runs: list[tuple[str, str]] = []
    try:
        entries = list((directory or index_dir()).glob("*.json"))
    except OSError:
        return runs
    for entry in entries:
        try:
            record = json.loads(entry.read_text())
            run_id, submit_path = record["run_id"], record["submit_path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if os.path.exists(os.path.join(submit_path, DB_NAME)):
            runs.append((run_id, submit_path))
    return sorted(runs)


def resolve_run(wms_id: str) -> str:
    """Submit directory of a run given by its directory or its run id.

    Raises
    ------
    StateStoreError
        If neither names a run.
    """
    candidate = os.path.abspath(os.path.expanduser(str(wms_id)))
    if os.path.isdir(candidate):
        if os.path.exists(os.path.join(candidate, DB_NAME)):
            return candidate
        raise StateStoreError(
            f"{candidate}: not a submit directory of this plugin (no {DB_NAME}): pass the directory that "
            "'bps submit' printed as 'Submit dir'"
        )
    record = index_dir() / f"{os.path.basename(str(wms_id))}.json"
    if "/" not in str(wms_id) and record.exists():
        try:
            submit_path = json.loads(record.read_text())["submit_path"]
        except (OSError, ValueError, KeyError, TypeError):
            submit_path = None
        if isinstance(submit_path, str) and os.path.exists(os.path.join(submit_path, DB_NAME)):
            _check_run_id(submit_path, str(wms_id), record)
            return submit_path
        raise StateStoreError(f"run '{wms_id}': its submit directory {submit_path} no longer exists")
    raise StateStoreError(
        f"'{wms_id}' is neither a submit directory nor a known run id: pass the submit directory or the "
        "'Run Id' that 'bps submit' printed"
    )


def _check_run_id(submit_path: str, run_id: str, record: Path) -> None:
    """The index record must point to the run it is named after: a record
    edited to point elsewhere is refused.
    """
    from .state import RunStore

    store = RunStore(os.path.join(submit_path, DB_NAME), readonly=True)
    try:
        stored = store.meta().get("run_id")
    finally:
        store.close()
    if stored != run_id:
        raise StateStoreError(
            f"run '{run_id}': its index record {record} points to {submit_path}, which holds run "
            f"'{stored}': remove the record, or pass the submit directory"
        )
