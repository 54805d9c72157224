"""The seed's engines: MultihostEngine (a controller and nodes), DevstackEngine (devstack on what a provider gives),
LxcEngine (one devstack container per host, then clones of it).

Each carries its schema and pure checks; its model says, through `groups(role)`, which groups of nodes it asks
the planner for. Names, subnets and addresses are the planner's (topology.py), decided in one place.
"""

from dataclasses import dataclass
from typing import Any

from coordinator import localconf, plugins
from coordinator.problems import Problem, describe, kept, nearest
from coordinator.providers import (
    CONTAINER_GROUP_PROPERTIES,
    DEFAULT_TUNNEL_TYPE,
    ONE_LINE_SCHEMA,
    Containers,
    check_containers,
    container_group_fields,
)

DEFAULT_DEVSTACK_REPO = "https://opendev.org/openstack/devstack"
DEFAULT_DEVSTACK_BRANCH = "master"
MAX_STARTS_PER_SECOND = 10000

LOCALRC_SCHEMA = {
    "type": "object",
    "propertyNames": {
        "pattern": localconf.KEY.pattern,
        "x-expected": "a shell variable name (letters, digits and '_', not starting with a digit), "
        "optionally ending in '+' to append",
    },
    "properties": {
        "enable_plugin": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "x-expected": "'NAME URL [BRANCH]' or a list of them",
        },
    },
    # Slips for enable_plugin would only set a shell variable nobody reads.
    "patternProperties": {
        r"^(?!enable_plugin\Z)(?i:enable_?plugins?)\Z": {
            "not": {},
            "x-message": "did you mean 'enable_plugin'? (each 'NAME URL [BRANCH]' given there becomes an "
            "enable_plugin line; this key would only set a shell variable)",
        },
    },
    "additionalProperties": {
        "type": ["string", "integer", "number", "boolean"],
        "x-expected": "a string, a number or true/false",
    },
}


# A meta-section value: what localrc takes, written the same way (true/false as True/False).
META_VALUE_SCHEMA = {
    "type": ["string", "integer", "number", "boolean"],
    "x-expected": "a string, a number or true/false",
}
META_SECTIONS_SCHEMA = {
    "type": "object",
    "x-expected": 'an object: "PHASE|FILE" -> ini section -> option -> value',
    "additionalProperties": {
        "type": "object",
        "x-expected": "an object: ini section -> option -> value",
        "additionalProperties": {
            "type": "object",
            "x-expected": "an object: option -> value",
            "additionalProperties": META_VALUE_SCHEMA,
        },
    },
}
GIT_MIRROR_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "pattern": "^[^\x00-\x1f\x7f]+\\Z",
    "x-expected": "a folder on this machine (absolute, or relative to the config's folder), one line",
}


@dataclass(frozen=True)
class Devstack:
    """What devstack is told on a node: localrc items and meta-sections in config order, plugins, and where
    devstack and the OpenStack repositories come from."""

    localrc: tuple  # ((key, value as text), ...) without the defaults
    plugins: tuple  # (("heat", "https://...", "master"), ...)
    repo: str | None  # None: devstack from the git mirror
    branch: str
    path: str  # the localrc section's path, for messages
    meta_sections: dict  # {"PHASE|FILE": {section: {option: value as text}}}, without the defaults
    git_mirror: str | None  # as written (the planner resolves a relative path)


@dataclass(frozen=True)
class GroupSpec:
    """A group of nodes one engine asks for: the same settings on each of `hosts`, `per_host` times."""

    path: str
    role: str  # controller | compute
    kind: str  # standalone (LxcProvider) | cloned (LxcEngine) | host (devstack on the node itself)
    hosts: tuple  # providers.Credential, in config order
    per_host: int
    prefix: str | None
    network: object  # ipaddress.IPv4Network given by start_lxc_network, or None for the host's default
    tunnel_to: tuple
    tunnel_type: str
    distribution: str | None
    release: str | None
    start_script: str | None
    devstack: Devstack
    count_path: str
    network_path: str
    host_ca_certificates: bool = False
    host_proxy: bool = False
    starts_per_second: float | None = None
    merge_memory: bool = False


