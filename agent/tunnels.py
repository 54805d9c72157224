"""Host side of tunnels between hosts, in the current network namespace: an ipip or vxlan link, policy rules sending
container traffic into the tunnel's own routing table, routes there, and a NAT exemption so sources stay intact.

Tunnel links are tagged with the ifalias ``lxc-agent-tunnel``, the mark of the agent's links. Each tunnel link gets
rp_filter=2 (loose) of its own; the kernel checks with max(conf.all.rp_filter, conf.<link>.rp_filter), so that is
loose on the tunnel whatever the host-wide setting, which the agent never touches. The per-link setting goes away
with the link, so there is nothing to restore. Rules and routes carry protocol RTPROT and tunnel NAME uses table
plan_table(NAME), so nothing needs remembering: no state file.
"""

import errno
import functools
import ipaddress
import logging
import types
import zlib

from pyroute2 import IPRoute, NetlinkError

from agent import arguments, firewall, links
from agent.errors import AgentError, Conflict, InvalidArgument, NetworkError
from agent.network import write_sysctl

TAG = "lxc-agent-tunnel"
KINDS = arguments.TUNNEL_KINDS
OVERHEAD = {"ipip": 20, "vxlan": 50}  # outer IPv4 header; vxlan adds UDP, VXLAN and the inner Ethernet header
VXLAN_PORT = 4789
RTPROT = 76  # `proto 76` on the agent's rules and routes; unassigned in iproute2's rt_protos
RULE_PRIORITY = 10000  # before `lookup main` (32766), after `lookup local` (0)
TABLE_FIRST, TABLE_COUNT = 100000, 900000  # six-digit tables: far from main/local/default and the usual 1..252
RP_FILTER = "/proc/sys/net/ipv4/conf/{}/rp_filter"
LOOSE = "2"

_VNI_MAX = arguments.VNI.highest
# Transit /31s come from 169.254.1.0-169.254.254.255 (RFC 3927 reserves the first and last /24) without
# 169.254.169.0/24, where clouds put their metadata service.
_TRANSIT_OCTETS = tuple(octet for octet in range(1, 255) if octet != 169)
_TRANSIT_SLOTS = len(_TRANSIT_OCTETS) * 128
_IFF_UP = 0x1
_RT_SCOPE_LINK = 253

log = logging.getLogger(__name__)


# --- pure planning: both ends compute the same numbers ---


def plan_table(name: str) -> int:
    """The routing table of tunnel `name`: derived from the name, so the agent needs no memory of it."""
    return TABLE_FIRST + zlib.crc32(name.encode()) % TABLE_COUNT


def plan_vni(name: str) -> int:
    """The VXLAN network identifier for tunnel `name` when none is given (both ends must then use the same name)."""
    return 1 + zlib.crc32(b"vni:" + name.encode()) % _VNI_MAX


def plan_transit(vni: int, local: str, remote: str) -> tuple:
    """(this end's address/31, the peer's address) on a vxlan tunnel: the lower underlay address takes the even one."""
    slot = vni % _TRANSIT_SLOTS
    base = ipaddress.IPv4Address(f"169.254.{_TRANSIT_OCTETS[slot // 128]}.{slot % 128 * 2}")
    low, high = base, base + 1
    if ipaddress.IPv4Address(local) > ipaddress.IPv4Address(remote):
        low, high = high, low
    return f"{low}/31", str(high)


# --- the verbs ---


