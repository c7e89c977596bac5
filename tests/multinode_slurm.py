"""A real multi-node Slurm cluster on this one machine, for tests.

`MultiNodeSlurm.start()` builds, as root:

* a bridge (``bpsmnbr0``, default subnet ``10.213.0.0/24``) whose address
  ``.1`` is the head node: ``slurmctld`` runs in the root network namespace,
  in its own UTS namespace with hostname ``head``;
* N compute nodes ``node1`` .. ``nodeN``: each a network namespace
  ``bpsmn-nodeK`` with a veth (``eth0`` inside, address ``.(10+K)``) into the
  bridge, no default route, and one ``slurmd -N nodeK`` started in it with
  ``nsenter --net`` + ``unshare --uts`` (hostname ``nodeK``);
* a login node ``login2``: network namespace ``bpsmn-login``, address ``.5``,
  no daemon, for commands run "from another host" on the same filesystem;
* one ``munged`` with its own key and socket for all of them;
* ``/etc/hosts`` lines (marked, removed at stop) naming ``head``,
  ``login2`` and the nodes.

Slurm uses non-default ports (``SlurmctldPort`` 16817, ``SlurmdPort``
16818), so that it never talks to another Slurm; every address it uses is
loopback or inside the namespaces made here. The configuration lives under
`BASE_DIR` and is found through ``SLURM_CONF`` (`MultiNodeSlurm.env`).

Every pid, namespace, veth and the bridge are recorded in
``<base_dir>/rig.json`` as they are made; `MultiNodeSlurm.stop()` removes
exactly those (daemons by pid, then whatever ``ip netns pids`` lists, then
namespaces, veths, the bridge and the ``/etc/hosts`` lines), and `start()`
first removes what an interrupted earlier session left behind.

One rig runs on a machine at a time: `start()` takes an exclusive lock
(`LOCK_PATH`, held until `stop()` or the process ends) and waits up to
``BPS_PARSL_MULTINODE_WAIT`` seconds (default 120) for another session's
rig to stop, else raises `SlurmUnavailable` naming its pid.

Set ``BPS_PARSL_SLURM_INSTALL=0`` to forbid installing packages;
``BPS_PARSL_MULTINODE_SUBNET`` (e.g. ``10.214.0``) to move the rig to
another ``/24``.

The module has no dependency outside the standard library.
"""

from __future__ import annotations

__all__ = ["MULTINODE_DIR", "MultiNodeSlurm", "SlurmUnavailable"]

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    from .slurm_localhost import APT_PACKAGES, SlurmUnavailable, _run, _which, apt_install
except ImportError:  # tests/ is not a package: imported via sys.path
    from slurm_localhost import APT_PACKAGES, SlurmUnavailable, _run, _which, apt_install

_LOG = logging.getLogger(__name__)

MULTINODE_DIR = Path(os.environ.get("BPS_PARSL_MULTINODE_DIR", "/tmp/bps-parsl-multinode"))
"""Directory holding the rig's slurm.conf, munge key, state, spool and logs."""

LOCK_PATH = Path(os.environ.get("BPS_PARSL_MULTINODE_LOCK", "/tmp/bps-parsl-multinode.lock"))
"""Lock held by the process whose rig is running (its pid inside): the
bridge, namespaces and ports are one per machine."""

PARTITION = "nodes"
"""The one partition, holding every compute node."""

HOSTS_MARK = "# bps-parsl-multinode"
"""End of every ``/etc/hosts`` line the rig adds (removed at stop)."""

CTLD_PORT = 16817
SLURMD_PORT = 16818

_PREFIX = "bpsmn"
_BRIDGE = f"{_PREFIX}br0"
_LOGIN_NETNS = f"{_PREFIX}-login"
LOGIN_HOST = "login2"
"""Hostname of the login namespace."""


