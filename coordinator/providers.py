"""The seed's providers: ExistingServers (hardware nodes; Rally's DummyProvider) and LxcProvider (containers on them).

Each carries its schema and pure checks; `build` turns a valid config into a frozen model that the planner reads.
"""

import ipaddress
import math
import re
from dataclasses import dataclass

from agent import addressing
from coordinator import plugins
from coordinator.problems import Problem, kept

DEFAULT_DISTRIBUTION = "ubuntu"
# The distributions a container can be made of: distribution -> the LXC template (lxc-templates) that builds it.
TEMPLATES = {"ubuntu": "ubuntu", "debian": "debian"}
# A release devstack stable/2026.1 supports (SUPPORTED_DISTROS in its stack.sh), for a group that names none.
DEFAULT_RELEASES = {"ubuntu": "noble", "debian": "bookworm"}
TUNNEL_TYPES = ("ipip", "vxlan")
DEFAULT_TUNNEL_TYPE = "ipip"
# A name is `<prefix>-<subnet tag>-<index>` and must stay within LXC's 63 characters: 40 + 1 + 15 + 1 + 5 + margin.
PREFIX_MAX = 40

_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)

NAME_PREFIX_SCHEMA = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9.-]*\Z",
    "maxLength": PREFIX_MAX + 1,
    "x-expected": "a container name prefix: letters, digits, '.' and '-', starting with a letter or digit",
}
NETWORK_SCHEMA = {"type": "string", "x-expected": "an IPv4 network such as 10.100.1.0/24"}
TUNNEL_TO_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "x-expected": "an IPv4 address"},
    "x-expected": "a list of IPv4 addresses",
}
TUNNEL_TYPE_SCHEMA = {"enum": list(TUNNEL_TYPES)}
DISTRIBUTION_SCHEMA = {
    "enum": list(TEMPLATES),
    "x-expected": "a distribution an LXC template here makes: " + " or ".join(TEMPLATES),
}
RELEASE_SCHEMA = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z",
    "x-expected": "a release name such as jammy or bookworm",
}
# No host runs more containers than this; a larger number is a slip (and would make the arithmetic absurd).
MAX_PER_HOST = 100_000
COUNT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_PER_HOST}
ONE_LINE_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "pattern": "^[^\x00-\x1f\x7f]*\\Z",
    "x-expected": "one line of text, without control characters",
}

# Ranges a container subnet must stay out of: traffic to them never reaches a bridge on this host as intended.
SPECIAL_RANGES = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network' range"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback range"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local range"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast range"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved range (with the broadcast address)"),
)


@dataclass(frozen=True)
class Credential:
    """One hardware node: where its agent is, and optional per-host agent settings."""

    host: str
    user: str | None = None
    port: int | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token_file: str | None = None
    path: str = ""

    AGENT_FIELDS = ("user", "port", "ca", "cert", "key", "token_file")


@dataclass(frozen=True)
class Servers:
    """ExistingServers: hardware nodes given by their credentials."""

    credentials: tuple
    path: str


@dataclass(frozen=True)
class Containers:
    """LxcProvider: `containers_per_host` containers on each hardware node of `hosts`."""

    hosts: Servers
    containers_per_host: int
    prefix: str | None
    distribution: str
    release: str | None
    network: ipaddress.IPv4Network | None
    tunnel_to: tuple
    tunnel_type: str
    path: str
    count_path: str
    network_path: str
    host_ca_certificates: bool
    host_proxy: bool


# ------------------------------------------------------------- network arithmetic shared with the planner


def capacity(network):
    """Containers a subnet holds (agent.addressing's rule, which the agents apply too)."""
    return addressing.capacity(network)


def prefix_for(count):
    """The longest IPv4 prefix whose subnet holds `count` containers."""
    return 32 - math.ceil(math.log2(count + 3))


def too_small(network, count, what):
    return (
        f"{network} is too small for {count} containers{what}: it holds {capacity(network)} "
        f"(network, gateway and broadcast addresses are reserved); a /{prefix_for(count)} would hold them"
    )


def is_host_name(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(text))