def ensure_tunnel(
    name: str, kind: str, local: str, remote: str, local_subnets: list, remote_subnets: list, vni: int | None = None
) -> dict:
    """Converge one end of a tunnel: traffic from `local_subnets` to `remote_subnets` goes through it.

    An empty `local_subnets` means what this host itself sends (the controller's host side); an empty
    `remote_subnets` means the remote host's own address. The other end makes the same call with the ends and the
    subnet lists swapped, and the same name (or the same vni). Returns the tunnel's MTU for the containers behind it.
    On a kernel that loads ipip as a module, the first ipip tunnel also brings the kernel's tunl0 into being.
    """
    spec = _validate(name, kind, local, remote, local_subnets, remote_subnets, vni)
    with IPRoute() as ipr:
        links = _dump(ipr.get_links, name)
        link = next((item for item in links if item.get_attr("IFLA_IFNAME") == name), None)
        if link is not None:
            _check_ours(link, name, "delete it or choose another tunnel name")
            _check_same(link, spec)
        others = [item for item in links if _is_ours(item) and item.get_attr("IFLA_IFNAME") != name]
        _check_table(ipr, spec, link, others, links)
        _check_addresses(ipr, spec, link, links)
        mtu = _underlay_mtu(ipr, spec, links) - OVERHEAD[kind]
        if mtu < 576:
            raise NetworkError(
                f"tunnel {name}: the underlay towards {remote} leaves only {mtu} bytes for packets "
                f"inside the tunnel; raise the underlay link's MTU",
                tunnel=name,
            )
        created = link is None
        if link is None:
            link = _create_link(ipr, spec)
        try:
            _converge_link(ipr, spec, link, mtu)
            # Everything the traffic needs is in place before the rules send it in: a packet masqueraded for
            # want of the exemption would keep its conntrack entry, and with it the wrong source, for the flow.
            # Loose on the tunnel link only: the kernel uses max(conf.all, conf.<link>) and 2 is the highest, so
            # conf.all (strict on many hosts) is left as it is.
            write_sysctl(RP_FILTER.format(name), LOOSE, f"tunnel {name}", tunnel=name)
            firewall.ensure_exemption(name)
            _converge_routes(ipr, spec, link["index"])
            _converge_rules(ipr, spec)
        except AgentError:
            if created:
                _undo(ipr, spec)
            raise
    return _shape(spec, mtu)


def destroy_tunnel(name: str) -> None:
    """Remove the tunnel link (and with it its rp_filter setting), its rules and routes, its NAT exemption."""
    _check_name(name)
    table = plan_table(name)
    with IPRoute() as ipr:
        links = _dump(ipr.get_links, name)
        link = next((item for item in links if item.get_attr("IFLA_IFNAME") == name), None)
        if link is not None:
            _check_ours(link, name, "it was not created by lxc-agent, so the agent leaves it alone")
        others = [item for item in links if _is_ours(item) and item.get_attr("IFLA_IFNAME") != name]
        if not any(plan_table(other.get_attr("IFLA_IFNAME")) == table for other in others):
            _remove_rules(ipr, name, table)
            _remove_routes(ipr, name, table)
        if link is not None:
            _delete_link(ipr, name, link["index"])
    firewall.remove_exemption(name)


def list_tunnels() -> list[dict]:
    """Every tunnel this agent made in this namespace, sorted by name."""
    with IPRoute() as ipr:
        found = [_describe(ipr, link) for link in _dump(ipr.get_links, "(all tunnels)") if _is_ours(link)]
    return sorted(found, key=lambda item: item["name"])


# --- validation (pure; nothing is changed before it passes) ---


def _check_name(name):
    arguments.check(arguments.TUNNEL, name, "name")


