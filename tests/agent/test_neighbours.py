"""agent.neighbours through RPC on real LXC and netlink: a started container's ARP stays on its own bridge port, and
every container still reaches the host, its gateway and the others, on the subnet's bridge and on a segment. Each
port is made so as soon as its container runs, while the others of the batch are still starting."""

import ipaddress
import json
import os
import subprocess
import sys

from agent.neighbours import port_name
from tests.support import sh

SUBNET = ipaddress.ip_network("10.233.16.0/20")  # room for a segment: offsets 1,000 and up
BRIDGE = "lxcbr-nbr"
# a, b on the subnet's bridge; c, d on its segment 1
OFFSETS = {"nbr-a": 20, "nbr-b": 21, "nbr-c": 1020, "nbr-d": 1021}

# Lists, until stdin closes, the frames the bridge sends to the container behind host link argv[1]: what leaves
# that link (PACKET_OUTGOING) from another source than the link itself (its own IPv6 link-local chatter).
WATCH = """
import select, socket, sys
watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
watch.bind((sys.argv[1], 0))
own = open(f"/sys/class/net/{sys.argv[1]}/address").read().strip()
print("ready", flush=True)
sent = []
while True:
    ready, _, _ = select.select([watch, sys.stdin], [], [])
    if sys.stdin in ready:
        break
    frame, address = watch.recvfrom(128)
    if address[2] == socket.PACKET_OUTGOING and frame[6:12].hex(":") != own:
        sent.append(frame[12:14].hex())
print(" ".join(sent))
"""


def address(name):
    return str(SUBNET[OFFSETS[name]])


def host_neighbours(netns):
    return {each["dst"]: each for each in json.loads(sh("ip", "-j", "neigh", "show", "dev", BRIDGE, netns=netns))}


def uplink_fdb(netns, mac):
    shown = json.loads(sh("bridge", "-j", "fdb", "show", "br", BRIDGE, netns=netns))
    return [each for each in shown if each.get("mac") == mac]


def ping(agent, name, target):
    return agent.run(name, ["ping", "-c", "1", "-W", "2", target])["exit_code"] == 0


def test_a_started_containers_arp_stays_on_its_port_and_every_container_is_still_reached(
    agent_in_host, sim_host, lxcpath
):
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, str(SUBNET))
    names = list(OFFSETS)
    agent.clone("base", names)
    agent.set_addresses(BRIDGE, {name: f"{address(name)}/{SUBNET.prefixlen}" for name in names})
    assert agent.start(names) == names
    netns = sim_host.netns

    macs = {name: agent.run(name, ["cat", "/sys/class/net/eth0/address"])["stdout"].strip() for name in names}
    known = host_neighbours(netns)
    for name in names:
        assert "PERMANENT" in known[address(name)]["state"], known.get(address(name))
        assert known[address(name)]["lladdr"] == macs[name], "the entry holds the container's own MAC"
        port = json.loads(sh("ip", "-d", "-j", "link", "show", port_name(name), netns=netns))[0]
        slave = port["linkinfo"]["info_slave_data"]
        assert slave["proxy_arp"] and slave["proxy_arp_wifi"], slave
        assert sh("cat", f"/proc/sys/net/ipv6/conf/{port_name(name)}/disable_ipv6", netns=netns).strip() == "1"
        routes = sh("ip", "-6", "route", "show", "table", "all", "dev", port_name(name), netns=netns)
        assert routes.strip() == "", f"the port has no IPv6 routes of its own: {routes}"
    for name in ("nbr-c", "nbr-d"):
        assert [each.get("state") for each in uplink_fdb(netns, macs[name]) if each["ifname"] != port_name(name)] == [
            "static"
        ], "the subnet's bridge knows a segment's container on its uplink"

    watch = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", WATCH, port_name("nbr-b")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout.readline().strip() == "ready"
        gateway = str(SUBNET[1])
        for name in ("nbr-a", "nbr-c", "nbr-d"):
            assert agent.run(name, ["ip", "neigh", "flush", "dev", "eth0"])["exit_code"] == 0
        reached = {
            "a -> gateway": ping(agent, "nbr-a", gateway),
            "c -> gateway": ping(agent, "nbr-c", gateway),
            "a -> c": ping(agent, "nbr-a", address("nbr-c")),
            "c -> d": ping(agent, "nbr-c", address("nbr-d")),
            "d -> a": ping(agent, "nbr-d", address("nbr-a")),
        }
        for name in ("nbr-a", "nbr-c", "nbr-d"):
            reached[f"host -> {name}"] = (
                subprocess.run(
                    ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "2", address(name)], check=False
                ).returncode
                == 0
            )
    finally:
        sent_to_b = watch.communicate(input="", timeout=30)[0].split()
    assert all(reached.values()), reached
    assert sent_to_b == [], f"frames (by EtherType) the bridge sent to nbr-b while the others talked: {sent_to_b}"
    assert ping(agent, "nbr-b", address("nbr-d")) and ping(agent, "nbr-d", address("nbr-b")), "b still takes part"

    agent.stop(["nbr-c"], 0)
    assert address("nbr-c") not in host_neighbours(netns), "the host's entry goes with the stop"
    assert uplink_fdb(netns, macs["nbr-c"]) == [], "and so does the uplink's"
    agent.destroy([*names, "base"])
    left = host_neighbours(netns)
    assert not {address(name) for name in names} & set(left), left
    agent.destroy_network(BRIDGE)


# A pre-start hook (run by the starting container's monitor, in the node's network namespace) that waits up to
# 10 s for another container's port to lose its IPv6, the last thing done to confine it, and records what it saw.
AWAIT_CONFINED = """#!/bin/sh
for attempt in $(seq 100); do
    if [ "$(cat /proc/sys/net/ipv6/conf/{port}/disable_ipv6 2>/dev/null)" = 1 ]; then
        echo confined > {record}; exit 0
    fi
    sleep 0.1
done
echo not-yet > {record}
"""


def test_each_port_is_confined_as_soon_as_its_container_runs_not_after_the_batch(
    agent_in_host, sim_host, lxcpath, tmp_path
):
    """While thousands start, every port not yet confined is flooded with each new container's coming up: a port is
    confined as soon as its container runs. Here the second container of one start() holds its own start until
    the first one's port is confined; confined only after the whole batch, it would wait 10 s in vain."""
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, str(SUBNET))
    names = ["nbr-first", "nbr-held"]
    agent.clone("base", names)
    agent.set_addresses(BRIDGE, {name: f"{SUBNET[30 + i]}/{SUBNET.prefixlen}" for i, name in enumerate(names)})
    hook, record = tmp_path / "await-confined.sh", tmp_path / "seen"
    hook.write_text(AWAIT_CONFINED.format(port=port_name("nbr-first"), record=record))
    hook.chmod(0o755)
    with open(os.path.join(lxcpath, "nbr-held", "config"), "a") as config:  # the test's own, not through RPC
        config.write(f"lxc.hook.pre-start = {hook}\n")
    assert agent.start(names) == names
    assert record.read_text().strip() == "confined"
    agent.destroy([*names, "base"])
    agent.destroy_network(BRIDGE)
