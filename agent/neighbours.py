"""Each started container's ARP kept to its own bridge port, so a subnet of thousands of containers is not one
broadcast domain of thousands.

Why: the host's first packet to a container, and each container's first packet to its gateway or a neighbour,
begin with an ARP request, and a bridge floods a request to every port (segments included: they join one
broadcast domain). Every container's kernel then runs arp_process on every request: O(N^2) for N containers.
When the node pinged 2,000 containers once, 39 % of the CPU went to arp_process and 26 % to br_flood, and the
answers took 8.6 ms per container against 1.9 ms with 64 (bench/scale.py).

What is done as soon as each container runs (containers.start_many, in the worker that starts a batch, while the
rest of it starts), with the Linux bridge's own proxy ARP (as Wi-Fi access points use it):
- the host gets a permanent neighbour entry for the container's address and MAC on the subnet's bridge, so the
  host never asks for it, and the bridge can answer others for it;
- the container's port gets a static, sticky FDB entry for the MAC, so unicast to it is never flooded, and it does
  not move to an uplink when the subnet's bridge answers for the container into a segment;
- the port gets `proxy_arp` (the bridge floods it nothing, and answers requests coming in through it from the
  host's entries) and `proxy_arp_wifi` (the bridge answers for the container requests from other ports);
- for a container on a segment, the subnet's bridge also gets a static, sticky FDB entry for its MAC on that
  segment's uplink, which gets `proxy_arp_wifi`, so the subnet's bridge answers for it;
- the port's own IPv6 is turned off (a bridge port needs no address).

Why as soon as it runs: a container's eth0 sends an MLD report as it comes up (before liblxc turns its IPv6 off),
and the bridge floods it to every port not confined yet; and every port's IPv6 routes sat in one table that the
kernel walks whole whenever a port comes up or goes down. Confined only after a whole batch of 2,000, both grew
with every container started (perf at 1,500: 7 % of the machine in br_flood, as much again in IPv6 table walks).
Confined as each runs, bench/scale.py's 2,000 starts took 36.2 and 36.6 s against 44.5 and 43.0 (runs taken in
turns), and their destroy 24 s against 33.

A container still gets unicast sent to it and the answers to its own requests. Its request for the gateway reaches
the host (a bridge passes broadcasts up whatever the flags), and the bridge answers one for another container.
Multicast and broadcast between containers stop: the subnets are IPv4 with static addresses, and IPv6 is off on
their eth0. The port is found by its name, set for each start (`lxc.net.0.veth.pair`, `port_name`).

An optimisation, never a reason to fail a start: the entries are made before the port's flags, and a port whose
entries failed keeps its flooding (a warning is logged), so every container stays reachable either way. The
entries go when the container stops (`forget`); its port and the port's FDB entry go with the container's
network namespace.
"""

import contextlib
import errno
import hashlib
import ipaddress
import logging
import os

from pyroute2 import IPRoute, NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_STICKY

from agent import addressing, links, segments

NUD_NOARP = 0x40  # a static FDB entry (iproute2's `static`)
NUD_PERMANENT = 0x80
PORT_PREFIX = "lxa"
IPV6_CONF = "/proc/sys/net/ipv6/conf"

log = logging.getLogger(__name__)


def port_name(name):
    """The host end of container `name`'s veth: 15 characters (Linux's limit), fixed by the name so the agent
    finds it without asking liblxc, in place of liblxc's random vethXXXXXX. Pure."""
    return PORT_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:12]


def facts(name, made):
    """What confining and forget need of container `name`, from its network metadata (containers.set_network), or
    None when it has no address on an agent bridge. Pure."""
    if not (made.get("bridge") and made.get("link") and made.get("address")):
        return None
    on_segment = made["link"] != made["bridge"]
    uplink = None
    if on_segment:
        subnet = str(ipaddress.IPv4Interface(made["address"]).network)
        uplink = segments.names(made["bridge"], segments.index_of(subnet, made["address"]))[1]
    return {
        "name": name,
        "bridge": made["bridge"],
        "link": made["link"],
        "address": str(ipaddress.IPv4Interface(made["address"]).ip),
        "mac": addressing.mac_address(name, made["address"]),
        "port": port_name(name),
        "uplink": uplink,
    }