@dataclass(frozen=True)
class DevstackModel:
    devstack: Devstack
    provider: Any  # providers.Containers, providers.Servers, or None inside an LxcEngine
    path: str

    def groups(self, role):
        provider = self.provider
        if isinstance(provider, Containers):
            return (
                GroupSpec(
                    path=self.path,
                    role=role,
                    kind="standalone",
                    hosts=provider.hosts.credentials,
                    per_host=provider.containers_per_host,
                    prefix=provider.prefix,
                    network=provider.network,
                    tunnel_to=provider.tunnel_to,
                    tunnel_type=provider.tunnel_type,
                    distribution=provider.distribution,
                    release=provider.release,
                    start_script=None,
                    devstack=self.devstack,
                    count_path=provider.count_path,
                    network_path=provider.network_path,
                    host_ca_certificates=provider.host_ca_certificates,
                    host_proxy=provider.host_proxy,
                ),
            )
        return (
            GroupSpec(
                path=self.path,
                role=role,
                kind="host",
                hosts=provider.credentials,
                per_host=1,
                prefix=None,
                network=None,
                tunnel_to=(),
                tunnel_type=DEFAULT_TUNNEL_TYPE,
                distribution=None,
                release=None,
                start_script=None,
                devstack=self.devstack,
                count_path=provider.path,
                network_path=provider.path,
            ),
        )


@dataclass(frozen=True)
class LxcEngineModel:
    hosts: Any  # providers.Servers
    engine: DevstackModel
    containers_per_host: int
    prefix: str | None
    distribution: str
    release: str | None
    network: object
    tunnel_to: tuple
    tunnel_type: str
    start_script: str | None
    starts_per_second: float | None
    merge_memory: bool
    path: str
    count_path: str
    network_path: str
    host_ca_certificates: bool
    host_proxy: bool

    def groups(self, role):
        return (
            GroupSpec(
                path=self.path,
                role=role,
                kind="cloned",
                hosts=self.hosts.credentials,
                per_host=self.containers_per_host,
                prefix=self.prefix,
                network=self.network,
                tunnel_to=self.tunnel_to,
                tunnel_type=self.tunnel_type,
                distribution=self.distribution,
                release=self.release,
                start_script=self.start_script,
                starts_per_second=self.starts_per_second,
                merge_memory=self.merge_memory,
                devstack=self.engine.devstack,
                count_path=self.count_path,
                network_path=self.network_path,
                host_ca_certificates=self.host_ca_certificates,
                host_proxy=self.host_proxy,
            ),
        )


@dataclass(frozen=True)
class MultihostModel:
    controller: DevstackModel
    nodes: tuple
    path: str

    def groups(self, role=None):
        groups = list(self.controller.groups("controller"))
        for node in self.nodes:
            groups.extend(node.groups("compute"))
        return tuple(groups)


def _placeholder_problems(value, where, ctx):
    problems = []
    for name in localconf.placeholders(value):
        if name not in localconf.PLACEHOLDERS:
            known = ", ".join("{" + known + "}" for known in localconf.PLACEHOLDERS)
            guess = nearest(name, localconf.PLACEHOLDERS)
            hint = f"did you mean '{{{guess}}}'?" if guess else f"known: {known}"
            problems.append(
                Problem(where, f"unknown placeholder '{{{name}}}'; {hint} (write '${{{name}}}' for a shell variable)")
            )
        elif ctx.role == "controller":
            problems.append(
                Problem(
                    where,
                    "'{controller_ip}' cannot be used in the controller's own settings: "
                    "it stands for the controller's address, which the controller's "
                    "devstack finds by itself",
                )
            )
        elif ctx.role == "standalone":
            problems.append(
                Problem(
                    where,
                    "'{controller_ip}' is only known for the nodes of a MultihostEngine: "
                    "this config has no separate controller",
                )
            )
    return problems


def _meta_problems(meta, site, ctx):
    """Every header, section, option and value of `meta_sections` that devstack would not merge as given."""
    problems = []
    for header, sections in meta.items():
        where = site.at("meta_sections", header)
        problems += [Problem(where, why) for why in localconf.meta_header_problems(header)]
        for section, options in sections.items():
            spot = site.at("meta_sections", header, section)
            why = localconf.ini_name_problem(section, "section")
            if why:
                problems.append(Problem(spot, why))
            for option, value in options.items():
                spot = site.at("meta_sections", header, section, option)
                why = localconf.ini_name_problem(option, "option")
                if why:
                    problems.append(Problem(spot, why))
                problems += _meta_value_problems(value, spot, ctx)
    return problems


