"""agent.network against the real kernel: each call runs in a fresh namespace, results checked with ip/nft."""

import json
import subprocess
import sys

import pytest

from agent import errors
from tests.support import links, sh, without_carrier

SUBNET, GATEWAY = "10.100.1.0/24", "10.100.1.1"

_RUNNER = """
import json, sys
from agent import errors, network
name, args = sys.argv[1], json.loads(sys.argv[2])
try:
    print(json.dumps({"result": getattr(network, name)(*args)}))
except errors.AgentError as error:
    print(json.dumps({"error": type(error).__name__, "message": error.message}))
"""


def call(netns, function, *args):
    """Run agent.network.<function>(*args) inside the namespace, as the agent would inside the host's."""
    out = sh("ip", "netns", "exec", netns, sys.executable, "-c", _RUNNER, function, json.dumps(args))
    reply = json.loads(out)
    if "error" in reply:
        raise getattr(errors, reply["error"])(reply["message"])
    return reply["result"]


def ip_forward(netns):
    return sh("cat", "/proc/sys/net/ipv4/ip_forward", netns=netns).strip()


def set_ip_forward(netns, value):
    sh("sh", "-c", f"echo {value} > /proc/sys/net/ipv4/ip_forward", netns=netns)


def ruleset(netns):
    return json.loads(sh("nft", "-j", "list", "ruleset", netns=netns))["nftables"]


def nat_rules(netns):
    return {rule["rule"]["comment"]: rule["rule"] for rule in ruleset(netns) if "rule" in rule}


def state(netns):
    """Everything the module may change; IPv6 is left out because link-local DAD changes it on its own, and the
    carrier."""
    return without_carrier(
        {
            "links": json.loads(sh("ip", "-j", "link", netns=netns)),
            "addresses": json.loads(sh("ip", "-j", "-4", "addr", netns=netns)),
            "routes": json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all", netns=netns)),
            "nft": ruleset(netns),
            "ip_forward": ip_forward(netns),
        }
    )


def addresses(netns, device):
    out = json.loads(sh("ip", "-j", "-4", "addr", "show", "dev", device, netns=netns))
    return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"]]


@pytest.fixture
def more_netns(make_netns):
    return make_netns


def test_ensure_creates_bridge_address_nat_and_forwarding(netns):
    set_ip_forward(netns, 0)
    result = call(netns, "ensure_host_network", "brtest", SUBNET)
    assert result == {"bridge": "brtest", "subnet": SUBNET, "gateway": GATEWAY, "prefixlen": 24, "owner": None}
    [link] = json.loads(sh("ip", "-j", "-d", "link", "show", "brtest", netns=netns))
    assert link["linkinfo"]["info_kind"] == "bridge" and "UP" in link["flags"]
    assert link["ifalias"] == "lxc-agent ip_forward=0"
    assert addresses(netns, "brtest") == [f"{GATEWAY}/24"]
    assert "10.100.1.0/24 dev brtest" in sh("ip", "-4", "route", netns=netns)
    assert ip_forward(netns) == "1"
    rule = nat_rules(netns)["lxc-agent:brtest"]
    assert (rule["family"], rule["table"], rule["chain"]) == ("ip", "lxc_agent", "postrouting")
    listing = sh("nft", "list", "table", "ip", "lxc_agent", netns=netns)
    assert "type nat hook postrouting priority srcnat" in listing
    assert 'ip saddr 10.100.1.0/24 ip daddr != 10.100.1.0/24 oifname != "brtest" masquerade' in listing
    assert call(netns, "get_host_network", "brtest") == result
    assert call(netns, "list_host_networks") == [{**result, "segments": 0}]


def test_ensure_twice_changes_nothing(netns):
    first = call(netns, "ensure_host_network", "brtest", SUBNET)
    before = state(netns)
    assert call(netns, "ensure_host_network", "brtest", SUBNET) == first
    assert state(netns) == before


