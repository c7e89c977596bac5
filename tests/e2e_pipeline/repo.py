"""Butler repo, BPS submit YAML and result checks for the e2e test pipeline.

Typical use in a test::

    from e2e_pipeline import repo as e2e

    repo = e2e.make_repo(tmp_path)                     # 5 detectors -> 11 quanta
    submit = e2e.write_submit_yaml(tmp_path, repo, e2e.PIPELINE, output_run_suffix="t1")
    env = e2e.env_for_bps(e2e.TESTS_DIR, workdir=tmp_path)
    subprocess.run(["bps", "submit", str(submit)], cwd=tmp_path, env=env, check=True)
    assert e2e.check_outputs(repo, e2e.output_names("t1")[0]) == e2e.expected_outputs()
    assert set(e2e.count_runs(tmp_path / e2e.RUN_LOG_NAME).values()) == {1}

Only standard library imports at module level: ``lsst.daf.butler`` is imported
inside the functions that need it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_TYPES",
    "INPUT_RUN",
    "INSTRUMENT",
    "LABELS",
    "N_DETECTORS",
    "PIPELINE",
    "PIPELINE_FAIL",
    "RUN_LOG_ENV",
    "RUN_LOG_NAME",
    "TESTS_DIR",
    "VENV_PREFIX",
    "check_outputs",
    "count_runs",
    "env_for_bps",
    "expected_outputs",
    "expected_quanta",
    "make_repo",
    "output_names",
    "write_submit_yaml",
]

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent  # goes on PYTHONPATH: tasks import as e2e_pipeline.tasks
PIPELINE = HERE / "pipeline.yaml"
PIPELINE_FAIL = HERE / "pipeline_fail.yaml"  # middle fails for detector FAIL_DETECTOR
FAIL_DETECTOR = 2

# Prefix holding bin/pipetask and bin/butler (the venv running these tests).
VENV_PREFIX = Path(sys.prefix)

INSTRUMENT = "E2ECam"
N_DETECTORS = 5
INPUT_RUN = "e2e/raw"
INPUT_DATASET_TYPE = "e2e_raw"
STORAGE_CLASS = "StructuredDataDict"
LABELS = ("source", "middle", "gather")
# output dataset type -> producing label
DATASET_TYPES = {"e2e_a": "source", "e2e_b": "middle", "e2e_sum": "gather"}

RUN_LOG_ENV = "E2E_RUN_LOG"
RUN_LOG_NAME = "e2e_runs.log"


# ---------------------------------------------------------------------------
# repo
# ---------------------------------------------------------------------------


def make_repo(root: Path, n_detectors: int = N_DETECTORS) -> Path:
    """Create a butler repo at ``root/repo`` with ``n_detectors`` inputs.

    Registers instrument ``E2ECam`` and detectors ``0..n_detectors-1`` and
    puts one ``e2e_raw`` dataset (``{"detector": d, "value": d}``) per
    detector into the RUN collection ``e2e/raw``.  Returns the repo path
    (usable as ``butlerConfig``).  The pipeline then has
    ``2 * n_detectors + 1`` quanta.
    """
    from lsst.daf.butler import Butler, DatasetType

    repo = Path(root).resolve() / "repo"
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True, run=INPUT_RUN)
    try:
        butler.registry.insertDimensionData(
            "instrument",
            {
                "name": INSTRUMENT,
                "visit_max": 1,
                "visit_system": 0,
                "exposure_max": 1,
                "detector_max": n_detectors,
                "class_name": "",
            },
        )
        butler.registry.insertDimensionData(
            "detector",
            *[
                {
                    "instrument": INSTRUMENT,
                    "id": d,
                    "full_name": f"D{d:02d}",
                    "name_in_raft": f"D{d:02d}",
                    "raft": "R0",
                    "purpose": "SCIENCE",
                }
                for d in range(n_detectors)
            ],
        )
        dataset_type = DatasetType(
            INPUT_DATASET_TYPE,
            ("instrument", "detector"),
            STORAGE_CLASS,
            universe=butler.dimensions,
        )
        butler.registry.registerDatasetType(dataset_type)
        for d in range(n_detectors):
            butler.put({"detector": d, "value": d}, dataset_type, instrument=INSTRUMENT, detector=d)
    finally:
        butler.close()
    return repo


# ---------------------------------------------------------------------------
# BPS submit YAML and environment
# ---------------------------------------------------------------------------


def output_names(output_run_suffix: str) -> tuple[str, str]:
    """Return ``(output CHAINED collection, output RUN collection)``."""
    output = f"e2e/out_{output_run_suffix}"
    return output, f"{output}/run"


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _job_environment(workdir: Path) -> dict[str, str]:
    """Variables every pipetask/butler job needs (also set in env_for_bps)."""
    return {
        "CTRL_MPEXEC_DIR": str(VENV_PREFIX),
        "DAF_BUTLER_DIR": str(VENV_PREFIX),
        "PYTHONPATH": _pythonpath(),
        RUN_LOG_ENV: str(Path(workdir).resolve() / RUN_LOG_NAME),
    }


def _pythonpath(existing: str | None = None) -> str:
    parts = [str(TESTS_DIR)]
    if existing:
        parts += [p for p in existing.split(os.pathsep) if p and p != str(TESTS_DIR)]
    return os.pathsep.join(parts)


def write_submit_yaml(
    workdir: Path,
    repo: Path,
    pipeline: Path,
    *,
    output_run_suffix: str,
    extra: dict | None = None,
) -> Path:
    """Write ``workdir/submit_<suffix>.yaml`` for ``bps submit`` and return its path.

    Everything is an absolute path (no ``${PWD}``): ``submitPath`` is
    ``workdir/submit/<outputRun>``.  The output collections are
    ``output_names(output_run_suffix)``.  ``extra`` is deep-merged last
    (e.g. ``{"wmsServiceClass": ..., "site": {...}, "numberOfRetries": 0}``).

    The ``environment`` section puts CTRL_MPEXEC_DIR, DAF_BUTLER_DIR,
    PYTHONPATH and E2E_RUN_LOG (= ``workdir/e2e_runs.log``) into every
    GenericWorkflowJob's ``environment``; the submitting process needs them
    too (``env_for_bps``), because ``bps`` expands ``${CTRL_MPEXEC_DIR}`` in
    the qgraph command from its own environment.
    """
    import yaml

    workdir = Path(workdir).resolve()
    output, output_run = output_names(output_run_suffix)
    config: dict[str, Any] = {
        "pipelineYaml": str(Path(pipeline).resolve()),
        "wmsServiceClass": "lsst.ctrl.bps.parsl.ParslService",
        "computeSite": "local",
        "project": "ctrl_bps_parsl",
        "campaign": "e2e",
        "operator": "e2e",
        "payload": {
            "payloadName": "e2e",
            "butlerConfig": str(Path(repo).resolve()),
            "inCollection": INPUT_RUN,
            "dataQuery": f"instrument = '{INSTRUMENT}'",
            "output": output,
            "outputRun": output_run,
        },
        "submitPath": str(workdir / "submit" / "{outputRun}"),
        "idLinkPath": str(workdir / "bps_links"),
        "saveGenericWorkflow": True,
        "environment": _job_environment(workdir),
        # Old ctrl_bps_parsl site convention; the new plugin may ignore or
        # replace it (override through ``extra``).
        "site": {
            "local": {
                "class": "lsst.ctrl.bps.parsl.sites.Local",
                "cores": 2,
            }
        },
        # Keep the aggregate-graph final job modest (default -j 16).
        "finalJob": {"requestCpus": 1},
    }
    if extra:
        _deep_update(config, extra)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"submit_{output_run_suffix}.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def env_for_bps(tests_dir: Path = TESTS_DIR, workdir: Path | None = None) -> dict[str, str]:
    """Environment for a subprocess running ``bps`` (or ``pipetask``).

    Copy of ``os.environ`` plus: venv ``bin/`` first on PATH (pipetask,
    butler, and Parsl's interchange.py / process_worker_pool.py),
    CTRL_MPEXEC_DIR and DAF_BUTLER_DIR = venv prefix, ``tests_dir`` first on
    PYTHONPATH, and, if ``workdir`` is given, PWD = workdir (the bps defaults
    expand ``${PWD}``) and E2E_RUN_LOG = ``workdir/e2e_runs.log``.
    """
    env = dict(os.environ)
    bindir = str(VENV_PREFIX / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path])
    env["CTRL_MPEXEC_DIR"] = str(VENV_PREFIX)
    env["DAF_BUTLER_DIR"] = str(VENV_PREFIX)
    parts = [str(Path(tests_dir).resolve())]
    parts += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in parts]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if workdir is not None:
        workdir = Path(workdir).resolve()
        env["PWD"] = str(workdir)
        env[RUN_LOG_ENV] = str(workdir / RUN_LOG_NAME)
    env.pop("BPS_WMS_SERVICE_CLASS", None)
    return env


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def expected_quanta(n_detectors: int = N_DETECTORS) -> dict[str, int]:
    """Quanta per label."""
    return {"source": n_detectors, "middle": n_detectors, "gather": 1}


def expected_outputs(n_detectors: int = N_DETECTORS, failed: tuple[int, ...] = ()) -> dict[str, int]:
    """Output datasets per dataset type after a run.

    ``failed``: detector ids whose ``middle`` quantum failed (then ``gather``
    does not run).  Metadata/log datasets are not included.
    """
    n_ok = n_detectors - len(failed)
    return {"e2e_a": n_detectors, "e2e_b": n_ok, "e2e_sum": 0 if failed else 1}


def check_outputs(repo: Path, collection: str, dataset_types: Any = None) -> dict[str, int]:
    """Count datasets per dataset type in ``collection`` (RUN or CHAINED).

    By default counts ``e2e_a``, ``e2e_b``, ``e2e_sum`` (types never
    registered or with no datasets count 0).  Pass ``dataset_types`` (names)
    to count others, e.g. ``["middle_metadata", "middle_log"]``.  With QBB
    execution (bps), outputs reach the registry only in the final
    ``butler aggregate-graph`` job.  Only datasets from runs inside
    ``collection`` that are not the input run are counted.
    """
    from lsst.daf.butler import Butler, MissingCollectionError, MissingDatasetTypeError

    names = list(dataset_types) if dataset_types is not None else list(DATASET_TYPES)
    counts: dict[str, int] = {}
    butler = Butler.from_config(str(repo))
    try:
        try:
            butler.registry.queryCollections(collection)
        except MissingCollectionError:
            return {name: 0 for name in names}
        for name in names:
            try:
                refs = butler.query_datasets(name, collections=collection, find_first=False, explain=False)
            except MissingDatasetTypeError:
                refs = []
            counts[name] = sum(1 for ref in refs if ref.run != INPUT_RUN)
    finally:
        butler.close()
    return counts


def read_sum(repo: Path, collection: str) -> dict | None:
    """The ``e2e_sum`` dataset content, or None."""
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(repo), collections=[collection])
    try:
        refs = butler.query_datasets("e2e_sum", explain=False)
        return butler.get(refs[0]) if refs else None
    finally:
        butler.close()


def read_run_log(path: Path) -> list[tuple[str, str, int, float, str]]:
    """Parse the run log: ``(label, data id key, pid, time, status)`` per line."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:
            rows.append((parts[0], parts[1], int(parts[2]), float(parts[3]), parts[4]))
    return rows


def count_runs(path: Path, status: str = "start") -> Counter:
    """How many times each quantum ran: ``Counter({(label, key): n})``.

    ``key`` is ``E2ECam.<detector>`` for source/middle, ``E2ECam`` for
    gather.  ``status="ok"`` counts successful executions only.
    """
    return Counter((label, key) for label, key, _, _, st in read_run_log(path) if st == status)


def all_quanta_keys(n_detectors: int = N_DETECTORS) -> set[tuple[str, str]]:
    """Every ``(label, key)`` of the full graph, as used by count_runs."""
    keys = {(label, f"{INSTRUMENT}.{d}") for label in ("source", "middle") for d in range(n_detectors)}
    keys.add(("gather", INSTRUMENT))
    return keys
