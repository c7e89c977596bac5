#!/usr/bin/env bash
# One-command demo of ctrl_bps_parsl: make a tiny butler repo, write a BPS
# submit YAML, run `bps submit` through this plugin on its default local
# site, and show where the outputs are.
#
#   python3 -m venv .venv && .venv/bin/pip install -e '.[test]' \
#     && PATH=$PWD/.venv/bin:$PATH demo/run_demo.sh
#
# Everything goes to ./demo-output/ (or $DEMO_OUTPUT), which is recreated on
# every run. The pipeline is tests/e2e_pipeline: 3 task labels, 11 quanta on
# 5 detectors (source x5 -> middle x5 -> gather), ~2 s per quantum.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${DEMO_OUTPUT:-$PWD/demo-output}"
OUT="$(mkdir -p "$(dirname "$OUT")" && cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

# The Python of the active venv, else the first `python` on PATH.
if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    PY="$(command -v python || command -v python3 || true)"
fi
if [[ -z "$PY" ]] || ! "$PY" -c 'import lsst.ctrl.bps.parsl, lsst.ctrl.mpexec, lsst.daf.butler' 2>/dev/null; then
    echo "run_demo.sh: '${PY:-python}' cannot import lsst.ctrl.bps.parsl with the test extras." >&2
    echo "  Make the venv first:  python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2
    echo "  then run:             PATH=\$PWD/.venv/bin:\$PATH demo/run_demo.sh" >&2
    exit 2
fi
# bps/pipetask/butler live next to that Python; jobs call them as
# ${CTRL_MPEXEC_DIR}/bin/pipetask and ${DAF_BUTLER_DIR}/bin/butler.
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
export PATH="$PREFIX/bin:$PATH"
export CTRL_MPEXEC_DIR="$PREFIX" DAF_BUTLER_DIR="$PREFIX"
export PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
unset BPS_WMS_SERVICE_CLASS

if [[ -e "$OUT" ]]; then
    if [[ ! -e "$OUT/.bps-parsl-demo" ]]; then
        echo "run_demo.sh: $OUT exists and was not made by this demo: move it away or set DEMO_OUTPUT" >&2
        exit 2
    fi
    rm -rf "$OUT"
fi
mkdir -p "$OUT"
touch "$OUT/.bps-parsl-demo"

echo "== 1. tiny butler repo in $OUT/repo"
"$PY" - "$OUT" <<'EOF'
import sys
from e2e_pipeline import repo as e2e
print(e2e.make_repo(sys.argv[1]))
EOF

echo "== 2. submit YAML $OUT/submit.yaml"
cat > "$OUT/submit.yaml" <<EOF
# BPS submit YAML for the ctrl_bps_parsl demo.
pipelineYaml: $ROOT/tests/e2e_pipeline/pipeline.yaml
wmsServiceClass: lsst.ctrl.bps.parsl.ParslService
# No 'computeSite' or 'site' section: the plugin's defaults give
#   computeSite: local
#   site: {local: {class: lsst.ctrl.bps.parsl.sites.Local}}   # all cores of this machine
# (add 'site: {local: {cores: 4}}' to use fewer).
project: ctrl_bps_parsl
campaign: demo
payload:
  payloadName: demo
  butlerConfig: $OUT/repo
  inCollection: e2e/raw
  dataQuery: "instrument = 'E2ECam'"
  output: demo/out
  outputRun: demo/out/run
submitPath: $OUT/submit/{outputRun}
idLinkPath: $OUT/bps_links
# Every job (and the final job) gets these variables.
environment:
  CTRL_MPEXEC_DIR: $PREFIX
  DAF_BUTLER_DIR: $PREFIX
  PYTHONPATH: $ROOT/tests
  E2E_RUN_LOG: $OUT/quanta_runs.log
# The bps default (16) sizes 'butler aggregate-graph -j' for a cluster node.
finalJob:
  requestCpus: 1
EOF
cat "$OUT/submit.yaml"

echo "== 3. bps submit (runs the whole workflow, then returns)"
cd "$OUT"
export PWD="$OUT"
status=0
bps submit "$OUT/submit.yaml" || status=$?

SUBMIT_DIR="$OUT/submit/demo/out/run"
echo
echo "== 4. results"
echo "butler repo : $OUT/repo"
echo "collection  : demo/out  (CHAINED; outputs in RUN demo/out/run)"
echo "submit dir  : $SUBMIT_DIR"
echo "  run state : $SUBMIT_DIR/bps_parsl.sqlite3"
echo "  job logs  : $SUBMIT_DIR/logs/<label>/<job>.<attempt>.out|.err"
echo
echo "\$ butler query-datasets $OUT/repo e2e_a e2e_b e2e_sum --collections demo/out"
butler query-datasets "$OUT/repo" e2e_a e2e_b e2e_sum --collections demo/out || true
if [[ $status -ne 0 ]]; then
    echo "run_demo.sh: bps submit exited with status $status (see the job logs above)" >&2
fi
exit $status