def test_ensure_repairs_what_went_missing(netns):
    call(netns, "ensure_host_network", "brtest", SUBNET)
    sh("ip", "addr", "flush", "dev", "brtest", netns=netns)
    sh("ip", "link", "set", "brtest", "down", netns=netns)
    sh("nft", "flush", "chain", "ip", "lxc_agent", "postrouting", netns=netns)
    call(netns, "ensure_host_network", "brtest", SUBNET)
    assert addresses(netns, "brtest") == [f"{GATEWAY}/24"]
    assert "UP" in json.loads(sh("ip", "-j", "link", "show", "brtest", netns=netns))[0]["flags"]
    assert list(nat_rules(netns)) == ["lxc-agent:brtest"]


def test_ensure_replaces_a_stale_nat_rule_for_the_same_bridge(netns):
    call(netns, "ensure_host_network", "brtest", SUBNET)
    sh("ip", "link", "del", "brtest", netns=netns)
    call(netns, "ensure_host_network", "brtest", "10.100.7.0/24")
    [rule] = nat_rules(netns).values()
    assert rule["expr"][0]["match"]["right"] == {"prefix": {"addr": "10.100.7.0", "len": 24}}


def test_conflict_when_the_bridge_holds_another_address(netns):
    call(netns, "ensure_host_network", "brtest", SUBNET)
    before = state(netns)
    with pytest.raises(errors.Conflict, match=r"brtest holds 10\.100\.1\.1/24, not 10\.100\.2\.1/24"):
        call(netns, "ensure_host_network", "brtest", "10.100.2.0/24")
    assert state(netns) == before


def test_conflict_when_the_name_is_not_a_bridge(netns):
    sh("ip", "link", "add", "brtest", "type", "veth", "peer", "name", "brtest-peer", netns=netns)
    before = state(netns)
    with pytest.raises(errors.Conflict, match="brtest exists but is a veth link, not a bridge"):
        call(netns, "ensure_host_network", "brtest", SUBNET)
    assert state(netns) == before


def test_a_bridge_the_agent_did_not_make_is_left_alone(netns):
    sh("ip", "link", "add", "brtest", "type", "bridge", netns=netns)
    before = state(netns)
    with pytest.raises(errors.Conflict, match="brtest exists but was not created by lxc-agent"):
        call(netns, "ensure_host_network", "brtest", SUBNET)
    with pytest.raises(errors.Conflict, match="not created by lxc-agent"):
        call(netns, "destroy_host_network", "brtest")
    assert call(netns, "get_host_network", "brtest") is None
    assert call(netns, "list_host_networks") == []
    assert state(netns) == before


def test_conflict_when_an_interface_address_overlaps(netns):
    sh("ip", "link", "add", "vtest", "type", "veth", "peer", "name", "vtest-peer", netns=netns)
    sh("ip", "addr", "add", "10.100.5.9/16", "dev", "vtest", netns=netns)
    before = state(netns)
    with pytest.raises(errors.Conflict, match=r"overlaps the address 10\.100\.5\.9/16 on host device vtest"):
        call(netns, "ensure_host_network", "brtest", SUBNET)
    assert state(netns) == before


def test_conflict_when_a_route_overlaps_but_not_the_default_route(netns):
    sh("ip", "link", "add", "vtest", "type", "veth", "peer", "name", "vtest-peer", netns=netns)
    sh("ip", "addr", "add", "198.18.0.1/30", "dev", "vtest", netns=netns)
    sh("ip", "link", "set", "vtest", "up", netns=netns)
    sh("ip", "route", "add", "default", "via", "198.18.0.2", netns=netns)
    sh("ip", "route", "add", "10.100.0.0/16", "via", "198.18.0.2", netns=netns)
    before = state(netns)
    with pytest.raises(
        errors.Conflict, match=r"overlaps the host route 10\.100\.0\.0/16 via 198\.18\.0\.2 dev vtest table main"
    ):
        call(netns, "ensure_host_network", "brtest", SUBNET)
    assert state(netns) == before
    sh("ip", "route", "del", "10.100.0.0/16", netns=netns)
    assert call(netns, "ensure_host_network", "brtest", SUBNET)["gateway"] == GATEWAY


