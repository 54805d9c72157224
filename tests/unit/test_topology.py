"""The plan: hosts, subnets, names, addresses, tunnels and local.conf, decided before any container exists."""

import dataclasses
import ipaddress
import itertools
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coordinator import localconf, topology
from coordinator.config import ConfigError, load_config, validate

SEED = Path(__file__).resolve().parents[2] / "configs" / "seed.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def servers(*hosts, **extra):
    return {"type": "ExistingServers", "credentials": [{"user": "root", "host": h, **extra} for h in hosts]}


def lxc_provider(*hosts, count=1, prefix="controller", **extra):
    return {
        "type": "LxcProvider",
        "containers_per_host": count,
        "container_name_prefix": prefix,
        "host_provider": servers(*hosts),
        **extra,
    }


def devstack(provider=None, **localrc):
    config = {"type": "DevstackEngine", "localrc": localrc or {"VIRT_DRIVER": "fake"}}
    if provider is not None:
        config["provider"] = provider
    return config


def lxc_engine(*hosts, count=4, prefix="compute", **extra):
    return {
        "type": "LxcEngine",
        "container_name": prefix,
        "nodes_per_server": count,
        "provider": servers(*hosts),
        "engine": {"name": "DevstackEngine", "localrc": {"MYSQL_HOST": "{controller_ip}"}},
        **extra,
    }


def multihost(controller, *nodes):
    return {"type": "MultihostEngine", "controller": controller, "nodes": list(nodes)}


def plan_of(data):
    return topology.plan(validate(data))


def problems_of(data):
    with pytest.raises(ConfigError) as caught:
        plan_of(data)
    return {problem.path: problem.message for problem in caught.value.problems}


# ---------------------------------------------------------------- the seed


def test_seed_plans_one_controller_and_64_computes_on_localhost():
    result = topology.plan(load_config(SEED))
    controllers = [n for n in result.nodes if n.role == "controller"]
    computes = [n for n in result.nodes if n.role == "compute"]
    assert len(controllers) == 1 and len(computes) == 64
    assert [n.kind for n in computes].count("first") == 1
    assert [n.kind for n in computes].count("clone") == 63
    assert {n.host for n in result.nodes} == {"localhost"}
    assert [h.address for h in result.hosts] == ["localhost"]
    controller = controllers[0]
    assert (controller.name, controller.address, controller.kind) == (
        "controller-10-100-1-000",
        "10.100.1.2",
        "standalone",
    )
    assert result.controller_address == controller.address
    for node in computes:
        assert node.localrc["MYSQL_HOST"] == controller.address
        assert node.localrc["RABBIT_HOST"] == controller.address
        assert node.localrc["GLANCE_HOSTPORT"] == f"{controller.address}:9292"
        assert f'MYSQL_HOST="{controller.address}"' in node.local_conf
        assert "{controller_ip}" not in node.local_conf
    first = computes[0]
    assert first.name == "devstack-compute-10-100-1-000" and first.kind == "first"
    assert {n.source for n in computes[1:]} == {first.name}
    assert computes[-1].name == "devstack-compute-10-100-1-063"
    assert [n.address for n in computes] == [f"10.100.1.{i}" for i in range(3, 67)]
    assert controller.localrc["SCREEN_LOGDIR"] == "$DEST/logs/screen"
    assert 'ENABLED_SERVICES+=",-n-cpu"' in controller.local_conf.splitlines()


def test_seed_host_carries_bridge_subnet_and_gateway():
    host = topology.plan(load_config(SEED)).hosts[0]
    assert (host.subnet, host.gateway, host.bridge, host.user) == (
        "10.100.1.0/24",
        "10.100.1.1",
        "lxcbr-0a640100",
        "root",
    )
    assert [(n.subnet, n.containers) for n in host.networks] == [("10.100.1.0/24", 65)]


def test_seed_plan_json_has_the_promised_shape():
    data = json.loads(topology.plan(load_config(SEED)).to_json())
    assert isinstance(data["tunnels"], list)
    for node in data["nodes"]:
        assert {
            "name",
            "role",
            "host",
            "address",
            "local_conf",
            "kind",
            "source",
            "group",
            "prefixlen",
            "gateway",
            "distribution",
            "release",
            "devstack_repo",
            "devstack_branch",
            "start_script",
            "localrc",
        } <= set(node)
        assert node["role"] in ("controller", "compute")
    node = data["nodes"][1]
    assert (
        node["devstack_repo"],
        node["devstack_branch"],
        node["start_script"],
        node["distribution"],
        node["release"],
        node["prefixlen"],
        node["gateway"],
    ) == ("https://opendev.org/openstack/devstack", "master", None, "ubuntu", "noble", 24, "10.100.1.1")


def test_plan_round_trips_through_json():
    result = topology.plan(load_config(SEED))
    again = topology.Plan.from_dict(json.loads(result.to_json()))
    assert again == result


# ---------------------------------------------------------------- hosts and subnets


def test_hosts_get_consecutive_default_subnets():
    result = plan_of(multihost(devstack(lxc_provider("a")), lxc_engine("a", "b", "c")))
    assert [(h.address, h.subnet, h.gateway) for h in result.hosts] == [
        ("a", "10.100.1.0/24", "10.100.1.1"),
        ("b", "10.100.2.0/24", "10.100.2.1"),
        ("c", "10.100.3.0/24", "10.100.3.1"),
    ]
    assert len({h.bridge for h in result.hosts}) == 3


def test_start_lxc_network_is_incremented_per_host():
    result = plan_of(
        multihost(devstack(lxc_provider("ctl")), lxc_engine("a", "b", count=2, start_lxc_network="10.100.1.0/28"))
    )
    by_host = {n.host: n.subnet for n in result.nodes if n.role == "compute"}
    assert by_host == {"a": "10.100.1.0/28", "b": "10.100.1.16/28"}
    names = [n.name for n in result.nodes if n.host == "b"]
    assert names == ["compute-10-100-1-16-000", "compute-10-100-1-16-001"]
    # The controller's host needs a default subnet: it skips the range the computes asked for.
    assert [n.subnet for n in result.nodes if n.role == "controller"] == ["10.100.2.0/24"]


