"""agent.tunnels against the real kernel: "hosts" are namespaces joined by a veth underlay, each with an agent bridge
and a "container" namespace behind it; the agent's functions run inside a host namespace, checks use ip/nft."""

import gzip
import json
import re
import subprocess
import sys
import time

import pytest

from agent import errors, tunnels
from tests.support import sh, unique, without_carrier

ADDRESS_A, ADDRESS_B = "198.19.7.1", "198.19.7.2"  # the underlay, inside the test namespaces only
UNDERLAY_MTU = 1400
SUBNET_A, SUBNET_B = "10.100.1.0/24", "10.100.2.0/24"
CONTAINER_A, CONTAINER_B = "10.100.1.2", "10.100.2.2"
BRIDGE = "lxbr"
TUNNEL = "lxtun"
TABLE = tunnels.plan_table(TUNNEL)
PORT = 7777

_RUNNER = """
import importlib, json, sys
from agent import errors
module, name = sys.argv[1].split(".")
args, kwargs = json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    print(json.dumps({"result": getattr(importlib.import_module("agent." + module), name)(*args, **kwargs)}))
except errors.AgentError as error:
    print(json.dumps({"error": type(error).__name__, "message": error.message}))
"""

# One datagram each way: the server answers with the source address it saw.
_ECHO = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.settimeout(10)
print("ready", flush=True)
data, peer = server.recvfrom(100)
server.sendto(peer[0].encode(), peer)
"""
_ASK = """
import socket, sys
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(3)
client.sendto(b"who am I?", (sys.argv[1], int(sys.argv[2])))
print(client.recvfrom(100)[0].decode())
"""


def call(netns, function, *args, **kwargs):
    """Run agent.<module>.<function>(*args, **kwargs) inside the namespace, as the agent would in its host's."""
    out = sh(
        "ip", "netns", "exec", netns, sys.executable, "-c", _RUNNER, function, json.dumps(args), json.dumps(kwargs)
    )
    reply = json.loads(out)
    if "error" in reply:
        raise getattr(errors, reply["error"])(reply["message"])
    return reply["result"]


def ensure(netns, local, remote, local_subnets, remote_subnets, kind="vxlan", name=TUNNEL, **kwargs):
    return call(netns, "tunnels.ensure_tunnel", name, kind, local, remote, local_subnets, remote_subnets, **kwargs)


def sysctl(netns, key):
    return sh("cat", f"/proc/sys/net/ipv4/{key}", netns=netns).strip()


def set_sysctl(netns, key, value):
    sh("sh", "-c", f"echo {value} > /proc/sys/net/ipv4/{key}", netns=netns)