@pytest.mark.parametrize(
    "bridge, subnet, message",
    [
        ("", SUBNET, "bridge name '' is not valid"),
        ("x" * 16, SUBNET, "is not valid"),
        ("br/0", SUBNET, "is not valid"),
        ("br 0", SUBNET, "is not valid"),
        ("brtest", "not-a-subnet", "is not a network address"),
        ("brtest", "10.100.1.1/24", "has host bits set"),
        ("brtest", "fd00::/64", "is not IPv4"),
        ("brtest", "10.100.1.0/31", "no room"),
        ("brtest", "10.100.1.0/32", "no room"),
    ],
    ids=["empty-name", "long-name", "slash", "space", "garbage", "host-bits", "ipv6", "slash31", "slash32"],
)
def test_invalid_input_changes_nothing(netns, bridge, subnet, message):
    before = state(netns)
    with pytest.raises(errors.InvalidArgument, match=message):
        call(netns, "ensure_host_network", bridge, subnet)
    assert state(netns) == before


@pytest.mark.parametrize("initial", ["0", "1"])
def test_destroy_removes_everything_and_restores_ip_forward(netns, initial):
    set_ip_forward(netns, initial)
    before = state(netns)
    call(netns, "ensure_host_network", "brtest", SUBNET)
    call(netns, "destroy_host_network", "brtest")
    assert state(netns) == before
    assert links(netns) == ["lo"] and ip_forward(netns) == initial
    call(netns, "destroy_host_network", "brtest")
    assert state(netns) == before
    assert call(netns, "get_host_network", "brtest") is None


def test_two_bridges_destroying_one_keeps_the_other(netns):
    set_ip_forward(netns, 0)
    call(netns, "ensure_host_network", "brone", "10.100.1.0/24")
    two = call(netns, "ensure_host_network", "brtwo", "10.100.2.0/24")
    with pytest.raises(errors.Conflict, match=r"overlaps the address 10\.100\.2\.1/24 on host device brtwo"):
        call(netns, "ensure_host_network", "brthree", "10.100.2.128/25")
    kept = nat_rules(netns)["lxc-agent:brtwo"]
    call(netns, "destroy_host_network", "brone")
    assert nat_rules(netns) == {"lxc-agent:brtwo": kept}
    assert links(netns) == ["brtwo", "lo"] and ip_forward(netns) == "1"
    assert call(netns, "list_host_networks") == [{**two, "segments": 0}]
    call(netns, "destroy_host_network", "brtwo")
    assert ruleset(netns) == [item for item in ruleset(netns) if "metainfo" in item]
    assert ip_forward(netns) == "0"


def test_a_container_reaches_the_gateway_and_beyond_through_nat(netns, more_netns):
    """container --veth--> bridge (host) --veth--> outside, which has no route back: only masquerade answers."""
    container, outside = more_netns(), more_netns()
    call(netns, "ensure_host_network", "brtest", SUBNET)
    sh("ip", "link", "add", "vhost", "type", "veth", "peer", "name", "eth0", "netns", container, netns=netns)
    sh("ip", "link", "set", "vhost", "master", "brtest", "up", netns=netns)
    sh("ip", "addr", "add", "10.100.1.2/24", "dev", "eth0", netns=container)
    sh("ip", "link", "set", "eth0", "up", netns=container)
    sh("ip", "route", "add", "default", "via", GATEWAY, netns=container)
    sh("ip", "link", "add", "vout", "type", "veth", "peer", "name", "eth0", "netns", outside, netns=netns)
    sh("ip", "addr", "add", "198.18.0.1/30", "dev", "vout", netns=netns)
    sh("ip", "link", "set", "vout", "up", netns=netns)
    sh("ip", "addr", "add", "198.18.0.2/30", "dev", "eth0", netns=outside)
    sh("ip", "link", "set", "eth0", "up", netns=outside)

    sh("ping", "-c1", "-W2", GATEWAY, netns=container)
    sh("ping", "-c1", "-W2", "198.18.0.2", netns=container)
    sh("nft", "delete", "table", "ip", "lxc_agent", netns=netns)
    lost = subprocess.run(["ip", "netns", "exec", container, "ping", "-c1", "-W1", "198.18.0.2"], capture_output=True)
    assert lost.returncode != 0, "without the masquerade rule the outside has no way back"


# --- owners: one bridge (and one subnet) per owner ---


