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

"""A per-user index of runs (a 0600 JSON file per run under
``$XDG_STATE_HOME/lsst-ctrl-bps-parsl/runs``, default ``~/.local/state/...``),
so ``bps report`` lists them and a run id resolves to its submit directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from pathlib import Path

from ..oneline import write_private
from .runstore import DB_NAME, RunStore, StateStoreError

__all__ = ("INDEX_SUBDIR", "add_run", "list_runs", "remove_run", "resolve_run")

_OLD_PLUGIN_FILE = "parsl_workflow.pickle"
"""What the old plugin (<= 30.2026.4300) wrote in a submit directory instead of a store."""
INDEX_SUBDIR = os.path.join(".local", "state", "lsst-ctrl-bps-parsl", "runs")
"""The index under a home directory, where ``XDG_STATE_HOME`` is not set."""


def _index_dir() -> Path:
    """Directory of the run index."""
    base = os.environ.get("XDG_STATE_HOME")
    return Path(base, "lsst-ctrl-bps-parsl", "runs") if base else Path(os.path.expanduser("~"), INDEX_SUBDIR)


def add_run(run_id: str, submit_path: str, run_name: str) -> None:
    """Record a new run in the index (best effort: a read-only home is not fatal).

    Parameters
    ----------
    run_id, submit_path, run_name : `str`
        The run's id, submit directory and name.
    """
    record = {"run_id": run_id, "submit_path": submit_path, "run_name": run_name}
    with contextlib.suppress(OSError):
        write_private(str(_index_dir() / f"{run_id}.json"), json.dumps(record))


def _record(path: Path) -> dict[str, str]:
    """An index record's run id and submit directory (``{}`` if it is unreadable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {key: record[key] for key in ("run_id", "submit_path") if isinstance(record.get(key), str)}


def remove_run(run_id: str, submit_path: str) -> None:
    """Forget a run of ``submit_path`` that was never created (best effort).

    Parameters
    ----------
    run_id, submit_path : `str`
        The run's id; its submit directory (the record is removed only if it names it).
    """
    record = _index_dir() / f"{run_id}.json"
    if _record(record).get("submit_path") == submit_path:
        with contextlib.suppress(OSError):
            os.unlink(record)


def list_runs(directory: Path | None = None) -> list[tuple[str, str]]:
    """Every indexed run whose directory still exists.

    Parameters
    ----------
    directory : `pathlib.Path`, optional
        Index directory to read; `None` means this user's.

    Returns
    -------
    runs : `list` [`tuple` [`str`, `str`]]
        (run id, submit directory) pairs, sorted.
    """
    try:
        records = [_record(entry) for entry in (directory or _index_dir()).glob("*.json")]
    except OSError:
        return []
    return sorted(
        (record["run_id"], record["submit_path"])
        for record in records
        if len(record) == 2 and os.path.exists(os.path.join(record["submit_path"], DB_NAME))
    )


def resolve_run(wms_id: str) -> str:
    """Submit directory of a run given by its directory or its run id.

    Parameters
    ----------
    wms_id : `str`
        A submit directory or a run id, as given to ``bps``.

    Returns
    -------
    submit_path : `str`
        Absolute submit directory of the run.

    Raises
    ------
    StateStoreError
        If neither names a run.
    """
    candidate = os.path.abspath(os.path.expanduser(str(wms_id)))
    if os.path.isdir(candidate):
        if os.path.exists(os.path.join(candidate, DB_NAME)):
            return candidate
        old = _old_plugin_run(candidate)
        if old is not None:
            raise StateStoreError(old)
        raise StateStoreError(
            f"{candidate}: not a submit directory of this plugin (no {DB_NAME}): pass the directory that "
            "'bps submit' printed as 'Submit dir'"
        )
    record = _index_dir() / f"{os.path.basename(str(wms_id))}.json"
    if "/" in str(wms_id) or not record.exists():
        raise StateStoreError(
            f"'{wms_id}' is neither a submit directory nor a known run id: pass the submit directory or the "
            "'Run Id' that 'bps submit' printed"
        )
    submit_path = _record(record).get("submit_path")
    if submit_path is None or not os.path.exists(os.path.join(submit_path, DB_NAME)):
        raise StateStoreError(f"run '{wms_id}': its submit directory {submit_path} no longer exists")
    # Refuse a record that points to another run than the one it is named after.
    store = RunStore(os.path.join(submit_path, DB_NAME), readonly=True)
    try:
        stored = store.meta().get("run_id")
    finally:
        store.close()
    if stored != str(wms_id):
        raise StateStoreError(
            f"run '{wms_id}': its index record {record} points to {submit_path}, which holds run "
            f"'{stored}': remove the record, or pass the submit directory"
        )
    return submit_path


def _old_plugin_run(submit_path: str) -> str | None:
    """One line on how to resume a run of the old plugin in ``submit_path`` (only
    it can: doc/operations.md, "Runs started with the old plugin"), `None` if
    it is not one.
    """
    if not os.path.isfile(os.path.join(submit_path, _OLD_PLUGIN_FILE)):
        return None
    where = _submitted_from(submit_path)
    cd = f"cd {shlex.quote(where)}" if where else "cd to the directory 'bps submit' ran in"
    return (
        f"{submit_path} is a run of the old ctrl_bps_parsl plugin ({_OLD_PLUGIN_FILE}, no {DB_NAME}), which "
        "kept no job states this plugin can read; to resume it, in a separate environment with the old "
        "plugin (pip install 'lsst-ctrl-bps-parsl<=30.2026.4300' and the parsl it ran with), "
        f"{cd} (its Parsl checkpoints are in runinfo/ there, unless its site set run_dir), then run: "
        f"bps restart --id {shlex.quote(submit_path)}; its job logs are in {os.path.join(submit_path, 'logs')}"
    )


def _submitted_from(submit_path: str) -> str | None:
    """``PWD`` of the ``bps submit`` that made ``submit_path`` (its ``*.env.info.yaml``)."""
    import yaml

    try:
        names = sorted(n for n in os.listdir(submit_path) if n.endswith(".env.info.yaml"))
    except OSError:
        return None
    for name in names:
        path = os.path.join(submit_path, name)
        try:
            if os.path.getsize(path) > 16 * 1024 * 1024:
                continue
            with open(path, encoding="utf-8") as stream:
                env = yaml.safe_load(stream)
        except (OSError, ValueError, yaml.YAMLError):
            continue
        pwd = env.get("PWD") if isinstance(env, dict) else None
        if isinstance(pwd, str) and os.path.isabs(pwd) and pwd.isprintable():
            return pwd
    return None
