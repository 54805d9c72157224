"""A real Debian container (debootstrap from the Debian mirror, systemd as init): boots, keeps its address, clones."""

import re

import pytest

from agent import memory_merge
from simlab import AgentProcess
from tests.support import system_state

pytestmark = pytest.mark.slow

BRIDGE = "lxcbr-deb"


@pytest.fixture
def debian_made_outside(lxcpath, pki_dir):
    """Simulated hosts have no route to the Debian mirror, so a loopback agent creates the container in the same
    lxcpath first; the agent inside the host then takes over what an earlier agent process made."""
    process = AgentProcess(lxcpath, pki_dir)
    try:
        assert process.connect().create("deb", "debian", release="bookworm")["created"]
    finally:
        process.stop(keep_containers=True)


def test_debian_boots_systemd_keeps_its_static_address_and_clones(debian_made_outside, agent_in_host):
    agent = agent_in_host.connect()
    assert agent.create("deb", "debian", release="bookworm")["created"] is False
    network = agent.ensure_network(BRIDGE, "10.232.0.0/24")
    addresses = {"deb": "10.232.0.10/24", "deb-a": "10.232.0.11/24", "deb-b": "10.232.0.12/24"}
    agent.set_addresses(BRIDGE, {"deb": addresses["deb"]})
    agent.start(["deb"])

    assert system_state(agent, "deb") == "running"
    shown = agent.run("deb", ["ip", "-4", "addr", "show", "eth0"])["stdout"]
    assert "inet 10.232.0.10/24" in shown, "ifupdown or DHCP must not have replaced the static address"
    assert f"default via {network['gateway']} dev eth0" in agent.run("deb", ["ip", "-4", "route"])["stdout"]
    machine_id = agent.run("deb", ["cat", "/etc/machine-id"])["stdout"].strip()

    agent.stop(["deb"], timeout=60)
    assert agent.clone("deb", ["deb-a", "deb-b"]) == ["deb-a", "deb-b"]
    agent.set_addresses(BRIDGE, {name: addresses[name] for name in ("deb-a", "deb-b")})
    merge = memory_merge.problem() is None
    agent.start(["deb-a", "deb-b"], 60, merge)  # merge_memory: init through setarch -R, all of it mergeable
    ids = set()
    for name in ("deb-a", "deb-b"):
        assert system_state(agent, name) == "running", name
        if merge:
            journald = agent.run(name, ["pidof", "systemd-journald"])["stdout"].strip()
            for pid in ("1", journald):
                # ADDR_NO_RANDOMIZE (0x0040000), and KSM's merge-any, in init and in a service it started
                seen = agent.run(name, ["cat", f"/proc/{pid}/personality", f"/proc/{pid}/ksm_stat"])["stdout"]
                assert seen.startswith("00040000\n") and "ksm_merge_any: yes" in seen, (name, pid, seen)
        assert agent.run(name, ["hostname"])["stdout"].strip() == name
        assert re.search(rf"inet {addresses[name]}\b", agent.run(name, ["ip", "-4", "addr"])["stdout"])
        ids.add(agent.run(name, ["cat", "/etc/machine-id"])["stdout"].strip())
    assert len(ids) == 2 and machine_id not in ids, "every clone has its own machine-id"

    agent.destroy(["deb-a", "deb-b", "deb"])
    agent.destroy_network(BRIDGE)
    assert agent_in_host.states() == {}
