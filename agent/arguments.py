"""The arguments of every method AgentService exposes, declared in one table (SCHEMAS): type, range or pattern,
length, and the caps of lists and dicts. `checked` applies a method's declaration before its body runs, so
nothing a client sends reaches liblxc, a config file, a shell or a path unchecked; network.py and tunnels.py use
the same checkers for their own callers (`check`).

A refusal is an InvalidArgument naming the method and the argument, with the index or key inside a list or dict
(`clone: names[3]: ...`), showing at most SHOWN characters of the value. Patterns match whole strings (fullmatch),
so a trailing newline is refused like any other stray character. Booleans are not numbers, numbers are finite.
"""

import base64
import binascii
import dataclasses
import functools
import inspect
import ipaddress
import math
import re
import reprlib

from agent.errors import InvalidArgument

# --- the limits (README: "Limits of the agent's arguments") ---

MAX_BATCH = 16_384  # names per call: every method that takes a list of container names, and destroy_images
MAX_PACKAGES = 256  # distribution packages per create
MAX_SUBNETS = 1_024  # subnets on each side of a tunnel
MAX_ARGV = 4_096  # arguments of a command run()
MAX_ENV = 1_024  # environment variables given to run()
MAX_ARG_BYTES = 131_071  # one argument, or one NAME=value: Linux's MAX_ARG_STRLEN less the NUL
MAX_ARGV_BYTES = 1_048_576  # all arguments together (UTF-8) ...
MAX_ENV_BYTES = 262_144  # ... and all NAME=value: together well inside Linux's 2 MiB ARG_MAX
MAX_STDIN = 256 * 1_048_576  # characters (or bytes) of run()'s stdin: the coordinator sends git bundles there
MAX_SECONDS = 7 * 86_400  # any timeout
SHOWN = 100  # characters of a refused value shown in the error