def test_groups_on_one_host_share_its_subnet_and_bridge_with_disjoint_addresses():
    result = plan_of(
        multihost(devstack(lxc_provider("h")), lxc_engine("h", count=3), lxc_engine("h", count=2, prefix="other"))
    )
    assert len(result.hosts[0].networks) == 1
    assert {(n.subnet, n.bridge) for n in result.nodes} == {("10.100.1.0/24", "lxcbr-0a640100")}
    assert [n.address for n in result.nodes] == [f"10.100.1.{i}" for i in range(2, 8)]
    assert [n.group for n in result.nodes] == [0, 1, 1, 1, 2, 2]


def test_group_with_its_own_network_gets_its_own_bridge_on_the_same_host():
    result = plan_of(multihost(devstack(lxc_provider("h")), lxc_engine("h", start_lxc_network="10.200.0.0/24")))
    networks = result.hosts[0].networks
    assert [(n.subnet, n.bridge, n.containers) for n in networks] == [
        ("10.100.1.0/24", "lxcbr-0a640100", 1),
        ("10.200.0.0/24", "lxcbr-0ac80000", 4),
    ]
    assert [n.address for n in result.nodes if n.role == "compute"] == [f"10.200.0.{i}" for i in range(2, 6)]


def test_same_subnet_given_twice_on_one_host_is_shared():
    network = {"start_lxc_network": "10.100.7.0/24"}
    result = plan_of(multihost(devstack(lxc_provider("h", **network)), lxc_engine("h", **network)))
    assert [n.address for n in result.nodes] == [f"10.100.7.{i}" for i in range(2, 7)]
    assert len(result.hosts[0].networks) == 1


OVERLAPS = [
    (
        "same-subnet-two-hosts",
        lxc_provider("a", start_lxc_network="10.9.0.0/24"),
        lxc_engine("b", start_lxc_network="10.9.0.0/24"),
        "nodes[0].start_lxc_network",
    ),
    (
        "nested-on-one-host",
        lxc_provider("a", start_lxc_network="10.9.0.0/24"),
        lxc_engine("a", start_lxc_network="10.9.0.0/25"),
        "nodes[0].start_lxc_network",
    ),
    (
        "second-host-runs-into-other",
        lxc_provider("a", start_lxc_network="10.9.1.0/24"),
        lxc_engine("b", "c", start_lxc_network="10.9.0.0/24"),
        "nodes[0].start_lxc_network",
    ),
]


@pytest.mark.parametrize("provider,node,where", [case[1:] for case in OVERLAPS], ids=[c[0] for c in OVERLAPS])
def test_overlapping_subnets_are_refused(provider, node, where):
    found = problems_of(multihost(devstack(provider), node))
    assert "overlaps subnet" in found[where] and "container subnets must not overlap" in found[where]


def test_shared_subnet_too_small_names_every_group_in_it():
    shared = "10.100.1.0/24"
    found = problems_of(
        multihost(
            devstack(lxc_provider("h")),
            lxc_engine("h", count=200, start_lxc_network=shared),
            lxc_engine("h", count=60, prefix="more", start_lxc_network=shared),
        )
    )
    assert found == {
        "nodes[1].start_lxc_network": (
            "10.100.1.0/24 is too small for 260 containers on h (shared: nodes[0] 200, nodes[1] 60): "
            "it holds 253 (network, gateway and broadcast addresses are reserved); a /23 would hold them; "
            "set start_lxc_network to a network that size"
        )
    }


def test_253_containers_fill_a_default_subnet_exactly():
    result = plan_of(multihost(devstack(lxc_provider("h")), lxc_engine("h", count=252)))
    assert result.nodes[-1].address == "10.100.1.254"


def test_later_host_subnet_running_into_a_special_range_is_refused():
    found = problems_of(
        multihost(devstack(lxc_provider("a")), lxc_engine("b", "c", start_lxc_network="223.255.255.0/24"))
    )
    assert found == {
        "nodes[0].start_lxc_network": (
            "the subnet for host 2 (c): 224.0.0.0/24 overlaps the multicast range 224.0.0.0/4; container subnets must "
            "be ordinary unicast addresses"
        )
    }


def test_default_subnets_skip_hardware_node_addresses():
    # A host at 10.100.1.1 must not get 10.100.1.0/24, whose gateway would be its own address.
    result = plan_of(multihost(devstack(lxc_provider("10.100.1.1")), lxc_engine("10.100.2.7")))
    assert [(h.address, h.subnet) for h in result.hosts] == [
        ("10.100.1.1", "10.100.3.0/24"),
        ("10.100.2.7", "10.100.4.0/24"),
    ]


def test_default_subnets_skip_tunnel_ends():
    result = plan_of(multihost(devstack(lxc_provider("c")), lxc_engine("a", tunnel_to=["10.100.1.7"])))
    assert [h.subnet for h in result.hosts] == ["10.100.2.0/24", "10.100.3.0/24"]


def test_explicit_subnet_holding_a_hardware_node_address_is_refused():
    found = problems_of(multihost(devstack(lxc_provider("10.9.0.1", start_lxc_network="10.9.0.0/24")), lxc_engine("a")))
    assert found == {
        "controller.provider.start_lxc_network": (
            "subnet 10.9.0.0/24 (for controller on 10.9.0.1) holds the address of hardware node 10.9.0.1 (at "
            "controller.provider.host_provider.credentials[0]); a container subnet must not hold a hardware node's "
            "address; give a different start_lxc_network"
        )
    }