def state(netns):
    """Everything the module may change; IPv6 is left out because link-local DAD changes it on its own."""
    rp_filter = sh("sh", "-c", "grep . /proc/sys/net/ipv4/conf/*/rp_filter", netns=netns)
    links = json.loads(sh("ip", "-j", "-d", "link", netns=netns))
    addresses = json.loads(sh("ip", "-j", "-4", "addr", netns=netns))
    for link in links + addresses:  # what the kernel changes on its own: operstate, a bridge's timers
        link.pop("operstate", None)
        info = link.get("linkinfo", {})
        for data in (info.get("info_data", {}), info.get("info_slave_data", {})):
            for key in [key for key in data if key.endswith("_timer")]:
                del data[key]
    return {
        "links": without_carrier(links),
        "addresses": without_carrier(addresses),
        "routes": without_carrier(json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all", netns=netns))),
        "rules": json.loads(sh("ip", "-j", "-4", "rule", netns=netns)),
        "nft": json.loads(sh("nft", "-j", "list", "ruleset", netns=netns))["nftables"],
        "sysctls": sorted(rp_filter.split()) + [sysctl(netns, "ip_forward")],
    }


def nat_rules(netns):
    listing = json.loads(sh("nft", "-j", "list", "ruleset", netns=netns))["nftables"]
    return [item["rule"]["comment"] for item in listing if "rule" in item]


def tx_packets(netns, device):
    [link] = json.loads(sh("ip", "-j", "-s", "link", "show", device, netns=netns))
    return link["stats64"]["tx"]["packets"]


def seen_source(client, server, address):
    """The source address `server` sees on a datagram from `client` to `address`."""
    echo = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", _ECHO, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout.readline().strip() == "ready"
        return sh(sys.executable, "-c", _ASK, address, str(PORT), netns=client).strip()
    finally:
        echo.kill()
        echo.wait()


def ipip_missing():
    """Why this kernel cannot make ipip links, or None if it can (read from the kernel config, else probed)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as handle:
            config = handle.read()
    except OSError:
        config = None
    if config is not None:
        return (
            None
            if re.search(r"^CONFIG_NET_IPIP=[ym]$", config, re.M)
            else "the kernel has no ipip tunnels (CONFIG_NET_IPIP is not set)"
        )
    probe = unique("lxct-")
    sh("ip", "netns", "add", probe)
    try:
        made = subprocess.run(
            ["ip", "-n", probe, "link", "add", "probe", "type", "ipip", "local", ADDRESS_A, "remote", ADDRESS_B],
            capture_output=True,
            text=True,
        )
    finally:
        sh("ip", "netns", "del", probe)
    return None if made.returncode == 0 else f"the kernel has no ipip tunnels ({made.stderr.strip()})"


@pytest.fixture
def namespaces(make_netns):
    return make_netns


class Hosts:
    """Host namespaces a and b on a veth underlay (MTU 1400), with containers ca behind a's bridge, cb behind b's."""

    def __init__(self, make):
        self.a, self.b, self.ca, self.cb = make(), make(), make(), make()
        sh(
            "ip",
            "link",
            "add",
            "eth0",
            "mtu",
            str(UNDERLAY_MTU),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            str(UNDERLAY_MTU),
            "netns",
            self.b,
            netns=self.a,
        )
        for host, address, subnet, container, inside in (
            (self.a, ADDRESS_A, SUBNET_A, self.ca, CONTAINER_A),
            (self.b, ADDRESS_B, SUBNET_B, self.cb, CONTAINER_B),
        ):
            sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", netns=host)
            sh("ip", "link", "set", "eth0", "up", netns=host)
            gateway = call(host, "network.ensure_host_network", BRIDGE, subnet)["gateway"]
            sh("ip", "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", container, netns=host)
            sh("ip", "link", "set", "vc", "master", BRIDGE, "up", netns=host)
            sh("ip", "addr", "add", f"{inside}/24", "dev", "eth0", netns=container)
            sh("ip", "link", "set", "eth0", "up", netns=container)
            sh("ip", "route", "add", "default", "via", gateway, netns=container)
        for netns in (self.a, self.b):
            wait_for_carrier(netns, "eth0")
            wait_for_carrier(netns, BRIDGE)


def wait_for_carrier(netns, device):
    """Carrier news reaches a bridge asynchronously (linkwatch, up to a second): states compared must be settled."""
    deadline = time.monotonic() + 5
    while "NO-CARRIER" in json.loads(sh("ip", "-j", "link", "show", device, netns=netns))[0]["flags"]:
        assert time.monotonic() < deadline, f"{device} in {netns} has no carrier"
        time.sleep(0.05)


@pytest.fixture
def hosts(namespaces):
    return Hosts(namespaces)


@pytest.fixture
def host(namespaces):
    """One host namespace with an underlay address and a bridge; the underlay's other end is an empty namespace."""
    name, peer = namespaces(), namespaces()
    sh(
        "ip",
        "link",
        "add",
        "eth0",
        "mtu",
        str(UNDERLAY_MTU),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        peer,
        netns=name,
    )
    sh("ip", "addr", "add", f"{ADDRESS_A}/24", "dev", "eth0", netns=name)
    sh("ip", "link", "set", "eth0", "up", netns=name)
    sh("ip", "link", "set", "eth0", "up", netns=peer)
    call(name, "network.ensure_host_network", BRIDGE, SUBNET_A)
    wait_for_carrier(name, "eth0")
    return name


def pings(netns, address, *options, deadline=10):
    """One echo reply within `deadline` s: a fresh path may drop the first echo while neighbours resolve."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c1", f"-w{deadline}", *options, address],
        capture_output=True,
        text=True,
    )


# --- vxlan, for real ---


def strict(*netns):
    """Strict reverse-path filtering host-wide, as many distributions set it."""
    for host in netns:
        set_sysctl(host, "conf/all/rp_filter", 1)


def assert_rp_filter(netns, everywhere, tunnel=None):
    """conf.all.rp_filter is `everywhere`; the tunnel link, if any, is loose on its own."""
    assert sysctl(netns, "conf/all/rp_filter") == everywhere
    if tunnel is not None:
        assert sysctl(netns, f"conf/{tunnel}/rp_filter") == "2"


def test_vxlan_carries_container_traffic_both_ways_keeping_the_source(hosts):
    strict(hosts.a, hosts.b)
    a = ensure(hosts.a, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    b = ensure(hosts.b, ADDRESS_B, ADDRESS_A, [SUBNET_B], [SUBNET_A])
    vni = tunnels.plan_vni(TUNNEL)
    transit_a, peer_a = tunnels.plan_transit(vni, ADDRESS_A, ADDRESS_B)
    assert a == {
        "name": TUNNEL,
        "kind": "vxlan",
        "local": ADDRESS_A,
        "remote": ADDRESS_B,
        "table": tunnels.plan_table(TUNNEL),
        "mtu": UNDERLAY_MTU - 50,
        "vni": vni,
        "transit": transit_a,
    }
    assert b["transit"] == f"{peer_a}/31" and b["mtu"] == UNDERLAY_MTU - 50 and b["vni"] == vni

    for client, server, address, source in (
        (hosts.ca, hosts.cb, CONTAINER_B, CONTAINER_A),
        (hosts.cb, hosts.ca, CONTAINER_A, CONTAINER_B),
    ):
        assert pings(client, address).returncode == 0
        assert seen_source(client, server, address) == source  # not masqueraded on the way

    # The tunnel's MTU is what fits the underlay: 1350 bytes pass with DF set, 1351 are refused with the MTU.
    assert pings(hosts.ca, CONTAINER_B, "-M", "do", "-s", str(UNDERLAY_MTU - 50 - 28)).returncode == 0
    too_big = pings(hosts.ca, CONTAINER_B, "-M", "do", "-s", str(UNDERLAY_MTU - 50 - 27), deadline=2)
    assert too_big.returncode != 0 and f"mtu = {UNDERLAY_MTU - 50}" in too_big.stdout

    # Only container traffic takes the tunnel; the host's own goes straight.
    assert f"dev {TUNNEL}" in sh("ip", "route", "get", CONTAINER_B, "from", CONTAINER_A, "iif", BRIDGE, netns=hosts.a)
    assert "dev eth0" in sh("ip", "route", "get", ADDRESS_B, netns=hosts.a)
    sent = tx_packets(hosts.a, TUNNEL)
    assert pings(hosts.a, ADDRESS_B).returncode == 0
    assert tx_packets(hosts.a, TUNNEL) == sent

    assert call(hosts.a, "tunnels.list_tunnels") == [a]
    assert call(hosts.b, "tunnels.list_tunnels") == [b]

    # Strict host-wide rp_filter is never lowered: the tunnel link alone is loose, and traffic flowed all the same.
    for host in (hosts.a, hosts.b):
        assert_rp_filter(host, "1", TUNNEL)
        call(host, "tunnels.destroy_tunnel", TUNNEL)
        assert_rp_filter(host, "1")


def test_vxlan_twice_is_a_no_op_and_destroy_restores_everything(hosts):
    set_sysctl(hosts.a, "conf/all/rp_filter", 1)
    set_sysctl(hosts.b, "conf/all/rp_filter", 0)
    before = {host: state(host) for host in (hosts.a, hosts.b)}
    first = ensure(hosts.a, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    ensure(hosts.b, ADDRESS_B, ADDRESS_A, [SUBNET_B], [SUBNET_A])
    table = first["table"]

    # conf.all.rp_filter stays as it was (a's 1, b's 0); the tunnel links are loose on their own.
    assert_rp_filter(hosts.a, "1", TUNNEL)
    assert_rp_filter(hosts.b, "0", TUNNEL)
    [link] = json.loads(sh("ip", "-j", "-d", "link", "show", TUNNEL, netns=hosts.a))
    assert link["ifalias"] == "lxc-agent-tunnel"
    vxlan = link["linkinfo"]["info_data"]
    assert (vxlan["id"], vxlan["local"], vxlan["remote"], vxlan["port"], vxlan["learning"]) == (
        first["vni"],
        ADDRESS_A,
        ADDRESS_B,
        4789,
        False,
    )
    rules = sh("ip", "-4", "rule", netns=hosts.a)
    assert f"10000:\tfrom {SUBNET_A} to {SUBNET_B} lookup {table} proto 76" in rules
    routes = sh("ip", "-4", "route", "show", "table", str(table), netns=hosts.a)
    assert (
        routes.strip() == f"{SUBNET_B} via {tunnels.plan_transit(first['vni'], ADDRESS_B, ADDRESS_A)[0][:-3]} "
        f"dev {TUNNEL} proto 76 src {ADDRESS_A}"
    )
    assert nat_rules(hosts.a) == [f"lxc-agent-tunnel:{TUNNEL}", f"lxc-agent:{BRIDGE}"]
    assert 'oifname "lxtun" accept' in sh("nft", "list", "table", "ip", "lxc_agent", netns=hosts.a)

    settled = state(hosts.a)
    assert ensure(hosts.a, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B]) == first
    assert state(hosts.a) == settled

    for host in (hosts.a, hosts.b):
        call(host, "tunnels.destroy_tunnel", TUNNEL)
        assert state(host) == before[host]
        call(host, "tunnels.destroy_tunnel", TUNNEL)
        assert state(host) == before[host]
        assert call(host, "tunnels.list_tunnels") == []
    assert_rp_filter(hosts.a, "1")
    assert_rp_filter(hosts.b, "0")


def test_the_controllers_host_end_reaches_the_containers_with_its_own_address(hosts):
    """No subnets behind b (the controller runs on the host): a's containers reach b's address, b reaches them."""
    strict(hosts.a, hosts.b)
    ensure(hosts.a, ADDRESS_A, ADDRESS_B, [SUBNET_A], [])
    ensure(hosts.b, ADDRESS_B, ADDRESS_A, [], [SUBNET_A])
    assert seen_source(hosts.ca, hosts.b, ADDRESS_B) == CONTAINER_A
    assert seen_source(hosts.b, hosts.ca, CONTAINER_A) == ADDRESS_B
    assert f"dev {TUNNEL}" in sh("ip", "route", "get", ADDRESS_B, "from", CONTAINER_A, "iif", BRIDGE, netns=hosts.a)
    assert f"dev {TUNNEL}" in sh("ip", "route", "get", CONTAINER_A, netns=hosts.b)
    assert "dev eth0" in sh("ip", "route", "get", ADDRESS_B, netns=hosts.a)
    # Only b itself: what b forwards for its own containers does not take the tunnel.
    assert TUNNEL not in sh(
        "ip", "route", "get", CONTAINER_A, "from", CONTAINER_B, "iif", BRIDGE, netns=hosts.b, check=False
    )
    assert f"10000:\tfrom all to {SUBNET_A} iif lo lookup {TABLE} proto 76" in sh("ip", "-4", "rule", netns=hosts.b)
    assert_rp_filter(hosts.a, "1", TUNNEL)
    assert_rp_filter(hosts.b, "1", TUNNEL)


def test_ensure_repairs_what_went_missing(host):
    ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    settled = state(host)
    for command in (
        ("ip", "rule", "del", "pref", "10000"),
        ("ip", "addr", "flush", "dev", TUNNEL),
        ("ip", "link", "set", TUNNEL, "down", "mtu", "1500"),
        ("ip", "route", "flush", "table", str(TABLE)),
        ("nft", "flush", "chain", "ip", "lxc_agent", "postrouting"),
    ):
        sh(*command, netns=host)
    ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    call(host, "network.ensure_host_network", BRIDGE, SUBNET_A)
    repaired = state(host)
    assert nat_rules(host) == [f"lxc-agent-tunnel:{TUNNEL}", f"lxc-agent:{BRIDGE}"]
    assert {key: value for key, value in repaired.items() if key != "nft"} == {
        key: value for key, value in settled.items() if key != "nft"
    }


def test_the_nat_exemption_stays_ahead_of_masquerade_and_shares_the_table(host):
    before = state(host)
    ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    call(host, "network.ensure_host_network", "lxbr2", "10.100.3.0/24")
    assert nat_rules(host) == [f"lxc-agent-tunnel:{TUNNEL}", f"lxc-agent:{BRIDGE}", "lxc-agent:lxbr2"]
    call(host, "network.destroy_host_network", "lxbr2")
    call(host, "network.destroy_host_network", BRIDGE)
    assert nat_rules(host) == [f"lxc-agent-tunnel:{TUNNEL}"]
    call(host, "tunnels.destroy_tunnel", TUNNEL)
    assert "lxc_agent" not in sh("nft", "list", "tables", netns=host)
    after = state(host)
    assert after["rules"] == before["rules"] and sysctl(host, "conf/all/rp_filter") == "0"


# --- ipip ---


def test_ipip_carries_container_traffic(hosts):
    reason = ipip_missing()
    if reason:
        pytest.skip(reason)
    strict(hosts.a, hosts.b)
    a = ensure(hosts.a, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B], kind="ipip")
    ensure(hosts.b, ADDRESS_B, ADDRESS_A, [SUBNET_B], [SUBNET_A], kind="ipip")
    assert a["mtu"] == UNDERLAY_MTU - 20 and "vni" not in a
    assert seen_source(hosts.ca, hosts.cb, CONTAINER_B) == CONTAINER_A
    assert seen_source(hosts.cb, hosts.ca, CONTAINER_A) == CONTAINER_B
    assert_rp_filter(hosts.a, "1", TUNNEL)
    call(hosts.a, "tunnels.destroy_tunnel", TUNNEL)
    assert call(hosts.a, "tunnels.list_tunnels") == []
    assert_rp_filter(hosts.a, "1")


def test_ipip_without_kernel_support_is_a_clear_error_and_changes_nothing(host):
    if ipip_missing() is None:
        pytest.skip("this kernel has ipip tunnels (CONFIG_NET_IPIP is set)")
    before = state(host)
    with pytest.raises(
        errors.NetworkError,
        match=r"no ipip tunnels \(CONFIG_NET_IPIP is not set\); "
        r'use tunnel_type "vxlan"',
    ):
        ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B], kind="ipip")
    assert state(host) == before


# --- refusals change nothing ---


@pytest.mark.parametrize(
    "name, kind, local, remote, local_subnets, remote_subnets, vni, message",
    [
        ("", "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], None, "tunnel name '' is not valid"),
        ("x" * 16, "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], None, "is not valid"),
        ("lx/1", "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], None, "is not valid"),
        ("all", "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], None, "is not valid"),
        (TUNNEL, "gre", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], None, "kind 'gre' is not one of ipip, vxlan"),
        (
            TUNNEL,
            "vxlan",
            "198.19.7.9",
            ADDRESS_B,
            [SUBNET_A],
            [],
            None,
            r"local 198\.19\.7\.9 is not an address of this host \(it has 198\.19\.7\.1/24 on eth0, 10\.100\.1\.1/24",
        ),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_A, [SUBNET_A], [], None, "local and remote are both"),
        (TUNNEL, "vxlan", ADDRESS_A, "10.100.1.1", [], [SUBNET_B], None, "remote 10.100.1.1 is an address of this"),
        (TUNNEL, "vxlan", ADDRESS_A, "not-an-address", [SUBNET_A], [], None, "is not an IPv4 address"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, ["10.100.1.1/24"], [], None, "has host bits set"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, SUBNET_A, [], None, "must be a list of subnets"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], ["10.100.0.0/16"], None, "overlaps remote destination"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, [], [], None, "catch the tunnel's own packets"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, [f"{ADDRESS_A}/32"], [], None, "catch the tunnel's own packets"),
        (TUNNEL, "vxlan", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], 2**24, "vni 16777216 is not a number"),
        (TUNNEL, "ipip", ADDRESS_A, ADDRESS_B, [SUBNET_A], [], 7, "a vni is for vxlan tunnels only"),
    ],
    ids=[
        "empty-name",
        "long-name",
        "slash",
        "reserved-name",
        "kind",
        "local-not-here",
        "same-ends",
        "remote-here",
        "bad-remote",
        "host-bits",
        "not-a-list",
        "overlap",
        "both-empty",
        "own-packets",
        "vni-range",
        "ipip-vni",
    ],
)
def test_invalid_input_changes_nothing(host, name, kind, local, remote, local_subnets, remote_subnets, vni, message):
    before = state(host)
    with pytest.raises(errors.InvalidArgument, match=message):
        call(host, "tunnels.ensure_tunnel", name, kind, local, remote, local_subnets, remote_subnets, vni=vni)
    assert state(host) == before


@pytest.mark.parametrize(
    "setup, message",
    [
        ([("link", "add", TUNNEL, "type", "bridge")], f"host link {TUNNEL} exists but is a bridge link, not a tunnel"),
        (
            [("link", "add", TUNNEL, "type", "vxlan", "id", "5", "remote", ADDRESS_B, "dstport", "4789")],
            f"host tunnel {TUNNEL} exists but was not created by lxc-agent",
        ),
        (
            [("route", "add", "10.9.9.0/24", "dev", "eth0", "table", str(TABLE))],
            rf"needs routing table {TABLE}, but it holds the route 10\.9\.9\.0/24 dev eth0 proto 3",
        ),
        (
            [("rule", "add", "from", "10.9.9.0/24", "lookup", str(TABLE))],
            rf"the policy rule '32765: from 10\.9\.9\.0/24 lookup {TABLE}' not made by lxc-agent",
        ),
        (
            [("link", "add", "dummy1", "type", "bridge"), ("addr", "add", "10.100.2.7/24", "dev", "dummy1")],
            r"remote destination 10\.100\.2\.0/24 holds this host's address 10\.100\.2\.7/24 on dummy1",
        ),
        (
            [
                ("link", "add", "dummy1", "type", "bridge"),
                (
                    "addr",
                    "add",
                    tunnels.plan_transit(tunnels.plan_vni(TUNNEL), ADDRESS_A, ADDRESS_B)[0],
                    "dev",
                    "dummy1",
                ),
            ],
            "its transit network .* overlaps",
        ),
    ],
    ids=[
        "not-a-tunnel",
        "foreign-tunnel",
        "table-has-a-route",
        "table-has-a-rule",
        "destination-is-here",
        "transit-taken",
    ],
)
def test_conflicts_change_nothing(host, setup, message):
    for command in setup:
        sh("ip", *command, netns=host)
    before = state(host)
    with pytest.raises(errors.Conflict, match=message):
        ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    assert state(host) == before
    if setup[0][:2] == ("link", "add") and setup[0][2] == TUNNEL:
        with pytest.raises(errors.Conflict, match="exists but"):
            call(host, "tunnels.destroy_tunnel", TUNNEL)
        assert state(host) == before


def test_an_agent_tunnel_with_other_ends_is_a_conflict_but_new_subnets_converge(host):
    ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B])
    before = state(host)
    with pytest.raises(
        errors.Conflict,
        match=rf"exists as vxlan from {ADDRESS_A} to {ADDRESS_B} .*, not vxlan "
        rf"from {ADDRESS_A} to 198\.19\.7\.3",
    ):
        ensure(host, ADDRESS_A, "198.19.7.3", [SUBNET_A], [SUBNET_B])
    with pytest.raises(errors.Conflict, match="vni 5"):
        ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A], [SUBNET_B], vni=5)
    assert state(host) == before
    ensure(host, ADDRESS_A, ADDRESS_B, [SUBNET_A, "10.100.4.0/24"], ["10.100.5.0/24"])
    rules = sh("ip", "-4", "rule", netns=host)
    assert SUBNET_B not in rules and rules.count(f"lookup {TABLE} proto 76") == 2
    assert sh("ip", "-4", "route", "show", "table", str(TABLE), netns=host).startswith("10.100.5.0/24 via")
