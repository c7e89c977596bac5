"""A real one-node Slurm cluster on localhost, for tests.

`LocalSlurm.start()` gives the tests a working Slurm controller:

* If a Slurm controller already answers (``scontrol ping`` with the current
  environment, or with this module's own ``slurm.conf`` left over from an
  earlier run), it is reused and never stopped.
* Otherwise, when running as root on Debian with ``apt-get``, it installs the
  Debian packages if ``slurmctld`` is missing (``apt-get update`` then
  ``apt-get install -y --no-install-recommends slurmctld slurmd slurm-client
  munge``), writes a one-node ``slurm.conf`` under `BASE_DIR`, makes sure a
  munge key and ``/run/munge`` exist, starts ``munged`` (as user munge, only
  if munge does not already work), ``slurmctld`` and ``slurmd`` in the
  foreground as child processes (no systemd), and waits until ``sinfo``
  shows the node idle.
* Otherwise it raises `SlurmUnavailable` with the reason.

`LocalSlurm.stop()` cancels the jobs left in a Slurm it started and stops
exactly the daemons it started, by pid.

The configuration is not written to ``/etc/slurm``: the Slurm commands find it
through the ``SLURM_CONF`` environment variable, listed in `LocalSlurm.env`.
Callers must export it (``os.environ.update(slurm.env)``) so that child
processes (``sbatch``, Parsl's ``SlurmProvider``, jobs) see it too.

Set ``BPS_PARSL_SLURM_INSTALL=0`` to forbid installing packages.

The module has no dependency outside the standard library.
"""

from __future__ import annotations

__all__ = ["APT_PACKAGES", "BASE_DIR", "LocalSlurm", "SlurmUnavailable", "apt_install"]

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_LOG = logging.getLogger(__name__)

BASE_DIR = Path(os.environ.get("BPS_PARSL_SLURM_DIR", "/tmp/bps-parsl-slurm"))
"""Directory holding this module's slurm.conf, state, spool and logs."""

PARTITION = "debug"
"""Name of the partition in the slurm.conf written here."""

APT_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]

_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


class SlurmUnavailable(RuntimeError):  # noqa: N818 (name fixed by the API)
    """Raised when a local Slurm cannot be provided; ``str()`` is the reason."""