def test_explicit_subnet_holding_another_hosts_address_is_refused():
    found = problems_of(
        multihost(devstack(lxc_provider("a", start_lxc_network="192.168.10.0/24")), lxc_engine("192.168.10.2"))
    )
    assert "holds the address of hardware node 192.168.10.2" in found["controller.provider.start_lxc_network"]


# ---------------------------------------------------------------- names


def test_names_follow_prefix_subnet_index_without_doubled_separators():
    result = plan_of(devstack(lxc_provider("h", count=2, prefix="rally-providertest-02-")))
    assert [n.name for n in result.nodes] == [
        "rally-providertest-02-10-100-1-000",
        "rally-providertest-02-10-100-1-001",
    ]


def test_groups_sharing_prefix_and_subnet_get_names_of_their_own():
    result = plan_of(multihost(devstack(lxc_provider("h")), lxc_engine("h", count=2), lxc_engine("h", count=2)))
    assert [n.name for n in result.nodes if n.role == "compute"] == [
        "compute-10-100-1-000",
        "compute-10-100-1-001",
        "compute-10-100-1-g2-000",
        "compute-10-100-1-g2-001",
    ]
    assert [n.source for n in result.nodes if n.role == "compute"] == [
        None,
        "compute-10-100-1-000",
        None,
        "compute-10-100-1-g2-000",
    ]
    assert [n.address for n in result.nodes] == ["10.100.1.2", "10.100.1.3", "10.100.1.4", "10.100.1.5", "10.100.1.6"]


def _grown(count, previous=None):
    data = multihost(devstack(lxc_provider("h")), lxc_engine("h", count=count), lxc_engine("h", count=3))
    return topology.plan(validate(data), previous=previous)


def test_growing_a_group_renames_no_other_group_and_with_the_previous_plan_re_addresses_none():
    before = _grown(4)
    after = _grown(6, previous=before)
    old = {node.name: node.address for node in before.nodes}
    new = {node.name: node.address for node in after.nodes}
    assert set(old) < set(new)
    assert {name: new[name] for name in old} == old, "every node keeps its name and address"
    added = sorted(set(new) - set(old))
    assert added == ["compute-10-100-1-004", "compute-10-100-1-005"]
    assert [new[name] for name in added] == ["10.100.1.10", "10.100.1.11"], "the lowest free addresses"
    # Without the previous plan only addresses move: names are keys of their own group.
    assert {n.name for n in _grown(6).nodes} == set(new)


def test_shrinking_a_group_keeps_the_others_and_frees_the_addresses_for_later_growth():
    before = _grown(4)
    smaller = _grown(2, previous=before)
    old = {node.name: node.address for node in before.nodes}
    assert {node.name: node.address for node in smaller.nodes} == {
        name: address for name, address in old.items() if name not in ("compute-10-100-1-002", "compute-10-100-1-003")
    }
    again = _grown(3, previous=smaller)
    assert again.node("compute-10-100-1-002").address == "10.100.1.5", "a freed address is taken again"


def test_a_previous_address_outside_the_subnet_or_taken_twice_is_replaced():
    before = _grown(2)
    broken = dataclasses.replace(
        before, nodes=tuple(dataclasses.replace(node, address="10.100.1.2") for node in before.nodes)
    )
    again = _grown(2, previous=broken)
    addresses = [node.address for node in again.nodes]
    assert len(set(addresses)) == len(addresses)
    assert again.nodes[0].address == "10.100.1.2"


def test_default_prefixes_come_from_the_role():
    data = multihost(devstack(lxc_provider("h")), lxc_engine("h", count=1))
    del data["controller"]["provider"]["container_name_prefix"]
    del data["nodes"][0]["container_name"]
    assert [n.name for n in plan_of(data).nodes] == ["controller-10-100-1-000", "compute-10-100-1-000"]


def test_more_than_999_containers_keep_unique_names():
    result = plan_of(
        multihost(devstack(lxc_provider("h")), lxc_engine("h", count=1200, start_lxc_network="10.120.0.0/21"))
    )
    names = [n.name for n in result.nodes]
    assert len(set(names)) == len(names)
    assert names[-1] == "compute-10-120-0-1199"


def test_devstack_twice_on_one_hardware_node_is_refused():
    found = problems_of(multihost(devstack(servers("h1")), devstack(servers("h1"))))
    assert "devstack would run twice on one hardware node" in found["nodes[0]"]


def test_host_names_are_compared_without_case_and_trailing_dot():
    result = plan_of(
        multihost(devstack(lxc_provider("Node-A.example.")), lxc_engine("node-a.EXAMPLE"), lxc_engine("b"))
    )
    assert [h.address for h in result.hosts] == ["node-a.example", "b"]
    found = problems_of(multihost(devstack(servers("H1")), devstack(servers("h1."))))
    assert "devstack would run twice on one hardware node" in found["nodes[0]"]


# ---------------------------------------------------------------- the controller


def test_controller_must_be_exactly_one_node():
    found = problems_of(multihost(devstack(lxc_provider("a", count=2)), lxc_engine("a")))
    assert found == {
        "controller": "the controller must be exactly one node; this config makes 2 (2 per host on 1 host(s))"
    }


def test_controller_on_a_hardware_node_lends_its_address():
    result = plan_of(
        multihost(devstack(servers("192.168.1.13")), lxc_engine("192.168.10.1", tunnel_to=["192.168.1.13"]))
    )
    assert result.nodes[0].kind == "host" and result.nodes[0].address == "192.168.1.13"
    assert result.nodes[0].subnet is None and result.nodes[0].bridge is None
    assert {n.localrc["MYSQL_HOST"] for n in result.nodes[1:]} == {"192.168.1.13"}
    assert result.hosts[0].networks == ()


