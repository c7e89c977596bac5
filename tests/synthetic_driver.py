"""Prepare and submit a synthetic workflow in this process, like ``bps submit``.

Usage: python synthetic_driver.py SUBMIT_DIR SPEC.json

SPEC: {"jobs": [{"name", "script", "label"?, "retries"?}], "edges": [[p, c]],
"final": script or null, "site": {...} or null, "detach": bool}
"""

from __future__ import annotations

import json
import sys

from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.service import RunFailedError
from synthetic import job, make_config, workflow


def prepare_and_submit(submit: str, spec: dict, extra: dict) -> None:
    """Build the workflow of ``spec``, then prepare and submit it as ``bps submit`` does."""
    jobs = [
        job(
            j["name"],
            j["script"],
            label=j.get("label"),
            number_of_retries=j.get("retries", 0),
            request_walltime=j.get("walltime"),
        )
        for j in spec["jobs"]
    ]
    gw = workflow(jobs, [tuple(e) for e in spec.get("edges", [])])
    if spec.get("final"):
        gw.add_final(job("finalJob", spec["final"]))
    config = make_config(extra)
    service = ParslService(config)
    service.run_submission_checks()
    wf = service.prepare(config, gw, submit)
    print(f"Run Id: {wf.run_id}", flush=True)
    try:
        service.submit(wf)
    except RunFailedError as exc:
        # As ``bps submit`` does: one line, exit status 1.
        print(exc, file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> int:
    submit, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as stream:
        spec = json.load(stream)
    extra = {"parslDetach": bool(spec.get("detach")), "parslProgressInterval": spec.get("progress", 0)}
    if spec.get("site"):
        extra["site"] = {"local": spec["site"]}
    prepare_and_submit(submit, spec, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