@contextlib.contextmanager
def confining():
    """A function that keeps the ARP of one container (facts) to its own port (see the module's docstring), over
    one netlink socket: a start confines each container as soon as it runs, since until then its port is flooded
    like any other, and so is every port not yet confined with every container that joins."""
    confined = 0
    with IPRoute() as ipr:
        indexes: dict[str, int | None] = {}
        flagged_uplinks: set[int] = set()

        def confine_one(entry):
            nonlocal confined
            try:
                bridge = _index(ipr, indexes, entry["bridge"])
                port = _index(ipr, indexes, entry["port"], cached=False)
                if bridge is None or port is None:
                    log.warning(
                        "container %s: no bridge %s or port %s, so its ARP is flooded as before",
                        entry["name"],
                        entry["bridge"],
                        entry["port"],
                    )
                    return
                ipr.neigh("replace", dst=entry["address"], lladdr=entry["mac"], ifindex=bridge, state=NUD_PERMANENT)
                _static(ipr, port, entry["mac"])
                if entry["uplink"]:
                    uplink = _index(ipr, indexes, entry["uplink"])
                    if uplink is None:
                        raise NetlinkError(errno.ENODEV, f"segment uplink {entry['uplink']} is missing")
                    _static(ipr, uplink, entry["mac"])
                    if uplink not in flagged_uplinks:
                        ipr.brport("set", index=uplink, proxyarp_wifi=1)
                        flagged_uplinks.add(uplink)
                ipr.brport("set", index=port, proxyarp=1, proxyarp_wifi=1)
                confined += 1
            except NetlinkError as error:
                log.warning(
                    "container %s: its ARP is flooded as before, since bridge %s could not take its entries for "
                    "%s (%s, errno %d)",
                    entry["name"],
                    entry["bridge"],
                    entry["address"],
                    error.args[-1],
                    error.code,
                )
            _without_ipv6(entry)

        yield confine_one
    if confined:
        log.info("%d started containers: ARP kept on their own bridge ports (host neighbour and FDB entries)", confined)


def _without_ipv6(entry):
    """IPv6 off on the container's port (see the module's docstring): its link-local and multicast routes go, and
    it sends no MLD or neighbour discovery of its own."""
    path = os.path.join(IPV6_CONF, entry["port"], "disable_ipv6")
    try:
        with open(path, "w") as handle:
            handle.write("1")
    except FileNotFoundError:
        pass  # no IPv6 in this kernel, or the port is gone (warned above)
    except OSError as error:
        log.warning("container %s: port %s keeps its IPv6 (%s)", entry["name"], entry["port"], error)


def forget(stopped):
    """Remove what confining made for the containers in `stopped` (facts) that outlives their ports: the host's
    neighbour entry, and the FDB entry on a segment's uplink. Their addresses may go to other containers, with
    other MACs. What is already gone is done."""
    with IPRoute() as ipr:
        indexes: dict[str, int | None] = {}
        for entry in stopped:
            try:
                bridge = _index(ipr, indexes, entry["bridge"])
                if bridge is None:
                    continue  # the bridge, and everything on it, is gone
                _tolerating_absence(ipr.neigh, "del", dst=entry["address"], ifindex=bridge)
                uplink = _index(ipr, indexes, entry["uplink"]) if entry["uplink"] else None
                if uplink is not None:
                    _tolerating_absence(ipr.fdb, "del", ifindex=uplink, lladdr=entry["mac"], flags=NTF_MASTER)
            except NetlinkError as error:
                log.warning(
                    "container %s: bridge %s keeps its neighbour entry for %s (%s, errno %d)",
                    entry["name"],
                    entry["bridge"],
                    entry["address"],
                    error.args[-1],
                    error.code,
                )


def _index(ipr, indexes, name, cached=True):
    if not cached or name not in indexes:
        link = links.named(ipr, name)
        indexes[name] = None if link is None else link["index"]
    return indexes[name]


def _static(ipr, port, mac):
    ipr.fdb("replace", ifindex=port, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)


def _tolerating_absence(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except NetlinkError as error:
        if error.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            raise
