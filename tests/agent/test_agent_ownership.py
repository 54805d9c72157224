"""The agent changes only containers it made: one made beside them with `lxc-create` (or by anything else) is
refused by every call that would change it, and stays as it was."""

import ipaddress
import os

import pytest

from agent.errors import Conflict
from tests.support import lxc_states, sh

SUBNET = ipaddress.ip_network("10.231.11.0/24")
BRIDGE = "lxcbr-own"
NOT_OURS = r"\['foreign(-stopped)?'\] in \S+ were not made by lxc-agent"


def lxc_create(lxcpath, name, netns=None):
    """A busybox container made with the LXC tools alone, as an administrator would beside the agent's (with no
    network: the host's default config names an lxcbr0 these hosts do not have)."""
    config = os.path.join(lxcpath, f".{name}.conf")
    with open(config, "w") as handle:
        handle.write("lxc.net.0.type = empty\n")
    try:
        sh("lxc-create", "-P", lxcpath, "-n", name, "-t", "busybox", "-f", config, netns=netns)
    finally:
        os.unlink(config)


def lxc_start(lxcpath, name, netns=None):
    sh("lxc-start", "-P", lxcpath, "-n", name, netns=netns)
    sh("lxc-wait", "-P", lxcpath, "-n", name, "-s", "RUNNING", "-t", "30", netns=netns)


def everything_under(path):
    found = []
    for folder, folders, files in os.walk(path):
        found.extend(os.path.relpath(os.path.join(folder, entry), path) for entry in folders + files)
    return sorted(found)


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.destroy(["foreign"]),
        lambda a: a.destroy(["mine", "foreign"]),
        lambda a: a.stop(["foreign"]),
        lambda a: a.stop(["foreign"], 0),
        lambda a: a.start(["foreign-stopped"]),
        lambda a: a.run("foreign", ["touch", "/agent-was-here"]),
        lambda a: a.clone("foreign", ["copy-of-foreign"]),
        lambda a: a.clone("foreign-stopped", ["copy-of-foreign"]),
    ],
    ids=["destroy", "destroy-with-one-of-ours", "stop", "kill", "start", "run", "clone-running", "clone"],
)
def test_a_container_made_by_lxc_create_is_refused_and_stays(loopback_agent, lxcpath, call):
    agent = loopback_agent.connect()
    agent.create("mine", "busybox")
    lxc_create(lxcpath, "foreign")
    lxc_create(lxcpath, "foreign-stopped")
    lxc_start(lxcpath, "foreign")
    before = (lxc_states(lxcpath), everything_under(os.path.join(lxcpath, "foreign")))
    with pytest.raises(Conflict, match=NOT_OURS):
        call(agent)
    assert (lxc_states(lxcpath), everything_under(os.path.join(lxcpath, "foreign"))) == before
    assert sh("lxc-attach", "-P", lxcpath, "-n", "foreign", "--", "ls", "/agent-was-here", check=False) == ""


def test_addresses_are_not_given_to_a_container_the_agent_did_not_make(agent_in_host, sim_host, lxcpath):
    agent = agent_in_host.connect()
    agent.create("mine", "busybox")
    lxc_create(lxcpath, "foreign", netns=sim_host.netns)
    agent.ensure_network(BRIDGE, str(SUBNET))
    with open(os.path.join(lxcpath, "foreign", "config")) as handle:
        config = handle.read()
    with pytest.raises(Conflict, match=NOT_OURS):
        agent.set_addresses(BRIDGE, {"mine": f"{SUBNET[5]}/24", "foreign": f"{SUBNET[6]}/24"})
    with open(os.path.join(lxcpath, "foreign", "config")) as handle:
        assert handle.read() == config
    assert agent.list(["mine"])[0]["configured_address"] is None, "nothing changed for the agent's own either"
    agent.destroy(["mine"])
    agent.destroy_network(BRIDGE)


def test_what_a_killed_create_left_is_the_agents_to_destroy(loopback_agent, lxcpath):
    """The mark is the first thing a create or clone writes: a folder an agent killed mid-create left (no config
    yet, or config without the finished record) is refused by create and removed by destroy."""
    agent = loopback_agent.connect()
    agent.create("whole", "busybox")
    os.mkdir(os.path.join(lxcpath, "cut-short"))
    with open(os.path.join(lxcpath, "cut-short", "lxc-agent.json"), "w") as handle:
        handle.write('{"unfinished": true}')
    with pytest.raises(Conflict, match="'cut-short' is unfinished"):
        agent.create("cut-short", "busybox")
    assert agent.clone("whole", ["half"]) == ["half"]
    with open(os.path.join(lxcpath, "half", "lxc-agent.json"), "w") as handle:
        handle.write('{"unfinished": true}')
    with pytest.raises(Conflict, match="made from an unfinished create or clone"):
        agent.create("half", "busybox")
    assert agent.destroy(["cut-short", "half"]) == ["cut-short", "half"]
    assert sorted(os.listdir(lxcpath)) == [".lxc-agent", "whole"]
    assert agent.create("cut-short", "busybox") == {"name": "cut-short", "created": True}
    agent.destroy(["whole", "cut-short"])