def alias(netns, bridge):
    return json.loads(sh("ip", "-j", "-d", "link", "show", bridge, netns=netns))[0]["ifalias"]


def test_the_owner_is_recorded_and_asking_again_with_it_changes_nothing(netns):
    set_ip_forward(netns, 0)
    result = call(netns, "ensure_host_network", "brtest", SUBNET, "deploy-a")
    assert result == {"bridge": "brtest", "subnet": SUBNET, "gateway": GATEWAY, "prefixlen": 24, "owner": "deploy-a"}
    assert alias(netns, "brtest") == "lxc-agent ip_forward=0 owner=deploy-a"
    before = state(netns)
    assert call(netns, "ensure_host_network", "brtest", SUBNET, "deploy-a") == result
    assert state(netns) == before
    assert call(netns, "get_host_network", "brtest") == result
    assert call(netns, "list_host_networks") == [{**result, "segments": 0}]


@pytest.mark.parametrize("asker", ["deploy-b", None], ids=["another-owner", "no-owner"])
def test_another_owner_cannot_take_or_destroy_a_bridge_and_nothing_changes(netns, asker):
    call(netns, "ensure_host_network", "brtest", SUBNET, "deploy-a")
    before = state(netns)
    with pytest.raises(
        errors.Conflict,
        match=r"brtest \(subnet 10\.100\.1\.0/24\) belongs to owner 'deploy-a'.*"
        r"cannot share it",
    ):
        call(netns, "ensure_host_network", "brtest", SUBNET, asker)
    with pytest.raises(
        errors.Conflict,
        match=r"brtest \(subnet 10\.100\.1\.0/24\) belongs to owner 'deploy-a'.*"
        r"only its owner removes it",
    ):
        call(netns, "destroy_host_network", "brtest", asker)
    assert state(netns) == before
    call(netns, "destroy_host_network", "brtest", "deploy-a")
    assert links(netns) == ["lo"] and "lxc-agent" not in sh("nft", "list", "ruleset", netns=netns)


def test_an_owner_cannot_take_over_a_bridge_made_without_one_but_may_remove_it(netns):
    call(netns, "ensure_host_network", "brtest", SUBNET)
    before = state(netns)
    with pytest.raises(errors.Conflict, match=r"brtest \(subnet 10\.100\.1\.0/24\) exists without an owner"):
        call(netns, "ensure_host_network", "brtest", SUBNET, "deploy-a")
    assert state(netns) == before
    call(netns, "destroy_host_network", "brtest", "deploy-a")
    assert links(netns) == ["lo"]


def test_the_same_subnet_on_another_bridge_names_the_owner_holding_it(netns):
    call(netns, "ensure_host_network", "brtest", SUBNET, "deploy-a")
    before = state(netns)
    with pytest.raises(
        errors.Conflict,
        match=r"subnet 10\.100\.1\.0/24 for bridge brother overlaps the address "
        r"10\.100\.1\.1/24 on host device brtest \(an agent bridge of owner "
        r"'deploy-a'\)",
    ):
        call(netns, "ensure_host_network", "brother", SUBNET, "deploy-b")
    assert state(netns) == before


def test_owners_keep_ip_forward_memory_across_their_bridges(netns):
    set_ip_forward(netns, 0)
    call(netns, "ensure_host_network", "brone", "10.100.1.0/24", "deploy-a")
    call(netns, "ensure_host_network", "brtwo", "10.100.2.0/24", "deploy-b")
    assert alias(netns, "brtwo") == "lxc-agent ip_forward=0 owner=deploy-b"
    call(netns, "destroy_host_network", "brone", "deploy-a")
    assert ip_forward(netns) == "1"
    call(netns, "destroy_host_network", "brtwo", "deploy-b")
    assert ip_forward(netns) == "0"


@pytest.mark.parametrize(
    "owner", ["", "two words", "-dash", "x" * 129, 7], ids=["empty", "space", "dash", "long", "int"]
)
def test_an_invalid_owner_changes_nothing(netns, owner):
    before = state(netns)
    with pytest.raises(errors.InvalidArgument, match=r"owner .* is not valid"):
        call(netns, "ensure_host_network", "brtest", SUBNET, owner)
    assert state(netns) == before