def _validate(name, kind, local, remote, local_subnets, remote_subnets, vni):
    """Each argument checked as agent.arguments declares it (the service has done so already, with its subnet
    policy; this is for direct callers), then how they fit together."""
    _check_name(name)
    arguments.check(arguments.Choice("kind", KINDS), kind, f"tunnel {name}: kind")
    local_ip = ipaddress.IPv4Address(arguments.check(arguments.Address("local"), local, f"tunnel {name}: local"))
    remote_ip = ipaddress.IPv4Address(arguments.check(arguments.Address("remote"), remote, f"tunnel {name}: remote"))
    if local_ip == remote_ip:
        raise InvalidArgument(
            f"tunnel {name}: local and remote are both {local_ip}; a tunnel joins two hosts", tunnel=name
        )
    sources = _parse_subnets(name, "local_subnets", local_subnets)
    destinations = _parse_subnets(name, "remote_subnets", remote_subnets) or [ipaddress.IPv4Network(remote_ip)]
    for source in sources:
        for destination in destinations:
            if source.overlaps(destination):
                raise InvalidArgument(
                    f"tunnel {name}: local subnet {source} overlaps remote destination "
                    f"{destination}; a subnet lives on one side",
                    tunnel=name,
                )
    # The tunnel's own packets go from local to remote: a rule matching them would send them into the tunnel.
    if (not sources or any(local_ip in source for source in sources)) and any(
        remote_ip in destination for destination in destinations
    ):
        raise InvalidArgument(
            f"tunnel {name}: the rules would catch the tunnel's own packets from {local_ip} to "
            f"{remote_ip}; give local_subnets or remote_subnets that leave out the underlay "
            f"addresses (they cannot both be empty)",
            tunnel=name,
        )
    if kind == "ipip":
        if vni is not None:
            raise InvalidArgument(f"tunnel {name}: a vni is for vxlan tunnels only", tunnel=name)
        transit = peer = None
    else:
        if vni is None:
            vni = plan_vni(name)
        arguments.check(arguments.VNI, vni, f"tunnel {name}: vni")
        transit, peer = plan_transit(vni, str(local_ip), str(remote_ip))
    # The request, parsed, with its defaults (vni, destinations) filled in.
    return types.SimpleNamespace(
        name=name,
        kind=kind,
        local=str(local_ip),
        remote=str(remote_ip),
        sources=sources,
        destinations=destinations,
        vni=vni,
        transit=transit,
        peer=peer,
        table=plan_table(name),
    )


def _parse_subnets(name, field, subnets):
    checked = arguments.check(arguments.ROUTED_SUBNETS, subnets, f"tunnel {name}: {field}")
    return sorted({ipaddress.IPv4Network(text) for text in checked})


# --- checks against the host (still nothing changed) ---


def _is_ours(link):
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") in KINDS and link.get_attr("IFLA_IFALIAS") == TAG


def _check_ours(link, name, advice):
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind not in KINDS:
        raise Conflict(f"host link {name} exists but is a {kind or 'plain'} link, not a tunnel; {advice}", tunnel=name)
    if not _is_ours(link):
        raise Conflict(
            f"host tunnel {name} exists but was not created by lxc-agent (no '{TAG}' alias); {advice}", tunnel=name
        )


def _link_ends(link):
    """(kind, local, remote, vni) of a tunnel link as the kernel has it."""
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None:
        return kind, None, None, None
    if kind == "vxlan":
        return (
            kind,
            data.get_attr("IFLA_VXLAN_LOCAL"),
            data.get_attr("IFLA_VXLAN_GROUP"),
            data.get_attr("IFLA_VXLAN_ID"),
        )
    return kind, data.get_attr("IFLA_IPIP_LOCAL"), data.get_attr("IFLA_IPIP_REMOTE"), None


def _check_same(link, spec):
    kind, local, remote, vni = _link_ends(link)
    if (kind, local, remote, vni) != (spec.kind, spec.local, spec.remote, spec.vni):
        held = f"{kind} from {local} to {remote}" + (f" (vni {vni})" if vni is not None else "")
        asked = f"{spec.kind} from {spec.local} to {spec.remote}" + (f" (vni {spec.vni})" if spec.vni else "")
        raise Conflict(
            f"tunnel {spec.name} exists as {held}, not {asked}; destroy_tunnel({spec.name!r}) first "
            f"or choose another name",
            tunnel=spec.name,
        )
    if kind == "vxlan":
        data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        if data.get_attr("IFLA_VXLAN_PORT") != VXLAN_PORT or data.get_attr("IFLA_VXLAN_LEARNING"):
            raise Conflict(
                f"tunnel {spec.name} exists with another UDP port or with learning on; "
                f"destroy_tunnel({spec.name!r}) first",
                tunnel=spec.name,
            )