def test_controller_on_localhost_itself_is_unreachable_from_containers():
    found = problems_of(multihost(devstack(servers("localhost")), lxc_engine("localhost")))
    assert "containers cannot reach by that name" in found["controller.provider.credentials[0].host"]


# ---------------------------------------------------------------- tunnels


def test_tunnels_carry_both_ends_and_the_subnets_on_each():
    # The seed's tunnel picture: the controller in a container on 192.168.1.13, computes on 192.168.10.x.
    result = plan_of(
        multihost(
            devstack(lxc_provider("192.168.1.13")),
            lxc_engine(
                "192.168.10.1",
                "192.168.10.2",
                start_lxc_network="10.100.10.0/24",
                tunnel_to=["10.1.1.20", "192.168.1.13"],
            ),
        )
    )
    assert result.controller_address == "10.100.1.2"
    assert [(t.kind, t.host, t.subnet, t.remote, t.remote_host, t.remote_subnets) for t in result.tunnels] == [
        ("ipip", "192.168.10.1", "10.100.10.0/24", "10.1.1.20", None, ()),
        ("ipip", "192.168.10.1", "10.100.10.0/24", "192.168.1.13", "192.168.1.13", ("10.100.1.0/24",)),
        ("ipip", "192.168.10.2", "10.100.11.0/24", "10.1.1.20", None, ()),
        ("ipip", "192.168.10.2", "10.100.11.0/24", "192.168.1.13", "192.168.1.13", ("10.100.1.0/24",)),
    ]
    assert result.tunnels_from("192.168.10.2") == result.tunnels[2:]


def test_tunnel_lists_every_container_subnet_on_the_remote():
    result = plan_of(
        multihost(
            devstack(lxc_provider("192.168.1.13")),
            lxc_engine("192.168.1.13", start_lxc_network="10.50.0.0/24", prefix="local"),
            lxc_engine("192.168.10.1", tunnel_to=["192.168.1.13"]),
        )
    )
    (tunnel,) = result.tunnels
    assert (tunnel.host, tunnel.subnet, tunnel.remote_subnets) == (
        "192.168.10.1",
        "10.100.2.0/24",
        ("10.50.0.0/24", "10.100.1.0/24"),
    )


def test_tunnel_json_shape():
    result = plan_of(
        multihost(devstack(lxc_provider("192.168.1.13")), lxc_engine("192.168.10.1", tunnel_to=["192.168.1.13"]))
    )
    assert json.loads(result.to_json())["tunnels"] == [
        {
            "name": "lxt-6628ff031f7",
            "kind": "ipip",
            "host": "192.168.10.1",
            "remote": "192.168.1.13",
            "subnet": "10.100.2.0/24",
            "remote_host": "192.168.1.13",
            "remote_subnets": ["10.100.1.0/24"],
        }
    ]
    assert topology.Plan.from_dict(json.loads(result.to_json())) == result


def test_tunnel_names_fit_linux_and_depend_only_on_their_own_ends():
    one = plan_of(
        multihost(
            devstack(lxc_provider("192.168.1.13")),
            lxc_engine("192.168.10.1", "192.168.10.2", tunnel_to=["192.168.1.13"]),
        )
    )
    names = {tunnel.name for tunnel in one.tunnels}
    assert len(names) == len(one.tunnels) == 2
    assert all(re.fullmatch(r"lxt-[0-9a-f]{11}", name) for name in names), "15 characters, Linux's limit"
    # A group added before them changes neither their order-free names nor anything else about them.
    two = plan_of(
        multihost(
            devstack(lxc_provider("192.168.1.13")),
            lxc_engine("192.168.10.3", tunnel_to=["192.168.1.13"], start_lxc_network="10.9.0.0/24"),
            lxc_engine("192.168.10.1", "192.168.10.2", tunnel_to=["192.168.1.13"]),
        )
    )
    assert set(one.tunnels) < set(two.tunnels)


def test_no_tunnel_from_a_host_to_itself():
    result = plan_of(
        multihost(
            devstack(lxc_provider("192.168.1.13")),
            lxc_engine("192.168.1.13", "192.168.10.1", tunnel_to=["192.168.1.13"]),
        )
    )
    assert [(t.host, t.remote) for t in result.tunnels] == [("192.168.10.1", "192.168.1.13")]


def test_one_host_reaches_one_remote_one_way():
    found = problems_of(
        multihost(
            devstack(lxc_provider("c")),
            lxc_engine("a", tunnel_to=["192.168.1.13"]),
            lxc_engine(
                "a", tunnel_to=["192.168.1.13"], tunnel_type="vxlan", prefix="x", start_lxc_network="10.7.0.0/24"
            ),
        )
    )
    assert "is vxlan here but ipip in nodes[0]" in found["nodes[1]"]


def test_tunnel_into_a_container_subnet_is_refused():
    found = problems_of(
        multihost(
            devstack(lxc_provider("c", start_lxc_network="10.50.0.0/24")), lxc_engine("a", tunnel_to=["10.50.0.7"])
        )
    )
    assert "inside a container subnet of this deployment" in found["nodes[0].tunnel_to[0]"]


def test_shared_subnet_tunnels_are_listed_once():
    result = plan_of(
        multihost(devstack(lxc_provider("a", tunnel_to=["192.168.1.13"])), lxc_engine("a", tunnel_to=["192.168.1.13"]))
    )
    assert len(result.tunnels) == 1


# ---------------------------------------------------------------- credentials


def test_agent_settings_from_credentials_are_kept_and_merged():
    data = multihost(devstack(lxc_provider("a")), lxc_engine("a"))
    data["nodes"][0]["provider"]["credentials"][0].update(port=7001, ca="ca.pem", token_file="/t")
    host = plan_of(data).hosts[0]
    assert (host.user, host.port, host.ca, host.token_file, host.cert, host.key) == (
        "root",
        7001,
        "ca.pem",
        "/t",
        None,
        None,
    )


