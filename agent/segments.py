"""More containers on one subnet than a Linux bridge has ports: the subnet's bridge and its segments.

A Linux bridge takes at most 1,023 ports (BR_MAX_PORTS is 1,024; the 1,024th veth gets "Exchange full"), so a
host holding two thousand containers of one subnet cannot put them all on its bridge. The subnet stays one
broadcast domain: segment k (k >= 1) is a bridge of its own, without an address, joined to the subnet's bridge
by a veth pair, and holds the containers whose address lies k * PORTS_PER_SEGMENT to (k + 1) * PORTS_PER_SEGMENT
past the subnet's start. Which bridge a container joins follows from its address alone, so it never changes while
the address does not, and nothing is counted. Segment 0 is the subnet's bridge itself, which also carries one
uplink per segment: MAX_SEGMENTS keeps it under the limit (1,000 containers + 19 uplinks).

Segments are made when a container on them starts (so a host that lost its links gets them back with its
containers), tagged ``lxc-agent-segment <k> of=<bridge>``, and removed with their bridge.
"""

import errno
import hashlib
import ipaddress
import logging
import os
import re

from pyroute2 import NetlinkError

from agent import links
from agent.errors import InvalidArgument, NetworkError

PORTS_PER_SEGMENT = 1000
MAX_SEGMENTS = 20
TAG = "lxc-agent-segment"
IFF_NOARP = 0x80

_ALIAS = re.compile(rf"{TAG} (\d+) of=(\S+)")

log = logging.getLogger(__name__)


def index_of(subnet, address):
    """The segment of the container with `address` (text, with or without a prefix) in `subnet`; InvalidArgument
    when the address lies beyond what MAX_SEGMENTS bridges carry. Pure."""
    network = ipaddress.IPv4Network(subnet)
    offset = int(ipaddress.IPv4Interface(address).ip) - int(network.network_address)
    index = offset // PORTS_PER_SEGMENT
    if not 0 <= index < MAX_SEGMENTS:
        raise InvalidArgument(
            f"address {address} lies {offset} addresses into {subnet}; one host's bridges for a subnet carry the "
            f"first {MAX_SEGMENTS * PORTS_PER_SEGMENT} ({MAX_SEGMENTS} bridges of {PORTS_PER_SEGMENT} ports): "
            f"use addresses nearer the subnet's start",
            address=address,
            subnet=subnet,
        )
    return index


def names(bridge, index):
    """(segment bridge, uplink on the subnet's bridge, its peer on the segment) for segment `index` >= 1: 14
    characters each, from a hash of the subnet's bridge, so any bridge name (up to Linux's 15) has them."""
    digest = hashlib.sha256(bridge.encode()).hexdigest()[:8]
    return tuple(f"{kind}{index:02d}-{digest}" for kind in ("lxs", "lxu", "lxd"))


def link_for(bridge, subnet, address):
    """The bridge a container with `address` joins: the subnet's `bridge` or one of its segments. Pure."""
    index = index_of(subnet, address)
    return bridge if index == 0 else names(bridge, index)[0]


def ensure(ipr, main, indexes):
    """Converge: segments `indexes` of the agent bridge `main` (its link, checked by the caller) exist, each
    joined to it and up."""
    for index in sorted({index for index in indexes if index != 0}):
        _ensure_one(ipr, main, index)


def _ensure_one(ipr, main, index):
    bridge = main.get_attr("IFLA_IFNAME")
    segment, uplink, peer = names(bridge, index)
    link = links.named(ipr, segment)
    if link is not None and _alias(link) != (index, bridge):
        raise NetworkError(
            f"host link {segment} exists but is not segment {index} of bridge {bridge}; delete it "
            f"(`ip link del {segment}`) and retry",
            bridge=bridge,
            segment=segment,
        )
    if link is None:
        _call(f"create bridge {segment}", bridge, ipr.link, "add", ifname=segment, kind="bridge", address=_mac(segment))
        link = links.named(ipr, segment)
        alias = f"{TAG} {index} of={bridge}"
        _call(f"tag bridge {segment}", bridge, ipr.link, "set", index=link["index"], ifalias=alias)
        log.info(
            "bridge %s: segment %d of %s (its containers from address %d on)",
            segment,
            index,
            bridge,
            index * PORTS_PER_SEGMENT,
        )
    if links.named(ipr, uplink) is None:
        _call(
            f"join {segment} to {bridge}",
            bridge,
            ipr.link,
            "add",
            ifname=uplink,
            kind="veth",
            address=_mac(uplink),
            peer={"ifname": peer, "address": _mac(peer)},
        )
    # The segment is a switch, not a host: without NOARP the kernel answers its containers' ARP for the gateway
    # (any local address, from any link) with the segment's MAC, as fast as the subnet's bridge does.
    _call(f"keep {segment} out of ARP", bridge, ipr.link, "set", index=link["index"], flags=IFF_NOARP, change=IFF_NOARP)
    for name in (segment, uplink, peer):
        _without_ipv6(name)
    for end, master in ((uplink, main["index"]), (peer, link["index"])):
        end_index = links.named(ipr, end)["index"]
        _call(f"attach {end}", bridge, ipr.link, "set", index=end_index, master=master, state="up")
    _call(f"bring {segment} up", bridge, ipr.link, "set", index=link["index"], state="up")


def remove_all(ipr, bridge):
    """Delete every segment of `bridge` with its uplink (the veth pair goes with either end)."""
    for link in list(ipr.get_links()):
        found = _alias(link)
        if found is None or found[1] != bridge:
            continue
        segment, uplink, _ = names(bridge, found[0])
        for name in (uplink, segment):
            existing = links.named(ipr, name)
            if existing is not None:
                try:
                    ipr.link("del", index=existing["index"])
                except NetlinkError as error:
                    if error.code != errno.ENODEV:
                        raise NetworkError(
                            f"cannot delete {name}, segment {found[0]} of bridge {bridge}: {error.args[-1]} "
                            f"(errno {error.code}); check `ip link show {name}` and retry",
                            bridge=bridge,
                        ) from error
        log.info("bridge %s: segment %d of %s removed", segment, found[0], bridge)


def of(ipr, bridge):
    """The segments of `bridge` that exist now, by index."""
    return sorted(found[0] for link in ipr.get_links() if (found := _alias(link)) is not None and found[1] == bridge)


def _without_ipv6(name):
    """No link-local address, no neighbour discovery: nothing about a segment's links is the host's own."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(path):  # a kernel without IPv6 has none
        with open(path, "w") as handle:
            handle.write("1")


def _mac(name):
    """A fixed MAC per link name, fe: first like the host ends of LXC's veths: a bridge without a set MAC would
    take its lowest port's, and these never are."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0xFE, *digest[:5]))


def _alias(link):
    match = _ALIAS.fullmatch(link.get_attr("IFLA_IFALIAS") or "")
    return (int(match.group(1)), match.group(2)) if match else None


def _call(what, bridge, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except NetlinkError as error:
        raise NetworkError(
            f"cannot {what} (for the containers of bridge {bridge} beyond its {PORTS_PER_SEGMENT} ports): "
            f"{error.args[-1]} (errno {error.code}); start them again, or destroy_network({bridge!r})",
            bridge=bridge,
        ) from error