def normal_host(text):
    """One spelling per host: an address in its canonical form, a name in lower case without a trailing dot
    ('A', 'a' and 'a.' are one host)."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text.lower().rstrip(".")


def special_range(network):
    """Why a container subnet may not be `network` (it overlaps a special range), or None."""
    for special, what in SPECIAL_RANGES:
        if network.overlaps(special):
            return f"{network} overlaps the {what} {special}; container subnets must be ordinary unicast addresses"
    return None


def unusable_address(address):
    """Why an IPv4 address cannot be a hardware node's (a tunnel's far end, an agent's host), or None."""
    if address.is_unspecified or address in SPECIAL_RANGES[0][0]:
        return "is in 0.0.0.0/8 ('this network'), not a host's address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address"
    if address.is_multicast:
        return "is a multicast address"
    if address.is_reserved:
        return "is in the reserved range 240.0.0.0/4"
    return None


def parse_network(text):
    """(network, None) or (None, why)."""
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None, f"expected an IPv4 network such as 10.100.1.0/24, got '{text}'"
        return None, f"'{text}' has host bits set; did you mean '{loose}'?"
    if network.version != 4:
        return None, f"expected an IPv4 network, got the IPv{network.version} network '{text}'"
    if "/" not in text:
        return None, f"give the prefix length too, e.g. '{text}/24'"
    if network.prefixlen > 30:
        return None, f"'{text}' leaves no address for containers; use a /30 or larger"
    why = special_range(network)
    if why:
        return None, why
    return network, None


def check_tunnels(addresses, path):
    problems = []
    for index, text in kept(addresses):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            why = (
                "give an address without a prefix length"
                if "/" in text
                else "expected an IPv4 address such as 192.168.1.13"
            )
            problems.append(Problem(f"{path}[{index}]", f"'{text}' is not an address: {why}"))
            continue
        if address.version != 4:
            problems.append(Problem(f"{path}[{index}]", f"'{text}' is IPv6; tunnels need an IPv4 address"))
            continue
        why = "is a loopback address" if address.is_loopback else unusable_address(address)
        if why:
            problems.append(
                Problem(f"{path}[{index}]", f"'{text}' {why}; a tunnel's far end is another hardware node's address")
            )
    return problems


def check_containers(cfg, site):
    """The checks LxcProvider and LxcEngine share: name prefix, network (size included), tunnels."""
    problems = []
    prefix = cfg.get("container_name_prefix")
    if prefix is not None and not prefix.rstrip("-."):
        problems.append(Problem(site.at("container_name_prefix"), "expected letters or digits in the prefix"))
    network = None
    if "start_lxc_network" in cfg:
        network, why = parse_network(cfg["start_lxc_network"])
        if why:
            problems.append(Problem(site.at("start_lxc_network"), why))
    count = cfg.get("containers_per_host", 1)
    if network is not None and count > capacity(network):
        problems.append(Problem(site.at("start_lxc_network"), too_small(network, count, " per host")))
    problems += check_tunnels(cfg.get("tunnel_to", []), site.at("tunnel_to"))
    if network is not None and not problems:
        for index, text in kept(cfg.get("tunnel_to", [])):
            if ipaddress.ip_address(text) in network:
                problems.append(
                    Problem(
                        site.at("tunnel_to", index), f"'{text}' is inside this group's own container network {network}"
                    )
                )
    return problems


def _unusable_host(host):
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version != 4:
        return None
    why = unusable_address(address)
    return f"{why}; give the address its agent listens on" if why else None


def clean_prefix(prefix):
    """Rally's samples end prefixes with '-' (`rally-providertest-02-`); the name adds its own separator."""
    return prefix.rstrip("-.") if prefix is not None else None


def unique(items):
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------- the types


