"""PURE: a validated config -> the whole deployment plan (hosts, subnets, bridges, containers, addresses, tunnels,
local.conf per node). Naming and addressing are decided here and nowhere else, so a plan can be printed, reviewed
and tested before one container exists; the deploy only walks it.

Networks: each host gets one default subnet (10.100.1.0/24 for the first, the next /24 for each next host,
skipping any range a config gives itself, any hardware node's or tunnel end's address, and the special ranges);
every group without `start_lxc_network` shares its host's default subnet and bridge, with disjoint addresses
(controller first, then the nodes in order). A group with its own
`start_lxc_network` gets start + i * size on its i-th host, and its own bridge there, unless that is exactly a
subnet already used on that host, which is then shared. No two subnets may overlap, and none may hold a hardware
node's address. A tunnel record carries both ends: the local host and subnet, the remote and the container subnets
on it (when the remote is a host of this plan), so the deploy can route both ways.

Names: `<prefix>-<subnet tag>-<index>` like Rally's engines (`devstack-compute-10-100-1-007`), the index three
digits or more and counted within the group. A name is a stable key: it depends only on the group's own prefix,
subnet and position, never on the size of another group. When several groups share a prefix and a subnet, the
first keeps that form and each later one adds its group index (`compute-10-100-1-g2-000`). Addresses are handed out
in order, each group after the ones before it on the same subnet; given the deployment's previous plan, every node
that is still planned keeps its address and new nodes take the lowest free ones, so growing or shrinking one group
never renames or re-addresses another node. Tunnels are named from their ends (`lxt-` and a hash of host, remote
and subnet), so the plan shows them and no other tunnel's name depends on their order.

Devstack: each node's localrc and meta-sections are the config's plus the defaults a cloud of containers needs
(`plan_localrc`, `plan_meta_sections`; a configured key always wins), and from them the services it enables, the
nova-compute hosts it registers and what it needs from the host's kernel.
"""

import bisect
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, fields
from typing import NamedTuple

from agent import addressing
from coordinator import localconf
from coordinator.problems import ConfigError, Problem
from coordinator.providers import (
    DEFAULT_RELEASES,
    SPECIAL_RANGES,
    TEMPLATES,
    Credential,
    capacity,
    prefix_for,
    special_range,
    too_small,
)

PLAN_VERSION = 4
READABLE_VERSIONS = (3, 4)  # a version 3 plan is read with the names version 4 gives its tunnels and templates
DEFAULT_NETWORK = ipaddress.IPv4Network("10.100.1.0/24")
NAME_MAX = 63
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass(frozen=True)
class Network:
    """One container subnet on one host, with its bridge; the gateway (first address) sits on the bridge."""

    subnet: str
    gateway: str
    prefixlen: int
    bridge: str
    containers: int


@dataclass(frozen=True)
class Host:
    """A hardware node, reached through its agent at `address` (the credential's host)."""

    index: int
    address: str
    user: str | None
    port: int | None  # agent overrides from the credential; None = the coordinator's defaults
    ca: str | None
    cert: str | None
    key: str | None
    token_file: str | None
    subnet: str | None  # the first (usually only) of `networks`, for the common case
    gateway: str | None
    bridge: str | None
    networks: tuple  # Network, one per bridge to create
    nodes: int


@dataclass(frozen=True)
class Node:
    """One devstack node: a container (standalone, first, clone) or a hardware node itself (host)."""

    name: str
    role: str  # controller | compute
    kind: str  # standalone | first | clone | host
    source: str | None  # for a clone: the first container on its host, to clone from
    group: int
    host: str
    address: str
    prefixlen: int | None
    gateway: str | None
    subnet: str | None
    bridge: str | None
    distribution: str | None
    template: str | None  # the LXC template that makes the container (None for a hardware node)
    release: str | None  # the config's, else one devstack supports for the distribution (DEFAULT_RELEASES)
    devstack_repo: str | None  # None: devstack from the git mirror
    devstack_branch: str
    start_script: str | None
    localrc: dict  # resolved: default passwords and the planner's defaults, then the config's items
    plugins: tuple  # enable_plugin arguments, one tuple per plugin
    local_conf: str
    meta_sections: dict  # resolved: {"PHASE|FILE": {section: {option: value}}}, the planner's defaults included
    services: tuple  # the services devstack enables with this localrc, in order
    nova_hosts: tuple  # the nova-compute host names this node registers (() without n-cpu)
    git_mirror: str | None  # the coordinator's folder of git repositories for this node (absolute), or None
    host_ca_certificates: bool
    host_proxy: bool


@dataclass(frozen=True)
class Tunnel:
    """Containers of `subnet` on `host` reach `remote` through a tunnel of `kind` (ipip or vxlan), and through it
    the container subnets on the remote (`remote_subnets`); the remote routes `subnet` back through it.

    `remote_host` is the plan's host at the far end (whose agent sets up that end), or None when the remote is
    not a host of this plan (then only this end is set up, and `remote_subnets` is empty). Both ends carry
    `name` (tunnel_name)."""

    name: str
    kind: str
    host: str
    remote: str
    subnet: str
    remote_host: str | None
    remote_subnets: tuple