def _check_table(ipr, spec, link, others, links):
    """Table plan_table(name) must hold nothing but this tunnel's routes and rules."""
    table, name = spec.table, spec.name
    for other in others:
        if plan_table(other.get_attr("IFLA_IFNAME")) == table:
            raise Conflict(
                f"tunnel {name} would use routing table {table}, which agent tunnel "
                f"{other.get_attr('IFLA_IFNAME')} uses already; choose another name",
                tunnel=name,
            )
    names = {item["index"]: item.get_attr("IFLA_IFNAME") for item in links}
    own = None if link is None else link["index"]
    for route in _dump(lambda: ipr.get_routes(family=2, table=table), name):
        if route["proto"] != RTPROT or route.get_attr("RTA_OIF") != own:
            text = _route_text(route, names)
            raise Conflict(
                f"tunnel {name} needs routing table {table}, but it holds the route {text} not made "
                f"for this tunnel; remove it or choose another tunnel name",
                tunnel=name,
                route=text,
            )
    for rule in _rules(ipr, name, table):
        if rule.get_attr("FRA_PROTOCOL") != RTPROT or rule.get_attr("FRA_PRIORITY") != RULE_PRIORITY:
            raise Conflict(
                f"tunnel {name} needs routing table {table}, but the policy rule "
                f"'{_rule_text(rule)}' not made by lxc-agent looks it up; remove it or choose another "
                f"tunnel name",
                tunnel=name,
            )