@dataclass(frozen=True)
class Node:
    """One namespace of the rig: a compute node or the login node."""

    host: str
    """Hostname inside its UTS namespace (``nodeK``, ``login2``)."""

    netns: str
    """Name of its network namespace (``/run/netns/<netns>``)."""

    address: str
    """Its address on the bridge."""

    veth_host: str
    """Host side of its veth pair (in the bridge)."""

    veth_inside: str
    """Name of the veth's other end before it moves in (``eth0`` after)."""


class MultiNodeSlurm:
    """Start and stop a multi-node Slurm on this machine.

    Parameters
    ----------
    n_nodes : `int`, optional
        Compute nodes.
    base_dir : `str` or `pathlib.Path`, optional
        Directory for configuration, munge key, state and logs.
    subnet : `str`, optional
        First three octets of the bridge's ``/24``.
    install : `bool`, optional
        Whether installing the Debian packages is allowed. Default: true
        unless ``BPS_PARSL_SLURM_INSTALL=0``.
    start_timeout : `float`, optional
        Seconds to wait for every node to be idle.
    """

    def __init__(
        self,
        n_nodes: int = 2,
        base_dir: str | os.PathLike | None = None,
        subnet: str | None = None,
        install: bool | None = None,
        start_timeout: float = 60.0,
    ):
        if n_nodes < 1:
            raise ValueError(f"n_nodes is {n_nodes}: it must be 1 or more")
        self.base_dir = Path(base_dir) if base_dir is not None else MULTINODE_DIR
        self.subnet = subnet or os.environ.get("BPS_PARSL_MULTINODE_SUBNET", "10.213.0")
        if install is None:
            install = os.environ.get("BPS_PARSL_SLURM_INSTALL", "1").lower() not in ("0", "no", "false")
        self.install = install
        self.start_timeout = start_timeout
        self.conf_path = self.base_dir / "etc" / "slurm.conf"
        self.munge_socket = self.base_dir / "munge" / "munged.sock"
        self.state_path = self.base_dir / "rig.json"
        self.head_address = f"{self.subnet}.1"
        """The bridge's address: where slurmctld and the submitting process are."""
        self.nodes = [
            Node(
                f"node{k}",
                f"{_PREFIX}-node{k}",
                f"{self.subnet}.{10 + k}",
                f"{_PREFIX}{k}h",
                f"{_PREFIX}{k}n",
            )
            for k in range(1, n_nodes + 1)
        ]
        self.login = Node(LOGIN_HOST, _LOGIN_NETNS, f"{self.subnet}.5", f"{_PREFIX}Lh", f"{_PREFIX}Ln")
        self.lock_wait = float(os.environ.get("BPS_PARSL_MULTINODE_WAIT", "120"))
        """Seconds `start` waits for another process's rig to stop."""
        self._lock_fd: int | None = None
        self.timings: dict[str, float] = {}
        """Seconds spent in ``install``, ``start`` and ``stop``."""
        self.cores = 0
        """CPUs of each node (what ``slurmd -C`` sees)."""
        self._procs: dict[str, subprocess.Popen] = {}
        self._state: dict[str, list] = {"pids": [], "netns": [], "links": [], "hosts": []}
        self._started = False

    # ----------------------------------------------------------------- API

    @property
    def env(self) -> dict[str, str]:
        """Environment variables the Slurm commands need (``SLURM_CONF``)."""
        return {"SLURM_CONF": str(self.conf_path)}

    @property
    def partition(self) -> str:
        """Partition holding every compute node."""
        return PARTITION

    @property
    def hosts(self) -> list[str]:
        """Hostnames of the compute nodes, ``node1`` first."""
        return [node.host for node in self.nodes]

    def node(self, which: int | str) -> Node:
        """The compute node ``which``: its number (1-based) or hostname."""
        if isinstance(which, int):
            return self.nodes[which - 1]
        for node in [*self.nodes, self.login]:
            if node.host == which:
                return node
        raise KeyError(which)

    def unavailable_reason(self) -> str | None:
        """Why the rig cannot start here, or `None`."""
        if os.geteuid() != 0:
            return "a multi-node Slurm needs root (network namespaces, bridge, daemons)"
        for tool in ("nsenter", "unshare"):
            if not _which(tool):
                return f"'{tool}' (util-linux) is missing"
        missing = [p for p in ("slurmctld", "slurmd", "sbatch", "munged", "ip") if not _which(p)]
        if missing:
            if not self.install:
                return f"{', '.join(missing)} missing and BPS_PARSL_SLURM_INSTALL=0 forbids installing them"
            if not shutil.which("apt-get") or not Path("/etc/debian_version").exists():
                return f"{', '.join(missing)} missing and this is not Debian with apt-get"
        return None

    def start(self) -> None:
        """Install what is missing, build the namespaces, start the daemons.

        Raises
        ------
        SlurmUnavailable
            If the rig cannot run here; the message says why. Whatever was
            made is removed first.
        """
        if self._started:
            return
        reason = self.unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        if not all(_which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged", "ip")):
            t0 = time.monotonic()
            apt_install([*APT_PACKAGES, "iproute2"])
            self.timings["install"] = time.monotonic() - t0
        self._lock()
        self._cleanup_leftovers()
        t0 = time.monotonic()
        try:
            self._probe_netns()
            self._make_network()
            self._write_conf()
            self._start_munge()
            self._start_slurm()
        except BaseException:
            self.stop()
            raise
        self._started = True
        self.timings["start"] = time.monotonic() - t0

    def stop(self) -> None:
        """Remove everything `start` made (recorded in ``rig.json``)."""
        t0 = time.monotonic()
        self._teardown(self._state, self._procs)
        self._procs = {}
        self._state = {"pids": [], "netns": [], "links": [], "hosts": []}
        self._started = False
        try:
            self.state_path.unlink()
        except FileNotFoundError:
            pass
        self._unlock()
        self.timings["stop"] = time.monotonic() - t0

    def __enter__(self) -> MultiNodeSlurm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- commands in the namespaces

    def command_in(self, which: int | str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in node ``which`` (a number,
        ``nodeK`` or ``login2``): its network namespace and a new UTS
        namespace with its hostname; same filesystem, same environment."""
        node = self.node(which)
        return [
            _which("nsenter"),
            f"--net=/run/netns/{node.netns}",
            _which("unshare"),
            "--uts",
            "sh",
            "-c",
            f'hostname {node.host} && exec "$@"',
            "sh",
            *argv,
        ]

    def login_command(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` on the login node ``login2``."""
        return self.command_in(self.login.host, argv)

    def run_in(
        self, which: int | str, argv: Sequence[str], timeout: float = 60, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` in node ``which`` (see `command_in`); text output."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(self.command_in(which, argv), text=True, timeout=timeout, **kwargs)

    def run_on_login(self, argv: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` on the login node ``login2``; text output."""
        return self.run_in(self.login.host, argv, timeout=timeout, **kwargs)

    def pids_in(self, which: int | str) -> list[int]:
        """Pids of every process in node ``which``'s network namespace."""
        res = _run(["ip", "netns", "pids", self.node(which).netns], check=False)
        return sorted(int(p) for p in res.stdout.split() if p.isdigit())

    def processes_in(self, which: int | str) -> dict[int, str]:
        """Every process in node ``which``: pid -> command line."""
        found = {}
        for pid in self.pids_in(which):
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return found

    def job_processes_in(self, which: int | str) -> dict[int, str]:
        """The processes of node ``which`` other than its ``slurmd``."""
        daemon = self._procs.get(f"slurmd-{self.node(which).host}")
        return {pid: cmd for pid, cmd in self.processes_in(which).items() if not daemon or pid != daemon.pid}

    def kill_node(self, which: int | str) -> list[int]:
        """Fail node ``which`` hard: its link down, then SIGKILL of every
        process in its namespace (slurmd included). Returns the pids killed."""
        node = self.node(which)
        _run(["ip", "link", "set", node.veth_host, "down"], check=False)
        killed = []
        for pid in self.pids_in(which):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        daemon = self._procs.get(f"slurmd-{node.host}")
        if daemon is not None:
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return killed

    def revive_node(self, which: int | str) -> None:
        """Bring a node `kill_node` failed back: link up, a new ``slurmd``,
        and the node resumed if Slurm had marked it down."""
        node = self.node(which)
        name = f"slurmd-{node.host}"
        if name in self._procs and self._procs[name].poll() is None:
            return
        _run(["ip", "link", "set", node.veth_host, "up"], check=False)
        self._spawn(
            name,
            self.command_in(node.host, [_which("slurmd"), "-D", "-N", node.host, "-f", str(self.conf_path)]),
        )
        deadline = time.monotonic() + self.start_timeout
        while (state := self.sinfo().get(node.host, "")) != "idle":
            self._check_alive(name)
            if state.startswith(("down", "drain", "fail")):
                _run(
                    [_which("scontrol"), "update", f"nodename={node.host}", "state=resume"],
                    env=dict(os.environ, **self.env),
                    check=False,
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{node.host} not idle within {self.start_timeout} s after revival: {state}"
                )
            time.sleep(0.2)

    def revive_nodes(self) -> None:
        """`revive_node` for every node whose ``slurmd`` is not running."""
        for node in self.nodes:
            self.revive_node(node.host)

    def reap_leftovers(self) -> dict[int, str]:
        """SIGKILL every process but ``slurmd`` left in the nodes by earlier
        tests, and return them. Without cgroups (the rig uses
        ``proctrack/linuxproc``) Slurm loses the processes of a block whose
        parent died, as Parsl's worker processes after their pool was killed;
        a real cluster's cgroup tracking ends them with the block."""
        left: dict[int, str] = {}
        for k in range(1, len(self.nodes) + 1):
            for pid, cmd in self.job_processes_in(k).items():
                left[pid] = cmd
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        return left

    def cancel_all(self) -> None:
        """Cancel every job of the rig."""
        self.slurm(["scancel", "--partition", PARTITION])

    # ---- Slurm commands

    def slurm(self, argv: Sequence[str], timeout: float = 30) -> str:
        """Run a Slurm command (``squeue``, ``scontrol``...) on this rig and
        return its output; raise `RuntimeError` if it fails."""
        env = dict(os.environ, **self.env)
        res = _run([_which(argv[0]) or argv[0], *argv[1:]], env=env, timeout=timeout, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stdout.strip()}")
        return res.stdout

    def squeue(self, *args: str) -> list[list[str]]:
        """Jobs of the rig, one list of fields per job (default ``%i %T %N``:
        id, state, nodes); ``args`` are more ``squeue`` options."""
        out = self.slurm(["squeue", "-h", "-o", "%i %T %N", *args])
        return [line.split() for line in out.splitlines() if line.strip()]

    def sinfo(self) -> dict[str, str]:
        """State of each compute node (``idle``, ``alloc``, ``down*``...)."""
        out = self.slurm(["sinfo", "-h", "-N", "-o", "%N %t"])
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait until no job is left and every node is idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.squeue() and all(s == "idle" for s in self.sinfo().values()):
                return True
            time.sleep(0.3)
        return False

    # ------------------------------------------------------------ helpers

    def _lock(self) -> None:
        """Take `LOCK_PATH`, waiting `lock_wait` seconds for another rig."""
        if self._lock_fd is not None:
            return
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise SlurmUnavailable(
                        f"another process (pid {holder}) runs the multi-node rig ({LOCK_PATH}); waited "
                        f"{self.lock_wait:.0f} s (BPS_PARSL_MULTINODE_WAIT)"
                    ) from None
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _save_state(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.state_path)

    def _record(self, kind: str, value: object) -> None:
        self._state[kind].append(value)
        self._save_state()

    def _cleanup_leftovers(self) -> None:
        """Remove what an interrupted earlier start recorded."""
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        _LOG.warning("Removing a multi-node Slurm rig left by an earlier session: %s", state)
        self._teardown(state, {})
        self.state_path.unlink(missing_ok=True)

    @staticmethod
    def _teardown(state: dict[str, list], procs: dict[str, subprocess.Popen]) -> None:
        # Daemons by recorded pid (a stale pid is checked against its start
        # time so that a recycled pid is never signalled).
        live = []
        for pid, start_ticks in state.get("pids", []):
            if _start_ticks(pid) == start_ticks:
                try:
                    os.kill(pid, signal.SIGTERM)
                    live.append(pid)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for pid in live:
            proc = next((p for p in procs.values() if p.pid == pid), None)
            while time.monotonic() < deadline:
                if proc is not None:
                    if proc.poll() is not None:
                        break
                elif _start_ticks(pid) is None:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        # Whatever is left in the namespaces (jobs, workers, orphans).
        for netns in state.get("netns", []):
            res = _run(["ip", "netns", "pids", netns], check=False)
            for pid in (int(p) for p in res.stdout.split() if p.isdigit()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for netns in reversed(state.get("netns", [])):
            _run(["ip", "netns", "delete", netns], check=False)
        for link in reversed(state.get("links", [])):
            if Path(f"/sys/class/net/{link}").exists():
                _run(["ip", "link", "delete", link], check=False)
        if state.get("hosts"):
            _remove_hosts_lines()

    def _probe_netns(self) -> None:
        res = _run(["ip", "netns", "list"], check=False)
        if res.returncode != 0:
            raise SlurmUnavailable(f"'ip netns' does not work here: {res.stdout.strip()}")

    def _ip(self, *args: str) -> None:
        res = _run(["ip", *args], check=False)
        if res.returncode != 0:
            raise SlurmUnavailable(f"'ip {' '.join(args)}' failed: {res.stdout.strip()}")

    def _make_network(self) -> None:
        if Path(f"/sys/class/net/{_BRIDGE}").exists():
            raise SlurmUnavailable(f"bridge {_BRIDGE} exists but is not recorded in {self.state_path}")
        self._record("links", _BRIDGE)
        self._ip("link", "add", _BRIDGE, "type", "bridge")
        self._ip("addr", "add", f"{self.head_address}/24", "dev", _BRIDGE)
        self._ip("link", "set", _BRIDGE, "up")
        for node in [*self.nodes, self.login]:
            self._record("netns", node.netns)
            self._ip("netns", "add", node.netns)
            self._record("links", node.veth_host)
            self._ip("link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth_inside)
            self._ip("link", "set", node.veth_inside, "netns", node.netns)
            self._ip("link", "set", node.veth_host, "master", _BRIDGE)
            self._ip("link", "set", node.veth_host, "up")
            self._ip("-n", node.netns, "link", "set", node.veth_inside, "name", "eth0")
            self._ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            self._ip("-n", node.netns, "link", "set", "eth0", "up")
            self._ip("-n", node.netns, "link", "set", "lo", "up")
        self._record("hosts", "/etc/hosts")
        _remove_hosts_lines()
        lines = [f"{self.head_address} head {HOSTS_MARK}"]
        lines += [f"{n.address} {n.host} {HOSTS_MARK}" for n in [*self.nodes, self.login]]
        with open("/etc/hosts", "a") as hosts:
            hosts.write("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = self.base_dir / "log" / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, **self.env),
                **kwargs,
            )
        self._procs[name] = proc
        self._record("pids", [proc.pid, _start_ticks(proc.pid)])
        _LOG.info("Started %s (pid %d)", name, proc.pid)
        return proc

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            log = self.base_dir / "log" / f"{name}.out"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SlurmUnavailable(f"{name} exited with {proc.returncode}; {log}:\n{tail}")

    def _write_conf(self) -> None:
        base = self.base_dir
        if base.exists():
            for sub in ("state", "spool", "log", "run"):
                shutil.rmtree(base / sub, ignore_errors=True)
        for sub in ("", "etc", "state", "spool", "log", "run"):
            (base / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
            (base / sub).chmod(0o755)
        for sub in ("state", "log"):
            shutil.chown(base / sub, "slurm", "slurm")
        for node in self.nodes:
            (base / "spool" / node.host).mkdir(mode=0o755, exist_ok=True)
        res = _run([_which("slurmd"), "-C"], check=False)
        hw = next((line for line in res.stdout.splitlines() if line.startswith("NodeName=")), None)
        if hw is None:
            raise SlurmUnavailable(f"'slurmd -C' failed: {res.stdout}")
        fields = dict(f.split("=", 1) for f in hw.split() if "=" in f)
        self.cores = int(fields["CPUs"])
        hw_fields = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("NodeName", "UpTime"))
        node_lines = "\n".join(
            f"NodeName={n.host} NodeAddr={n.address} NodeHostname={n.host} {hw_fields} State=UNKNOWN"
            for n in self.nodes
        )
        names = ",".join(self.hosts)
        conf = f"""\
# Written by tests/multinode_slurm.py: {len(self.nodes)} nodes in network namespaces on one machine.
ClusterName=bpsmulti
SlurmctldHost=head({self.head_address})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
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
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd-%n.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=10
SlurmdTimeout=20
MessageTimeout=5
InactiveLimit=0
MinJobAge=60
KillWait=2
Waittime=0
TreeWidth=64
{node_lines}
PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.conf_path.write_text(conf)
        self.conf_path.chmod(0o644)

    def _munge_works(self) -> bool:
        sock = str(self.munge_socket)
        try:
            cred = _run([_which("munge"), "-S", sock, "-n"], timeout=10, check=False)
            if cred.returncode != 0:
                return False
            res = subprocess.run(
                [_which("unmunge"), "-S", sock],
                input=cred.stdout,
                text=True,
                timeout=10,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0

    def _start_munge(self) -> None:
        munge_dir = self.munge_socket.parent
        shutil.rmtree(munge_dir, ignore_errors=True)
        munge_dir.mkdir(mode=0o700, parents=True)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (munge_dir, key):
            shutil.chown(path, "munge", "munge")
        # The socket directory must be reachable by slurmd/slurmctld/srun users.
        munge_dir.chmod(0o755)
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            user="munge",
            group="munge",
            extra_groups=[],
        )
        deadline = time.monotonic() + 20
        while not self._munge_works():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged did not start within 20 s")
            time.sleep(0.05)

    def _start_slurm(self) -> None:
        conf = str(self.conf_path)
        # -c: ignore any job/node state saved earlier; -i: ignore errors
        # reading it. The controller's hostname must equal SlurmctldHost.
        self._spawn(
            "slurmctld",
            [_which("unshare"), "--uts", "sh", "-c", 'hostname head && exec "$@"', "sh"]
            + [_which("slurmctld"), "-D", "-c", "-i", "-f", conf],
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            res = _run(
                [_which("scontrol"), "ping"], env=dict(os.environ, **self.env), timeout=20, check=False
            )
            if res.returncode == 0 and " is UP" in res.stdout:
                break
            self._check_alive("slurmctld")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"slurmctld did not answer within {self.start_timeout} s")
            time.sleep(0.1)
        for node in self.nodes:
            self._spawn(
                f"slurmd-{node.host}",
                self.command_in(node.host, [_which("slurmd"), "-D", "-N", node.host, "-f", conf]),
            )
        while True:
            for node in self.nodes:
                self._check_alive(f"slurmd-{node.host}")
            self._check_alive("slurmctld")
            states = self.sinfo()
            if len(states) == len(self.nodes) and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"nodes not idle within {self.start_timeout} s: {states}")
            time.sleep(0.1)


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks since boot), or `None`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _remove_hosts_lines() -> None:
    try:
        text = Path("/etc/hosts").read_text()
    except FileNotFoundError:
        return
    kept = [line for line in text.splitlines(keepends=True) if not line.rstrip().endswith(HOSTS_MARK)]
    if len(kept) != len(text.splitlines()):
        # Rewrite in place: /etc/hosts may be a bind mount.
        with open("/etc/hosts", "w") as hosts:
            hosts.write("".join(kept))