@dataclass(frozen=True)
class Group:
    """One group of the config (the controller, or one entry of nodes), as planned."""

    index: int
    path: str
    role: str
    kind: str  # standalone | cloned | host
    hosts: tuple
    per_host: int
    nodes: int
    localrc_path: str  # where the group's localrc is in the config, for messages
    # How many of the group's nodes start per second, over all its hosts (None: as fast as the start scripts
    # run); plans recorded before it was a setting have none.
    starts_per_second: float | None = None
    # Its containers' memory merged by KSM, without address-space randomisation (agent.memory_merge); plans
    # recorded before it was a setting have it off.
    merge_memory: bool = False


@dataclass(frozen=True)
class Plan:
    """The deployment, decided: plain data, JSON-serialisable, the same config giving the same plan byte for byte."""

    version: int
    type: str
    controller: str | None  # the controller node's name, when there is exactly one
    controller_address: str | None
    hosts: tuple
    groups: tuple
    nodes: tuple
    tunnels: tuple

    def to_dict(self):
        return _plain(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data):
        """The inverse of to_dict, for a plan read back from a store; PlanVersionError for a version it cannot read.
        A version 3 plan (before tunnels and templates were named in the plan) is read with the names this
        version gives them, which are what its deploy used for templates; its recorded tunnels are destroyed by
        the names the store holds."""
        version = data.get("version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise PlanVersionError(version)
        hosts = tuple(
            Host(**{**host, "networks": tuple(Network(**n) for n in host["networks"])}) for host in data["hosts"]
        )
        groups = tuple(Group(**{**group, "hosts": tuple(group["hosts"])}) for group in data["groups"])
        nodes = tuple(
            Node(
                **{
                    "template": TEMPLATES.get(node.get("distribution")) if node["kind"] != "host" else None,
                    **node,
                    "plugins": tuple(tuple(p) for p in node["plugins"]),
                    "services": tuple(node["services"]),
                    "nova_hosts": tuple(node["nova_hosts"]),
                }
            )
            for node in data["nodes"]
        )
        tunnels = tuple(
            Tunnel(
                **{
                    "name": tunnel_name(tunnel["host"], tunnel["remote"], tunnel["subnet"]),
                    **tunnel,
                    "remote_subnets": tuple(tunnel["remote_subnets"]),
                }
            )
            for tunnel in data["tunnels"]
        )
        return cls(
            version=PLAN_VERSION,
            type=data["type"],
            controller=data["controller"],
            controller_address=data["controller_address"],
            hosts=hosts,
            groups=groups,
            nodes=nodes,
            tunnels=tunnels,
        )

    def host(self, address):
        """The host at `address`; KeyError naming it when the plan has none."""
        for host in self.hosts:
            if host.address == address:
                return host
        raise KeyError(f"no host {address!r} in this plan")

    def nodes_on(self, address, *kinds):
        """The nodes on one host, in plan order; only those of `kinds` when given."""
        return tuple(node for node in self.nodes if node.host == address and (not kinds or node.kind in kinds))

    def tunnels_from(self, address):
        """The tunnels whose near end is on one host, in plan order."""
        return tuple(tunnel for tunnel in self.tunnels if tunnel.host == address)

    def node(self, name):
        """The node called `name`; KeyError naming it when the plan has none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this plan")

    @property
    def controller_node(self):
        """The controller node, or None when the plan has no single controller."""
        return next((node for node in self.nodes if node.name == self.controller), None)

    def nova_hosts(self):
        """Every planned nova-compute host name -> the node that registers it."""
        return {host: node for node in self.nodes for host in node.nova_hosts}


class PlanVersionError(ConfigError):
    """A recorded plan of another coordinator version: this one cannot walk (or destroy) it safely."""

    def __init__(self, version):
        self.version = version
        reads = " and ".join(str(known) for known in READABLE_VERSIONS)
        if isinstance(version, int) and not isinstance(version, bool) and version < PLAN_VERSION:
            message = (
                f"deployment made by an older coordinator (plan version {version}; this one reads versions "
                f"{reads}); destroy it with the coordinator that made it, or remove its containers, "
                f"bridges and tunnels with each host's lxc-agent and then its record from the store"
            )
        elif isinstance(version, int) and not isinstance(version, bool) and version > PLAN_VERSION:
            message = (
                f"deployment made by a newer coordinator (plan version {version}; this one reads versions "
                f"{reads}); use that coordinator for it"
            )
        else:
            message = (
                f"not a plan this coordinator can read (version {version!r}; it reads versions "
                f"{reads}): the record is damaged or not a deployment's"
            )
        super().__init__([Problem(None, message)])


def warnings(plan):
    """What the plan allows but a user should know, one line each: a `tunnel_to` address that is no host of this
    plan gets only this end of its tunnels (the far end is not this deployment's to make); a group that enables
    `n-net` gets no networking from it."""
    return _tunnel_warnings(plan) + _nova_network_warnings(plan)


def _nova_network_warnings(plan):
    out = []
    firsts: dict = {}
    for node in plan.nodes:
        firsts.setdefault(node.group, node)
    for group in plan.groups:
        node = firsts.get(group.index)
        if node is None or "n-net" not in node.services:
            continue
        keys = [
            key
            for key, value in node.localrc.items()
            if key.rstrip("+") == "ENABLED_SERVICES" and "n-net" in localconf.negated(value)
        ]
        where = f"{group.localrc_path}.{keys[-1]}" if keys else group.localrc_path
        out.append(
            f"{where} enables 'n-net' (nova-network), which was removed from nova in the Rocky release: "
            f"devstack ignores the name and nothing gives these nodes networking through it; remove it "
            f"(nova's networking is neutron's, q-svc on the controller)"
        )
    return out


def _tunnel_warnings(plan):
    ends: dict = {}
    for tunnel in plan.tunnels:
        if tunnel.remote_host is None:
            ends.setdefault((tunnel.remote, tunnel.kind), []).append(tunnel.host)
    return [
        f"tunnel_to {remote} is not a host of this deployment: only the near end of the {kind} "
        f"tunnel{'s' if len(set(hosts)) > 1 else ''} from {', '.join(dict.fromkeys(hosts))} is made, and "
        f"containers there reach {remote} through it alone; make "
        f"the far end on {remote} yourself (its lxc-agent: ensure_tunnel with the same name and the ends "
        f"swapped; list_tunnels() on the near host shows the name), or, if {remote} is one of this "
        f"deployment's hosts, give its credential that same address (hosts match by address)"
        for (remote, kind), hosts in ends.items()
    ]


def _plain(value):
    if hasattr(value, "__dataclass_fields__"):
        return {field.name: _plain(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------- names and bridges


def subnet_tag(network):
    """The subnet as a name part: the octets its prefix covers (10.100.1.0/24 -> 10-100-1). Unique per subnet."""
    octets = str(network.network_address).split(".")
    return "-".join(octets[: max(1, -(-network.prefixlen // 8))])


def bridge_name(network):
    """`lxcbr-` and the subnet's address in hex: 14 characters (Linux allows 15), one per subnet on a host."""
    return f"lxcbr-{int(network.network_address):08x}"


def tunnel_name(host, remote, subnet):
    """`lxt-` and 11 hex digits of a hash of the tunnel's ends and subnet: 15 characters (Linux's limit), the same
    name at both ends and on every run (resume, destroy), and independent of the other tunnels. Two deployments
    never share a (host, subnet), so never a tunnel name."""
    digest = hashlib.sha256(f"{host} {remote} {subnet}".encode()).hexdigest()
    return f"lxt-{digest[:11]}"


# ---------------------------------------------------------------- the planner


@dataclass
class _Pool:
    """The addresses of one subnet on one host while they are handed out."""

    host: str
    network: ipaddress.IPv4Network
    users: list
    needed: int = 0
    used: int = 0


class _Ranges:
    """Address ranges already taken, for fast 'does this overlap anything' questions."""

    def __init__(self, networks):
        spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks)
        self._starts = [start for start, _ in spans]
        self._max_end = []
        top = -1
        for _, end in spans:
            top = max(top, end)
            self._max_end.append(top)

    def overlaps(self, start, end):
        index = bisect.bisect_right(self._starts, end)
        return index > 0 and self._max_end[index - 1] >= start


def plan(config, previous=None):
    """The plan for a validated config (coordinator.config.Config); ConfigError for what only the whole shows.

    `previous` is the plan this deployment was made with, when there is one: each node still planned under its name
    on the same host and subnet keeps its address from it, and new nodes take the lowest free addresses."""
    specs = config.groups()
    problems: list = []
    hosts = _plan_hosts(specs, problems)
    if problems:
        raise ConfigError(problems, config.source)
    subnets = _plan_subnets(specs, hosts, problems)
    if problems:
        raise ConfigError(problems, config.source)
    pools = _plan_pools(specs, subnets, problems)
    if problems:
        raise ConfigError(problems, config.source)
    drafts = _plan_nodes(specs, subnets, pools, problems, _previous_addresses(previous))
    controller = _find_controller(config, specs, drafts, problems)
    tunnels = _plan_tunnels(specs, hosts, subnets, problems)
    if problems:
        raise ConfigError(problems, config.source)
    values = {"controller_ip": controller.address} if controller else {}
    nodes = _finish_nodes(config, specs, drafts, values)
    return Plan(
        version=PLAN_VERSION,
        type=config.type,
        controller=controller.name if controller else None,
        controller_address=controller.address if controller else None,
        hosts=_finish_hosts(hosts, pools, nodes),
        groups=tuple(
            Group(
                index=index,
                path=spec.path,
                role=spec.role,
                kind=spec.kind,
                hosts=tuple(c.host for c in spec.hosts),
                per_host=spec.per_host,
                nodes=spec.per_host * len(spec.hosts),
                localrc_path=spec.devstack.path,
                starts_per_second=spec.starts_per_second,
                merge_memory=spec.merge_memory,
            )
            for index, spec in enumerate(specs)
        ),
        nodes=nodes,
        tunnels=tunnels,
    )


def _plan_hosts(specs, problems):
    """Hardware nodes by address, in order of first mention; one host's credentials may not disagree."""
    hosts: dict = {}
    for spec in specs:
        for credential in spec.hosts:
            known = hosts.get(credential.host)
            if known is None:
                hosts[credential.host] = credential
                continue
            merged = {}
            for name in Credential.AGENT_FIELDS:
                mine, theirs = getattr(credential, name), getattr(known, name)
                if mine is not None and theirs is not None and mine != theirs:
                    problems.append(
                        Problem(
                            f"{credential.path}.{name}",
                            f"host '{credential.host}' is given {name} {mine!r} here but {theirs!r} at {known.path}",
                        )
                    )
                merged[name] = theirs if theirs is not None else mine
            hosts[credential.host] = Credential(host=known.host, path=known.path, **merged)
    loopbacks = [credential for credential in hosts.values() if _is_loopback(credential.host)]
    for credential in loopbacks[1:]:
        first = loopbacks[0]
        problems.append(
            Problem(
                f"{credential.path}.host",
                f"'{credential.host}' and '{first.host}' (at {first.path}) both name this machine; "
                f"name it one way everywhere, or the plan would treat it as two hosts",
            )
        )
    return hosts


def _nth(network, index):
    start = int(network.network_address) + index * network.num_addresses
    if start + network.num_addresses - 1 > 0xFFFFFFFF:
        return None
    return ipaddress.IPv4Network((start, network.prefixlen))


def _ipv4(text):
    """The IPv4 address a host or tunnel end is given as, or None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address if address.version == 4 else None


def _plan_subnets(specs, hosts, problems):
    """(group index, host) -> subnet, for every group of containers."""
    subnets = {}
    explicit = []
    wants_default: dict = {}  # host -> containers the groups without start_lxc_network put in its default subnet
    # Hardware nodes' addresses: no container subnet may hold one (tunnel ends are checked in _plan_tunnels).
    nodes: dict = {}
    for host, credential in hosts.items():
        if _ipv4(host) is not None:
            nodes.setdefault(_ipv4(host), f"hardware node {host} (at {credential.path})")
    remotes = {ipaddress.IPv4Address(remote) for spec in specs for remote in spec.tunnel_to}
    for index, spec in enumerate(specs):
        if spec.kind == "host":
            continue
        for position, credential in enumerate(spec.hosts):
            if spec.network is None:
                wants_default[credential.host] = wants_default.get(credential.host, 0) + spec.per_host
                continue
            network = _nth(spec.network, position)
            if network is None:
                problems.append(
                    Problem(
                        spec.network_path,
                        f"{spec.network} has no room for a subnet for host {position + 1} ({credential.host})",
                    )
                )
                continue
            why = special_range(network)
            if why:
                problems.append(
                    Problem(spec.network_path, f"the subnet for host {position + 1} ({credential.host}): {why}")
                )
                continue
            inside = [what for address, what in nodes.items() if address in network]
            if inside:
                problems.append(
                    Problem(
                        spec.network_path,
                        f"subnet {network} (for {spec.path} on {credential.host}) holds the address "
                        f"of {inside[0]}; a container subnet must not hold a hardware node's "
                        f"address; give a different start_lxc_network",
                    )
                )
                continue
            subnets[(index, credential.host)] = network
            explicit.append(network)
    # Default subnets skip every range given explicitly, the special ranges and the hardware nodes' addresses.
    taken = _Ranges(
        explicit
        + [special for special, _ in SPECIAL_RANGES]
        + [ipaddress.IPv4Network(address) for address in set(nodes) | remotes]
    )
    defaults = {}
    cursor = int(DEFAULT_NETWORK.network_address)
    for host in hosts:
        if host not in wants_default:
            continue
        # A /24 (10.100.1.0/24 for the first host), or the smallest larger one that holds the host's containers,
        # aligned to its size: 300 computes get a /23 (10.100.2.0/23), not a plan refused for want of room.
        prefixlen = min(DEFAULT_NETWORK.prefixlen, prefix_for(wants_default[host]))
        size = 1 << (32 - prefixlen)
        cursor = -(-cursor // size) * size
        while cursor + size - 1 <= 0xFFFFFFFF and taken.overlaps(cursor, cursor + size - 1):
            cursor += size
        if cursor + size - 1 > 0xFFFFFFFF:
            problems.append(Problem("", f"no free default subnet is left for host {host}"))
            return subnets
        defaults[host] = ipaddress.IPv4Network((cursor, prefixlen))
        cursor += size
    for index, spec in enumerate(specs):
        if spec.kind != "host" and spec.network is None:
            for credential in spec.hosts:
                subnets[(index, credential.host)] = defaults[credential.host]
    _check_overlaps(specs, subnets, problems)
    return subnets


def _check_overlaps(specs, subnets, problems):
    """No two subnets may overlap, on one host or across hosts (one subnet shared on one host is fine)."""
    first_user: dict = {}
    for (index, host), network in subnets.items():
        first_user.setdefault((host, network), index)
    spans = sorted(first_user, key=lambda item: (int(item[1].network_address), -item[1].num_addresses, item[0]))
    widest = None
    for host, network in spans:
        if widest is not None and int(network.network_address) <= int(widest[1].broadcast_address):
            spec, other = specs[first_user[(host, network)]], specs[first_user[widest]]
            problems.append(
                Problem(
                    _where_network(spec),
                    f"subnet {network} (for {spec.path} on {host}) overlaps subnet {widest[1]} "
                    f"(for {other.path} on {widest[0]}): container subnets must not overlap, across hosts or "
                    f"groups; give a different start_lxc_network",
                )
            )
        if widest is None or int(network.broadcast_address) > int(widest[1].broadcast_address):
            widest = (host, network)


def _where_network(spec):
    return spec.network_path if spec.network is not None else spec.path


def _plan_pools(specs, subnets, problems):
    """(host, subnet) -> _Pool, checking that each subnet holds every container given to it."""
    pools: dict = {}
    for index, spec in enumerate(specs):
        if spec.kind == "host":
            continue
        for credential in spec.hosts:
            key = (credential.host, subnets[(index, credential.host)])
            pool = pools.get(key)
            if pool is None:
                pool = pools[key] = _Pool(host=credential.host, network=key[1], users=[])
            pool.needed += spec.per_host
            pool.users.append(spec)
    for pool in pools.values():
        if pool.needed > capacity(pool.network):
            last = pool.users[-1]
            if len(pool.users) == 1:
                what = f" on {pool.host}"
            else:
                shares = ", ".join(f"{spec.path} {spec.per_host}" for spec in pool.users)
                what = f" on {pool.host} (shared: {shares})"
            problems.append(
                Problem(
                    _where_network(last) if last.network is not None else last.count_path,
                    too_small(pool.network, pool.needed, what) + "; set start_lxc_network to a network that size",
                )
            )
    return pools


@dataclass
class _Draft:
    name: str
    kind: str
    source: str | None
    group: int
    host: str
    address: str | None  # decided by _address once every name is known
    network: ipaddress.IPv4Network | None


def _previous_addresses(previous):
    """(node name, host, subnet) -> address from an earlier plan of the deployment."""
    if previous is None:
        return {}
    return {(node.name, node.host, node.subnet): node.address for node in previous.nodes if node.subnet}


def _stems(specs, subnets):
    """Each container group's name stem on each host: `<prefix>-<subnet tag>`, with `-g<group>` added for every
    group after the first that would share it, so a group's names never depend on another group's size."""
    owners: dict = {}
    stems = {}
    for index, spec in enumerate(specs):
        if spec.kind == "host":
            continue
        for credential in spec.hosts:
            network = subnets[(index, credential.host)]
            stem = f"{spec.prefix or spec.role}-{subnet_tag(network)}"
            owner = owners.setdefault(stem, index)
            stems[(index, credential.host)] = stem if owner == index else f"{stem}-g{index}"
    return stems


def _plan_nodes(specs, subnets, pools, problems, previous):
    """Names from stable keys (stem, position in the group), then addresses: kept from the previous plan where
    the node is still there, else the lowest free one of its subnet, group by group in order, host by host."""
    drafts = []
    stems = _stems(specs, subnets)
    for index, spec in enumerate(specs):
        for credential in spec.hosts:
            if spec.kind == "host":
                drafts.append(
                    _Draft(
                        name=credential.host,
                        kind="host",
                        source=None,
                        group=index,
                        host=credential.host,
                        address=credential.host,
                        network=None,
                    )
                )
                continue
            network = subnets[(index, credential.host)]
            stem = stems[(index, credential.host)]
            first = f"{stem}-000"
            for offset in range(spec.per_host):
                if spec.kind == "standalone":
                    kind, source = "standalone", None
                elif offset == 0:
                    kind, source = "first", None
                else:
                    kind, source = "clone", first
                drafts.append(
                    _Draft(
                        name=f"{stem}-{offset:03d}",
                        kind=kind,
                        source=source,
                        group=index,
                        host=credential.host,
                        address=None,
                        network=network,
                    )
                )
    _address(drafts, pools, previous)
    seen: dict = {}
    for draft in drafts:
        other = seen.setdefault(draft.name, draft)
        if other is not draft:
            spec = specs[draft.group]
            why = (
                "devstack would run twice on one hardware node"
                if draft.kind == "host"
                else "two groups make the same name"
            )
            problems.append(
                Problem(spec.path, f"node name '{draft.name}' is used twice ({why}; also in {specs[other.group].path})")
            )
        elif len(draft.name) > NAME_MAX:
            problems.append(
                Problem(
                    specs[draft.group].path,
                    f"container name '{draft.name}' is longer than {NAME_MAX} characters; "
                    f"use a shorter container_name_prefix",
                )
            )
    return drafts


def _address(drafts, pools, previous):
    """Give every container draft an address of its pool: its previous one when that is still free and usable,
    else the lowest free address after the gateway. Capacity was checked by _plan_pools."""
    taken: dict = {}
    for draft in drafts:
        if draft.network is None:
            continue
        kept = previous.get((draft.name, draft.host, str(draft.network)))
        if kept is None:
            continue
        address = ipaddress.IPv4Address(kept)
        held = taken.setdefault((draft.host, draft.network), set())
        if address in draft.network and address not in addressing.reserved(draft.network) and address not in held:
            held.add(address)
            draft.address = kept
    for draft in drafts:
        if draft.network is None or draft.address is not None:
            continue
        pool = pools[(draft.host, draft.network)]
        held = taken.setdefault((draft.host, draft.network), set())
        candidate = int(addressing.gateway(draft.network)) + 1 + pool.used
        while ipaddress.IPv4Address(candidate) in held:
            candidate += 1
        pool.used = candidate - int(addressing.gateway(draft.network))
        held.add(ipaddress.IPv4Address(candidate))
        draft.address = str(ipaddress.IPv4Address(candidate))


def _find_controller(config, specs, drafts, problems):
    """The controller node (exactly one in a MultihostEngine); its address is what `{controller_ip}` means."""
    controllers = [draft for draft in drafts if specs[draft.group].role == "controller"]
    if config.type == "MultihostEngine" and len(controllers) != 1:
        spec = specs[0]
        problems.append(
            Problem(
                spec.path,
                f"the controller must be exactly one node; this config makes "
                f"{len(controllers)} ({spec.per_host} per host on "
                f"{len(spec.hosts)} host(s))",
            )
        )
        return None
    if len(controllers) != 1:
        return None
    controller = controllers[0]
    has_container_computes = any(d.kind != "host" for d in drafts if specs[d.group].role == "compute")
    if controller.kind == "host" and has_container_computes and _is_loopback(controller.address):
        problems.append(
            Problem(
                specs[controller.group].hosts[0].path + ".host",
                f"the controller runs on '{controller.address}' itself, which containers "
                f"cannot reach by that name; give the host's address as the containers see it",
            )
        )
    return controller


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in _LOOPBACK_NAMES


def _plan_tunnels(specs, hosts, subnets, problems):
    """One tunnel per (host, remote, subnet); one kind per (host, remote); no tunnel from a host to itself.
    Each carries the container subnets on the remote when the remote is a host of this plan."""
    tunnels: dict = {}
    kinds: dict = {}
    taken = _Ranges(set(subnets.values()))
    on_host: dict = {}
    for (_, host), network in subnets.items():
        on_host.setdefault(host, set()).add(network)
    for index, spec in enumerate(specs):
        if spec.kind == "host":
            continue
        for position, remote in enumerate(spec.tunnel_to):
            address = int(ipaddress.IPv4Address(remote))
            if taken.overlaps(address, address):
                problems.append(
                    Problem(
                        f"{spec.path}.tunnel_to[{position}]",
                        f"'{remote}' is inside a container subnet of this deployment; "
                        f"a tunnel goes to a hardware node's address",
                    )
                )
        for credential in spec.hosts:
            subnet = str(subnets[(index, credential.host)])
            for remote in spec.tunnel_to:
                if remote == credential.host:
                    continue
                known = kinds.setdefault((credential.host, remote), (spec.tunnel_type, spec.path))
                if known[0] != spec.tunnel_type:
                    problems.append(
                        Problem(
                            spec.path,
                            f"tunnel from {credential.host} to {remote} is "
                            f"{spec.tunnel_type} here but {known[0]} in {known[1]}; "
                            f"one host reaches one remote one way",
                        )
                    )
                remote_host = remote if remote in hosts else None
                far = sorted(on_host.get(remote, ()), key=lambda n: (int(n.network_address), n.prefixlen))
                tunnels.setdefault(
                    (credential.host, remote, subnet),
                    Tunnel(
                        name=tunnel_name(credential.host, remote, subnet),
                        kind=spec.tunnel_type,
                        host=credential.host,
                        remote=remote,
                        subnet=subnet,
                        remote_host=remote_host,
                        remote_subnets=tuple(str(network) for network in far),
                    ),
                )
    return tuple(tunnels.values())


def _finish_nodes(config, specs, drafts, values):
    """Fill placeholders, add the defaults and render local.conf once per group (every node of a group is told
    the same); only the nova-compute host names differ from node to node."""
    planned = {}
    for index, spec in enumerate(specs):
        localrc = plan_localrc(config.type, spec, values)
        plugins = tuple(tuple(localconf.resolve(word, values) for word in words) for words in spec.devstack.plugins)
        meta = plan_meta_sections(spec, values, localrc)
        planned[index] = (
            localrc,
            plugins,
            meta,
            localconf.render(localrc, plugins, meta),
            localconf.enabled_services(localrc),
            _mirror(spec.devstack.git_mirror, config),
        )
    nodes = []
    for draft in drafts:
        spec = specs[draft.group]
        localrc, plugins, meta, text, services, mirror = planned[draft.group]
        network = draft.network
        nodes.append(
            Node(
                name=draft.name,
                role=spec.role,
                kind=draft.kind,
                source=draft.source,
                group=draft.group,
                host=draft.host,
                address=draft.address,
                prefixlen=network.prefixlen if network else None,
                gateway=str(addressing.gateway(network)) if network else None,
                subnet=str(network) if network else None,
                bridge=bridge_name(network) if network else None,
                distribution=spec.distribution,
                template=TEMPLATES.get(spec.distribution) if draft.kind != "host" else None,
                release=spec.release or DEFAULT_RELEASES.get(spec.distribution),
                devstack_repo=spec.devstack.repo,
                devstack_branch=spec.devstack.branch,
                start_script=spec.start_script,
                localrc=dict(localrc),
                plugins=plugins,
                local_conf=text,
                meta_sections=_copy(meta),
                services=services,
                nova_hosts=plan_nova_hosts(draft.name, localrc, services),
                git_mirror=mirror,
                host_ca_certificates=spec.host_ca_certificates,
                host_proxy=spec.host_proxy,
            )
        )
    return tuple(nodes)


def _copy(meta):
    return {
        header: {section: dict(options) for section, options in sections.items()} for header, sections in meta.items()
    }


# ---------------------------------------------------------------- devstack on each node

# A compute's nova-compute reports every 10 s and counts as down after 60 s (devstack's 120 s and 720 s would
# show a dead compute as up for 12 minutes).
NOVA_REPORT_INTERVAL = 10
NOVA_CONF = "$NOVA_CONF"


def plan_localrc(engine_type, spec, values):
    """A group's localrc: default passwords, the defaults below for keys the config leaves out (before the
    config's items, so those may refer to them), the config's items with placeholders filled in.

    - computes in containers of a MultihostEngine: SERVICE_HOST is the controller (devstack would take the node's
      own address), and `placement-client` joins an ENABLED_SERVICES that runs n-cpu without it (nova-compute
      reports its resources to placement through it);
    - every container: ENABLE_KSMTUNED=False (a container cannot tune the host's KSM);
    - with a git mirror: GIT_BASE points at the node's copy of it."""
    configured = [(key, localconf.resolve(value, values)) for key, value in spec.devstack.localrc]
    given = {key.rstrip("+") for key, _ in configured}
    in_container = spec.kind != "host"
    compute = engine_type == "MultihostEngine" and spec.role == "compute" and in_container
    defaults = []
    if compute and "controller_ip" in values and "SERVICE_HOST" not in given:
        defaults.append(("SERVICE_HOST", values["controller_ip"]))
    if in_container and "ENABLE_KSMTUNED" not in given:
        defaults.append(("ENABLE_KSMTUNED", "False"))
    if spec.devstack.git_mirror is not None and "GIT_BASE" not in given:
        defaults.append(("GIT_BASE", localconf.MIRROR_GIT_BASE))
    localrc = localconf.with_defaults(configured, defaults)
    if compute:
        localrc = _with_placement_client(localrc)
    return localrc


def _with_placement_client(localrc):
    """Append placement-client to the last ENABLED_SERVICES setting when the node runs n-cpu without it, unless
    the config removes it itself (`-placement-client`)."""
    services = localconf.enabled_services(localrc)
    if "n-cpu" not in services or "placement-client" in services:
        return localrc
    keys = [key for key in localrc if key.rstrip("+") == "ENABLED_SERVICES"]
    if not keys or any(
        "-placement-client" in value.replace(" ", ",").split(",") for key, value in localrc.items() if key in keys
    ):
        return localrc
    out = dict(localrc)
    value = out[keys[-1]]
    out[keys[-1]] = value + ("" if value == "" or value.endswith(",") else ",") + "placement-client"
    return out


def plan_meta_sections(spec, values, localrc):
    """A group's meta-sections: the config's with placeholders filled in, plus post-config $NOVA_CONF [DEFAULT]
    report_interval = 10 and service_down_time = 6 x report_interval (60), each unless the config sets that
    option for $NOVA_CONF (in any phase, either spelling) or sets NOVA_SERVICE_REPORT_INTERVAL in localrc, from
    which devstack derives both."""
    meta = {
        header: {
            section: {option: localconf.resolve(value, values) for option, value in options.items()}
            for section, options in sections.items()
        }
        for header, sections in spec.devstack.meta_sections.items()
    }
    if "NOVA_SERVICE_REPORT_INTERVAL" in {key.rstrip("+") for key in localrc}:
        return meta
    nova = localconf.meta_file(NOVA_CONF)
    given = {}
    for header, sections in meta.items():
        if localconf.meta_file(header.partition("|")[2]) == nova:
            given.update(sections.get("DEFAULT", {}))
    interval = given.get("report_interval")
    defaults = {}
    if interval is None:
        defaults["report_interval"] = str(NOVA_REPORT_INTERVAL)
    if "service_down_time" not in given:
        base = (
            int(interval)
            if interval is not None and interval.isascii() and interval.isdigit()
            else NOVA_REPORT_INTERVAL
        )
        defaults["service_down_time"] = str(6 * base)
    if not defaults:
        return meta
    header = next(
        (
            header
            for header in meta
            if header.partition("|")[0] == "post-config" and localconf.meta_file(header.partition("|")[2]) == nova
        ),
        f"post-config|{NOVA_CONF}",
    )
    sections = meta.setdefault(header, {})
    sections["DEFAULT"] = {**sections.get("DEFAULT", {}), **defaults}
    return meta


def plan_nova_hosts(name, localrc, services):
    """The nova-compute hosts a node registers: with VIRT_DRIVER=fake devstack starts NUMBER_FAKE_NOVA_COMPUTE
    (default 1) of them named ${HOSTNAME}1, ${HOSTNAME}2 ...; any other driver registers the host name itself."""
    if "n-cpu" not in services:
        return ()
    if localrc.get("VIRT_DRIVER") == "fake":
        count = localrc.get("NUMBER_FAKE_NOVA_COMPUTE", "1")
        return tuple(f"{name}{index}" for index in range(1, int(count) + 1)) if count.isdigit() else ()
    return (name,)


def _mirror(path, config):
    """The git mirror as an absolute folder: a relative one starts at the config file's folder. No disk access."""
    if path is None:
        return None
    if not os.path.isabs(path):
        folder = config.folder or (os.path.dirname(config.source) if config.source else None)
        if folder is None:
            return path
        path = os.path.join(folder, path)
    return os.path.normpath(path)


# ---------------------------------------------------------------- what nodes need from the host's kernel


class KernelRequirement(NamedTuple):
    """A service of a node that needs a kernel feature of its host (the agent reports the host's features)."""

    node: str
    host: str
    service: str
    feature: str  # "openvswitch" | "loop"
    advice: str


# Open vSwitch in the kernel: OVN and OVS themselves, and the neutron agents that drive it.
_OVS_SERVICES = ("ovn-controller", "ovn-northd", "ovs-vswitchd", "ovsdb-server", "q-ovn-agent", "q-ovn-metadata-agent")
# These need it only with an OVS-based agent (Q_AGENT openvswitch or ovn, devstack's default).
_AGENT_SERVICES = ("q-agt", "neutron-agent", "q-l3", "q-dhcp")
_OVS_AGENTS = ("openvswitch", "ovn")


def kernel_requirements(plan):
    """Per node, in plan order, each enabled service that needs something from the host's kernel: Open vSwitch
    (module openvswitch) for OVN/OVS and the OVS-based neutron agents, loop devices for c-vol's LVM backing file.
    Pure: the deploy compares these with the kernel features each host's agent reports."""
    out = []
    paths = {group.index: group.localrc_path for group in plan.groups}
    for node in plan.nodes:
        agent = node.localrc.get("Q_AGENT", "ovn")
        needs = [
            (service, "openvswitch")
            for service in node.services
            if service in _OVS_SERVICES or (service in _AGENT_SERVICES and agent in _OVS_AGENTS)
        ]
        needs += [(service, "loop") for service in node.services if service == "c-vol"]
        for feature in ("openvswitch", "loop"):
            services = [service for service, wanted in needs if wanted == feature]
            for service in services:
                out.append(
                    KernelRequirement(
                        node.name,
                        node.host,
                        service,
                        feature,
                        _kernel_advice(node, service, feature, services, paths.get(node.group, "")),
                    )
                )
    return tuple(out)


def _kernel_advice(node, service, feature, services, path):
    disable = ",".join(f"-{name}" for name in services)
    where = "the host" if node.kind == "host" else "the host (a container cannot load kernel modules)"
    # Every service of the node that needs the feature is named, so the advice is one line per node and feature.
    service = ", ".join(services) + (" need" if len(services) > 1 else " needs")
    if feature == "openvswitch":
        need = (
            f"{service} on {node.name} Open vSwitch in the kernel of {node.host}: module openvswitch "
            f"(CONFIG_OPENVSWITCH), loaded on {where} with `modprobe openvswitch`"
        )
    else:
        need = (
            f"{service} on {node.name} loop devices on {node.host} (c-vol backs its LVM volume group with a "
            f"loop file): module loop (CONFIG_BLK_DEV_LOOP), loaded on {where} with `modprobe loop`"
        )
    return (
        f"{need}; or use a host whose kernel has it; or disable what needs it on this node: add "
        f'",{disable}" to `ENABLED_SERVICES+` in {path}'
    )


def _finish_hosts(hosts, pools, nodes):
    networks: dict = {}
    for (host, network), pool in pools.items():
        networks.setdefault(host, []).append(
            Network(
                subnet=str(network),
                gateway=str(addressing.gateway(network)),
                prefixlen=network.prefixlen,
                bridge=bridge_name(network),
                containers=pool.needed,
            )
        )
    counts: dict = {}
    for node in nodes:
        counts[node.host] = counts.get(node.host, 0) + 1
    out = []
    for index, (address, credential) in enumerate(hosts.items()):
        mine = tuple(networks.get(address, ()))
        first = mine[0] if mine else None
        out.append(
            Host(
                index=index,
                address=address,
                user=credential.user,
                port=credential.port,
                ca=credential.ca,
                cert=credential.cert,
                key=credential.key,
                token_file=credential.token_file,
                subnet=first.subnet if first else None,
                gateway=first.gateway if first else None,
                bridge=first.bridge if first else None,
                networks=mine,
                nodes=counts.get(address, 0),
            )
        )
    return tuple(out)
