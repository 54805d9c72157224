"""A subnet with more containers than a bridge has ports: containers past the first thousand addresses join
segments of the subnet's bridge, one broadcast domain, checked with the real CLIs in a simulated node.

Three containers stand in for three thousand: the segment follows from the address alone, so one address in
each thousand is enough to drive every path."""

import json

from agent import segments
from tests.support import sh

SUBNET = "10.233.0.0/20"
BRIDGE = "lxcbr-seg"
# Offsets 10, 1010 and 2010 into the subnet: segment 0 (the bridge itself), 1 and 2.
ADDRESSES = {"near": "10.233.0.10/20", "mid": "10.233.3.242/20", "far": "10.233.7.218/20"}
PTY_NR = "/proc/sys/kernel/pty/nr"


def ports(netns, master):
    return sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show", "master", master, netns=netns)))


def mac_of(netns, name):
    return json.loads(sh("ip", "-j", "link", "show", name, netns=netns))[0]["address"]


def link_names(netns):
    return {link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=netns))}


def pings(agent, name, address):
    return agent.run(name, ["ping", "-c", "1", "-W", "3", address.split("/")[0]])["exit_code"] == 0


def read_int(path):
    with open(path) as handle:
        return int(handle.read())


def test_containers_past_a_bridges_ports_join_its_segments_and_reach_each_other(agent_in_host):
    agent, netns = agent_in_host.connect(), agent_in_host.netns
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, SUBNET, owner="segments")
    gateway_mac = mac_of(netns, BRIDGE)
    agent.clone("base", list(ADDRESSES))
    agent.set_addresses(BRIDGE, ADDRESSES)
    ptys_before = read_int(PTY_NR)
    agent.start(list(ADDRESSES))
    # A container holds a pty for its console and one for its single tty (lxc.tty.max 1), not 5 or 6.
    assert read_int(PTY_NR) - ptys_before <= 2 * len(ADDRESSES)

    first, uplink1, peer1 = segments.names(BRIDGE, 1)
    second, uplink2, peer2 = segments.names(BRIDGE, 2)
    aliases = {link["ifname"]: link.get("ifalias") for link in json.loads(sh("ip", "-j", "link", netns=netns))}
    assert aliases[first] == f"lxc-agent-segment 1 of={BRIDGE}"
    assert aliases[second] == f"lxc-agent-segment 2 of={BRIDGE}"
    # The subnet's bridge carries the near container and an uplink per segment; each segment its container and
    # its uplink's peer.
    on_bridge = ports(netns, BRIDGE)
    assert uplink1 in on_bridge and uplink2 in on_bridge and len(on_bridge) == 3
    for segment, peer in ((first, peer1), (second, peer2)):
        on_segment = ports(netns, segment)
        assert peer in on_segment and len(on_segment) == 2
    assert {network["bridge"]: network["segments"] for network in agent.list_networks()} == {BRIDGE: 2}
    # The gateway's MAC stays put as ports join (a bridge without a set MAC takes its lowest port's).
    assert mac_of(netns, BRIDGE) == gateway_mac and gateway_mac.endswith(":0a:e9:00:01")

    # One broadcast domain: each reaches the others and the gateway, across segments.
    assert pings(agent, "far", ADDRESSES["near"])
    assert pings(agent, "near", ADDRESSES["mid"])
    assert pings(agent, "mid", ADDRESSES["far"])
    assert pings(agent, "far", "10.233.0.1")
    # Only the subnet's bridge answers for the gateway: a segment is a switch (NOARP), not a host.
    for segment in (first, second):
        assert "NOARP" in json.loads(sh("ip", "-j", "link", "show", segment, netns=netns))[0]["flags"]
    for name in ADDRESSES:
        # IPv4 only: no neighbour discovery or MLD for the bridges to flood to every container.
        ipv6 = agent.run(name, ["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"])["stdout"].strip()
        assert ipv6 == "1", name
        assert pings(agent, name, "10.233.0.1")
        neighbours = agent.run(name, ["arp", "-an"])["stdout"]
        assert f"(10.233.0.1) at {gateway_mac}" in neighbours, (name, neighbours)

    # A host that lost the segment (a reboot, or a hand) gets it back when its container starts again.
    agent.stop(["mid"], timeout=1)
    sh("ip", "link", "del", first, netns=netns)  # its uplink pair stays, attached to nothing on that side
    assert first not in link_names(netns)
    agent.start(["mid"])
    assert peer1 in ports(netns, first) and uplink1 in ports(netns, BRIDGE)
    assert pings(agent, "mid", ADDRESSES["near"])

    agent.destroy([*ADDRESSES, "base"])
    agent.destroy_network(BRIDGE, owner="segments")
    left = {name for name in link_names(netns) if name.startswith(("lxs", "lxu", "lxd", "lxcbr"))}
    assert left == set()


def test_each_container_gets_a_mac_of_its_own_on_a_crowded_subnet(agent_in_host):
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, SUBNET, owner="segments")
    names = [f"m{index}" for index in range(3)]
    agent.clone("base", names)
    agent.set_addresses(BRIDGE, {name: f"10.233.0.{20 + index}/20" for index, name in enumerate(names)})
    macs = set()
    for name in names:
        with open(f"{agent_in_host.lxcpath}/{name}/config") as handle:
            config = dict(line.split(" = ", 1) for line in handle.read().splitlines() if " = " in line)
        assert config["lxc.tty.max"] == "1"
        macs.add(config["lxc.net.0.hwaddr"])
    assert len(macs) == len(names) and all(mac.startswith("02:") for mac in macs)
    agent.destroy([*names, "base"])
    agent.destroy_network(BRIDGE, owner="segments")
