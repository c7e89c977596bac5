"""Slurm sites start a worker pool on every node of a block, and the
workers' address is one the nodes can reach (not loopback).

No Slurm runs here: executors are built and checked; ``slurm_node_addresses``
(which asks ``sinfo``) is replaced by one that finds no Slurm unless a test
says otherwise. The same keys run for real on the multi-node rig in
``test_multinode_slurm.py``.
"""

from __future__ import annotations

import pytest
from lsst.ctrl.bps.parsl import ParslService
from lsst.ctrl.bps.parsl.configuration import ConfigurationError
from lsst.ctrl.bps.parsl.site import SiteConfig
from lsst.ctrl.bps.parsl.sites import batchsite as address_module
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from synthetic import make_config

SITES = "lsst.ctrl.bps.parsl.sites"
MULTI = {"nodes": 2, "walltime": "00:30:00", "address": "10.0.0.1"}


@pytest.fixture(autouse=True)
def no_slurm_here(monkeypatch):
    monkeypatch.setattr(address_module, "slurm_node_addresses", lambda partition=None: [])


def make_site(cls: str, **keys) -> SiteConfig:
    config = make_config(computeSite="s", site={"s": {"class": cls, **keys}})
    site = SiteConfig.from_config(config)
    site.validate()
    return site


def submission_error(cls: str, **keys) -> str:
    """The one-line message ``bps submit``'s submission checks give."""
    config = make_config(computeSite="s", site={"s": {"class": cls, **keys}})
    with pytest.raises(ConfigurationError) as info:
        ParslService(config).run_submission_checks()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("cls", ["Slurm", "TripleSlurm"])
def test_multi_node_blocks_start_a_pool_on_every_node(cls):
    site = make_site(f"{SITES}.{cls}", **MULTI)
    executors = site.get_executors()
    assert len(executors) == (3 if cls == "TripleSlurm" else 1)
    for executor in executors:
        launcher = executor.provider.launcher
        assert executor.provider.nodes_per_block == 2
        assert isinstance(launcher, SrunLauncher) and launcher.overrides == "-K0 -k --cpu-bind=none"
        # One srun task per node: a worker pool on each.
        assert "srun --ntasks 2 -l -K0 -k --cpu-bind=none" in launcher("CMD", 1, 2)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("SrunLauncher", SrunLauncher),
        ("srun", SrunLauncher),
        ("MpiExecLauncher", MpiExecLauncher),
        ("mpiexec", MpiExecLauncher),
        ("SingleNodeLauncher", SingleNodeLauncher),
        ("single_node", SingleNodeLauncher),
    ],
)
def test_launcher_key_chooses_another(name, kind):
    (executor,) = make_site(f"{SITES}.Slurm", launcher=name, **MULTI).get_executors()
    assert type(executor.provider.launcher) is kind
    if kind is SrunLauncher:
        assert executor.provider.launcher.overrides == "-K0 -k --cpu-bind=none"


def test_launcher_options_replace_the_srun_defaults():
    site = make_site(
        f"{SITES}.Slurm", launcher="SrunLauncher", launcher_options={"overrides": "-K1"}, **MULTI
    )
    assert site.get_executors()[0].provider.launcher.overrides == "-K1"


def test_named_clusters_keep_their_launchers_unless_the_key_is_set():
    (sdf,) = make_site(f"{SITES}.slac.Sdf", address="10.0.0.1").get_executors()
    assert sdf.provider.launcher.overrides == "-K0 -k --slurmd-debug=verbose"
    (sdf,) = make_site(f"{SITES}.slac.Sdf", address="10.0.0.1", launcher="MpiExecLauncher").get_executors()
    assert isinstance(sdf.provider.launcher, MpiExecLauncher)


def test_unknown_launcher_is_refused_at_submission_checks():
    message = submission_error(f"{SITES}.Slurm", launcher="SshLauncher", **MULTI)
    assert message.startswith("'site.s.launcher' is 'SshLauncher', which is not a known launcher: use one of")
    assert "srun" in message and "SrunLauncher" in message and "MpiExecLauncher" in message


def test_interface_key_gives_that_interfaces_address():
    interfaces = address_module._host_addresses()
    name, addresses = next(iter(interfaces.items()))
    keys = {k: v for k, v in MULTI.items() if k != "address"}
    (executor,) = make_site(f"{SITES}.Slurm", interface=name, **keys).get_executors()
    assert executor.address == addresses[0]


def test_unknown_interface_and_both_keys_are_refused():
    keys = {k: v for k, v in MULTI.items() if k != "address"}
    message = submission_error(f"{SITES}.Slurm", interface="nosuch0", **keys)
    assert message.startswith("'site.s.interface' is 'nosuch0', which is not an interface of this host")
    message = submission_error(f"{SITES}.Slurm", interface="lo", **MULTI)
    assert message == "'site.s.address' and 'site.s.interface' are both set: keep one"


def test_default_address_is_the_route_to_the_nodes(monkeypatch):
    seen = []

    def nodes(partition=None):
        seen.append(partition)
        return ["192.0.2.99"]

    monkeypatch.setattr(address_module, "slurm_node_addresses", nodes)
    monkeypatch.setattr(address_module, "_route_source", lambda target: "192.0.2.7")
    keys = {k: v for k, v in MULTI.items() if k != "address"}
    (executor,) = make_site(f"{SITES}.Slurm", partition="milano", **keys).get_executors()
    assert executor.address == "192.0.2.7" and seen[-1] == "milano"


def test_default_address_is_never_loopback_when_another_exists(monkeypatch):
    monkeypatch.setattr(
        address_module, "_host_addresses", lambda: {"lo": ["127.0.0.1"], "eth9": ["198.51.100.4"]}
    )
    # Nodes on this very host (routes through loopback), or no Slurm known.
    assert address_module.choose_address(["127.0.0.1"], "site.s") == "198.51.100.4"
    assert address_module.choose_address([], "site.s") == "198.51.100.4"
    monkeypatch.setattr(address_module, "_host_addresses", lambda: {"lo": ["127.0.0.1"]})
    # This host is the only node and has nothing but loopback: loopback works.
    assert address_module.choose_address(["127.0.0.1"], "site.s") == "127.0.0.1"


def test_undeterminable_address_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(address_module, "_host_addresses", lambda: {"lo": ["127.0.0.1"]})
    monkeypatch.setattr(address_module, "slurm_node_addresses", lambda partition=None: [])
    keys = {k: v for k, v in MULTI.items() if k != "address"}
    message = submission_error(f"{SITES}.Slurm", **keys)
    assert message == (
        "cannot determine the address workers use to reach this host (no interface other than loopback): "
        "set 'site.s.address' or 'site.s.interface'"
    )


def test_route_source_of_a_local_address_is_local():
    for addresses in address_module._host_addresses().values():
        for address in addresses:
            assert address_module._route_source(address) is not None
    assert address_module._route_source("no-such-host.invalid") is None