def _meta_value_problems(value, where, ctx):
    if isinstance(value, float):
        return [
            Problem(
                where,
                f"got the number {value!r}: write a number with a fraction or exponent as a string "
                f'(quote it, e.g. "0.5"); as a number it may not be written back as given',
            )
        ]
    text = localconf.as_text(value)
    problems = [Problem(where, f"{why} (value {describe(text)})") for why in localconf.meta_value_problems(text)]
    return problems + _placeholder_problems(text, where, ctx)


def _count_problem(key, value, where):
    """NUMBER_FAKE_NOVA_COMPUTE is a count (devstack runs `seq 1 $NUMBER_FAKE_NOVA_COMPUTE`); the plan names the
    nova-compute hosts from it."""
    if key.rstrip("+") != "NUMBER_FAKE_NOVA_COMPUTE":
        return []
    if key.endswith("+"):
        return [Problem(where, "NUMBER_FAKE_NOVA_COMPUTE is a count: set it (without '+')")]
    text = localconf.as_text(value)
    if isinstance(value, bool) or not text.isascii() or not text.isdigit() or len(text) > 4:
        return [
            Problem(
                where, f"expected the number of fake nova-compute services per node (0 to 9999), got {describe(value)}"
            )
        ]
    return []


def _localrc_problems(key, value, where, ctx):
    """One localrc item, beyond its schema: a name bash keeps for itself, a value that would not be written as
    given, control characters, placeholders."""
    why = localconf.reserved(key)
    if why:
        return [Problem(where, f"'{key.rstrip('+')}' cannot be set in localrc: {why}; use another name")]
    if key == "enable_plugin":
        problems = []
        entries = [(None, value)] if isinstance(value, str) else kept(value)
        for index, entry in entries:
            spot = where if index is None else f"{where}[{index}]"
            if localconf.has_control(entry):
                problems.append(
                    Problem(
                        spot,
                        "an enable_plugin entry must be one line, without control "
                        "characters (it becomes one line of local.conf)",
                    )
                )
            elif not 2 <= len(entry.split()) <= 3:
                problems.append(Problem(spot, f"expected 'NAME URL [BRANCH]', got {describe(entry)}"))
            problems += _placeholder_problems(entry, spot, ctx)
        return problems
    if isinstance(value, float):
        return [
            Problem(
                where,
                f"got the number {value!r}: write a number with a fraction or exponent as a string "
                f'(quote it, e.g. "1.10"); as a number it may not be written back as given '
                f"(1.10 reads as 1.1)",
            )
        ]
    text = localconf.as_text(value)
    if localconf.has_control(text):
        return [
            Problem(
                where, "a value must be one line, without control characters (devstack reads local.conf line by line)"
            )
        ]
    return _count_problem(key, value, where) + _placeholder_problems(text, where, ctx)