@plugins.provider
class ExistingServers(plugins.Plugin):
    """Hardware nodes that exist already; each runs an lxc-agent (Rally called this DummyProvider)."""

    NAME = "ExistingServers"
    ALIASES = ("DummyProvider",)
    SCHEMA = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "credentials": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string", "minLength": 1},
                        "user": ONE_LINE_SCHEMA,
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "ca": ONE_LINE_SCHEMA,
                        "cert": ONE_LINE_SCHEMA,
                        "key": ONE_LINE_SCHEMA,
                        "token_file": ONE_LINE_SCHEMA,
                    },
                    "required": ["host"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["credentials"],
        "additionalProperties": False,
    }

    @classmethod
    def check(cls, cfg, site, ctx):
        problems = []
        seen: dict = {}
        for index, credential in kept(cfg.get("credentials", ())):
            host = credential.get("host")
            if host is None:
                continue  # refused by the schema, said already
            where = site.at("credentials", index, "host")
            if not is_host_name(host):
                problems.append(Problem(where, f"'{host}' is not a host name or IP address"))
                continue
            why = _unusable_host(host)
            if why:
                problems.append(Problem(where, f"'{host}' {why}"))
                continue
            key = normal_host(host)
            if key in seen:
                first, spelled = seen[key]
                same = "" if spelled == host else f" as '{spelled}'; case and a trailing dot make no other host"
                problems.append(Problem(where, f"'{host}' is listed twice (first at credentials[{first}]{same})"))
            seen.setdefault(key, (index, host))
        return problems

    @classmethod
    def build(cls, cfg, site, children, ctx):
        credentials = tuple(
            Credential(
                path=site.at("credentials", index),
                **{
                    **credential,
                    "host": normal_host(credential["host"]),
                    **({"port": int(credential["port"])} if "port" in credential else {}),
                },
            )
            for index, credential in enumerate(cfg["credentials"])
        )
        return Servers(credentials=credentials, path=str(site))


# What LxcProvider and LxcEngine both say about their containers: count, naming, image, network, tunnels.
CONTAINER_GROUP_PROPERTIES = {
    "containers_per_host": COUNT_SCHEMA,
    "container_name_prefix": NAME_PREFIX_SCHEMA,
    "distribution": DISTRIBUTION_SCHEMA,
    "release": RELEASE_SCHEMA,
    "start_lxc_network": NETWORK_SCHEMA,
    "tunnel_to": TUNNEL_TO_SCHEMA,
    "tunnel_type": TUNNEL_TYPE_SCHEMA,
    # Opt-ins: the host's CA certificates copied into the containers, the host's proxy settings passed to them.
    "host_ca_certificates": {"type": "boolean"},
    "host_proxy": {"type": "boolean"},
}


def container_group_fields(cfg, site):
    """The model fields for CONTAINER_GROUP_PROPERTIES, with their defaults and the paths errors point at."""
    return dict(
        containers_per_host=int(cfg.get("containers_per_host", 1)),  # JSON Schema lets 4.0 be an integer
        prefix=clean_prefix(cfg.get("container_name_prefix")),
        distribution=cfg.get("distribution", DEFAULT_DISTRIBUTION),
        release=cfg.get("release"),
        network=parse_network(cfg["start_lxc_network"])[0] if "start_lxc_network" in cfg else None,
        tunnel_to=unique(cfg.get("tunnel_to", ())),
        tunnel_type=cfg.get("tunnel_type", DEFAULT_TUNNEL_TYPE),
        path=str(site),
        count_path=site.at("containers_per_host"),
        network_path=site.at("start_lxc_network"),
        host_ca_certificates=cfg.get("host_ca_certificates", False),
        host_proxy=cfg.get("host_proxy", False),
    )


@plugins.provider
class LxcProvider(plugins.Plugin):
    """`containers_per_host` containers on each hardware node, each created on its own (not cloned)."""

    NAME = "LxcProvider"
    SCHEMA = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            **CONTAINER_GROUP_PROPERTIES,
            # Rally's ssh port forwarding: accepted so its configs load; containers are reached through the agent.
            "forward_ssh": {"type": "boolean"},
            "host_provider": {},
        },
        "required": ["host_provider"],
        "additionalProperties": False,
    }
    SLOTS = {
        "host_provider": plugins.Slot("provider", ("ExistingServers",), "the hardware nodes the containers run on")
    }

    @classmethod
    def check(cls, cfg, site, ctx):
        return check_containers(cfg, site)

    @classmethod
    def build(cls, cfg, site, children, ctx):
        return Containers(hosts=children["host_provider"], **container_group_fields(cfg, site))
