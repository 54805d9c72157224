"""Host network for containers, in the current network namespace: one agent bridge per subnet, NAT, ip_forward.

Bridges are tagged with the ifalias ``lxc-agent ip_forward=<0|1>[ owner=<owner>]``, which marks them as the agent's
(it never touches others), remembers ip_forward from before the agent's first bridge (the last destroy restores
it), and names the bridge's owner (the coordinator passes its deployment's name). A bridge is shared only by
callers giving the same owner (or all none): another owner asking for it, or for a subnet overlapping it, gets a
Conflict naming the holder, and cannot destroy it. No state file: the memory is namespace-local and goes where the
bridges go (reboot, or deletion behind the agent's back).
"""

import errno
import ipaddress
import logging
import re

from pyroute2 import IPRoute, NetlinkError

from agent import addressing, arguments, firewall, links, segments
from agent.errors import Conflict, NetworkError, NotFound

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
TAG = "lxc-agent"

_ALIAS = re.compile(rf"{TAG}(?: ip_forward=([01]))?(?: owner=(\S+))?")  # fullmatch: the whole alias
_IFF_UP = 0x1
_RT_TABLE_LOCAL = 255
_TABLE_NAMES = {253: "default", 254: "main", 255: "local"}

log = logging.getLogger(__name__)


def ensure_host_network(bridge: str, subnet: str, owner: str | None = None) -> dict:
    """Converge: agent bridge up with the subnet's first address, ip_forward on, masquerade for the subnet.

    `owner` (e.g. a deployment's name) is recorded on a new bridge; an existing bridge is only converged for the
    owner it was made for (None for none), and a subnet overlapping another agent bridge is refused with its owner."""
    _check_bridge_name(bridge)
    network = ipaddress.IPv4Network(arguments.check(arguments.BRIDGE_SUBNET, subnet, "subnet"))
    _check_owner(owner)
    gateway = addressing.gateway(network)
    with IPRoute() as ipr:
        link = _find_link(ipr, bridge)
        if link is not None:
            _check_ours(link, bridge, "delete it or choose another bridge name")
            _check_owned_by(ipr, link, bridge, owner, network)
            _check_addresses(ipr, link, bridge, network, gateway)
        _check_overlaps(ipr, bridge, network, None if link is None else link["index"])
        remembered = _remembered_ip_forward(ipr, bridge, link)
        if link is None:
            mac = addressing.mac_address(bridge, f"{gateway}/{network.prefixlen}")
            link = _create_bridge(ipr, bridge, remembered, owner, mac)
        index = link["index"]
        if not _ipv4_addresses(ipr, index, bridge):
            _netlink(
                f"give bridge {bridge} the address {gateway}/{network.prefixlen}",
                bridge,
                lambda: ipr.addr("add", index=index, address=str(gateway), prefixlen=network.prefixlen),
            )
            log.info("bridge %s: address %s/%d", bridge, gateway, network.prefixlen)
        if not link["flags"] & _IFF_UP:
            _netlink(f"bring bridge {bridge} up", bridge, lambda: ipr.link("set", index=index, state="up"))
            log.info("bridge %s: up", bridge)
    _write_ip_forward("1", bridge)
    firewall.ensure_masquerade(bridge, network)
    return _shape(bridge, network, owner)


