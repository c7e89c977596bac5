"""Site configurations: BPS keys in, Parsl executors out.

The batch schedulers other than Slurm (PBS Pro, Torque, LSF, HTCondor, Grid
Engine) cannot be installed on these test machines (PBS/Torque and HTCondor
are not in Debian 12). Their sites are tested by building the executors and
then calling the Parsl provider's ``submit()`` with the provider's
``execute_wait`` MOCKED (patched on Parsl's ``ClusterProvider``): nothing is
submitted; the test captures the command line (``qsub``, ``bsub``,
``condor_submit``, ...) and reads the submit script the provider wrote, which
is exactly what the scheduler would have received. Slurm sites get the same
script check here, and run for real in ``test_site_slurm_e2e.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from lsst.ctrl.bps.parsl.configuration import ConfigurationError
from lsst.ctrl.bps.parsl.job import ParslJob
from lsst.ctrl.bps.parsl.records import JobRow
from lsst.ctrl.bps.parsl.site import SiteConfig
from lsst.ctrl.bps.parsl.store.runstore import SUCCEEDED
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiRunLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers.cluster_provider import ClusterProvider
from synthetic import attempts, job, make_config, run, workflow

SITES = "lsst.ctrl.bps.parsl.sites"


def make_site(cls: str, validate: bool = True, **keys) -> SiteConfig:
    """Build site ``s`` of class ``cls`` with the given keys, and validate it."""
    config = make_config(computeSite="s", site={"s": {"class": cls, **keys}})
    site = SiteConfig.from_config(config)
    if validate:
        site.validate()
    return site


def config_error(cls: str, **keys) -> str:
    """The one-line message of the ConfigurationError validation raises."""
    with pytest.raises(ConfigurationError) as info:
        make_site(cls, **keys)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def pjob(memory: int | None = 2048, cpus: int = 1, attempt: int = 1, label: str = "task", **kw) -> ParslJob:
    row = JobRow(1, f"{label}_1", label, 0, False, request_cpus=cpus, request_memory=memory, **kw)
    return ParslJob.from_row(row, attempt)


@pytest.fixture
def submitted(tmp_path, monkeypatch):
    """Call ``provider.submit`` with the scheduler command mocked.

    Returns a function (provider, scheduler stdout) -> (command, script, job id).
    """
    calls: list[str] = []

    def fake_execute_wait(self, cmd, timeout=None):
        calls.append(cmd)
        return 0, fake_execute_wait.stdout, ""

    fake_execute_wait.stdout = ""
    monkeypatch.setattr(ClusterProvider, "execute_wait", fake_execute_wait)

    def submit(provider, stdout: str) -> tuple[str, str, object]:
        provider.script_dir = str(tmp_path)
        fake_execute_wait.stdout = stdout
        job_id = provider.submit("echo WORKER_POOL_COMMAND", 1, "parsl.test.block-0")
        command = calls[-1]
        script = Path(command.split()[-1]).read_text()
        return command, script, job_id

    return submit


# ---- drop-in class paths -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "Local",
        "Slurm",
        "TripleSlurm",
        "Torque",
        "Generic",
        "work_queue.LocalSrunWorkQueue",
        "princeton.Tiger",
        "slac.Sdf",
        "nersc.CoriKnl",
        "ccin2p3.Ccin2p3",
    ],
)
def test_old_class_paths_import(path):
    module, _, name = f"{SITES}.{path}".rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, SiteConfig)


# ---- Slurm --------------------------------------------------------------------------

SLURM_MIN = {"nodes": 1, "walltime": "00:30:00"}


def test_slurm_defaults_are_the_old_plugins():
    site = make_site(f"{SITES}.Slurm", **SLURM_MIN)
    (executor,) = site.get_executors()
    provider = executor.provider
    assert isinstance(executor, HighThroughputExecutor) and executor.label == "slurm"
    assert provider.nodes_per_block == 1 and provider.walltime == "00:30:00"
    assert provider.cores_per_node is None and provider.mem_per_node is None
    # Parsl's own defaults, which the old plugin inherited.
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 0, 1)
    assert provider.exclusive is True and isinstance(provider.launcher, SingleNodeLauncher)
    assert "#SBATCH --job-name=bps.tester" in provider.scheduler_options
    assert "--dependency=singleton" not in provider.scheduler_options
    assert "--no-kill" not in provider.scheduler_options  # one node: nothing to keep
    assert site.select_executor(pjob()) == "slurm"


@pytest.mark.parametrize(
    "keys, expected",
    [({"nodes": 2}, True), ({"nodes": 2, "no_kill": False}, False), ({"nodes": 1, "no_kill": True}, True)],
)
def test_slurm_blocks_of_several_nodes_survive_a_lost_node(keys, expected):
    site = make_site(f"{SITES}.Slurm", **{**SLURM_MIN, **keys})
    (executor,) = site.get_executors()
    assert ("#SBATCH --no-kill" in executor.provider.scheduler_options) is expected


def test_slurm_every_key_reaches_the_sbatch_script(submitted):
    site = make_site(
        f"{SITES}.Slurm",
        nodes=3,
        cores_per_node=20,
        walltime="1-02:00:00",
        mem_per_node=64,
        qos="debug",
        constraint="haswell",
        singleton=True,
        exclusive=False,
        account="rubin",
        partition="milano",
        scheduler_options="#SBATCH --licenses=sps",
        worker_init="module load foo",
        init_blocks=0,
        min_blocks=0,
        max_blocks=4,
        parallelism=0.5,
        cmd_timeout=60,
        launcher="srun",
        launcher_options={"overrides": "-K0 -k"},
        provider_options={"gres": "gpu:1"},
        executor_options={"max_workers_per_node": 8},
        heartbeat_period=60,
        heartbeat_threshold=200,
        address="10.1.2.3",
    )
    (executor,) = site.get_executors()
    provider = executor.provider
    assert executor.address == "10.1.2.3" and executor.max_workers_per_node == 8
    assert (executor.heartbeat_period, executor.heartbeat_threshold) == (60, 200)
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (0, 0, 4)
    assert provider.parallelism == 0.5 and provider.cmd_timeout == 60
    assert isinstance(provider.launcher, SrunLauncher) and provider.launcher.overrides == "-K0 -k"
    command, script, job_id = submitted(provider, "Submitted batch job 4242")
    assert command.startswith("sbatch") and job_id == "4242"
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --time=1560",  # 1-02:00:00, in minutes
        "#SBATCH --cpus-per-task=20",
        "#SBATCH --mem=64g",
        "#SBATCH --qos=debug",
        "#SBATCH --constraint=haswell",
        "#SBATCH --dependency=singleton",
        "#SBATCH --account=rubin",
        "#SBATCH --partition=milano",
        "#SBATCH --licenses=sps",
        "#SBATCH --job-name=bps.tester",
        "#SBATCH --gres=gpu:1",
        "module load foo",
    ):
        assert line in script, f"{line!r} not in\n{script}"
    assert "#SBATCH --exclusive" not in script
    assert "srun" in script and "WORKER_POOL_COMMAND" in script


def test_slurm_priority_reaches_htex():
    site = make_site(f"{SITES}.Slurm", **SLURM_MIN)
    assert site.resource_specification(pjob(priority="5"), "slurm") == {"priority": 5}
    assert site.resource_specification(pjob(), "slurm") is None
    assert site.resource_specification(pjob(priority="high"), "slurm") is None


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"walltime": "00:10:00"}, "missing required key 'site.s.nodes'"),
        ({"nodes": 1}, "missing required key 'site.s.walltime'"),
        ({"nodes": "two", "walltime": "00:10:00"}, "'site.s.nodes' is 'two' (str): it must be a int"),
        ({"nodes": 0, "walltime": "00:10:00"}, "'site.s.nodes' is 0"),
        ({"nodes": 1, "walltime": 3600}, "'site.s.walltime' is 3600 (int): quote it"),
        ({"nodes": 1, "walltime": "ten"}, "'site.s.walltime' is 'ten'"),
        ({**SLURM_MIN, "singleton": "yes"}, "'site.s.singleton' is 'yes' (str): it must be a bool"),
        ({**SLURM_MIN, "mem_per_node": -4}, "'site.s.mem_per_node' is -4: it must be greater than 0"),
        ({**SLURM_MIN, "max_blocks": 0}, "'site.s.max_blocks' is 0"),
        ({**SLURM_MIN, "parallelism": 2}, "'site.s.parallelism' is 2.0: it must be between 0 and 1"),
        (
            {**SLURM_MIN, "launcher": "ssh"},
            "'site.s.launcher' is 'ssh', which is not a known launcher: use one of",
        ),
        ({**SLURM_MIN, "launcher_options": {"overrides": "-K0"}}, "'site.s.launcher_options' is set without"),
        (
            {**SLURM_MIN, "launcher": "srun", "launcher_options": {"overide": "-K0"}},
            "'site.s.launcher_options.overide' is not an option of Parsl's SrunLauncher",
        ),
        (
            {**SLURM_MIN, "provider_options": {"partitoin": "x"}},
            "'site.s.provider_options.partitoin' is not an option of Parsl's SlurmProvider",
        ),
        (
            {**SLURM_MIN, "provider_options": {"launcher": "srun"}},
            "'site.s.provider_options.launcher' cannot be set here: use the site's 'launcher'",
        ),
        (
            {**SLURM_MIN, "executor_options": {"max_workers_per_node": "8"}},
            "'site.s.executor_options.max_workers_per_node' is '8' (str): it must be a int",
        ),
        (
            {**SLURM_MIN, "executor_options": {"address": "1.2.3.4"}},
            "'site.s.executor_options.address' cannot be set here: use the site's 'address' key",
        ),
        (
            {**SLURM_MIN, "executor_options": {"manager_selector": "random"}},
            "'site.s.executor_options.manager_selector' needs a ManagerSelector object",
        ),
        (
            {**SLURM_MIN, "executor_options": "fast"},
            "'site.s.executor_options' is 'fast': it must be a mapping",
        ),
    ],
)
def test_slurm_bad_values_are_one_line_errors(keys, expected):
    assert expected in config_error(f"{SITES}.Slurm", **keys)


# ---- TripleSlurm --------------------------------------------------------------------


def test_triple_slurm_defaults():
    site = make_site(f"{SITES}.TripleSlurm", nodes=1)
    executors = site.get_executors()
    assert [e.label for e in executors] == ["small", "medium", "large"]
    assert [e.mem_per_worker for e in executors] == [2.0, 4.0, 8.0]
    assert [e.provider.walltime for e in executors] == ["10:00:00", "10:00:00", "40:00:00"]


def test_triple_slurm_keys():
    site = make_site(
        f"{SITES}.TripleSlurm",
        nodes=2,
        small_memory=3,
        medium_memory=6.5,
        large_memory=16,
        small_walltime="01:00:00",
        medium_walltime="02:00:00",
        large_walltime="03:00:00",
    )
    executors = site.get_executors()
    assert [e.mem_per_worker for e in executors] == [3.0, 6.5, 16.0]
    assert [e.provider.walltime for e in executors] == ["01:00:00", "02:00:00", "03:00:00"]
    assert {e.provider.nodes_per_block for e in executors} == {2}
    # 'walltime' overrides the three, as in the old plugin.
    site = make_site(f"{SITES}.TripleSlurm", nodes=1, walltime="00:20:00", small_walltime="01:00:00")
    assert {e.provider.walltime for e in site.get_executors()} == {"00:20:00"}


def test_triple_slurm_memory_choice_moves_up_on_scaled_retries():
    site = make_site(f"{SITES}.TripleSlurm", nodes=1)
    # requestMemory 1500 MB, memoryMultiplier 2: what the driver asks for
    # on attempts 1, 2, 3, 4.
    chosen = [site.select_executor(pjob(1500 * 2**k, attempt=k + 1)) for k in range(4)]
    assert chosen == ["small", "medium", "large", "large"]
    assert [site.select_executor(pjob(m)) for m in (None, 2048, 2049, 4096, 4097, 8192, 10**6)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
        "large",
    ]


def test_triple_slurm_bad_memory_order():
    message = config_error(f"{SITES}.TripleSlurm", nodes=1, small_memory=8, medium_memory=4)
    assert "small_memory (8.0) <= medium_memory (4.0)" in message


# ---- Torque -------------------------------------------------------------------------


def test_torque_keys_reach_the_qsub_script(submitted):
    site = make_site(
        f"{SITES}.Torque",
        nodes=2,
        tasks_per_node=4,
        walltime="01:30:00",
        queue="batch",
        account="proj",
        scheduler_options="#PBS -l mem=16gb",
        worker_init="source /opt/env.sh",
        max_blocks=3,
    )
    (executor,) = site.get_executors()
    provider = executor.provider
    assert executor.label == "torque" and executor.max_workers_per_node == 1
    assert isinstance(provider.launcher, MpiRunLauncher) and provider.max_blocks == 3
    command, script, job_id = submitted(provider, "123.pbs-server\n")
    assert command.startswith("qsub") and " -q batch" in command and " -A proj" in command
    assert job_id == "123.pbs-server"
    for line in (
        "#PBS -l nodes=2:ppn=4",
        "#PBS -l walltime=01:30:00",
        "#PBS -l mem=16gb",
        "#PBS -N bps.tester",
        "#PBS -q batch",
        "source /opt/env.sh",
        "mpirun -np $WORKERCOUNT --map-by core:4",
        "WORKERCOUNT=8",
        "export CORES=",
    ):
        assert line in script, f"{line!r} not in\n{script}"
    assert site.select_executor(pjob()) == "torque"


def test_torque_defaults_and_errors():
    site = make_site(f"{SITES}.Torque", nodes=1, walltime="00:10:00")
    (executor,) = site.get_executors()
    assert executor.provider.tasks_per_node == 1 and executor.provider.queue is None
    assert "missing required key 'site.s.nodes'" in config_error(f"{SITES}.Torque", walltime="00:10:00")
    assert "'site.s.tasks_per_node' is 0" in config_error(
        f"{SITES}.Torque", nodes=1, walltime="00:10:00", tasks_per_node=0
    )


# ---- Work Queue ---------------------------------------------------------------------


def test_work_queue_without_ndcctools_is_a_clear_error():
    pytest.importorskip("parsl.executors.workqueue.executor")
    if importlib.util.find_spec("ndcctools") is not None:
        pytest.skip("ndcctools is installed here")
    message = config_error(f"{SITES}.work_queue.LocalSrunWorkQueue")
    assert "ndcctools" in message and "'site.s.class'" in message


def test_work_queue_resource_specification():
    site = make_site(f"{SITES}.work_queue.LocalSrunWorkQueue", validate=False)
    spec = site.resource_specification(
        pjob(8192, 4, request_disk=1000, request_walltime="90", priority="3"),
        "work_queue",
    )
    assert spec == {"cores": 4, "memory": 8192, "disk": 1000, "running_time_min": 90, "priority": 3}
    # Work Queue wants cores, memory and disk together (autolabel is off).
    spec = site.resource_specification(pjob(None, request_walltime="01:30:00"), "work_queue")
    assert spec == {"cores": 1, "memory": None, "disk": None, "running_time_min": 90}
    assert site.select_executor(pjob()) == "work_queue"


def test_work_queue_provider_keys():
    site = make_site(f"{SITES}.work_queue.LocalSrunWorkQueue", validate=False, nodes_per_block=3)
    provider = site.get_provider()
    assert provider.nodes_per_block == 3 and provider.max_blocks == 1 and provider.cmd_timeout == 300
    assert isinstance(provider.launcher, SrunLauncher)
    provider = make_site(f"{SITES}.work_queue.LocalSrunWorkQueue", validate=False).get_provider()
    assert isinstance(provider.launcher, SingleNodeLauncher)


# ---- named clusters ----------------------------------------------------------------


def test_tiger_defaults(submitted):
    site = make_site(f"{SITES}.princeton.Tiger", address="10.0.0.1")
    (executor,) = site.get_executors()
    provider = executor.provider
    assert executor.label == "tiger" and executor.address == "10.0.0.1"
    assert (provider.nodes_per_block, provider.cores_per_node, provider.mem_per_node) == (4, 40, 187)
    assert provider.walltime == "05:00:00" and provider.cmd_timeout == 300
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 1, 2)
    assert provider.launcher.overrides == "-K0 -k"
    _, script, _ = submitted(provider, "Submitted batch job 7")
    assert "#SBATCH --dependency=singleton" in script and "export PATH=" in script
    # Documented keys override the defaults.
    site = make_site(f"{SITES}.princeton.Tiger", address="10.0.0.1", nodes=1, max_blocks=5, cmd_timeout=30)
    provider = site.get_executors()[0].provider
    assert (provider.nodes_per_block, provider.max_blocks, provider.cmd_timeout) == (1, 5, 30)


def test_tiger_without_infiniband_says_to_set_address():
    psutil = pytest.importorskip("psutil")
    if any(name[:2] in ("ib", "op") for name in psutil.net_if_addrs()):
        pytest.skip("this host has an InfiniBand interface")
    site = make_site(f"{SITES}.princeton.Tiger", validate=False)
    with pytest.raises(ConfigurationError, match="set 'site.s.address'"):
        site.get_executors()


def test_sdf_defaults():
    site = make_site(f"{SITES}.slac.Sdf", address="10.0.0.1")
    (executor,) = site.get_executors()
    provider = executor.provider
    assert executor.label == "sdf" and site.select_executor(pjob(10**6)) == "sdf"
    assert (provider.nodes_per_block, provider.cores_per_node, provider.mem_per_node) == (1, 100, 400)
    assert provider.walltime == "02:00:00" and provider.max_blocks == 2 and provider.min_blocks == 1
    for line in ("--partition=rubin", "--qos=normal", "--dependency=singleton"):
        assert line in provider.scheduler_options
    site = make_site(f"{SITES}.slac.Sdf", address="10.0.0.1", walltime="04:00:00", max_blocks=1)
    provider = site.get_executors()[0].provider
    assert provider.walltime == "04:00:00" and provider.max_blocks == 1


def test_cori_knl_defaults():
    site = make_site(f"{SITES}.nersc.CoriKnl", address="10.0.0.1")
    executors = site.get_executors()
    assert [e.label for e in executors] == ["small", "medium", "large"]
    for executor in executors:
        provider = executor.provider
        assert provider.nodes_per_block == 1 and provider.exclusive is True
        assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (0, 0, 1)
        assert provider.parallelism == 0 and provider.cmd_timeout == 300
        assert executor.heartbeat_period == 60 and executor.heartbeat_threshold == 180
        for line in ("--constraint=knl", "--module=cvmfs", "--licenses=cvmfs", "--time-min=2:00:00"):
            assert line in provider.scheduler_options
    assert [site.select_executor(pjob(m)) for m in (1000, 3000, 9000)] == ["small", "medium", "large"]


def test_ccin2p3_defaults(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    site = make_site(f"{SITES}.ccin2p3.Ccin2p3", address="10.0.0.1")
    executors = {e.label: e for e in site.get_executors()}
    assert list(executors) == ["small", "medium", "large", "xlarge"]
    assert [e.provider.mem_per_node for e in executors.values()] == [4, 10, 50, 150]
    assert [e.provider.max_blocks for e in executors.values()] == [3000, 1000, 100, 10]
    assert [e.provider.partition for e in executors.values()] == ["lsst,htc", "lsst", "lsst", "lsst"]
    for executor in executors.values():
        provider = executor.provider
        assert provider.account == "lsst" and provider.walltime == "72:00:00"
        assert provider.cores_per_node == 1 and provider.exclusive is False
        assert "#SBATCH --licenses=sps" in provider.scheduler_options
        assert executor.max_workers_per_node == 1
    scaled = [site.select_executor(pjob(3000 * 2**k, attempt=k + 1)) for k in range(6)]
    assert scaled == ["small", "medium", "large", "large", "large", "xlarge"]
    site.submit_path = None
    assert site.get_parsl_config().strategy == "htex_auto_scale"
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    site = make_site(f"{SITES}.ccin2p3.Ccin2p3", address="10.0.0.1")
    assert {e.provider.partition for e in site.get_executors()} == {"htc_arm"}


def test_ccin2p3_overrides(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    site = make_site(
        f"{SITES}.ccin2p3.Ccin2p3",
        address="10.0.0.1",
        account="other",
        walltime="24:00:00",
        scheduler_options=["--licenses=sps", "--qos=normal"],
        strategy="simple",
        small={"memory": 6, "partition": "flash"},
        xlarge={
            "memory": 180,
            "max_blocks": 2,
            "scheduler_options": ["--constraint=el9"],
            "walltime": "48:00:00",
        },
    )
    executors = {e.label: e for e in site.get_executors()}
    small, xlarge = executors["small"].provider, executors["xlarge"].provider
    assert small.mem_per_node == 6 and small.partition == "flash" and small.account == "other"
    assert "#SBATCH --qos=normal" in small.scheduler_options and small.walltime == "24:00:00"
    assert xlarge.mem_per_node == 180 and xlarge.max_blocks == 2 and xlarge.walltime == "48:00:00"
    assert "#SBATCH --constraint=el9" in xlarge.scheduler_options
    assert "--licenses=sps" not in xlarge.scheduler_options
    assert site.select_executor(pjob(6 * 1024)) == "small"
    assert site.get_parsl_config().strategy == "simple"
    assert "'site.s.small.memory' is 'big' (str): it must be a int" in config_error(
        f"{SITES}.ccin2p3.Ccin2p3", small={"memory": "big"}
    )
    assert "'site.s.small.cores' is not a slot setting" in config_error(
        f"{SITES}.ccin2p3.Ccin2p3", small={"cores": 2}
    )
    assert "'site.s.strategy' is 'fast'" in config_error(f"{SITES}.ccin2p3.Ccin2p3", strategy="fast")


# ---- Generic: any provider, launcher and executor from YAML -----------------------------

GENERIC = f"{SITES}.Generic"


def generic(executors: dict, **keys) -> SiteConfig:
    return make_site(GENERIC, executors=executors, address="10.0.0.1", **keys)


def generic_error(executors, **keys) -> str:
    return config_error(GENERIC, executors=executors, address="10.0.0.1", **keys)


@pytest.mark.parametrize(
    "provider, options, launcher, stdout, command_start, expected",
    [
        (
            "slurm",
            {"partition": "debug", "walltime": "00:05:00", "nodes_per_block": 2},
            ("srun", {"overrides": "-K0"}),
            "Submitted batch job 11",
            "sbatch",
            ["#SBATCH --partition=debug", "#SBATCH --nodes=2", "srun --ntasks"],
        ),
        (
            "pbspro",
            {
                "queue": "workq",
                "account": "acct",
                "walltime": "02:00:00",
                "cpus_per_node": 8,
                "select_options": "mem=32gb",
            },
            ("mpiexec", {}),
            "77.pbs\n",
            "qsub",
            ["#PBS -l walltime=02:00:00", "#PBS -l select=1:ncpus=8:mem=32gb", "mpiexec"],
        ),
        (
            "torque",
            {"queue": "batch", "walltime": "00:30:00", "nodes_per_block": 3},
            ("aprun", {"overrides": "-d 4"}),
            "88.torque\n",
            "qsub",
            ["#PBS -l walltime=00:30:00", "#PBS -l nodes=3:ppn=1", "aprun -n 3 -N 1 -d 4"],
        ),
        (
            "lsf",
            {"queue": "normal", "walltime": "01:00:00", "project": "rubin", "bsub_redirection": True},
            None,
            "Job <99> is submitted to queue <normal>.",
            "bsub <",
            ["#BSUB -W 60", "#BSUB -q normal", "#BSUB -P rubin"],
        ),
        (
            "condor",
            {"requirements": "Memory > 4000", "walltime": "00:10:00", "scheduler_options": '+Group = "lsst"'},
            None,
            "Submitting job(s).\n1 job(s) submitted to cluster 5.\n",
            "condor_submit",
            ["= Memory > 4000", '+Group = "lsst"', "machine_count           = 1"],
        ),
        (
            "gridengine",
            {"queue": "long.q", "walltime": "00:20:00", "scheduler_options": "#$ -pe smp 4"},
            None,
            "1234\n",
            "qsub -q long.q",
            ["#$ -l h_rt=00:20:00", "#$ -pe smp 4"],
        ),
    ],
)
def test_generic_batch_providers_write_the_right_submit_script(
    submitted, provider, options, launcher, stdout, command_start, expected
):
    section = {"provider": provider, "provider_options": options}
    if launcher:
        section.update(launcher=launcher[0], launcher_options=launcher[1])
    site = generic({"main": section})
    (executor,) = site.get_executors()
    assert isinstance(executor, HighThroughputExecutor) and executor.label == "main"
    assert executor.address == "10.0.0.1"
    command, script, job_id = submitted(executor.provider, stdout)
    assert command.startswith(command_start), command
    assert job_id
    for line in expected:
        assert line in script, f"{line!r} not in\n{script}"
    assert "WORKER_POOL_COMMAND" in script or "WORKER_POOL_COMMAND" in "".join(
        p.read_text() for p in Path(executor.provider.script_dir).glob("*.script")
    )


def test_generic_local_provider_and_htex_options():
    site = generic(
        {
            "node": {
                "provider": "local",
                "provider_options": {"init_blocks": 0, "max_blocks": 2, "worker_init": "ulimit -n 4096"},
                "launcher": "single_node",
                "executor_options": {
                    "cores_per_worker": 2,
                    "mem_per_worker": 4,
                    "max_workers_per_node": 3,
                    "worker_port_range": [50000, 50100],
                    "available_accelerators": ["0", "1"],
                },
            }
        }
    )
    (executor,) = site.get_executors()
    assert executor.cores_per_worker == 2 and executor.max_workers_per_node == 3
    assert executor.mem_per_worker == 4 and executor.available_accelerators == ["0", "1"]
    assert executor.worker_port_range == (50000, 50100)
    assert executor.provider.max_blocks == 2 and executor.provider.worker_init == "ulimit -n 4096"
    assert site.resource_specification(pjob(priority="-2"), "node") == {"priority": -2}


def test_generic_threads_executor_is_the_local_pool_with_its_budget():
    """A ``threads`` executor admits jobs by cores and memory: it is the
    local site's pool, sized by the section's cores and memory."""
    from lsst.ctrl.bps.parsl.localpool import LocalPoolExecutor

    site = generic({"here": {"executor": "threads", "cores": 3, "memory": 5000}})
    (executor,) = site.get_executors()
    assert isinstance(executor, LocalPoolExecutor)
    capacity = site.capacity("here")
    assert (capacity.cores, capacity.memory) == (3, 5000)
    assert (executor.cores, executor.memory) == (3, 5000)
    assert site.resource_specification(pjob(2000, cpus=2), "here") == {"cores": 2, "memory": 2000}
    assert site.resource_specification(pjob(9000, cpus=8), "here") == {"cores": 3, "memory": 5000}


def test_generic_choice_by_resources_and_labels():
    site = generic(
        {
            "big": {"provider": "local", "max_memory": 64000},
            "small": {"provider": "local", "max_memory": 4000, "max_cpus": 1},
            "wide": {"provider": "local", "max_memory": 16000, "max_cpus": 16},
            "rest": {"provider": "local"},
            "final": {"executor": "threads", "labels": ["finalJob"]},
        }
    )
    assert site.select_executor(pjob(2000)) == "small"
    assert site.select_executor(pjob(2000, cpus=4)) == "wide"
    assert site.select_executor(pjob(20000)) == "big"
    assert site.select_executor(pjob(100000)) == "rest"  # no limit: takes the rest
    assert site.select_executor(pjob(10**6, cpus=64, label="finalJob")) == "final"
    # A retry with scaled memory moves up: small -> wide -> big -> rest.
    chosen = [site.select_executor(pjob(3000 * 2**k, attempt=k + 1)) for k in range(6)]
    assert chosen == ["small", "wide", "wide", "big", "big", "rest"]


def test_generic_no_executor_fits():
    site = generic(
        {
            "small": {"provider": "local", "max_memory": 4000},
            "large": {"provider": "local", "max_memory": 16000, "max_cpus": 8},
        }
    )
    with pytest.raises(ConfigurationError) as info:
        site.select_executor(pjob(32768, cpus=16, label="finalJob"))
    message = str(info.value)
    assert "\n" not in message
    assert "no executor of site.s.executors takes" in message
    assert "'site.s.executors.large.max_memory'" in message and "label 'finalJob'" in message
    # A retry scaled beyond every executor runs on the largest instead of
    # stopping the run.
    assert site.select_executor(pjob(32000, attempt=3)) == "large"


def test_generic_prepare_rejects_a_job_that_fits_nowhere(tmp_path):
    from lsst.ctrl.bps.parsl import ParslService

    site = {"class": GENERIC, "executors": {"only": {"executor": "threads", "max_memory": 1000}}}
    config = make_config(computeSite="s", site={"s": site})
    gw = workflow([job("a", request_memory=2000)])
    with pytest.raises(ConfigurationError, match="no executor of site.s.executors takes"):
        ParslService(config).prepare(config, gw, str(tmp_path / "submit"))


def test_generic_retry_with_more_memory_runs_on_the_bigger_executor(tmp_path):
    """End to end on two local thread pools: the first attempt (800 MB)
    fails on 'small'; the retry asks for 1600 MB and runs on 'big'."""
    site = {
        "class": GENERIC,
        "executors": {
            "small": {"executor": "threads", "max_memory": 1000, "cores": 2, "memory": 4000},
            "big": {"executor": "threads", "cores": 2, "memory": 4000},
        },
    }
    config = make_config(computeSite="s", site={"s": site})
    script = '[ "${BPS_PARSL_ATTEMPT##*/}" != 1 ]'  # fails on attempt 1 only
    gw = workflow([job("grow", script, request_memory=800, memory_multiplier=2, number_of_retries=2)])
    result = run(gw, tmp_path / "submit", config)
    assert result["grow"][0] == SUCCEEDED and result["grow"][1] == 2
    rows = attempts(tmp_path / "submit", "grow")
    assert [(row[1], row[6], row[7]) for row in rows] == [(1, 800, "small"), (2, 1600, "big")]


@pytest.mark.parametrize(
    "executors, expected",
    [
        (None, "missing required key 'site.s.executors'"),
        ({}, "'site.s.executors' is {}: it must be a non-empty mapping"),
        ({"a": {"provider": "pbs"}}, "'site.s.executors.a.provider' is 'pbs', which is not a known provider"),
        ({"a": {"launcher": "ssh"}}, "'site.s.executors.a.launcher' is 'ssh', which is not a known launcher"),
        (
            {"a": {"executor": "mpi"}},
            "'site.s.executors.a.executor' is 'mpi', which is not a known executor kind",
        ),
        ({"a": {"memroy": 4}}, "'site.s.executors.a.memroy' is not a setting of an executor"),
        (
            {"a": {"provider": "slurm", "provider_options": {"nodes": 2}}},
            "'site.s.executors.a.provider_options.nodes' is not an option of Parsl's SlurmProvider: remove "
            "it or use one of partition,",
        ),
        (
            {"a": {"provider": "slurm", "provider_options": {"nodes_per_block": "2"}}},
            "'site.s.executors.a.provider_options.nodes_per_block' is '2' (str): it must be a int",
        ),
        (
            {"a": {"provider": "torque", "provider_options": {"max_blocks": 1.5}}},
            "'site.s.executors.a.provider_options.max_blocks' is 1.5 (float): it must be a int",
        ),
        (
            {"a": {"provider": "slurm", "provider_options": {"exclusive": "no"}}},
            "'site.s.executors.a.provider_options.exclusive' is 'no' (str): it must be a bool",
        ),
        (
            {"a": {"provider": "local", "provider_options": {"launcher": "srun"}}},
            "'site.s.executors.a.provider_options.launcher' cannot be set here: use "
            "'site.s.executors.a.launcher'",
        ),
        (
            {"a": {"executor_options": {"label": "x"}}},
            "'site.s.executors.a.executor_options.label' cannot be set here",
        ),
        (
            {"a": {"executor_options": {"cores_per_worker": "two"}}},
            "'site.s.executors.a.executor_options.cores_per_worker' is 'two' (str): it must be a number",
        ),
        (
            {"a": {"executor_options": {"worker_ports": [1, 2]}}},
            "'site.s.executors.a.executor_options.worker_ports' is not an option of Parsl's "
            "HighThroughputExecutor",
        ),
        (
            {"a": {"launcher_options": {"overrides": "x"}}},
            "'site.s.executors.a.launcher_options' is set without 'site.s.executors.a.launcher'",
        ),
        (
            {"a": {"launcher": "srun", "launcher_options": {"overides": "x"}}},
            "'site.s.executors.a.launcher_options.overides' is not an option of Parsl's SrunLauncher",
        ),
        ({"a": {"max_memory": "4GB"}}, "'site.s.executors.a.max_memory' is '4GB': it must be an integer"),
        ({"a": {"max_cpus": 0}}, "'site.s.executors.a.max_cpus' is 0: it must be an integer greater than 0"),
        ({"a": {"labels": "isr"}, "b": {"labels": [1]}}, "'site.s.executors.b.labels' is [1]"),
        (
            {"a": {"executor": "threads", "provider": "slurm"}},
            "'site.s.executors.a.provider' is set but a threads executor runs jobs on this machine",
        ),
        ({"a": {"cores": 4}}, "'site.s.executors.a.cores' only applies to 'executor: threads'"),
        (
            {"a": {"provider": "lsf", "provider_options": {"walltime": "01:00"}}},
            "'site.s.executors.a.provider_options.walltime' is '01:00': use HH:MM:SS",
        ),
        (
            {"a": {"provider": "kubernetes", "provider_options": {"namespace": "x"}}},
            "'site.s.executors.a.provider_options' lacks image, required by Parsl's KubernetesProvider",
        ),
        ({"a": "htex"}, "'site.s.executors.a' is 'htex': it must be a mapping of executor settings"),
    ],
)
def test_generic_bad_values_are_one_line_errors(executors, expected):
    keys = {} if executors is None else {"executors": executors}
    message = config_error(GENERIC, **keys)
    assert expected in message, message


def test_generic_kubernetes_needs_its_client():
    executors = {"k8s": {"provider": "kubernetes", "provider_options": {"image": "lsstsqre/centos:w_latest"}}}
    if importlib.util.find_spec("kubernetes") is None:
        assert (
            "'site.s.executors.k8s.provider_options': Parsl's KubernetesProvider rejected"
            in generic_error(executors)
        )
    else:
        (executor,) = generic(executors).get_executors()
        assert executor.provider.image == "lsstsqre/centos:w_latest"


def test_generic_work_queue_needs_ndcctools():
    if importlib.util.find_spec("ndcctools") is not None:
        pytest.skip("ndcctools is installed here")
    message = generic_error({"wq": {"executor": "work_queue"}})
    assert "'site.s.executors.wq.executor' needs Work Queue" in message and "ndcctools" in message


def test_generic_work_queue_resource_specification():
    site = make_site(GENERIC, validate=False, executors={"wq": {"executor": "work_queue"}})
    spec = site.resource_specification(pjob(3000, 2, request_disk=10), "wq")
    assert spec == {"cores": 2, "memory": 3000, "disk": 10}


def test_example_site_files_ship_and_validate(tmp_path):
    """The example sites ship in the package (etc/sites/*.yaml), and each one
    loads through BpsConfig and SiteConfig.from_config and validates (Work
    Queue's with the one-line error that names ndcctools when it is not
    installed)."""
    from importlib import resources

    import yaml
    from lsst.ctrl.bps.parsl.sites.batchsite import require_work_queue

    files = sorted(
        (path for path in (resources.files("lsst.ctrl.bps.parsl") / "etc" / "sites").iterdir()),
        key=lambda path: path.name,
    )
    assert len([path for path in files if path.name.endswith(".yaml")]) >= 10
    for path in files:
        if not path.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(path.read_text())
        (name,) = data["site"]
        config = make_config(data, computeSite=name)
        site = SiteConfig.from_config(config)
        if "work_queue" in data["site"][name]["class"]:
            try:
                require_work_queue("x")
            except ConfigurationError:
                with pytest.raises(ConfigurationError, match="ndcctools"):
                    site.validate()
                continue
        site.validate()


# ---- every key the old plugin's sites read ---------------------------------------------

OLD_SITE_KEYS = {
    # site.py (SiteConfig)
    "class": "All", "commandPrefix": "All", "environment": "All", "monitorEnable": "All",
    "monitorInterval": "All", "monitorFilename": "All", "retries": "All", "run_dir": "All",
    # sites/slurm.py (Slurm, TripleSlurm)
    "nodes": "S", "cores_per_node": "S", "walltime": "S", "mem_per_node": "S", "qos": "S",
    "constraint": "S", "singleton": "S", "exclusive": "S", "account": "S", "scheduler_options": "S",
    "small_memory": "T", "medium_memory": "T", "large_memory": "T", "small_walltime": "T",
    "medium_walltime": "T", "large_walltime": "T",
    # sites/local.py, princeton.py, slac.py, torque.py, work_queue.py, ccin2p3.py
    "cores": "L", "max_blocks": "Ti", "cmd_timeout": "Ti", "queue": "Tq", "tasks_per_node": "Tq",
    "worker_init": "Tq", "port": "WQ", "worker_options": "WQ", "wq_max_retries": "WQ",
    "nodes_per_block": "WQ", "partition": "CC", "strategy": "CC", "<slot>.memory": "CC",
    "<slot>.max_blocks": "CC", "<slot>.scheduler_options": "CC", "<slot>.partition": "CC",
    "<slot>.walltime": "CC",
}  # fmt: skip
"""Every key of ``site.<computeSite>`` the old plugin (lsst-ctrl-bps-parsl
30.2026.4300: site.py and sites/*.py) reads, with a site that reads it."""


def test_every_old_site_key_is_documented_and_none_is_ignored():
    """Each old key has a row in doc/sites.md's reference table that names a
    site using it, and no row says a key is ignored (the keys' effects are
    tested one by one in this file and in test_dropin_api.py)."""
    rows = {}
    for line in (Path(__file__).parents[1] / "doc" / "sites.md").read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for key in cells[0].split("`")[1::2]:
                rows.setdefault(key, []).append(cells)
    for key, site in OLD_SITE_KEYS.items():
        assert key in rows, f"{key} has no row in doc/sites.md"
        assert any(
            site in cells[-1] or "All" in cells[-1] or "Slurm family" in cells[-1] for cells in rows[key]
        ), key
    assert "**Ignored**" not in (Path(__file__).parents[1] / "doc" / "sites.md").read_text()


def test_run_dir_is_where_parsl_writes_its_run_information(tmp_path):
    """``run_dir``, as the old plugin read it, places Parsl's run directory."""
    site = {"class": f"{SITES}.Local", "cores": 1, "run_dir": "my_runinfo"}
    result = run(workflow([job("a")]), tmp_path / "submit", make_config(site={"local": site}))
    assert result["a"][0] == SUCCEEDED
    assert (tmp_path / "submit" / "my_runinfo" / "000").is_dir()
    assert not (tmp_path / "submit" / "parsl" / "runinfo").exists()
    assert make_site(f"{SITES}.Local", run_dir="/abs/where").run_dir == "/abs/where"
    assert "'site.s.run_dir'" in config_error(f"{SITES}.Local", run_dir=5)
