"""Each Slurm block runs its own worker pool command (issue 10): the sites
name every block after the workflow, and Parsl's srun launcher writes the
command to ``cmd_$SLURM_JOB_NAME.sh`` in the shared script directory, so two
blocks starting together ran the same file (found by bench/multinode.py:
all four pools of two blocks registered with one block id).

The block scripts the plugin's `SlurmProvider` writes are run with bash;
``sbatch`` (the provider's ``execute_wait``) and ``srun`` (a script on
``PATH`` that records its command line) are stand-ins: no Slurm here.
"""

from __future__ import annotations

import os
import subprocess

from lsst.ctrl.bps.parsl.sites.slurm import SlurmProvider, default_launcher


def test_blocks_starting_together_keep_their_own_command_file(tmp_path):
    provider = SlurmProvider(
        nodes_per_block=2, launcher=default_launcher(), worker_init="export FROM_USER=1", walltime="00:10:00"
    )
    provider.script_dir = str(tmp_path / "scripts")
    os.makedirs(provider.script_dir)
    job_ids = iter(["101", "102"])
    provider.execute_wait = lambda cmd, timeout=None: (0, f"Submitted batch job {next(job_ids)}", "")  # type: ignore[method-assign]
    for block in ("0", "1"):
        provider.submit(f"echo pool of block {block}", 1, job_name=f"block-{block}")
    scripts = sorted(p for p in os.listdir(provider.script_dir) if p.startswith("block-"))
    assert len(scripts) == 2

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\nfor last; do :; done\necho "$SRUN_BLOCK $last" >> "$SRUN_LOG"\n')
    srun.chmod(0o755)
    log = tmp_path / "srun.log"
    # Both blocks write their command file before either pool starts, as when they start together.
    for block, (script, job_id) in enumerate(zip(scripts, ("101", "102"), strict=True)):
        env = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            SLURM_JOB_NAME="bps.workflow",
            SLURM_JOB_ID=job_id,
            SLURM_CPUS_ON_NODE="2",
            SLURM_JOB_NUM_NODES="2",
            SRUN_BLOCK=str(block),
            SRUN_LOG=str(log),
        )
        subprocess.run(["bash", os.path.join(provider.script_dir, script)], env=env, check=True, cwd=tmp_path)
    started = dict(line.split() for line in log.read_text().splitlines())
    assert started["0"] != started["1"]
    for block in ("0", "1"):
        with open(started[block]) as command_file:
            assert command_file.read().strip() == f"echo pool of block {block}"
    text = open(os.path.join(provider.script_dir, scripts[0])).read()
    assert text.index("export FROM_USER=1") < text.index('SLURM_JOB_NAME="$SLURM_JOB_NAME.$SLURM_JOB_ID"')