def test_one_host_with_two_different_agent_ports_is_refused():
    data = multihost(devstack(lxc_provider("a")), lxc_engine("a"))
    data["controller"]["provider"]["host_provider"]["credentials"][0]["port"] = 7000
    data["nodes"][0]["provider"]["credentials"][0]["port"] = 7001
    found = problems_of(data)
    assert found == {
        "nodes[0].provider.credentials[0].port": "host 'a' is given port 7001 here but 7000 at "
        "controller.provider.host_provider.credentials[0]"
    }


# ---------------------------------------------------------------- scale and determinism


def test_planning_thousands_of_containers_per_host():
    data = multihost(
        devstack(lxc_provider("ctl")), lxc_engine("a", "b", "c", count=3000, start_lxc_network="10.64.0.0/20")
    )
    config = validate(data)
    result = topology.plan(config)
    assert len(result.nodes) == 9001
    addresses = [node.address for node in result.nodes]
    assert len(set(addresses)) == len(addresses)
    assert {node.name for node in result.nodes if node.host == "b"} >= {"compute-10-64-16-000", "compute-10-64-16-2999"}


# ---------------------------------------------------------------- properties over generated configs

HOSTS = ["alpha", "beta", "gamma", "192.168.10.5"]


@st.composite
def networks(draw):
    # Inside 10.100.0.0/16, where the default subnets are too, so that collisions with them get tried.
    prefix = draw(st.integers(22, 27))
    index = draw(st.integers(0, 2 ** (prefix - 16) - 1))
    return str(ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.100.0.0")) + index * 2 ** (32 - prefix), prefix)))


@st.composite
def groups(draw, explicit_networks):
    hosts = draw(st.lists(st.sampled_from(HOSTS), min_size=1, max_size=3, unique=True))
    count = draw(st.integers(1, 40))
    extra = {}
    if explicit_networks and draw(st.booleans()):
        extra["start_lxc_network"] = draw(networks())
    prefix = draw(st.sampled_from(["compute", "cmp", "node-x"]))
    if draw(st.booleans()):
        return lxc_engine(*hosts, count=count, prefix=prefix, **extra)
    provider = lxc_provider(*hosts, count=count, prefix=prefix, **extra)
    return devstack(provider, MYSQL_HOST="{controller_ip}")


@st.composite
def deployments(draw, explicit_networks=True):
    extra = {}
    if explicit_networks and draw(st.booleans()):
        extra["start_lxc_network"] = draw(networks())
    controller = devstack(lxc_provider(draw(st.sampled_from(HOSTS)), **extra))
    return multihost(controller, *draw(st.lists(groups(explicit_networks), min_size=1, max_size=4)))


def independent_expectation(data):
    """Whether the config should plan, computed apart from the planner: explicit subnets may not overlap
    (one subnet shared on one host is fine), and each (host, subnet) must hold what is put in it."""
    explicit, default_counts, pool_counts = {}, {}, {}
    for node in [data["controller"]] + data["nodes"]:
        lxc_engine_node = node["type"] == "LxcEngine"
        cfg = node if lxc_engine_node else node["provider"]
        hosts = [c["host"] for c in cfg["provider" if lxc_engine_node else "host_provider"]["credentials"]]
        count = cfg.get("nodes_per_server", cfg.get("containers_per_host", 1))
        if "start_lxc_network" in cfg:
            start = ipaddress.IPv4Network(cfg["start_lxc_network"])
            for position, host in enumerate(hosts):
                net = ipaddress.IPv4Network(
                    (int(start.network_address) + position * start.num_addresses, start.prefixlen)
                )
                explicit[(host, net)] = True
                pool_counts[(host, net)] = pool_counts.get((host, net), 0) + count
        else:
            for host in hosts:
                default_counts[host] = default_counts.get(host, 0) + count
    nets = list(explicit)
    for i, (_, a) in enumerate(nets):
        for _, b in nets[i + 1 :]:
            if a.overlaps(b):
                return False
    if any(count > net.num_addresses - 3 for (_, net), count in pool_counts.items()):
        return False
    return all(count <= 253 for count in default_counts.values())


def assert_plan_invariants(result):
    names = [n.name for n in result.nodes]
    assert len(set(names)) == len(names)
    assert all(NAME.match(name) and len(name) <= 63 for name in names)
    addresses = [n.address for n in result.nodes]
    assert len(set(addresses)) == len(addresses)
    subnets = {}
    for host in result.hosts:
        for network in host.networks:
            subnets[(host.address, network.subnet)] = network
    for node in result.nodes:
        network = ipaddress.IPv4Network(node.subnet)
        address = ipaddress.IPv4Address(node.address)
        assert (node.host, node.subnet) in subnets
        assert address in network
        assert address not in (network.network_address, network.network_address + 1, network.broadcast_address)
        assert node.gateway == str(network.network_address + 1)
        if node.kind == "clone":
            assert any(
                other.name == node.source and other.host == node.host and other.kind == "first"
                for other in result.nodes
            )
    nets = sorted({ipaddress.IPv4Network(subnet) for _, subnet in subnets}, key=lambda n: int(n.network_address))
    for before, after in itertools.pairwise(nets):
        assert not before.overlaps(after)
    assert len(nets) == len(subnets), "one subnet on two hosts"
    bridges = [(host.address, n.bridge) for host in result.hosts for n in host.networks]
    assert len(set(bridges)) == len(bridges) and all(len(b) <= 15 for _, b in bridges)
    controller = [n for n in result.nodes if n.role == "controller"]
    assert len(controller) == 1 and result.controller_address == controller[0].address
    assert all(n.localrc.get("MYSQL_HOST") == controller[0].address for n in result.nodes if n.role == "compute")


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=deployments(explicit_networks=False))
def test_property_default_networks_always_plan_correctly(data):
    assume(independent_expectation(data))
    result = plan_of(data)
    assert_plan_invariants(result)
    assert result.to_json() == plan_of(json.loads(json.dumps(data))).to_json()