def _which(name: str) -> str | None:
    """Find a program on PATH or in the sbin directories."""
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def _run(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        env=env,
        timeout=timeout,
        check=check,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def apt_install(packages: list[str]) -> None:
    """Install Debian packages (``apt-get update`` then ``apt-get install``).

    Raises
    ------
    SlurmUnavailable
        If either command fails or times out; the message has apt's output.
    """
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _LOG.info("Installing %s with apt-get", " ".join(packages))
    for cmd, timeout in (
        (["apt-get", "update"], 300),
        (["apt-get", "install", "-y", "--no-install-recommends", *packages], 600),
    ):
        try:
            res = _run(cmd, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"'{' '.join(cmd)}' timed out after {timeout} s") from None
        if res.returncode != 0:
            raise SlurmUnavailable(f"'{' '.join(cmd)}' failed ({res.returncode}): {res.stdout[-2000:]}")


class LocalSlurm:
    """Provide a running one-node Slurm on localhost.

    Parameters
    ----------
    base_dir : `str` or `pathlib.Path`, optional
        Directory for the configuration, state and logs of daemons this
        object starts.
    install : `bool`, optional
        Whether installing the Debian packages is allowed. Default: true
        unless ``BPS_PARSL_SLURM_INSTALL=0``.
    start_timeout : `float`, optional
        Seconds to wait for the node to become idle.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        install: bool | None = None,
        start_timeout: float = 60.0,
    ):
        self.base_dir = Path(base_dir) if base_dir is not None else BASE_DIR
        if install is None:
            install = os.environ.get("BPS_PARSL_SLURM_INSTALL", "1").lower() not in ("0", "no", "false")
        self.install = install
        self.start_timeout = start_timeout
        self.conf_path = self.base_dir / "etc" / "slurm.conf"
        self.started = False
        """True if this object started slurmctld/slurmd (and stops them)."""
        self.timings: dict[str, float] = {}
        """Seconds spent in ``install`` and ``start`` (daemons until idle)."""
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._env: dict[str, str] = {}
        self._partition: str | None = None
        self._node: str | None = None
        self._cores: int | None = None

    # ----------------------------------------------------------------- API

    @property
    def env(self) -> dict[str, str]:
        """Environment variables the Slurm commands need (``SLURM_CONF``)."""
        return dict(self._env)

    @property
    def partition(self) -> str:
        """Partition to submit to."""
        self._require_started()
        return self._partition

    @property
    def node(self) -> str:
        """Name of the (first) node of that partition."""
        self._require_started()
        return self._node

    @property
    def cores(self) -> int:
        """CPUs of that node."""
        self._require_started()
        return self._cores

    def start(self) -> None:
        """Reuse a running Slurm or install and start one.

        Raises
        ------
        SlurmUnavailable
            If no Slurm can be provided here; the message says why.
        """
        if self._partition is not None:
            return
        # 1. A Slurm already running: as configured in this environment, or
        #    ours left over from an earlier session.
        if _which("scontrol") and self._controller_up(os.environ.get("SLURM_CONF")):
            self._env = {"SLURM_CONF": os.environ["SLURM_CONF"]} if "SLURM_CONF" in os.environ else {}
            _LOG.info("Reusing the running Slurm controller")
            self._discover()
            return
        if _which("scontrol") and self.conf_path.exists() and self._controller_up(str(self.conf_path)):
            self._env = {"SLURM_CONF": str(self.conf_path)}
            _LOG.info("Reusing the running Slurm controller configured by %s", self.conf_path)
            self._discover()
            return

        # 2. Start our own.
        reason = self.unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        if not _which("slurmctld") or not _which("slurmd") or not _which("sbatch") or not _which("munged"):
            t0 = time.monotonic()
            self._apt_install()
            self.timings["install"] = time.monotonic() - t0
        t0 = time.monotonic()
        try:
            self._start_daemons()
            self._discover()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the daemons this object started (reused ones are left alone)."""
        if self._procs and self.started:
            self._cancel_jobs()
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                _LOG.info("Stopping %s (pid %d)", name, proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs = []
        self.started = False
        self._partition = self._node = self._cores = None

    def unavailable_reason(self) -> str | None:
        """Why this object cannot start its own Slurm, or `None`."""
        have_binaries = all(_which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged"))
        if os.geteuid() != 0:
            return "a local Slurm needs root (to install and start slurmctld/slurmd/munged)"
        if not have_binaries:
            if not self.install:
                return "Slurm is not installed and BPS_PARSL_SLURM_INSTALL=0 forbids installing it"
            if not shutil.which("apt-get"):
                return "Slurm is not installed and apt-get is not available"
            if not Path("/etc/debian_version").exists():
                return "Slurm is not installed and this is not Debian"
        return None

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers

    def _require_started(self) -> None:
        if self._partition is None:
            raise RuntimeError("LocalSlurm.start() has not succeeded")

    def _cmd_env(self, conf: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SLURM_CONF", None)
        if conf:
            env["SLURM_CONF"] = conf
        elif "SLURM_CONF" in self._env:
            env["SLURM_CONF"] = self._env["SLURM_CONF"]
        env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":" + _SBIN_PATH
        return env

    def _controller_up(self, conf: str | None) -> bool:
        try:
            res = _run([_which("scontrol"), "ping"], env=self._cmd_env(conf), timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0 and " is UP" in res.stdout

    def _apt_install(self) -> None:
        apt_install(APT_PACKAGES)
        if not all(_which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")):
            raise SlurmUnavailable("apt-get install succeeded but Slurm programs are still missing")

    def _spawn(self, name: str, cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._cmd_env(),
                **kwargs,
            )
        self._procs.append((name, proc))
        self.started = True
        _LOG.info("Started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    def _check_alive(self, proc: subprocess.Popen, name: str, log: Path) -> None:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SlurmUnavailable(f"{name} exited with {proc.returncode}; {log}:\n{tail}")

    def _munge_works(self) -> bool:
        munge, unmunge = _which("munge"), _which("unmunge")
        if not munge or not unmunge:
            return False
        try:
            cred = _run([munge, "-n"], timeout=10, check=False)
            if cred.returncode != 0:
                return False
            res = subprocess.run(
                [unmunge],
                input=cred.stdout,
                text=True,
                timeout=10,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0

    def _start_munge(self, logdir: Path) -> None:
        if self._munge_works():
            _LOG.info("munged already running; reusing it")
            return
        key = Path("/etc/munge/munge.key")
        run_dir = Path("/run/munge")
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        for d in (Path("/var/lib/munge"), Path("/var/log/munge")):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        if not key.exists():
            key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.chown(key.parent, "munge", "munge")
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
            shutil.chown(key, "munge", "munge")
        # A stale socket/pid of a dead munged prevents start-up.
        for stale in ("munge.socket.2", "munge.socket.2.lock", "munged.pid"):
            try:
                (run_dir / stale).unlink()
            except FileNotFoundError:
                pass
        log = logdir / "munged.out"
        proc = self._spawn(
            "munged", [_which("munged"), "--foreground"], log, user="munge", group="munge", extra_groups=[]
        )
        deadline = time.monotonic() + 20
        while not self._munge_works():
            self._check_alive(proc, "munged", log)
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged did not start within 20 s")
            time.sleep(0.2)

    def _write_conf(self, host: str) -> None:
        base = self.base_dir
        state = base / "state"
        spool = base / "spool"
        logdir = base / "log"
        for d in (base, base / "etc", state, spool, logdir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
            d.chmod(0o755)
        for d in (state, logdir):
            shutil.chown(d, "slurm", "slurm")
        # The hardware line as slurmd sees it ("NodeName=... CPUs=... RealMemory=...").
        res = _run([_which("slurmd"), "-C"], env=self._cmd_env(), check=False)
        hw = next((line for line in res.stdout.splitlines() if line.startswith("NodeName=")), None)
        if hw is None:
            raise SlurmUnavailable(f"'slurmd -C' failed: {res.stdout}")
        hw_fields = " ".join(f for f in hw.split() if not f.startswith("NodeName="))
        conf = f"""\
# Written by tests/slurm_localhost.py: a one-node Slurm on localhost.
ClusterName=bpsparsl
SlurmctldHost={host}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={logdir}/slurmctld.log
SlurmdLogFile={logdir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 {hw_fields} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.conf_path.write_text(conf)
        self.conf_path.chmod(0o644)

    def _start_daemons(self) -> None:
        host = socket.gethostname().split(".")[0]
        logdir = self.base_dir / "log"
        self._write_conf(host)
        self._env = {"SLURM_CONF": str(self.conf_path)}
        self._start_munge(logdir)

        ctld_log = logdir / "slurmctld.out"
        # -c: ignore job/node state saved by an earlier run of ours.
        ctld = self._spawn(
            "slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf_path)], ctld_log
        )
        deadline = time.monotonic() + self.start_timeout
        while not self._controller_up(str(self.conf_path)):
            self._check_alive(ctld, "slurmctld", ctld_log)
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"slurmctld did not answer within {self.start_timeout} s")
            time.sleep(0.2)

        slurmd_log = logdir / "slurmd.out"
        slurmd = self._spawn(
            "slurmd", [_which("slurmd"), "-D", "-N", host, "-f", str(self.conf_path)], slurmd_log
        )
        while True:
            self._check_alive(slurmd, "slurmd", slurmd_log)
            self._check_alive(ctld, "slurmctld", ctld_log)
            res = _run(
                [_which("sinfo"), "-h", "-N", "-n", host, "-o", "%t"], env=self._cmd_env(), check=False
            )
            state = res.stdout.strip()
            if res.returncode == 0 and state.startswith("idle"):
                break
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"node {host} not idle within {self.start_timeout} s (state {state!r})"
                )
            time.sleep(0.2)

    def _discover(self) -> None:
        """Find the default (else first) partition, its first node and its CPUs."""
        res = _run([_which("sinfo"), "-h", "-o", "%P %N %c"], env=self._cmd_env(), check=False)
        if res.returncode != 0 or not res.stdout.strip():
            raise SlurmUnavailable(f"sinfo failed: {res.stdout}")
        rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
        row = next((r for r in rows if r[0].endswith("*")), rows[0])
        partition, nodes, cpus = row[0].rstrip("*"), row[1], row[2]
        names = _run([_which("scontrol"), "show", "hostnames", nodes], env=self._cmd_env(), check=False)
        self._node = names.stdout.split()[0] if names.returncode == 0 and names.stdout.split() else nodes
        self._cores = int(cpus.rstrip("+"))
        self._partition = partition

    def _cancel_jobs(self) -> None:
        """Cancel all jobs in the Slurm we started and wait for them to end."""
        env = self._cmd_env()
        try:
            _run([_which("scancel"), "--partition", PARTITION], env=env, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                res = _run([_which("squeue"), "-h", "-o", "%i"], env=env, check=False)
                if res.returncode != 0 or not res.stdout.strip():
                    return
                time.sleep(0.5)
            _LOG.warning("Slurm jobs still present at shutdown: %s", res.stdout.split())
        except (OSError, subprocess.TimeoutExpired) as exc:
            _LOG.warning("Could not cancel Slurm jobs: %s", exc)
