"""The parts of ``lsst.ctrl.bps.parsl`` that run next to the jobs: the
function Parsl workers run for a job attempt (`job.run_job`) and how job
processes are started, found and stopped (`processes`).

A top-level package of its own, standard library only, so that a Parsl
worker unpickling `job.run_job` imports this and nothing else (importing a
module under ``lsst.ctrl.bps`` imports the whole of ``lsst.ctrl.bps`` and
the butler first).
"""