def destroy_host_network(bridge: str, owner: str | None = None) -> None:
    """Remove the agent bridge, its NAT rule, the agent table once empty, and restore ip_forward after the last.

    A bridge with an owner is removed only when `owner` names that owner (a bridge without one, by anyone)."""
    _check_bridge_name(bridge)
    _check_owner(owner)
    with IPRoute() as ipr:
        link = _find_link(ipr, bridge)
        remembered = None
        if link is not None:
            _check_ours(link, bridge, "it was not created by lxc-agent, so the agent leaves it alone")
            held = _alias_owner(link)
            if held is not None and held != owner:
                subnet = _describe(ipr, link)["subnet"]
                raise Conflict(
                    f"host bridge {bridge} (subnet {subnet}) belongs to {_whose(held)}, not "
                    f"{_whose(owner)}; only its owner removes it: destroy_network({bridge!r}, "
                    f"owner={held!r})",
                    bridge=bridge,
                    subnet=subnet,
                    owner=held,
                )
            remembered = _alias_ip_forward(link)
        firewall.remove_masquerade(bridge)
        if link is not None:
            segments.remove_all(ipr, bridge)
            try:
                ipr.link("del", index=link["index"])
            except NetlinkError as error:
                if error.code != errno.ENODEV:
                    raise NetworkError(
                        f"cannot delete bridge {bridge}: {error.args[-1]} (errno {error.code}); "
                        f"check `ip link show {bridge}` and retry",
                        bridge=bridge,
                    ) from error
            log.info("bridge %s: removed", bridge)
        others = [other for other in _agent_bridges(ipr) if other.get_attr("IFLA_IFNAME") != bridge]
    if remembered is not None and not others:
        _write_ip_forward(remembered, bridge)


def ensure_segments(bridge: str, indexes) -> None:
    """The segments `indexes` of the agent bridge `bridge` (agent.segments), for containers about to start on
    them; NotFound when the bridge is not there (ensure_network makes it), Conflict when it is not the agent's."""
    _check_bridge_name(bridge)
    with IPRoute() as ipr:
        link = _find_link(ipr, bridge)
        if link is None:
            raise NotFound(f"bridge {bridge!r} is not set up on this host; call ensure_network first", bridge=bridge)
        _check_ours(link, bridge, "its containers cannot be given segments of it")
        segments.ensure(ipr, link, indexes)


def link_mtus(names) -> dict:
    """{name: MTU} of the links `names` that exist (bridges, segments), each asked for alone (agent.links)."""
    with IPRoute() as ipr:
        found = {name: _dump(lambda name=name: [links.mtu(ipr, name)], name)[0] for name in sorted(names)}
    return {name: mtu for name, mtu in found.items() if mtu}


def get_host_network(bridge: str) -> dict | None:
    """The agent bridge's network, or None if there is no bridge of that name made by the agent."""
    _check_bridge_name(bridge)
    with IPRoute() as ipr:
        link = _find_link(ipr, bridge)
        if link is None or not _is_ours(link):
            return None
        return _describe(ipr, link)


def list_host_networks() -> list[dict]:
    """Every bridge this agent made in this namespace, sorted by name."""
    with IPRoute() as ipr:
        found = [
            {**_describe(ipr, link), "segments": len(segments.of(ipr, link.get_attr("IFLA_IFNAME")))}
            for link in _agent_bridges(ipr)
        ]
    return sorted(found, key=lambda item: item["bridge"])


# --- validation and conflicts (nothing is changed before these pass) ---


# The checks are agent.arguments' (the service applies them first, with its subnet policy); here for direct callers.


def _check_bridge_name(bridge):
    arguments.check(arguments.BRIDGE, bridge, "bridge")


def _check_owner(owner):
    arguments.check(arguments.Optional(arguments.OWNER), owner, "owner")


def _whose(owner):
    return "no owner" if owner is None else f"owner {owner!r}"


def _check_owned_by(ipr, link, bridge, owner, network):
    held = _alias_owner(link)
    if held == owner:
        return
    subnet = _describe(ipr, link)["subnet"]
    if held is None:
        raise Conflict(
            f"host bridge {bridge} (subnet {subnet}) exists without an owner (made by a caller that gave "
            f"none, or an older agent), so owner {owner!r} cannot take it over: choose another subnet, "
            f"or destroy_network({bridge!r}) first",
            bridge=bridge,
            subnet=subnet,
            owner=held,
        )
    asker = "a caller without an owner" if owner is None else f"owner {owner!r}"
    raise Conflict(
        f"host bridge {bridge} (subnet {subnet}) belongs to owner {held!r}; {asker} asking for subnet "
        f"{network} cannot share it: choose another subnet, or destroy_network({bridge!r}, "
        f"owner={held!r}) first",
        bridge=bridge,
        subnet=subnet,
        owner=held,
    )