# Where bridge subnets and the subnets tunnels route may come from (unless the agent's config allows any):
# RFC 1918, the shared address space of RFC 6598 and the benchmarking range of RFC 2544.
PRIVATE_NETWORKS = tuple(
    ipaddress.IPv4Network(text)
    for text in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15")
)
# Never, whatever the config: these are not subnets a host can route for containers.
SPECIAL_NETWORKS = {
    ipaddress.IPv4Network("0.0.0.0/8"): "'this network'",
    ipaddress.IPv4Network("127.0.0.0/8"): "loopback",
    ipaddress.IPv4Network("169.254.0.0/16"): "link-local",
    ipaddress.IPv4Network("224.0.0.0/4"): "multicast",
    ipaddress.IPv4Network("240.0.0.0/4"): "reserved",
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the agent's config decides about otherwise valid values."""

    allow_public_subnets: bool = False


STRICT = Policy()
ANY_SUBNET = Policy(allow_public_subnets=True)


class Refusal(Exception):
    """One value refused: `path` is where (`names[3]`, `addresses['web']`), `problem` what is wrong with it."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


# --- showing what was refused ---

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = SHOWN
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxset = _SHOW.maxdict = 5
_SHOW.maxlevel = 3


def show(value):
    """repr(value) of at most SHOWN characters, whatever its size (a huge int, a long string, a deep list)."""
    try:
        text = _SHOW.repr(value)
    except Exception:  # an int of more digits than Python converts to text, or a repr that fails
        text = f"<{kind(value)}>"
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def clip(text):
    """Text of at most 2 * SHOWN characters."""
    return text if len(text) <= 2 * SHOWN else text[: 2 * SHOWN - 3] + "..."


def kind(value):
    return "None" if value is None else type(value).__name__


# --- the checkers: each takes (value, path, policy), returns the value to use or raises Refusal ---


class Check:
    def __call__(self, value, path, policy):
        raise NotImplementedError


class Optional(Check):
    """None, or what `inner` accepts."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, value, path, policy):
        return None if value is None else self.inner(value, path, policy)


class Flag(Check):
    def __init__(self, what):
        self.what = what

    def __call__(self, value, path, policy):
        if not isinstance(value, bool):
            raise Refusal(path, f"{self.what} must be true or false, got {kind(value)} {show(value)}")
        return value


class Pattern(Check):
    """A string the whole of which matches `pattern` (at most `longest` characters)."""

    def __init__(self, what, pattern, longest, hint, wording="invalid {what} {value}"):
        self.what, self.regex, self.longest, self.hint, self.wording = what, re.compile(pattern), longest, hint, wording

    def ok(self, value):
        return isinstance(value, str) and len(value) <= self.longest and self.regex.fullmatch(value) is not None

    def refusal(self, path, values, batch=False):
        """The refusal of one bad value, or of a batch's bad values (shown together, the first few)."""
        if not batch:
            shown = show(values[0])
            what = self.what
        else:
            shown = show(values[:5]) + (f" and {len(values) - 5} more" if len(values) > 5 else "")
            what = f"{self.what}(s)"
        return Refusal(path, self.wording.format(what=what, value=shown) + f": {self.hint}")

    def __call__(self, value, path, policy):
        if not self.ok(value):
            raise self.refusal(path, [value])
        return value


class Choice(Check):
    def __init__(self, what, choices):
        self.what, self.choices = what, tuple(choices)

    def __call__(self, value, path, policy):
        if not isinstance(value, str) or value not in self.choices:
            raise Refusal(path, f"{self.what} {show(value)} is not one of {', '.join(self.choices)}")
        return value


class Integer(Check):
    def __init__(self, what, lowest, highest):
        self.what, self.lowest, self.highest = what, lowest, highest

    def __call__(self, value, path, policy):
        if isinstance(value, bool) or not isinstance(value, int) or not self.lowest <= value <= self.highest:
            wrong = (
                ""
                if isinstance(value, int) and not isinstance(value, bool)
                else f" (a whole number, not {kind(value)})"
            )
            raise Refusal(
                path, f"{self.what} {show(value)} is not a number from {self.lowest} to {self.highest}{wrong}"
            )
        return value


class Seconds(Check):
    """A finite number of seconds up to MAX_SECONDS: above zero, or from zero when `zero` means "at once"."""

    def __init__(self, zero=False):
        self.zero = zero

    def __call__(self, value, path, policy):
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        # In this order: a huge int has no float (isfinite would raise), NaN compares false with everything.
        if (
            not number
            or (isinstance(value, float) and not math.isfinite(value))
            or not 0 <= value <= MAX_SECONDS
            or (value == 0 and not self.zero)
        ):
            wanted = "a number of seconds from 0" if self.zero else "a positive number of seconds"
            raise Refusal(path, f"expected {wanted} up to {MAX_SECONDS}, got {kind(value)} {show(value)}")
        return value


class Text(Check):
    """A string without NUL, valid UTF-8 once encoded, of at most `longest` bytes so."""

    def __init__(self, what, longest):
        self.what, self.longest = what, longest

    def __call__(self, value, path, policy):
        if not isinstance(value, str):
            raise Refusal(path, f"{self.what} must be a string, got {kind(value)} {show(value)}")
        size = utf8_size(value, path, self.what)
        if size > self.longest:
            raise Refusal(path, f"{self.what} of {size} bytes is longer than {self.longest}")
        if "\0" in value:
            raise Refusal(path, f"{self.what} {show(value)} contains NUL, which no command line can carry")
        return value


def utf8_size(value, path, what):
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refusal(path, f"{what} {show(value)} is not valid text (a lone surrogate)") from None


class Stdin(Check):
    """Text or bytes (Pyro5's serpent sends bytes as {"data": base64, "encoding": "base64"}) of at most MAX_STDIN
    characters or bytes; given on as text or bytes."""

    def __call__(self, value, path, policy):
        if isinstance(value, dict) and set(value) == {"data", "encoding"} and value["encoding"] == "base64":
            data = value["data"]
            if not isinstance(data, str) or len(data) > (MAX_STDIN + 2) // 3 * 4:
                raise Refusal(path, f"stdin is longer than {MAX_STDIN} bytes")
            try:
                value = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise Refusal(path, "stdin is bytes in Pyro5's base64 form, but the base64 is not valid") from None
        if isinstance(value, (bytes, bytearray)):
            if len(value) > MAX_STDIN:
                raise Refusal(path, f"stdin of {len(value)} bytes is longer than {MAX_STDIN}")
            return bytes(value)
        if not isinstance(value, str):
            raise Refusal(path, f"stdin must be text or bytes, got {kind(value)} {show(value)}")
        if len(value) > MAX_STDIN:
            raise Refusal(path, f"stdin of {len(value)} characters is longer than {MAX_STDIN}")
        utf8_size(value, path, "stdin")
        return value


class ListOf(Check):
    """A list (or tuple) of at most `longest` items, each checked by `item`; `distinct`: no item twice."""

    def __init__(self, item, what, longest, shortest=0, distinct=False, total_bytes=None):
        self.item, self.what, self.longest, self.shortest = item, what, longest, shortest
        self.distinct, self.total_bytes = distinct, total_bytes

    def __call__(self, value, path, policy):
        if not isinstance(value, (list, tuple)):
            raise Refusal(
                path,
                f"expected a list, got {kind(value)} {show(value)}: {path} must be a list of {self.what}s, even of one",
            )
        if len(value) > self.longest:
            raise Refusal(path, f"at most {self.longest} {self.what}s per call, got {len(value)}")
        if len(value) < self.shortest:
            raise Refusal(path, f"expected a non-empty list of {self.what}s, got {show(value)}")
        if isinstance(self.item, Pattern):
            bad = [index for index, entry in enumerate(value) if not self.item.ok(entry)]
            if bad:
                raise self.item.refusal(f"{path}[{bad[0]}]", [value[index] for index in bad], batch=True)
        checked = [self.item(entry, f"{path}[{index}]", policy) for index, entry in enumerate(value)]
        if self.distinct:
            first: dict[str, int] = {}
            for index, entry in enumerate(checked):
                if entry in first:
                    raise Refusal(
                        f"{path}[{index}]",
                        f"{self.what} {show(entry)} listed twice: at {path}[{first[entry]}] and {path}[{index}]",
                    )
                first[entry] = index
        if self.total_bytes is not None:
            size = sum(len(entry.encode()) for entry in checked)
            if size > self.total_bytes:
                raise Refusal(path, f"{self.what}s of {size} bytes together, more than {self.total_bytes}")
        return checked


class MapOf(Check):
    """A dict of at most `longest` entries, keys checked by `key`, values by `value`."""

    def __init__(self, key, value, what, longest, total_bytes=None):
        self.key, self.value, self.what, self.longest, self.total_bytes = key, value, what, longest, total_bytes

    def __call__(self, value, path, policy):
        if not isinstance(value, dict):
            raise Refusal(path, f"expected a dict of {self.what}, got {kind(value)} {show(value)}")
        if len(value) > self.longest:
            raise Refusal(path, f"at most {self.longest} entries per call, got {len(value)}")
        if isinstance(self.key, Pattern):
            bad = [key for key in value if not self.key.ok(key)]
            if bad:
                raise self.key.refusal(f"{path}[{show(bad[0])}]", bad, batch=True)
        checked = {}
        for key, entry in value.items():
            key = self.key(key, f"{path}[{show(key)}]", policy)
            checked[key] = self.value(entry, f"{path}[{show(key)}]", policy)
        if self.total_bytes is not None:
            size = sum(len(key.encode()) + 1 + len(entry.encode()) for key, entry in checked.items())
            if size > self.total_bytes:
                raise Refusal(path, f"{self.what} of {size} bytes together, more than {self.total_bytes}")
        return checked


class Address(Check):
    """An IPv4 address that can be one end of a tunnel: not unspecified, multicast, loopback, link-local or
    broadcast. Given on in its canonical text."""

    def __init__(self, what):
        self.what = what

    def __call__(self, value, path, policy):
        if not isinstance(value, str) or len(value) > 15:
            raise Refusal(path, f"{self.what} {show(value)} is not an IPv4 address like 198.18.0.1")
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError as error:
            raise Refusal(path, f"{self.what} {show(value)} is not an IPv4 address: {error}") from None
        if any(
            (address.is_unspecified, address.is_multicast, address.is_loopback, address.is_link_local)
        ) or address == ipaddress.IPv4Address("255.255.255.255"):
            raise Refusal(
                path,
                f"{self.what} {address} cannot be a tunnel's end; use the host's address on the network between "
                "the hosts",
            )
        return str(address)


class Interface(Check):
    """An IPv4 address with its prefix length, like 10.100.1.5/24; given on in its canonical text."""

    def __call__(self, value, path, policy):
        try:
            if not isinstance(value, str) or len(value) > 31:
                raise ValueError
            interface = ipaddress.IPv4Interface(value)
        except ValueError:
            raise Refusal(path, f"address {show(value)} is not an IPv4 address/prefix like 10.100.1.5/24") from None
        return str(interface)


class Subnet(Check):
    """An IPv4 network (no host bits) from the private ranges unless the policy allows others, never from the
    special ones. `bridge`: it must hold a gateway and a container (/30 or larger), else: not all of 0.0.0.0/0.
    Given on in its canonical text."""

    def __init__(self, what, bridge):
        self.what, self.bridge = what, bridge

    def __call__(self, value, path, policy):
        try:
            if not isinstance(value, str) or len(value) > 49:
                raise ValueError("not a string of the form address/prefix")
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as error:
            raise Refusal(
                path, f"{self.what} {show(value)} is not a network address like 10.100.1.0/24: {error}"
            ) from None
        if network.version != 4:
            raise Refusal(path, f"{self.what} {network} is not IPv4: container subnets are IPv4, like 10.100.1.0/24")
        if self.bridge and network.num_addresses < 4:
            raise Refusal(
                path, f"{self.what} {network} has no room for a gateway and containers: use a prefix of /30 or shorter"
            )
        if network.prefixlen == 0:
            raise Refusal(path, f"{self.what} {network} would send everything through the tunnel; name the subnets")
        for special, name in SPECIAL_NETWORKS.items():
            if network.overlaps(special):
                raise Refusal(path, f"{self.what} {network} is {name} ({special}), not a private range")
        if not policy.allow_public_subnets and not any(network.subnet_of(private) for private in PRIVATE_NETWORKS):
            raise Refusal(
                path,
                f"{self.what} {network} is not in a private range ("
                + ", ".join(map(str, PRIVATE_NETWORKS))
                + "); allow_public_subnets = true in the agent's config allows others",
            )
        return str(network)


# --- the values, by what they are ---

CONTAINER_NAME = Pattern(
    "container name",
    r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9.-]{0,62}",
    63,
    "use letters, digits, '.' and '-', start with a letter or digit, at most 63 characters, no '..'",
)
NAMES = ListOf(CONTAINER_NAME, "container name", MAX_BATCH, distinct=True)
IMAGE_KEY = Pattern(
    "image key",
    r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
    128,
    "keys are as list_images() gives them: letters, digits, '.', '_' and '-', at most 128 characters, no '..'",
)
SNAPSHOT_TAG = Pattern(
    "snapshot tag",
    r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    64,
    "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters, no '..'",
)
TEMPLATE = Pattern(
    "template",
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    64,
    "a template's name as info()['templates'] gives it, e.g. 'busybox' or 'debian'",
)
RELEASE = Pattern(
    "release",
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}",
    32,
    "use letters, digits, '.', '_' and '-' (e.g. 'bookworm'), at most 32 characters, or leave it out for the "
    "template's default",
)
PACKAGE = Pattern(
    "package name",
    r"[a-z0-9][a-z0-9+.-]{0,99}",
    100,
    "use lower-case letters, digits, '+', '.' and '-', starting with a letter or digit",
)
LINK_HINT = "use 1-15 letters, digits, '_', '.' or '-', starting with a letter or digit"
BRIDGE = Pattern(
    "bridge name", r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", 15, LINK_HINT, wording="{what} {value} is not valid"
)
# 'all' and 'default' would share /proc/sys/net/ipv4/conf/<name> with the global settings.
TUNNEL = Pattern(
    "tunnel name",
    r"(?!(?:all|default)\Z)[A-Za-z0-9][A-Za-z0-9_.-]{0,14}",
    15,
    LINK_HINT + ", and not 'all' or 'default'",
    wording="{what} {value} is not valid",
)
OWNER = Pattern(
    "owner",
    r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}",
    128,
    "use 1-128 letters, digits, '_', '.', ':', '@', '+' or '-', starting with a letter or digit (or None for no owner)",
    wording="{what} {value} is not valid",
)
LABEL_NAME = Pattern(
    "label name", r"[a-z][a-z0-9_]{0,31}", 32, "use 1-32 lower-case letters, digits and '_', starting with a letter"
)
MAX_LABELS = 32
LABELS = MapOf(LABEL_NAME, Text("label", 4_096), "labels", MAX_LABELS, total_bytes=16_384)
TUNNEL_KINDS = ("ipip", "vxlan")
VNI = Integer("vni", 1, 2**24 - 1)
MTU = Integer("mtu", 68, 65535)  # 68: the least IPv4 allows (RFC 791); 65535: the most it can carry
BRIDGE_SUBNET = Subnet("subnet", bridge=True)
ROUTED_SUBNETS = ListOf(Subnet("subnet", bridge=False), "subnet", MAX_SUBNETS)
USER = Pattern("user", r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", 32, "a user name of the container's /etc/passwd, e.g. 'stack'")
ENV_NAME = Pattern(
    "environment variable name",
    r"[A-Za-z_][A-Za-z0-9_]{0,255}",
    256,
    "use letters, digits and '_', not starting with a digit",
)
ARGV = ListOf(Text("argument", MAX_ARG_BYTES), "argument", MAX_ARGV, shortest=1, total_bytes=MAX_ARGV_BYTES)
ENV = MapOf(ENV_NAME, Text("value", MAX_ARG_BYTES), "environment variables", MAX_ENV, total_bytes=MAX_ENV_BYTES)

# --- the table: method -> argument -> checker, in the method's order ---

SCHEMAS: dict[str, dict[str, Check]] = {
    "ping": {},
    "info": {},
    "memory": {},
    "list_images": {},
    "list": {"names": Optional(NAMES)},
    "create": {
        "name": CONTAINER_NAME,
        "template": TEMPLATE,
        "release": Optional(RELEASE),
        "packages": Optional(ListOf(PACKAGE, "package name", MAX_PACKAGES)),
    },
    "destroy_images": {"keys": Optional(ListOf(IMAGE_KEY, "image key", MAX_BATCH, distinct=True))},
    "save_image": {"name": CONTAINER_NAME, "key": IMAGE_KEY, "labels": Optional(LABELS)},
    "create_from_image": {"name": CONTAINER_NAME, "key": IMAGE_KEY},
    "snapshot": {"names": NAMES, "tag": SNAPSHOT_TAG},
    "restore": {"names": NAMES, "tag": SNAPSHOT_TAG, "timeout": Seconds(zero=True)},
    "list_snapshots": {"names": Optional(NAMES)},
    "delete_snapshots": {"names": NAMES, "tag": SNAPSHOT_TAG},
    "clone": {"source": CONTAINER_NAME, "names": NAMES, "snapshot": Flag("snapshot")},
    "set_addresses": {
        "bridge": BRIDGE,
        "addresses": MapOf(CONTAINER_NAME, Interface(), "container name -> address/prefix", MAX_BATCH),
        "mtu": Optional(MTU),
    },
    "start": {"names": NAMES, "timeout": Seconds(), "merge_memory": Flag("merge_memory")},
    "stop": {"names": NAMES, "timeout": Seconds(zero=True)},
    "destroy": {"names": NAMES},
    "run": {
        "name": CONTAINER_NAME,
        "argv": ARGV,
        "stdin": Optional(Stdin()),
        "env": Optional(ENV),
        "user": Optional(USER),
        "timeout": Optional(Seconds()),
    },
    "ensure_network": {"bridge": BRIDGE, "subnet": BRIDGE_SUBNET, "owner": Optional(OWNER)},
    "destroy_network": {"bridge": BRIDGE, "owner": Optional(OWNER)},
    "list_networks": {},
    "ensure_tunnel": {
        "name": TUNNEL,
        "kind": Choice("kind", TUNNEL_KINDS),
        "local": Address("local"),
        "remote": Address("remote"),
        "local_subnets": ROUTED_SUBNETS,
        "remote_subnets": ROUTED_SUBNETS,
        "vni": Optional(VNI),
    },
    "destroy_tunnel": {"name": TUNNEL},
    "list_tunnels": {},
}


# --- applying it ---


def invalid(where, path, problem):
    """The InvalidArgument for `problem` with the argument at `path` of method (or function) `where`."""
    return InvalidArgument(f"{where}: {path}: {problem}", method=where, argument=path)


def check_arguments(method, values, allow_public_subnets=False):
    """{argument: value} of one call of `method`, checked against its schema and normalised (lists for tuples,
    canonical addresses, stdin as text or bytes); InvalidArgument for the first refused."""
    policy = ANY_SUBNET if allow_public_subnets else STRICT
    try:
        return {name: check(values[name], name, policy) for name, check in SCHEMAS[method].items()}
    except Refusal as refusal:
        raise invalid(method, refusal.path, refusal.problem) from None


def check(checker, value, path, policy=ANY_SUBNET):
    """One value checked for a module's own callers (which the service has checked already): InvalidArgument
    naming `path`. The subnet policy is the service's, so any non-special subnet passes here."""
    try:
        return checker(value, path, policy)
    except Refusal as refusal:
        raise InvalidArgument(str(refusal), argument=refusal.path) from None


def checked(method):
    """AgentService `method` with its arguments bound and checked against SCHEMAS[its name] before its body runs;
    the body gets the checked values. A missing, extra or unknown argument is an InvalidArgument too."""
    name = method.__name__
    signature = inspect.signature(method)
    declared = list(signature.parameters)[1:]
    if declared != list(SCHEMAS[name]):
        raise TypeError(f"AgentService.{name} takes {declared} but its schema declares {list(SCHEMAS[name])}")

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise InvalidArgument(
                f"{name}: {clip(str(error))}; it takes ({', '.join(declared)})", method=name
            ) from None
        bound.apply_defaults()
        values = check_arguments(name, bound.arguments, getattr(self, "allow_public_subnets", False))
        return method(self, **values)

    return call