@SETTINGS
@given(data=deployments())
def test_property_plan_succeeds_exactly_when_subnets_fit_and_then_is_sound(data):
    expected = independent_expectation(data)
    try:
        result = plan_of(data)
    except ConfigError as error:
        assert not expected, str(error)
        assert all("overlap" in p.message or "too small" in p.message for p in error.problems), str(error)
        return
    assert expected
    assert_plan_invariants(result)
    assert topology.Plan.from_dict(json.loads(result.to_json())) == result


# ---------------------------------------------------------------- devstack's defaults for a cloud in containers


def seed_data():
    return json.loads(SEED.read_text())


def seed_nodes(data=None, source=None):
    result = topology.plan(validate(data or seed_data(), source=source))
    return result, result.nodes[0], result.nodes[1]


def test_seed_nodes_get_the_defaults_after_the_passwords_and_before_the_config():
    _, controller, compute = seed_nodes()
    assert list(compute.localrc)[5:8] == ["SERVICE_HOST", "ENABLE_KSMTUNED", "VIRT_DRIVER"]
    assert (compute.localrc["SERVICE_HOST"], compute.localrc["ENABLE_KSMTUNED"]) == ("10.100.1.2", "False")
    assert compute.localrc["ENABLED_SERVICES"] == "n-cpu,n-net,placement-client"
    assert 'SERVICE_HOST="10.100.1.2"' in compute.local_conf.splitlines()
    assert "SERVICE_HOST" not in controller.localrc and controller.localrc["ENABLE_KSMTUNED"] == "False"
    for node in (controller, compute):
        assert node.meta_sections == {
            "post-config|$NOVA_CONF": {"DEFAULT": {"report_interval": "10", "service_down_time": "60"}}
        }
        assert node.local_conf.endswith(
            "\n[[post-config|$NOVA_CONF]]\n[DEFAULT]\nreport_interval = 10\nservice_down_time = 60\n"
        )


CONFIGURED_WINS = [
    (
        "service-host",
        ("localrc", "SERVICE_HOST"),
        "10.0.0.9",
        lambda n: n.localrc["SERVICE_HOST"] == "10.0.0.9" and list(n.localrc).count("SERVICE_HOST") == 1,
    ),
    ("ksmtuned", ("localrc", "ENABLE_KSMTUNED"), True, lambda n: n.localrc["ENABLE_KSMTUNED"] == "True"),
    (
        "placement-client-removed",
        ("localrc", "ENABLED_SERVICES"),
        "n-cpu,-placement-client",
        lambda n: n.localrc["ENABLED_SERVICES"] == "n-cpu,-placement-client" and n.services == ("n-cpu",),
    ),
    (
        "placement-client-listed",
        ("localrc", "ENABLED_SERVICES"),
        "placement-client,n-cpu",
        lambda n: n.services == ("placement-client", "n-cpu"),
    ),
    (
        "no-n-cpu",
        ("localrc", "ENABLED_SERVICES"),
        "n-api",
        lambda n: n.localrc["ENABLED_SERVICES"] == "n-api" and n.nova_hosts == (),
    ),
    (
        "appended-last",
        ("localrc", "ENABLED_SERVICES+"),
        ",n-api",
        lambda n: (
            n.localrc["ENABLED_SERVICES+"] == ",n-api,placement-client"
            and n.services == ("n-cpu", "n-net", "n-api", "placement-client")
        ),
    ),
    (
        "report-interval",
        ("meta_sections",),
        {"post-config|${NOVA_CONF}": {"DEFAULT": {"report_interval": 5}}},
        lambda n: (
            n.meta_sections
            == {"post-config|${NOVA_CONF}": {"DEFAULT": {"report_interval": "5", "service_down_time": "30"}}}
        ),
    ),
    (
        "down-time-in-another-phase",
        ("meta_sections",),
        {"extra|$NOVA_CONF": {"DEFAULT": {"service_down_time": 99}}},
        lambda n: (
            n.meta_sections
            == {
                "extra|$NOVA_CONF": {"DEFAULT": {"service_down_time": "99"}},
                "post-config|$NOVA_CONF": {"DEFAULT": {"report_interval": "10"}},
            }
        ),
    ),
    (
        "other-file",
        ("meta_sections",),
        {"post-config|$NOVA_CPU_CONF": {"DEFAULT": {"report_interval": 5}}},
        lambda n: n.meta_sections["post-config|$NOVA_CONF"]["DEFAULT"]["report_interval"] == "10",
    ),
    ("devstack-interval", ("localrc", "NOVA_SERVICE_REPORT_INTERVAL"), 30, lambda n: n.meta_sections == {}),
]


@pytest.mark.parametrize(
    "path,value,check", [case[1:] for case in CONFIGURED_WINS], ids=[case[0] for case in CONFIGURED_WINS]
)
def test_a_configured_key_wins_over_the_defaults(path, value, check):
    data = seed_data()
    target = data["nodes"][0]["engine"]
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
    _, _, compute = seed_nodes(data)
    assert check(compute), (compute.localrc, compute.meta_sections, compute.services)


def test_devstack_on_a_hardware_node_gets_no_container_defaults():
    config = multihost(
        devstack(servers("192.168.1.13"), ENABLED_SERVICES="key"),
        devstack(servers("192.168.1.14"), VIRT_DRIVER="fake", ENABLED_SERVICES="n-cpu"),
    )
    controller, compute = plan_of(config).nodes
    for node in (controller, compute):
        assert not {"SERVICE_HOST", "ENABLE_KSMTUNED"} & set(node.localrc)
        assert node.meta_sections["post-config|$NOVA_CONF"]["DEFAULT"]["report_interval"] == "10"
        assert (node.distribution, node.release, node.host_proxy, node.host_ca_certificates) == (
            None,
            None,
            False,
            False,
        )
    assert compute.services == ("n-cpu",) and len(compute.nova_hosts) == 1