def _check_ours(link, bridge, advice):
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "bridge":
        raise Conflict(
            f"host link {bridge} exists but is a {kind or 'plain'} link, not a bridge; "
            f"delete it or choose another bridge name",
            bridge=bridge,
        )
    if not _is_ours(link):
        raise Conflict(
            f"host bridge {bridge} exists but was not created by lxc-agent (no '{TAG}' alias); {advice}", bridge=bridge
        )


def _check_addresses(ipr, link, bridge, network, gateway):
    wanted = f"{gateway}/{network.prefixlen}"
    held = [f"{address}/{prefixlen}" for address, prefixlen in _ipv4_addresses(ipr, link["index"], bridge)]
    if held and held != [wanted]:
        raise Conflict(
            f"host bridge {bridge} holds {', '.join(held)}, not {wanted}; destroy_host_network"
            f"({bridge!r}) first or ask for the subnet it already has",
            bridge=bridge,
            held=held,
        )


def _check_overlaps(ipr, bridge, network, own_index):
    all_links = _dump(ipr.get_links, bridge)
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in all_links}
    agent_bridges = {
        link["index"]: link
        for link in all_links
        if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge" and _is_ours(link)
    }
    for addr in _dump(lambda: ipr.get_addr(family=2), bridge):
        address = ipaddress.ip_interface(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
        if addr["index"] != own_index and address.network.overlaps(network):
            device = names.get(addr["index"], addr["index"])
            details = dict(bridge=bridge, subnet=str(network), device=device)
            whose = ""
            if addr["index"] in agent_bridges:
                details["owner"] = _alias_owner(agent_bridges[addr["index"]])
                whose = f" (an agent bridge of {_whose(details['owner'])})"
            raise Conflict(
                f"subnet {network} for bridge {bridge} overlaps the address {address} on host device "
                f"{device}{whose}; choose another subnet or remove that address",
                **details,
            )
    for route in _dump(lambda: ipr.get_routes(family=2), bridge):
        table = route.get_attr("RTA_TABLE") or route["table"]
        oif = route.get_attr("RTA_OIF")
        if table == _RT_TABLE_LOCAL or route["dst_len"] == 0 or (own_index is not None and oif == own_index):
            continue
        dst = ipaddress.ip_network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
        if dst.overlaps(network):
            device = names.get(oif, oif) if oif else "(multipath or none)"
            gateway = route.get_attr("RTA_GATEWAY")
            via = f" via {gateway}" if gateway else ""
            text = f"{dst}{via} dev {device} table {_TABLE_NAMES.get(table, table)}"
            raise Conflict(
                f"subnet {network} for bridge {bridge} overlaps the host route {text}; choose another "
                f"subnet or remove that route",
                bridge=bridge,
                subnet=str(network),
                route=text,
                device=device,
            )


# --- links and addresses ---


def _find_link(ipr, bridge):
    """The link `bridge`, or None (agent.links: no dump of every link)."""
    return _dump(lambda: [links.named(ipr, bridge)], bridge)[0]


def _is_ours(link):
    return bool(_ALIAS.fullmatch(link.get_attr("IFLA_IFALIAS") or ""))


def _alias_ip_forward(link):
    match = _ALIAS.fullmatch(link.get_attr("IFLA_IFALIAS") or "")
    return match.group(1) if match else None


def _alias_owner(link):
    match = _ALIAS.fullmatch(link.get_attr("IFLA_IFALIAS") or "")
    return match.group(2) if match else None


def _agent_bridges(ipr):
    return [
        link
        for link in _dump(ipr.get_links, "(all bridges)")
        if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge" and _is_ours(link)
    ]


def _remembered_ip_forward(ipr, bridge, link):
    """ip_forward from before the agent's first bridge: carried by every agent bridge, else read now."""
    for candidate in ([link] if link is not None else []) + _agent_bridges(ipr):
        value = _alias_ip_forward(candidate)
        if value is not None:
            return value
    return _read_ip_forward(bridge)


def _create_bridge(ipr, bridge, remembered, owner, mac):
    """The bridge, tagged, with a MAC of its own: a bridge without one takes its lowest port's and changes it as
    ports come and go (lxc-net pins lxcbr0's for the same reason), and the containers' ARP entries for their
    gateway would go stale."""
    try:
        ipr.link("add", ifname=bridge, kind="bridge", address=mac)
    except NetlinkError as error:
        if error.code == errno.EEXIST:
            raise Conflict(
                f"host link {bridge} appeared while the agent was creating it; retry", bridge=bridge
            ) from error
        raise NetworkError(
            f"cannot create bridge {bridge}: {error.args[-1]} (errno {error.code}); check that the "
            f"kernel has bridge support and retry",
            bridge=bridge,
        ) from error
    link = _find_link(ipr, bridge)
    try:
        # The kernel ignores IFLA_IFALIAS on creation, hence a separate set.
        alias = f"{TAG} ip_forward={remembered}" + (f" owner={owner}" if owner is not None else "")
        ipr.link("set", index=link["index"], ifalias=alias)
    except NetlinkError as error:
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as cleanup_error:
            # The error below says what went wrong first; this one only that the untagged bridge stayed.
            log.warning(
                "bridge %s: could not remove it again after failing to tag it (%s); delete it with `ip link del %s`",
                bridge,
                cleanup_error.args[-1],
                bridge,
            )
        raise NetworkError(
            f"cannot tag bridge {bridge} as the agent's: {error.args[-1]} (errno {error.code}); "
            f"the bridge was removed again, retry",
            bridge=bridge,
        ) from error
    log.info("bridge %s: created (%s)", bridge, alias)
    return _find_link(ipr, bridge)


def _ipv4_addresses(ipr, index, bridge):
    return [
        (addr.get_attr("IFA_ADDRESS"), addr["prefixlen"])
        for addr in _dump(lambda: ipr.get_addr(family=2, index=index), bridge)
    ]


def _describe(ipr, link):
    bridge = link.get_attr("IFLA_IFNAME")
    owner = _alias_owner(link)
    addresses = _ipv4_addresses(ipr, link["index"], bridge)
    if not addresses:
        return {"bridge": bridge, "subnet": None, "gateway": None, "prefixlen": None, "owner": owner}
    address, prefixlen = addresses[0]
    interface = ipaddress.ip_interface(f"{address}/{prefixlen}")
    return {
        "bridge": bridge,
        "subnet": str(interface.network),
        "gateway": str(interface.ip),
        "prefixlen": interface.network.prefixlen,
        "owner": owner,
    }


def _shape(bridge, network, owner):
    return {
        "bridge": bridge,
        "subnet": str(network),
        "gateway": str(addressing.gateway(network)),
        "prefixlen": network.prefixlen,
        "owner": owner,
    }


def _dump(call, bridge):
    try:
        return list(call())
    except NetlinkError as error:
        raise NetworkError(
            f"cannot read the host's links, addresses or routes for bridge {bridge}: "
            f"{error.args[-1]} (errno {error.code}); check that the agent runs as root",
            bridge=bridge,
        ) from error


def _netlink(what, bridge, call):
    try:
        call()
    except NetlinkError as error:
        raise NetworkError(
            f"cannot {what}: {error.args[-1]} (errno {error.code}); run ensure_host_network again "
            f"or destroy_host_network({bridge!r})",
            bridge=bridge,
        ) from error


# --- ip_forward (the namespace-local sysctl) ---


def read_sysctl(path, subject, **details):
    """A namespace-local setting under /proc/sys; `subject` ("bridge X", "tunnel Y") names it in errors."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as error:
        raise NetworkError(
            f"cannot read {path} for {subject}: {error.strerror}; check that /proc/sys is mounted", **details
        ) from error


def write_sysctl(path, value, subject, **details):
    if read_sysctl(path, subject, **details) == value:
        return
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as error:
        raise NetworkError(
            f"cannot set {path} to {value} for {subject}: {error.strerror}; check that the agent "
            "runs as root with /proc/sys writable",
            **details,
        ) from error
    log.info("%s: set %s to %s", subject, path, value)


def _read_ip_forward(bridge):
    return read_sysctl(IP_FORWARD, f"bridge {bridge}", bridge=bridge)


def _write_ip_forward(value, bridge):
    write_sysctl(IP_FORWARD, value, f"bridge {bridge}", bridge=bridge)
