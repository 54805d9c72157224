"""Tunnels between two simulated hardware nodes, each end made by that node's own agent over RPC."""

import json
import os

import pytest

from agent.errors import NetworkError
from tests.support import sh

SUBNETS = {"a": "10.240.1.0/24", "b": "10.240.2.0/24"}
ADDRESSES = {"a": "10.240.1.10", "b": "10.240.2.10"}


def link_names(netns):
    return sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=netns)))


@pytest.fixture
def two_nodes(lab, btrfs_mount, lxcpath, start_agent):
    nodes = {}
    for side in ("a", "b"):
        host = lab.add_host()
        path = os.path.join(lxcpath, side)
        os.mkdir(path)
        agent = start_agent(path, host=host).connect()
        nodes[side] = (host, agent)
    return nodes


def build_side(agent, side, tunnel_mtu):
    agent.create("base", "busybox")
    agent.ensure_network(f"lxcbr-{side}", SUBNETS[side])
    agent.clone("base", [f"c{side}"])
    agent.set_addresses(f"lxcbr-{side}", {f"c{side}": f"{ADDRESSES[side]}/24"}, mtu=tunnel_mtu)
    agent.start([f"c{side}"])


def test_containers_on_two_nodes_reach_each_other_through_a_vxlan_tunnel(two_nodes):
    (host_a, a), (host_b, b) = two_nodes["a"], two_nodes["b"]
    before = {side: link_names(host.netns) for side, (host, _) in two_nodes.items()}
    end_a = a.ensure_tunnel("lxt-ab", "vxlan", host_a.address, host_b.address, [SUBNETS["a"]], [SUBNETS["b"]])
    end_b = b.ensure_tunnel("lxt-ab", "vxlan", host_b.address, host_a.address, [SUBNETS["b"]], [SUBNETS["a"]])
    assert end_a["mtu"] == end_b["mtu"] == 1450, "vxlan costs 50 bytes of the 1500-byte underlay"
    assert (
        a.ensure_tunnel("lxt-ab", "vxlan", host_a.address, host_b.address, [SUBNETS["a"]], [SUBNETS["b"]]) == end_a
    ), "asking twice is a no-op"
    build_side(a, "a", end_a["mtu"])
    build_side(b, "b", end_b["mtu"])

    assert a.run("ca", ["ping", "-c", "2", "-W", "3", ADDRESSES["b"]])["exit_code"] == 0
    assert b.run("cb", ["ping", "-c", "2", "-W", "3", ADDRESSES["a"]])["exit_code"] == 0
    # A packet as large as the container's MTU crosses (the tunnel tests check DF at the netlink level).
    assert a.run("ca", ["ping", "-c", "1", "-W", "3", "-s", str(end_a["mtu"] - 28), ADDRESSES["b"]])["exit_code"] == 0
    assert "mtu 1450" in a.run("ca", ["ip", "link", "show", "eth0"])["stdout"]

    for side, (host, agent) in two_nodes.items():
        agent.destroy([f"c{side}", "base"])
        agent.destroy_tunnel("lxt-ab")
        agent.destroy_tunnel("lxt-ab")
        agent.destroy_network(f"lxcbr-{side}")
        assert link_names(host.netns) == before[side]
        assert "lxt-ab" not in sh("ip", "rule", netns=host.netns)


def test_ipip_works_where_the_kernel_has_it_and_is_refused_clearly_where_not(two_nodes):
    (host_a, a), (host_b, b) = two_nodes["a"], two_nodes["b"]
    if a.info()["kernel_features"]["ipip"]:
        a.ensure_tunnel("lxt-ip", "ipip", host_a.address, host_b.address, [SUBNETS["a"]], [SUBNETS["b"]])
        b.ensure_tunnel("lxt-ip", "ipip", host_b.address, host_a.address, [SUBNETS["b"]], [SUBNETS["a"]])
        build_side(a, "a", None)
        build_side(b, "b", None)
        assert a.run("ca", ["ping", "-c", "2", "-W", "3", ADDRESSES["b"]])["exit_code"] == 0
        return
    before = link_names(host_a.netns)
    with pytest.raises(NetworkError, match=r"CONFIG_NET_IPIP is not set\); use tunnel_type \"vxlan\""):
        a.ensure_tunnel("lxt-ip", "ipip", host_a.address, host_b.address, [SUBNETS["a"]], [SUBNETS["b"]])
    assert link_names(host_a.netns) == before
    pytest.skip("ipip traffic: the kernel has no ipip tunnels (CONFIG_NET_IPIP is not set); the refusal was checked")
