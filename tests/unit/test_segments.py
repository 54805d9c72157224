"""Which bridge a container joins on a crowded subnet, and its MAC: pure functions of its address."""

import ipaddress

import pytest

from agent import addressing, segments
from agent.errors import InvalidArgument

SUBNET = ipaddress.IPv4Network("10.150.0.0/16")


def address(offset):
    return f"{SUBNET.network_address + offset}/{SUBNET.prefixlen}"


@pytest.mark.parametrize(
    "offset, index", [(2, 0), (999, 0), (1000, 1), (1999, 1), (2000, 2), (19999, segments.MAX_SEGMENTS - 1)]
)
def test_the_segment_is_the_thousand_the_address_lies_in(offset, index):
    assert segments.index_of(str(SUBNET), address(offset)) == index


def test_the_first_thousand_stay_on_the_subnets_bridge_and_the_rest_on_its_segments():
    assert segments.link_for("lxcbr-0a960000", str(SUBNET), address(998)) == "lxcbr-0a960000"
    assert segments.link_for("lxcbr-0a960000", str(SUBNET), address(1998)) == segments.names("lxcbr-0a960000", 1)[0]


def test_an_address_past_what_the_bridges_carry_is_refused_with_the_way_out():
    with pytest.raises(InvalidArgument, match="use addresses nearer the subnet's start"):
        segments.index_of(str(SUBNET), address(segments.MAX_SEGMENTS * segments.PORTS_PER_SEGMENT))


def test_the_subnets_bridge_keeps_room_for_its_containers_and_every_uplink():
    assert segments.PORTS_PER_SEGMENT + segments.MAX_SEGMENTS - 1 <= 1023  # BR_MAX_PORTS - 1


@pytest.mark.parametrize("bridge", ["lxcbr-0a640100", "a", "x" * 15])
def test_segment_link_names_fit_linux_and_differ_per_bridge_and_index(bridge):
    made = [name for index in range(1, segments.MAX_SEGMENTS) for name in segments.names(bridge, index)]
    assert all(len(name) <= 15 for name in made)
    assert len(set(made)) == len(made)
    assert not set(made) & set(segments.names(bridge + "y" if len(bridge) < 15 else "other", 1))


def test_macs_differ_across_a_crowded_subnet_and_stay_put():
    names = [f"devstack-compute-10-150-{index:04d}" for index in range(4000)]
    macs = {addressing.mac_address(name, address(index + 2)) for index, name in enumerate(names)}
    assert len(macs) == len(names)
    assert all(mac.startswith("02:") and len(mac) == 17 for mac in macs)
    assert addressing.mac_address(names[0], address(2)) == addressing.mac_address(names[0], address(2))
    # A clone holds its source's address until given its own: the name keeps their MACs apart.
    assert addressing.mac_address("a", address(2)) != addressing.mac_address("b", address(2))