def _check_addresses(ipr, spec, link, links):
    names = {item["index"]: item.get_attr("IFLA_IFNAME") for item in links}
    own = None if link is None else link["index"]
    held = [
        (ipaddress.ip_interface(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"), addr["index"])
        for addr in _dump(lambda: ipr.get_addr(family=2), spec.name)
    ]
    mine = [interface.ip for interface, _ in held]
    if ipaddress.IPv4Address(spec.local) not in mine:
        listing = (
            ", ".join(
                f"{interface} on {names.get(index, index)}"
                for interface, index in held
                if not interface.ip.is_loopback and index != own
            )
            or "none"
        )
        raise InvalidArgument(
            f"tunnel {spec.name}: local {spec.local} is not an address of this host (it has "
            f"{listing}); give this host's underlay address",
            tunnel=spec.name,
        )
    if ipaddress.IPv4Address(spec.remote) in mine:
        raise InvalidArgument(
            f"tunnel {spec.name}: remote {spec.remote} is an address of this host; give the other host's address",
            tunnel=spec.name,
        )
    transit = ipaddress.ip_interface(spec.transit).network if spec.transit else None
    for interface, index in held:
        if index == own:
            continue
        device = names.get(index, index)
        for destination in spec.destinations:
            if interface.ip in destination:
                raise Conflict(
                    f"tunnel {spec.name}: remote destination {destination} holds this host's address "
                    f"{interface} on {device}; that subnet is here, not behind {spec.remote}",
                    tunnel=spec.name,
                    device=device,
                )
        if transit is not None and interface.network.overlaps(transit):
            raise Conflict(
                f"tunnel {spec.name}: its transit network {transit} (from vni {spec.vni}) overlaps "
                f"{interface} on {device}; pass another vni to both ends",
                tunnel=spec.name,
                device=device,
            )


def _underlay_mtu(ipr, spec, links):
    try:
        route = ipr.route("get", dst=spec.remote, src=spec.local)[0]
    except NetlinkError as error:
        raise NetworkError(
            f"tunnel {spec.name}: no route from {spec.local} to {spec.remote}: {error.args[-1]} "
            f"(errno {error.code}); check the underlay network",
            tunnel=spec.name,
        ) from error
    oif = route.get_attr("RTA_OIF")
    underlay = next((item for item in links if item["index"] == oif), None)
    if underlay is None:
        raise NetworkError(
            f"tunnel {spec.name}: the route to {spec.remote} leaves by an unknown link {oif}; retry", tunnel=spec.name
        )
    mtu = underlay.get_attr("IFLA_MTU")
    metrics = route.get_attr("RTA_METRICS")
    locked = metrics.get_attr("RTAX_MTU") if metrics is not None else None
    return min(mtu, locked) if locked else mtu


# --- changes ---


def _create_link(ipr, spec):
    if spec.kind == "vxlan":
        options = dict(
            vxlan_id=spec.vni, vxlan_local=spec.local, vxlan_group=spec.remote, vxlan_port=VXLAN_PORT, vxlan_learning=0
        )
    else:
        options = dict(ipip_local=spec.local, ipip_remote=spec.remote)
    try:
        ipr.link("add", ifname=spec.name, kind=spec.kind, **options)
    except NetlinkError as error:
        if error.code in (errno.EOPNOTSUPP, errno.ENOTSUP) and spec.kind == "ipip":
            raise NetworkError(
                'this kernel has no ipip tunnels (CONFIG_NET_IPIP is not set); use tunnel_type "vxlan"',
                tunnel=spec.name,
                kind=spec.kind,
            ) from error
        if error.code in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise NetworkError(
                'this kernel has no vxlan tunnels (CONFIG_VXLAN is not set); use tunnel_type "ipip"',
                tunnel=spec.name,
                kind=spec.kind,
            ) from error
        if error.code == errno.EEXIST:
            raise Conflict(
                f"cannot create tunnel {spec.name}: {error.args[-1]}; another link has that name or "
                f"another tunnel joins {spec.local} and {spec.remote}"
                + (f" with vni {spec.vni} (pass another vni to both ends)" if spec.vni else ""),
                tunnel=spec.name,
            ) from error
        raise NetworkError(
            f"cannot create {spec.kind} tunnel {spec.name}: {error.args[-1]} (errno {error.code})", tunnel=spec.name
        ) from error
    link = _named(ipr, spec.name)
    try:
        # The kernel ignores IFLA_IFALIAS on creation, hence a separate set.
        ipr.link("set", index=link["index"], ifalias=TAG)
    except NetlinkError as error:
        _delete_link(ipr, spec.name, link["index"])
        raise NetworkError(
            f"cannot tag tunnel {spec.name} as the agent's: {error.args[-1]} (errno {error.code}); "
            f"the link was removed again, retry",
            tunnel=spec.name,
        ) from error
    log.info(
        "tunnel %s: created, %s from %s to %s%s",
        spec.name,
        spec.kind,
        spec.local,
        spec.remote,
        f" (vni {spec.vni})" if spec.vni else "",
    )
    return _named(ipr, spec.name)


def _converge_link(ipr, spec, link, mtu):
    index, name = link["index"], spec.name
    if link.get_attr("IFLA_MTU") != mtu:
        _netlink(
            f"set the MTU of tunnel {name} to {mtu}",
            name,
            functools.partial(ipr.link, "set", index=index, mtu=mtu),
            done=f"MTU {mtu}",
        )
    wanted = [spec.transit] if spec.transit else []
    held = [
        f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
        for addr in _dump(lambda: ipr.get_addr(family=2, index=index), name)
    ]
    for stray in sorted(set(held) - set(wanted)):
        address, prefixlen = stray.split("/")
        _netlink(
            f"remove {stray} from tunnel {name}",
            name,
            functools.partial(ipr.addr, "del", index=index, address=address, prefixlen=int(prefixlen)),
            done=f"removed the address {stray}",
        )
    for missing in wanted:
        if missing not in held:
            address, prefixlen = missing.split("/")
            _netlink(
                f"give tunnel {name} the transit address {missing}",
                name,
                functools.partial(ipr.addr, "add", index=index, address=address, prefixlen=int(prefixlen)),
                done=f"transit address {missing}",
            )
    if not link["flags"] & _IFF_UP:
        _netlink(
            f"bring tunnel {name} up", name, functools.partial(ipr.link, "set", index=index, state="up"), done="up"
        )


def _wanted_routes(spec, index):
    gateway = spec.peer  # None for ipip: a point-to-point link needs no next hop
    return {
        (str(destination.network_address), destination.prefixlen, index, gateway, spec.local)
        for destination in spec.destinations
    }


def _route_key(route):
    return (
        route.get_attr("RTA_DST") or "0.0.0.0",
        route["dst_len"],
        route.get_attr("RTA_OIF"),
        route.get_attr("RTA_GATEWAY"),
        route.get_attr("RTA_PREFSRC"),
    )


def _converge_routes(ipr, spec, index):
    held = {_route_key(route): route for route in _dump(lambda: ipr.get_routes(family=2, table=spec.table), spec.name)}
    wanted = _wanted_routes(spec, index)
    for key in sorted(set(held) - wanted, key=str):
        _netlink(
            f"remove the stale route to {key[0]}/{key[1]} from table {spec.table}",
            spec.name,
            functools.partial(ipr.route, "del", table=spec.table, dst=f"{key[0]}/{key[1]}", oif=key[2], proto=RTPROT),
            done=f"removed the stale route to {key[0]}/{key[1]} from table {spec.table}",
        )
    for dst, dst_len, oif, gateway, prefsrc in sorted(wanted - set(held), key=str):
        options = dict(gateway=gateway) if gateway else dict(scope=_RT_SCOPE_LINK)
        _netlink(
            f"route {dst}/{dst_len} through tunnel {spec.name} in table {spec.table}",
            spec.name,
            functools.partial(
                ipr.route,
                "add",
                table=spec.table,
                dst=f"{dst}/{dst_len}",
                oif=oif,
                prefsrc=prefsrc,
                proto=RTPROT,
                **options,
            ),
            done=f"route to {dst}/{dst_len}" + (f" via {gateway}" if gateway else "") + f" in table {spec.table}",
        )


def _rule_key(rule):
    src, dst = rule.get_attr("FRA_SRC"), rule.get_attr("FRA_DST")
    return (
        f"{src}/{rule['src_len']}" if src else None,
        rule.get_attr("FRA_IIFNAME"),
        f"{dst}/{rule['dst_len']}" if dst else None,
    )


def _wanted_rules(spec):
    # No local subnets: this host itself. `iif lo` matches what the host sends (and the reverse-path check of
    # what comes back), not what it forwards for its own containers.
    if not spec.sources:
        return {(None, "lo", str(destination)) for destination in spec.destinations}
    return {(str(source), None, str(destination)) for source in spec.sources for destination in spec.destinations}


def _converge_rules(ipr, spec):
    held = {_rule_key(rule) for rule in _rules(ipr, spec.name, spec.table)}
    wanted = _wanted_rules(spec)
    for key in sorted(held - wanted, key=str):
        _netlink(
            f"remove the stale rule {_key_text(key)} lookup {spec.table}",
            spec.name,
            functools.partial(ipr.rule, "del", **_rule_fields(spec.table, key)),
            done=f"removed the stale rule {_key_text(key)} lookup {spec.table}",
        )
    for key in sorted(wanted - held, key=str):
        _netlink(
            f"add the rule {_key_text(key)} lookup {spec.table}",
            spec.name,
            functools.partial(ipr.rule, "add", **_rule_fields(spec.table, key)),
            done=f"rule {_key_text(key)} lookup {spec.table}",
        )


def _key_text(key):
    src, iif, dst = key
    return f"from {src or 'all'}" + (f" iif {iif}" if iif else "") + (f" to {dst}" if dst else "")


def _rule_fields(table, key, priority=RULE_PRIORITY):
    src, iif, dst = key
    fields = dict(table=table, priority=priority, protocol=RTPROT)
    if iif:
        fields["iifname"] = iif
    for name, value in (("src", src), ("dst", dst)):
        if value:
            address, prefixlen = value.split("/")
            fields.update({name: address, f"{name}_len": int(prefixlen)})
    return fields


def _rules(ipr, name, table):
    return [
        rule
        for rule in _dump(lambda: ipr.get_rules(family=2), name)
        if (rule.get_attr("FRA_TABLE") or rule["table"]) == table
    ]


def _remove_rules(ipr, name, table):
    for rule in _rules(ipr, name, table):
        if rule.get_attr("FRA_PROTOCOL") != RTPROT:
            continue  # not ours: ensure_tunnel refuses such a table, destroy leaves it alone
        key = _rule_key(rule)
        fields = _rule_fields(table, key, rule.get_attr("FRA_PRIORITY"))
        _netlink(
            f"remove the rule {_key_text(key)} lookup {table}",
            name,
            functools.partial(ipr.rule, "del", **fields),
            missing_ok=True,
            done=f"removed the rule {_key_text(key)} lookup {table}",
        )


def _remove_routes(ipr, name, table):
    for route in _dump(lambda: ipr.get_routes(family=2, table=table), name):
        if route["proto"] != RTPROT:
            continue
        dst, dst_len, oif = _route_key(route)[:3]
        _netlink(
            f"remove the route to {dst}/{dst_len} from table {table}",
            name,
            functools.partial(ipr.route, "del", table=table, dst=f"{dst}/{dst_len}", oif=oif, proto=RTPROT),
            missing_ok=True,
            done=f"removed the route to {dst}/{dst_len} from table {table}",
        )


def _delete_link(ipr, name, index):
    try:
        ipr.link("del", index=index)
    except NetlinkError as error:
        if error.code != errno.ENODEV:
            raise NetworkError(
                f"cannot delete tunnel {name}: {error.args[-1]} (errno {error.code}); check "
                f"`ip link show {name}` and retry",
                tunnel=name,
            ) from error
        return
    log.info("tunnel %s: removed", name)


def _undo(ipr, spec):
    """After a failed first ensure: take away what it made, best effort (the error being raised says why)."""
    try:
        _remove_rules(ipr, spec.name, spec.table)
        _remove_routes(ipr, spec.name, spec.table)
        link = _named(ipr, spec.name)
        if link is not None:
            _delete_link(ipr, spec.name, link["index"])
        firewall.remove_exemption(spec.name)
    except AgentError as error:
        log.warning(
            "tunnel %s: could not take away all that a failed ensure_tunnel made (%s); destroy_tunnel(%r) "
            "removes the rest",
            spec.name,
            error,
            spec.name,
        )


# --- reading back ---


def _describe(ipr, link):
    name = link.get_attr("IFLA_IFNAME")
    kind, local, remote, vni = _link_ends(link)
    found = {
        "name": name,
        "kind": kind,
        "local": local,
        "remote": remote,
        "table": plan_table(name),
        "mtu": link.get_attr("IFLA_MTU"),
    }
    if kind == "vxlan":
        held = [
            f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
            for addr in _dump(lambda: ipr.get_addr(family=2, index=link["index"]), name)
        ]
        found.update(vni=vni, transit=held[0] if held else None)
    return found


def _shape(spec, mtu):
    shape = {
        "name": spec.name,
        "kind": spec.kind,
        "local": spec.local,
        "remote": spec.remote,
        "table": spec.table,
        "mtu": mtu,
    }
    if spec.kind == "vxlan":
        shape.update(vni=spec.vni, transit=spec.transit)
    return shape


def _route_text(route, names):
    oif = route.get_attr("RTA_OIF")
    gateway = route.get_attr("RTA_GATEWAY")
    return (
        f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}"
        + (f" via {gateway}" if gateway else "")
        + (f" dev {names.get(oif, oif)}" if oif else "")
        + f" proto {route['proto']}"
    )


def _rule_text(rule):
    return (
        f"{rule.get_attr('FRA_PRIORITY') or 0}: {_key_text(_rule_key(rule))} "
        f"lookup {rule.get_attr('FRA_TABLE') or rule['table']}"
    )


def _named(ipr, name):
    """The link `name`, or None (agent.links: no dump of every link); read errors worded as _dump words them."""
    return _dump(lambda: [links.named(ipr, name)], name)[0]


def _dump(call, name):
    try:
        return list(call())
    except NetlinkError as error:
        raise NetworkError(
            f"cannot read the host's links, addresses, routes or rules for tunnel {name}: "
            f"{error.args[-1]} (errno {error.code}); check that the agent runs as root",
            tunnel=name,
        ) from error


def _netlink(what, name, call, missing_ok=False, done=None):
    """Make one change; `done` says what changed, for the log (nothing is logged when missing_ok finds it gone)."""
    try:
        call()
    except NetlinkError as error:
        if missing_ok and error.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            return
        raise NetworkError(
            f"cannot {what}: {error.args[-1]} (errno {error.code}); run ensure_tunnel again or "
            f"destroy_tunnel({name!r})",
            tunnel=name,
        ) from error
    if done:
        log.info("tunnel %s: %s", name, done)