@plugins.engine
class DevstackEngine(plugins.Plugin):
    """Devstack on every node a provider gives (containers of an LxcProvider, or the hardware nodes themselves)."""

    NAME = "DevstackEngine"
    SCHEMA = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "localrc": LOCALRC_SCHEMA,
            "devstack_repo": {
                "type": "string",
                "pattern": "^[^\\s\x00-\x1f\x7f]+\\Z",
                "x-expected": "a git URL or path, without spaces",
            },
            "devstack_branch": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]*\Z",
                "x-expected": "a git branch or tag name",
            },
            "meta_sections": META_SECTIONS_SCHEMA,
            "git_mirror": GIT_MIRROR_SCHEMA,
            "provider": {},
        },
        "additionalProperties": False,
    }
    SLOTS = {"provider": plugins.Slot("provider", ("LxcProvider", "ExistingServers"), "the machines devstack runs on")}

    @classmethod
    def check(cls, cfg, site, ctx):
        problems = []
        inside_lxc = ctx.inside == "LxcEngine"
        if inside_lxc and "provider" in cfg:
            problems.append(
                Problem(
                    site.at("provider"),
                    "LxcEngine makes the containers this devstack runs in; remove 'provider' "
                    "here (LxcEngine's own 'provider' gives the hardware nodes)",
                )
            )
        if not inside_lxc and "provider" not in cfg:
            problems.append(
                Problem(
                    str(site),
                    "missing required key 'provider': where devstack runs "
                    "(LxcProvider for containers, ExistingServers for hardware nodes)",
                )
            )
        for key, value in cfg.get("localrc", {}).items():
            problems += _localrc_problems(key, value, site.at("localrc", key), ctx)
        problems += _meta_problems(cfg.get("meta_sections", {}), site, ctx)
        return problems

    @classmethod
    def build(cls, cfg, site, children, ctx):
        localrc = cfg.get("localrc", {})
        entries = localrc.get("enable_plugin", ())
        entries = [entries] if isinstance(entries, str) else entries
        mirror = cfg.get("git_mirror")
        devstack = Devstack(
            localrc=tuple((key, localconf.as_text(value)) for key, value in localrc.items() if key != "enable_plugin"),
            plugins=tuple(tuple(entry.split()) for entry in entries),
            # With a mirror and no devstack_repo, devstack comes from the mirror too (None says so).
            repo=cfg.get("devstack_repo", None if mirror is not None else DEFAULT_DEVSTACK_REPO),
            branch=cfg.get("devstack_branch", DEFAULT_DEVSTACK_BRANCH),
            path=site.at("localrc"),
            meta_sections={
                header: {
                    section: {option: localconf.as_text(value) for option, value in options.items()}
                    for section, options in sections.items()
                }
                for header, sections in cfg.get("meta_sections", {}).items()
            },
            git_mirror=mirror,
        )
        return DevstackModel(devstack=devstack, provider=children.get("provider"), path=str(site))


@plugins.engine
class LxcEngine(plugins.Plugin):
    """Devstack in the first container of each host, then `containers_per_host - 1` clones of it there."""

    NAME = "LxcEngine"
    SCHEMA = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            **CONTAINER_GROUP_PROPERTIES,
            "start_script": ONE_LINE_SCHEMA,
            "starts_per_second": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_STARTS_PER_SECOND,
                "x-expected": "how many of these computes start per second, over all their hosts (like 4 or 0.5)",
            },
            "merge_memory": {"type": "boolean"},
            "provider": {},
            "engine": {},
        },
        "required": ["provider", "engine"],
        "additionalProperties": False,
    }
    SLOTS = {
        "provider": plugins.Slot(
            "provider", ("ExistingServers",), "LxcEngine's provider gives the hardware nodes for its containers"
        ),
        "engine": plugins.Slot("engine", ("DevstackEngine",), "what runs in the first container of each host"),
    }

    @classmethod
    def check(cls, cfg, site, ctx):
        return check_containers(cfg, site)

    @classmethod
    def build(cls, cfg, site, children, ctx):
        return LxcEngineModel(
            hosts=children["provider"],
            engine=children["engine"],
            start_script=cfg.get("start_script"),
            starts_per_second=cfg.get("starts_per_second"),
            merge_memory=cfg.get("merge_memory", False),
            **container_group_fields(cfg, site),
        )


@plugins.engine
class MultihostEngine(plugins.Plugin):
    """One controller, then groups of compute nodes whose settings may say `{controller_ip}`."""

    NAME = "MultihostEngine"
    SCHEMA = {
        "type": "object",
        "properties": {"type": {"type": "string"}, "controller": {}, "nodes": {}},
        "required": ["controller", "nodes"],
        "additionalProperties": False,
    }
    SLOTS = {
        "controller": plugins.Slot(
            "engine", ("DevstackEngine",), "the controller is one DevstackEngine", role="controller"
        ),
        "nodes": plugins.Slot(
            "engine", ("DevstackEngine", "LxcEngine"), "the compute nodes", role="compute", many=True
        ),
    }

    @classmethod
    def build(cls, cfg, site, children, ctx):
        return MultihostModel(controller=children["controller"], nodes=children["nodes"], path=str(site))