NOVA_HOSTS = [
    ("seed", {}, lambda name: (f"{name}1",)),
    ("three-fakes", {"NUMBER_FAKE_NOVA_COMPUTE": 3}, lambda name: (f"{name}1", f"{name}2", f"{name}3")),
    ("no-fakes", {"NUMBER_FAKE_NOVA_COMPUTE": "0"}, lambda name: ()),
    ("libvirt", {"VIRT_DRIVER": "libvirt"}, lambda name: (name,)),
    ("no-n-cpu", {"ENABLED_SERVICES": "n-api"}, lambda name: ()),
]


@pytest.mark.parametrize("localrc,hosts", [case[1:] for case in NOVA_HOSTS], ids=[case[0] for case in NOVA_HOSTS])
def test_nova_hosts_are_named_as_devstack_names_them(localrc, hosts):
    data = seed_data()
    data["nodes"][0]["engine"]["localrc"].update(localrc)
    result, controller, _ = seed_nodes(data)
    assert controller.nova_hosts == ()
    for node in result.nodes[1:]:
        assert node.nova_hosts == hosts(node.name)


RELEASES = [
    ("ubuntu", {}, ("ubuntu", "noble")),
    ("debian", {"distribution": "debian"}, ("debian", "bookworm")),
    ("given", {"distribution": "debian", "release": "trixie"}, ("debian", "trixie")),
    ("given-release", {"distribution": "ubuntu", "release": "jammy"}, ("ubuntu", "jammy")),
]


def test_a_distribution_no_template_makes_is_refused_with_the_config():
    data = seed_data()
    data["nodes"][0]["distribution"] = "fedora"
    found = problems_of(data)
    assert found == {"nodes[0].distribution": "expected 'ubuntu' or 'debian', got the string \"fedora\""}


def test_each_container_carries_its_template_and_a_hardware_node_none():
    result = plan_of(multihost(devstack(lxc_provider("a", distribution="debian")), lxc_engine("a", count=2)))
    assert [(node.kind, node.template) for node in result.nodes] == [
        ("standalone", "debian"),
        ("first", "ubuntu"),
        ("clone", "ubuntu"),
    ]
    hardware = plan_of(devstack(servers("b")))
    assert [(node.kind, node.template) for node in hardware.nodes] == [("host", None)]


@pytest.mark.parametrize("settings,expected", [case[1:] for case in RELEASES], ids=[case[0] for case in RELEASES])
def test_a_distribution_without_a_release_gets_one_devstack_supports(settings, expected):
    data = seed_data()
    data["nodes"][0].update(settings)
    data["controller"]["provider"].update(settings)
    result, controller, compute = seed_nodes(data)
    assert (controller.distribution, controller.release) == (compute.distribution, compute.release) == expected
    assert "release" not in data["nodes"][0] or data["nodes"][0]["release"] == expected[1]


MIRRORS = [
    ("absolute", "/srv/mirror/../git", None, "/srv/git"),
    ("relative-to-the-file", "git", "configs/c.json", "configs/git"),
    ("relative-without-a-file", "../git", None, "../git"),
]


@pytest.mark.parametrize("mirror,source,expected", [case[1:] for case in MIRRORS], ids=[case[0] for case in MIRRORS])
def test_git_mirror_path_and_what_it_changes(mirror, source, expected):
    data = seed_data()
    data["nodes"][0]["engine"]["git_mirror"] = mirror
    _, controller, compute = seed_nodes(data, source=source)
    assert compute.git_mirror == expected and compute.devstack_repo is None
    assert compute.localrc["GIT_BASE"] == "file:///opt/stack/.lxc-cloud/mirror"
    assert compute.localrc["GIT_BASE"] == "file://" + localconf.NODE_GIT_MIRROR
    assert controller.git_mirror is None and "GIT_BASE" not in controller.localrc
    assert controller.devstack_repo == "https://opendev.org/openstack/devstack"
    assert compute.devstack_branch == controller.devstack_branch == "master"


def test_git_mirror_relative_to_the_folder_of_the_file_read(tmp_path):
    data = seed_data()
    data["controller"].update(git_mirror="mirror", devstack_repo="/srv/devstack")
    data["controller"]["localrc"]["GIT_BASE"] = "https://example.org"
    (tmp_path / "c.json").write_text(json.dumps(data))
    controller = topology.plan(load_config(tmp_path / "c.json")).nodes[0]
    assert controller.git_mirror == str(tmp_path / "mirror")
    assert (controller.devstack_repo, controller.localrc["GIT_BASE"]) == ("/srv/devstack", "https://example.org")


def test_n_net_is_a_warning_naming_where_it_is_enabled():
    result, _, _ = seed_nodes()
    assert topology.warnings(result) == [
        "nodes[0].engine.localrc.ENABLED_SERVICES enables 'n-net' (nova-network), which was removed from nova in "
        "the Rocky release: devstack ignores the name and nothing gives these nodes networking through it; remove "
        "it (nova's networking is neutron's, q-svc on the controller)"
    ]
    data = seed_data()
    data["controller"]["localrc"]["ENABLED_SERVICES+"] = ",n-net"
    data["nodes"][0]["engine"]["localrc"]["ENABLED_SERVICES"] = "n-cpu,n-net,-n-net"
    warnings = topology.warnings(seed_nodes(data)[0])
    assert [warning.split(" ", 1)[0] for warning in warnings] == ["controller.localrc.ENABLED_SERVICES+"]


# ---------------------------------------------------------------- kernel features


def requirements_of(localrc):
    computes = lxc_engine("localhost", count=2)
    computes["engine"]["localrc"]["ENABLED_SERVICES"] = "n-cpu"
    result = plan_of(multihost(devstack(lxc_provider("localhost"), **localrc), computes))
    return topology.kernel_requirements(result)


OVS = ("ovn-controller", "ovn-northd", "ovs-vswitchd", "ovsdb-server", "q-ovn-agent")
KERNEL = [
    ("devstack-defaults", {"ENABLED_SERVICES+": ",-n-cpu"}, [(s, "openvswitch") for s in OVS] + [("c-vol", "loop")]),
    (
        "ovs-agent",
        {"ENABLED_SERVICES": "q-svc,q-agt,q-l3,q-dhcp", "Q_AGENT": "openvswitch"},
        [("q-agt", "openvswitch"), ("q-l3", "openvswitch"), ("q-dhcp", "openvswitch")],
    ),
    (
        "ovn-by-default",
        {"ENABLED_SERVICES": "q-svc,neutron-agent,q-ovn-metadata-agent"},
        [("neutron-agent", "openvswitch"), ("q-ovn-metadata-agent", "openvswitch")],
    ),
    ("other-agent", {"ENABLED_SERVICES": "q-svc,q-agt,q-dhcp", "Q_AGENT": "linuxbridge"}, []),
    ("none", {"ENABLED_SERVICES": "key,n-api,q-svc"}, []),
]


@pytest.mark.parametrize("localrc,needs", [case[1:] for case in KERNEL], ids=[case[0] for case in KERNEL])
def test_services_that_need_the_hosts_kernel(localrc, needs):
    found = requirements_of(localrc)
    assert [(r.service, r.feature) for r in found] == needs
    assert {(r.node, r.host) for r in found} <= {("controller-10-100-1-000", "localhost")}


def test_kernel_advice_names_the_module_and_how_to_do_without():
    found = {r.service: r for r in requirements_of({"ENABLED_SERVICES+": ",-n-cpu"})}
    ovn = found["ovn-controller"].advice
    assert "module openvswitch (CONFIG_OPENVSWITCH)" in ovn and "modprobe openvswitch" in ovn
    assert (
        'or use a host whose kernel has it; or disable what needs it on this node: add ",-ovn-controller,'
        '-ovn-northd,-ovs-vswitchd,-ovsdb-server,-q-ovn-agent" to `ENABLED_SERVICES+` in controller.localrc'
    ) in ovn
    assert "module loop (CONFIG_BLK_DEV_LOOP)" in found["c-vol"].advice
    assert 'add ",-c-vol" to `ENABLED_SERVICES+`' in found["c-vol"].advice


def test_the_seeds_computes_need_nothing_from_the_kernel():
    result, _, _ = seed_nodes()
    assert {r.node for r in topology.kernel_requirements(result)} == {"controller-10-100-1-000"}


# ---------------------------------------------------------------- plan versions


def test_plan_version_4_is_read_back_with_every_field():
    result = topology.plan(load_config(SEED))
    data = json.loads(result.to_json())
    assert data["version"] == topology.PLAN_VERSION == 4
    node = data["nodes"][1]
    assert {
        "meta_sections",
        "services",
        "nova_hosts",
        "git_mirror",
        "host_ca_certificates",
        "host_proxy",
        "template",
    } <= set(node)
    again = topology.Plan.from_dict(data).nodes[1]
    assert again.services == ("n-cpu", "n-net", "placement-client")
    assert again.nova_hosts == ("devstack-compute-10-100-1-0001",)


def test_a_version_3_plan_is_read_with_the_template_and_tunnel_names_version_4_gives():
    config = multihost(devstack(lxc_provider("192.168.1.13")), lxc_engine("192.168.10.1", tunnel_to=["192.168.1.13"]))
    result = plan_of(config)
    data = json.loads(result.to_json())
    data["version"] = 3
    for node in data["nodes"]:
        del node["template"]
    for tunnel in data["tunnels"]:
        del tunnel["name"]
    assert topology.Plan.from_dict(data) == result


@pytest.mark.parametrize(
    "version,words",
    [
        (
            2,
            "deployment made by an older coordinator (plan version 2; this one reads versions 3 and 4); destroy it "
            "with the coordinator that made it",
        ),
        (
            5,
            "deployment made by a newer coordinator (plan version 5; this one reads versions 3 and 4); use that "
            "coordinator",
        ),
        (None, "not a plan this coordinator can read (version None"),
    ],
    ids=["older", "newer", "none"],
)
def test_a_plan_of_another_version_is_refused_in_words(version, words):
    data = json.loads(topology.plan(load_config(SEED)).to_json())
    data["version"] = version
    with pytest.raises(ConfigError) as caught:
        topology.Plan.from_dict(data)
    assert isinstance(caught.value, topology.PlanVersionError) and caught.value.version == version
    assert str(caught.value).startswith(words)


def test_a_host_s_default_subnet_grows_to_hold_its_containers_aligned_to_its_size():
    """A /24 holds 253 containers: 1 + 300 on one host get the smallest larger subnet, aligned (10.100.2.0/23),
    rather than a plan refused for want of room; 1 + 64 keep 10.100.1.0/24 as before."""
    raw = json.loads((SEED.parent / "demo.json").read_text())
    assert [str(host.subnet) for host in plan_of(raw).hosts] == ["10.100.1.0/24"]
    raw["nodes"][0]["nodes_per_server"] = 300
    planned = plan_of(raw)
    assert [str(host.subnet) for host in planned.hosts] == ["10.100.2.0/23"]
    addresses = [node.address for node in planned.nodes]
    assert len(set(addresses)) == 301 and addresses[-1] == "10.100.3.46"
    raw["nodes"][0]["nodes_per_server"] = 1200
    assert [str(host.subnet) for host in plan_of(raw).hosts] == ["10.100.8.0/21"]
