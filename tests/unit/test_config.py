"""The config loader: the seed's spellings accepted, its slips explained, every problem reported with its path."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator import plugins, topology
from coordinator.config import ConfigError, Problem, format_path, load, load_config, parse, validate

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "configs" / "seed.json"

# Rally's sample deployment configs, read where they are kept (shared/ beside this checkout), not copied here.
RALLY_SAMPLES = ROOT.parent / "shared" / "compat" / "rally-samples"
RALLY_SAMPLE_NAMES = [
    "devstack-in-existing-servers",
    "devstack-in-lxc",
    "devstack-lxc-engine-in-existing-servers",
    "multihost",
]


def rally_sample(name):
    path = RALLY_SAMPLES / f"{name}.json"
    if not RALLY_SAMPLES.is_dir():
        pytest.skip(f"Rally's samples are not at {RALLY_SAMPLES} (shared/ is not beside this checkout)")
    return load_config(path)


def seed():
    return json.loads(SEED.read_text())


def problems_of(data):
    with pytest.raises(ConfigError) as caught:
        topology.plan(validate(data))
    return caught.value.problems


def messages(problems):
    return {problem.path: problem.message for problem in problems}


def edit(data, path, value):
    """A copy of `data` with the value at `path` (a tuple of keys and indexes) replaced; DELETE removes it."""
    data = copy.deepcopy(data)
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()


def renamed(data, path, new_key):
    data = copy.deepcopy(data)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[new_key] = target.pop(path[-1])
    return data


# ---------------------------------------------------------------- what is accepted


def test_seed_complete_config_is_accepted_as_written():
    config = load_config(SEED)
    assert config.type == "MultihostEngine"
    assert [spec.role for spec in config.groups()] == ["controller", "compute"]


def test_configs_seed_is_the_seed_unchanged():
    shared = ROOT.parent / "shared" / "seed" / "seed-complete-config.json"
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert SEED.read_bytes() == shared.read_bytes()


@pytest.mark.parametrize("name", RALLY_SAMPLE_NAMES, ids=RALLY_SAMPLE_NAMES)
def test_rally_samples_are_accepted(name):
    result = topology.plan(rally_sample(name))
    assert result.nodes


def test_rally_lxc_engine_sample_is_the_seed():
    assert (
        topology.plan(rally_sample("devstack-lxc-engine-in-existing-servers")).to_json()
        == topology.plan(load_config(SEED)).to_json()
    )


def test_rally_existing_servers_sample_runs_devstack_on_the_node_itself():
    result = topology.plan(rally_sample("devstack-in-existing-servers"))
    assert [(n.name, n.kind, n.address, n.devstack_repo) for n in result.nodes] == [
        ("10.2.0.8", "host", "10.2.0.8", "https://git.openstack.org/openstack-dev/devstack")
    ]


def test_rally_lxc_sample_keeps_release_prefix_and_network():
    result = topology.plan(rally_sample("devstack-in-lxc"))
    assert [node.name for node in result.nodes] == [f"rally-providertest-02-10-100-1-0-00{i}" for i in range(4)]
    assert {node.release for node in result.nodes} == {"raring"}
    assert {node.distribution for node in result.nodes} == {"ubuntu"}
    assert result.nodes[0].localrc["VIRT_DRIVER"] == "fake"
    assert [(t.host, t.remote, t.subnet) for t in result.tunnels] == [("10.2.250.103", "10.5.0.1", "10.100.1.0/28")]


def test_rally_multihost_sample_runs_devstack_on_the_hardware_nodes():
    result = topology.plan(rally_sample("multihost"))
    assert [(n.name, n.role, n.kind, n.address) for n in result.nodes] == [
        ("host-1.net", "controller", "host", "host-1.net"),
        ("host-2.net", "compute", "host", "host-2.net"),
    ]
    assert result.controller_address == "host-1.net"


def _seed_variant(path, new_key):
    return renamed(seed(), path, new_key)


def _with_lxc_provider_group(counts):
    """The seed with one more node group: a DevstackEngine on an LxcProvider with the given count spelling."""
    data = seed()
    data["nodes"].append(
        {
            "type": "DevstackEngine",
            "localrc": {"X": "1"},
            "provider": {
                "type": "LxcProvider",
                "container_name_prefix": "extra",
                **counts,
                "host_provider": {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
            },
        }
    )
    return data


SPELLINGS = [
    # (id, config, check on the plan)
    ("localrc", seed(), lambda p: p.nodes[0].localrc["VIRT_DRIVER"] == "fake"),
    (
        "local_conf",
        _seed_variant(("controller", "localrc"), "local_conf"),
        lambda p: p.nodes[0].localrc["VIRT_DRIVER"] == "fake",
    ),
    ("nodes_per_server", seed(), lambda p: len(p.nodes) == 65),
    (
        "containers_per_host-on-LxcEngine",
        _seed_variant(("nodes", 0, "nodes_per_server"), "containers_per_host"),
        lambda p: len(p.nodes) == 65,
    ),
    (
        "nodes_per_server-on-LxcProvider",
        _with_lxc_provider_group({"nodes_per_server": 3}),
        lambda p: [n.name for n in p.nodes if n.group == 2] == [f"extra-10-100-1-00{i}" for i in range(3)],
    ),
    (
        "containers_per_host-on-LxcProvider",
        _with_lxc_provider_group({"containers_per_host": 2}),
        lambda p: [n.kind for n in p.nodes if n.group == 2] == ["standalone", "standalone"],
    ),
    ("engine-name", seed(), lambda p: p.nodes[1].localrc["DATABASE_TYPE"] == "mysql"),
    (
        "engine-type",
        _seed_variant(("nodes", 0, "engine", "name"), "type"),
        lambda p: p.nodes[1].localrc["DATABASE_TYPE"] == "mysql",
    ),
    ("host_provider-type", seed(), lambda p: p.hosts[0].address == "localhost"),
    (
        "host_provider-name",
        _seed_variant(("controller", "provider", "host_provider", "type"), "name"),
        lambda p: p.hosts[0].address == "localhost",
    ),
    ("container_name", seed(), lambda p: p.nodes[1].name.startswith("devstack-compute-")),
    (
        "container_name_prefix-on-LxcEngine",
        _seed_variant(("nodes", 0, "container_name"), "container_name_prefix"),
        lambda p: p.nodes[1].name.startswith("devstack-compute-"),
    ),
    (
        "container_name-on-LxcProvider",
        edit(
            _seed_variant(("controller", "provider", "container_name_prefix"), "container_name"),
            ("controller", "provider", "container_name"),
            "ctl-x",
        ),
        lambda p: p.nodes[0].name == "ctl-x-10-100-1-000",
    ),
    (
        "container_name_prefix-on-LxcProvider",
        edit(seed(), ("controller", "provider", "container_name_prefix"), "c1"),
        lambda p: p.nodes[0].name == "c1-10-100-1-000",
    ),
    ("DummyProvider", edit(seed(), ("nodes", 0, "provider", "type"), "DummyProvider"), lambda p: len(p.nodes) == 65),
    (
        "start_lxc_network",
        edit(seed(), ("nodes", 0, "start_lxc_network"), "10.200.0.0/24"),
        lambda p: p.nodes[1].subnet == "10.200.0.0/24" and p.nodes[0].subnet == "10.100.1.0/24",
    ),
    (
        "tunnel_to",
        edit(seed(), ("nodes", 0, "tunnel_to"), ["10.1.1.20", "192.168.1.13"]),
        lambda p: [t.remote for t in p.tunnels] == ["10.1.1.20", "192.168.1.13"],
    ),
    (
        "tunnel_type",
        edit(edit(seed(), ("nodes", 0, "tunnel_to"), ["10.1.1.20"]), ("nodes", 0, "tunnel_type"), "vxlan"),
        lambda p: [t.kind for t in p.tunnels] == ["vxlan"],
    ),
    (
        "distribution",
        edit(seed(), ("nodes", 0, "distribution"), "debian"),
        lambda p: p.nodes[1].distribution == "debian" and p.nodes[0].distribution == "ubuntu",
    ),
    (
        "distribution-on-LxcProvider",
        edit(seed(), ("controller", "provider", "distribution"), "debian"),
        lambda p: p.nodes[0].distribution == "debian" and p.nodes[1].distribution == "ubuntu",
    ),
    ("release", edit(seed(), ("nodes", 0, "release"), "jammy"), lambda p: p.nodes[1].release == "jammy"),
    (
        "devstack_repo",
        edit(seed(), ("nodes", 0, "engine", "devstack_repo"), "/srv/git/devstack"),
        lambda p: p.nodes[1].devstack_repo == "/srv/git/devstack",
    ),
    (
        "devstack_branch",
        edit(seed(), ("controller", "devstack_branch"), "stable/2024.1"),
        lambda p: p.nodes[0].devstack_branch == "stable/2024.1",
    ),
    (
        "start_script",
        edit(seed(), ("nodes", 0, "start_script"), "~/start.sh"),
        lambda p: p.nodes[1].start_script == "~/start.sh" and p.nodes[0].start_script is None,
    ),
    # Accepted so Rally's configs load, and ignored (containers are reached through the agent): the same plan.
    (
        "forward_ssh",
        edit(seed(), ("controller", "provider", "forward_ssh"), True),
        lambda p: p.to_json() == topology.plan(validate(seed())).to_json(),
    ),
    (
        "credential-agent-keys",
        edit(
            seed(),
            ("nodes", 0, "provider", "credentials", 0),
            {
                "user": "root",
                "host": "localhost",
                "port": 7000,
                "ca": "ca.pem",
                "cert": "c.pem",
                "key": "k.pem",
                "token_file": "/etc/token",
            },
        ),
        lambda p: (p.hosts[0].port, p.hosts[0].ca, p.hosts[0].token_file) == (7000, "ca.pem", "/etc/token"),
    ),
    ("integral-float-count", edit(seed(), ("nodes", 0, "nodes_per_server"), 4.0), lambda p: len(p.nodes) == 5),
    (
        "localrc-json-scalars",
        edit(seed(), ("controller", "localrc", "API_RATE_LIMIT"), False),
        lambda p: p.nodes[0].localrc["API_RATE_LIMIT"] == "False",
    ),
    (
        "enable_plugin-string",
        edit(seed(), ("controller", "localrc", "enable_plugin"), "heat https://opendev.org/openstack/heat"),
        lambda p: p.nodes[0].plugins == (("heat", "https://opendev.org/openstack/heat"),),
    ),
    (
        "enable_plugin-list",
        edit(
            seed(),
            ("nodes", 0, "engine", "localrc", "enable_plugin"),
            ["heat https://h/heat master", "x http://{controller_ip}/x"],
        ),
        lambda p: p.nodes[1].plugins == (("heat", "https://h/heat", "master"), ("x", "http://10.100.1.2/x")),
    ),
]


@pytest.mark.parametrize("data,check", [(d, c) for _, d, c in SPELLINGS], ids=[name for name, _, _ in SPELLINGS])
def test_accepted_spelling(data, check):
    assert check(topology.plan(validate(data)))


def _snippet(text):
    """A seed snippet with its slips fixed (braces around it, trailing commas removed)."""
    return json.loads("{" + text.replace(",\n    }", "\n    }") + "}")


CONTROLLER_SNIPPET = """
"type": "DevstackEngine",
"localrc": {
    "MULTI_HOST": "1",
    "VIRT_DRIVER": "fake",
    "ENABLED_SERVICES+": ",-n-cpu"
},
"provider": {
    "type": "LxcProvider",
    "containers_per_host": 1,
    "container_name_prefix": "controller",
    "distribution": "ubuntu",
    "host_provider": {
        "name": "ExistingServers",
        "credentials": [{"user": "root", "host": "localhost"}]
    }
}"""

COMPUTES_SNIPPET = """
"type": "LxcEngine",
"distribution": "ubuntu",
"container_name": "devstack-compute",
"nodes_per_server": 64,
"provider": {
    "type": "ExistingServers",
    "credentials": [{"user": "root", "host": "localhost"}]
},
"engine": {
    "name": "DevstackEngine",
    "localrc": {
        "VIRT_DRIVER": "fake",
        "DATABASE_TYPE": "mysql",
        "MYSQL_HOST": "{controller_ip}",
        "RABBIT_HOST": "{controller_ip}",
        "GLANCE_HOSTPORT": "{controller_ip}:9292",
        "ENABLED_SERVICES": "n-cpu,n-net"
    }
}"""

TUNNEL_SNIPPET = """
"type": "LxcEngine",
"distribution": "ubuntu",
"container_name": "devstack-compute",
"nodes_per_server": 64,
"start_lxc_network": "10.100.1.0/24",
"tunnel_to": ["10.1.1.20", "192.168.1.13"],
"provider": {
    "type": "ExistingServers",
    "credentials": [{"user": "root", "host": "192.168.10.1"}, {"user": "root", "host": "192.168.10.2"}]
},
"engine": {
    "name": "DevstackEngine",
    "localrc": {
        "VIRT_DRIVER": "fake",
        "DATABASE_TYPE": "mysql",
        "MYSQL_HOST": "{controller_ip}",
        "RABBIT_HOST": "{controller_ip}",
        "GLANCE_HOSTPORT": "{controller_ip}:9292",
        "ENABLED_SERVICES": "n-cpu,n-net"
    }
}"""


def test_seed_controller_snippet_alone_is_one_devstack_container():
    result = topology.plan(validate(_snippet(CONTROLLER_SNIPPET)))
    assert [(n.name, n.role, n.kind) for n in result.nodes] == [("controller-10-100-1-000", "controller", "standalone")]
    assert result.nodes[0].localrc["ENABLED_SERVICES+"] == ",-n-cpu"


@pytest.mark.parametrize("nodes", [COMPUTES_SNIPPET, TUNNEL_SNIPPET], ids=["computes", "tunnels"])
def test_seed_snippets_assembled_into_a_multihost_engine(nodes):
    data = {"type": "MultihostEngine", "controller": _snippet(CONTROLLER_SNIPPET), "nodes": [_snippet(nodes)]}
    result = topology.plan(validate(data))
    computes = [node for node in result.nodes if node.role == "compute"]
    assert {node.localrc["MYSQL_HOST"] for node in computes} == {result.controller_address}


def test_yaml_config_plans_like_its_json():
    text = yaml.safe_dump(seed(), sort_keys=False)
    from_yaml = topology.plan(validate(parse(text, "seed.yaml")))
    assert from_yaml.to_json() == topology.plan(validate(seed())).to_json()


def test_load_reads_json_and_yaml_files(tmp_path):
    (tmp_path / "a.json").write_text(SEED.read_text())
    (tmp_path / "a.yml").write_text(yaml.safe_dump(seed()))
    assert load(tmp_path / "a.json") == load(tmp_path / "a.yml") == seed()


# ---------------------------------------------------------------- syntax slips

SLIPS = [
    (
        "trailing-comma-object",
        '{\n  "localrc": {\n    "ENABLED_SERVICES": "n-cpu,n-net",\n  }\n}',
        "line 3, column 38",
        "trailing comma",
    ),
    ("trailing-comma-list", '{\n  "tunnel_to": ["10.1.1.20",]\n}', "line 2, column 28", "trailing comma"),
    (
        "slash-comment",
        '{\n  "provider": {\n    //SOME PROVIDER WHICH RETURNS N NODES\n  }\n}',
        "line 3, column 5",
        "comments are not allowed in JSON",
    ),
    ("block-comment", '{\n  /* x */ "type": "LxcEngine"\n}', "line 2, column 3", "comments are not allowed"),
    (
        "stray-colon-after-list",
        '{\n  "tunnel_to": ["10.1.1.20", "192.168.1.13"]:\n  "provider": {}\n}',
        "line 2, column 45",
        "stray ':' after the list",
    ),
    (
        "snippet-without-braces",
        '"type": "DevstackEngine",\n"localrc": {}',
        "line 1, column 7",
        "wrap the whole config in '{' and '}'",
    ),
    ("missing-comma", '{\n  "type": "LxcEngine"\n  "provider": {}\n}', "line 3, column 3", "a ',' is missing"),
    ("single-quotes", "{'type': 'LxcEngine'}", "line 1, column 2", "double quotes"),
    ("python-true", '{"forward_ssh": True}', "line 1, column 17", "true, false and null"),
    ("unquoted-key", '{type: "x"}', "line 1, column 2", "keys need double quotes"),
    ("unfinished", '{\n  "type": "LxcEngine",\n  "provider": {\n', "line 4, column 1", "'}' or ']' is missing"),
    ("empty", "", "line 1, column 1", "the file is empty"),
    ("blank", "  \n", "line 2, column 1", "the file is empty"),
]


@pytest.mark.parametrize("text,where,words", [(t, w, x) for _, t, w, x in SLIPS], ids=[s[0] for s in SLIPS])
def test_json_slip_is_named_with_line_column_and_words(text, where, words):
    with pytest.raises(ConfigError) as caught:
        parse(text, "c.json")
    message = str(caught.value)
    assert message.startswith(f"c.json: {where}: ")
    assert words in message


def test_the_seeds_own_tunnel_snippet_fails_on_its_first_slip():
    text = TUNNEL_SNIPPET.replace('"192.168.1.13"],', '"192.168.1.13"]:')
    with pytest.raises(ConfigError) as caught:
        parse("{" + text + "}", "c.json")
    assert "line 7, column 43: stray ':'" in str(caught.value)


@pytest.mark.parametrize(
    "text,words",
    [
        ("type: LxcEngine\n  provider: x\n bad: [", "line 2, column 11"),
        ("type: LxcEngine\nprovider:\n\t- x\n", "tabs"),
    ],
    ids=["bad-indent", "tab"],
)
def test_yaml_syntax_error_names_line_and_column(text, words):
    with pytest.raises(ConfigError) as caught:
        parse(text, "c.yaml")
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "text,fmt", [('{"type": "A", "type": "B"}', "c.json"), ("type: A\ntype: B\n", "c.yaml")], ids=["json", "yaml"]
)
def test_key_given_twice_is_a_problem(text, fmt):
    with pytest.raises(ConfigError) as caught:
        parse(text, fmt)
    assert caught.value.problems == (
        Problem("type", "given twice in one object; only the last would count, so remove one"),
    )


@pytest.mark.parametrize(
    "content,words", [(None, "cannot read the config"), (b"\xff\xfe{", "not UTF-8")], ids=["missing", "not-utf8"]
)
def test_unreadable_file_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert words in str(caught.value)


# ---------------------------------------------------------------- schema errors

SCHEMA_ERRORS = [
    (
        "wrong-value-type",
        ("nodes", 0, "engine", "localrc", "VIRT_DRIVER"),
        ["fake"],
        "nodes[0].engine.localrc.VIRT_DRIVER",
        "expected a string, a number or true/false, got a list",
    ),
    (
        "count-as-string",
        ("nodes", 0, "nodes_per_server"),
        "64",
        "nodes[0].nodes_per_server",
        'expected an integer, got the string "64"',
    ),
    (
        "count-zero",
        ("controller", "provider", "containers_per_host"),
        0,
        "controller.provider.containers_per_host",
        "expected at least 1, got 0",
    ),
    (
        "unknown-engine-type",
        ("nodes", 0, "type"),
        "LxcEngin",
        "nodes[0].type",
        "unknown engine type 'LxcEngin'; known engine types: DevstackEngine, LxcEngine, "
        "MultihostEngine; did you mean 'LxcEngine'?",
    ),
    (
        "unknown-provider-type",
        ("controller", "provider", "host_provider", "type"),
        "OpenStackProvider",
        "controller.provider.host_provider.type",
        "unknown provider type 'OpenStackProvider'; known provider types: ExistingServers (also DummyProvider), "
        "LxcProvider",
    ),
    (
        "type-in-wrong-place",
        ("nodes", 0, "provider", "type"),
        "LxcProvider",
        "nodes[0].provider.type",
        "LxcProvider cannot be used here",
    ),
    (
        "controller-must-be-devstack",
        ("controller", "type"),
        "LxcEngine",
        "controller.type",
        "LxcEngine cannot be used here (the controller is one DevstackEngine); use 'DevstackEngine'",
    ),
    ("type-not-a-string", ("nodes", 0, "type"), 5, "nodes[0].type", "expected a type name, got the integer 5"),
    ("missing-type", ("nodes", 0, "type"), DELETE, "nodes[0]", "missing 'type'"),
    ("missing-required", ("nodes", 0, "engine"), DELETE, "nodes[0]", "missing required key 'engine'"),
    ("missing-provider", ("controller", "provider"), DELETE, "controller", "missing required key 'provider'"),
    (
        "bad-tunnel-type",
        ("nodes", 0, "tunnel_type"),
        "gre",
        "nodes[0].tunnel_type",
        "expected 'ipip' or 'vxlan', got the string \"gre\"",
    ),
    (
        "bad-prefix",
        ("nodes", 0, "container_name"),
        "-compute",
        "nodes[0].container_name",
        "expected a container name prefix",
    ),
    (
        "bad-distribution",
        ("nodes", 0, "distribution"),
        "Ubuntu 22.04",
        "nodes[0].distribution",
        "expected 'ubuntu' or 'debian'",
    ),
    (
        "bad-localrc-key",
        ("controller", "localrc", "BAD KEY"),
        "1",
        'controller.localrc["BAD KEY"]',
        "expected a shell variable name",
    ),
    ("nodes-not-a-list", ("nodes",), {"type": "LxcEngine"}, "nodes", "expected a list of engines, got an object"),
    (
        "engine-not-an-object",
        ("nodes", 0, "engine"),
        "DevstackEngine",
        "nodes[0].engine",
        "expected an object describing an engine",
    ),
    (
        "no-credentials",
        ("nodes", 0, "provider", "credentials"),
        [],
        "nodes[0].provider.credentials",
        "expected at least 1 item",
    ),
    (
        "credential-without-host",
        ("nodes", 0, "provider", "credentials", 0),
        {"user": "root"},
        "nodes[0].provider.credentials[0]",
        "missing required key 'host'",
    ),
    (
        "bad-port",
        ("nodes", 0, "provider", "credentials", 0, "port"),
        70000,
        "nodes[0].provider.credentials[0].port",
        "expected at most 65535, got 70000",
    ),
    (
        "enable_plugin-wrong-type",
        ("controller", "localrc", "enable_plugin"),
        3,
        "controller.localrc.enable_plugin",
        "expected 'NAME URL [BRANCH]' or a list of them",
    ),
]


@pytest.mark.parametrize(
    "path,value,where,message", [case[1:] for case in SCHEMA_ERRORS], ids=[case[0] for case in SCHEMA_ERRORS]
)
def test_schema_error_names_path_and_expectation(path, value, where, message):
    found = messages(problems_of(edit(seed(), path, value)))
    assert where in found, found
    assert message in found[where]


UNKNOWN_KEYS = [
    ("containers_per_hosts", ("controller", "provider"), "containers_per_host"),
    ("nodes_per_servers", ("nodes", 0), "nodes_per_server"),
    ("local_cnf", ("controller",), "local_conf"),
    ("tunnel_too", ("nodes", 0), "tunnel_to"),
    ("Start_LXC_Network", ("nodes", 0), "start_lxc_network"),
    ("hots", ("nodes", 0, "provider", "credentials", 0), "host"),
]


@pytest.mark.parametrize("key,where,suggestion", UNKNOWN_KEYS, ids=[case[0] for case in UNKNOWN_KEYS])
def test_unknown_key_suggests_the_nearest_known_one(key, where, suggestion):
    found = messages(problems_of(edit(seed(), where + (key,), 1)))
    path = ".".join(str(p) for p in where).replace(".0", "[0]") + "." + key
    assert f"did you mean '{suggestion}'?" in found[path], found


def test_unknown_key_without_a_near_one_lists_the_known_keys():
    found = messages(problems_of(edit(seed(), ("nodes", 0, "provider", "zzz"), 1)))
    assert found["nodes[0].provider.zzz"] == "unknown key for ExistingServers; known keys: credentials, name, type"


def test_two_spellings_of_one_key_is_a_problem():
    data = edit(seed(), ("nodes", 0, "containers_per_host"), 3)
    found = messages(problems_of(data))
    assert found == {
        "nodes[0].containers_per_host": (
            "'nodes_per_server' and 'containers_per_host' are two spellings of one setting; give only one"
        )
    }


def test_all_problems_are_reported_at_once():
    data = seed()
    data["controller"]["localrc"]["VIRT_DRIVER"] = ["fake"]
    data["controller"]["provider"]["containers_per_hosts"] = 1
    data["controller"]["provider"]["tunnel_to"] = ["10.1.1.256"]
    data["nodes"][0]["nodes_per_server"] = "64"
    data["nodes"][0]["engine"]["localrc"]["MYSQL_HOST"] = "{contoller_ip}"
    data["nodes"][0]["provider"]["type"] = "Nope"
    found = messages(problems_of(data))
    assert set(found) == {
        "controller.localrc.VIRT_DRIVER",
        "controller.provider.containers_per_hosts",
        "controller.provider.tunnel_to[0]",
        "nodes[0].nodes_per_server",
        "nodes[0].engine.localrc.MYSQL_HOST",
        "nodes[0].provider.type",
    }


def test_config_must_be_an_object():
    with pytest.raises(ConfigError) as caught:
        validate(["not", "an", "object"])
    assert "the config must be an object with a 'type'" in str(caught.value)


# ---------------------------------------------------------------- checks beyond the schema

SEMANTIC_ERRORS = [
    (
        "subnet-too-small",
        ("nodes", 0, "start_lxc_network"),
        "10.100.1.0/26",
        "nodes[0].start_lxc_network",
        "10.100.1.0/26 is too small for 64 containers per host: it holds 61 (network, gateway and broadcast "
        "addresses are reserved); a /25 would hold them",
    ),
    (
        "subnet-exactly-full",
        ("controller", "provider", "start_lxc_network"),
        "10.100.9.0/31",
        "controller.provider.start_lxc_network",
        "leaves no address for containers",
    ),
    (
        "host-bits-set",
        ("nodes", 0, "start_lxc_network"),
        "10.100.1.5/24",
        "nodes[0].start_lxc_network",
        "'10.100.1.5/24' has host bits set; did you mean '10.100.1.0/24'?",
    ),
    (
        "not-a-network",
        ("nodes", 0, "start_lxc_network"),
        "10.100.1/24",
        "nodes[0].start_lxc_network",
        "expected an IPv4 network such as 10.100.1.0/24",
    ),
    (
        "ipv6-network",
        ("nodes", 0, "start_lxc_network"),
        "fd00::/64",
        "nodes[0].start_lxc_network",
        "expected an IPv4 network, got the IPv6 network",
    ),
    (
        "no-prefix-length",
        ("nodes", 0, "start_lxc_network"),
        "10.100.1.0",
        "nodes[0].start_lxc_network",
        "give the prefix length too",
    ),
    (
        "tunnel-bad-octet",
        ("nodes", 0, "tunnel_to"),
        ["10.1.1.20", "192.168.1.300"],
        "nodes[0].tunnel_to[1]",
        "'192.168.1.300' is not an address",
    ),
    (
        "tunnel-with-prefix",
        ("nodes", 0, "tunnel_to"),
        ["10.1.1.0/24"],
        "nodes[0].tunnel_to[0]",
        "give an address without a prefix length",
    ),
    (
        "tunnel-hostname",
        ("nodes", 0, "tunnel_to"),
        ["controller.example"],
        "nodes[0].tunnel_to[0]",
        "expected an IPv4 address",
    ),
    ("tunnel-ipv6", ("nodes", 0, "tunnel_to"), ["fd00::1"], "nodes[0].tunnel_to[0]", "tunnels need an IPv4"),
    (
        "tunnel-into-own-subnet",
        ("controller", "provider"),
        {
            "type": "LxcProvider",
            "start_lxc_network": "10.50.0.0/24",
            "tunnel_to": ["10.50.0.9"],
            "host_provider": {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
        },
        "controller.provider.tunnel_to[0]",
        "inside this group's own container network",
    ),
    (
        "unknown-placeholder",
        ("nodes", 0, "engine", "localrc", "MYSQL_HOST"),
        "{contoller_ip}",
        "nodes[0].engine.localrc.MYSQL_HOST",
        "unknown placeholder '{contoller_ip}'; did you mean '{controller_ip}'?",
    ),
    (
        "unknown-placeholder-far",
        ("nodes", 0, "engine", "localrc", "X"),
        "{zzz}",
        "nodes[0].engine.localrc.X",
        "unknown placeholder '{zzz}'; known: {controller_ip}",
    ),
    (
        "placeholder-in-plugin",
        ("nodes", 0, "engine", "localrc", "enable_plugin"),
        ["a http://{controler_ip}/a"],
        "nodes[0].engine.localrc.enable_plugin[0]",
        "did you mean '{controller_ip}'?",
    ),
    (
        "controller-ip-in-controller",
        ("controller", "localrc", "SERVICE_HOST"),
        "{controller_ip}",
        "controller.localrc.SERVICE_HOST",
        "'{controller_ip}' cannot be used in the controller's own settings",
    ),
    ("multi-line-value", ("controller", "localrc", "X"), "a\nb", "controller.localrc.X", "a value must be one line"),
    (
        "plugin-words",
        ("controller", "localrc", "enable_plugin"),
        "heat",
        "controller.localrc.enable_plugin",
        "expected 'NAME URL [BRANCH]'",
    ),
    (
        "bad-host-name",
        ("nodes", 0, "provider", "credentials", 0, "host"),
        "local host",
        "nodes[0].provider.credentials[0].host",
        "'local host' is not a host name or IP address",
    ),
    (
        "host-listed-twice",
        ("nodes", 0, "provider", "credentials"),
        [{"host": "a"}, {"host": "a"}],
        "nodes[0].provider.credentials[1].host",
        "'a' is listed twice",
    ),
    (
        "provider-inside-lxc-engine",
        ("nodes", 0, "engine", "provider"),
        {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
        "nodes[0].engine.provider",
        "LxcEngine makes the containers this devstack runs in",
    ),
]


@pytest.mark.parametrize(
    "path,value,where,message", [case[1:] for case in SEMANTIC_ERRORS], ids=[case[0] for case in SEMANTIC_ERRORS]
)
def test_check_beyond_the_schema(path, value, where, message):
    found = messages(problems_of(edit(seed(), path, value)))
    assert where in found, found
    assert message in found[where]


def test_controller_ip_in_a_standalone_devstack_is_refused():
    found = messages(problems_of(edit(_snippet(CONTROLLER_SNIPPET), ("localrc", "X"), "{controller_ip}")))
    assert "only known for the nodes of a MultihostEngine" in found["localrc.X"]


@pytest.mark.parametrize(
    "value",
    ["$DEST/logs/screen", "${VAR}", "${controller_ip}", "{}", "x{1}", "$(date)"],
    ids=[
        "dollar-name",
        "dollar-braces",
        "shell-var-named-like-placeholder",
        "empty-braces",
        "not-a-name",
        "command-text",
    ],
)
def test_anything_but_a_known_placeholder_is_left_as_written(value):
    data = edit(seed(), ("nodes", 0, "engine", "localrc", "X"), value)
    result = topology.plan(validate(data))
    assert {node.localrc["X"] for node in result.nodes if node.role == "compute"} == {value}


# ---------------------------------------------------------------- the registry


def test_registry_refuses_a_second_class_for_one_name():
    registry = plugins.Registry("engine")

    class First(plugins.Plugin):
        NAME = "Twice"

    class Second(plugins.Plugin):
        NAME = "Twice"

    registry.register(First)
    with pytest.raises(plugins.PluginError) as caught:
        registry.register(Second)
    assert "First" in str(caught.value) and "Second" in str(caught.value)


def test_registry_knows_the_seeds_types_and_rallys_alias():
    plugins.load()
    assert plugins.ENGINES.names() == ["DevstackEngine", "LxcEngine", "MultihostEngine"]
    assert plugins.PROVIDERS.names() == ["ExistingServers", "LxcProvider"]
    assert plugins.PROVIDERS.get("DummyProvider") is plugins.PROVIDERS.get("ExistingServers")


# ---------------------------------------------------------------- localrc: nothing in a key or value can run

BASH_OWN = [
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PS4+",
    "PROMPT_COMMAND",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH",
    "BASH_XTRACEFD",
    "BASH_ALIASES",
    "BASH_CMDS",
    "CDPATH",
    "GLOBIGNORE",
    "UID",
    "EUID",
    "PPID",
    "BASHPID",
    "GROUPS",
    "FUNCNAME",
    "RANDOM",
    "SECONDS",
    "LINENO",
]


@pytest.mark.parametrize("key", BASH_OWN, ids=BASH_OWN)
def test_localrc_refuses_bash_own_variables(key):
    found = messages(problems_of(edit(seed(), ("controller", "localrc", key), "$(touch /tmp/pwned)")))
    where = f"controller.localrc.{key}"
    assert where in found, found
    assert f"'{key.rstrip('+')}' cannot be set in localrc: " in found[where]


def test_ps4_refusal_says_why():
    found = messages(problems_of(edit(seed(), ("controller", "localrc", "PS4"), "x")))
    assert "xtrace" in found["controller.localrc.PS4"] and "would run" in found["controller.localrc.PS4"]


@pytest.mark.parametrize("key", ["ps4", "BASHFUL", "MY_IFS", "ENVIRONMENT", "USER_ID"], ids=str)
def test_names_that_only_look_like_bash_own_are_fine(key):
    result = topology.plan(validate(edit(seed(), ("controller", "localrc", key), "x")))
    assert result.nodes[0].localrc[key] == "x"


@pytest.mark.parametrize("key", ["reboot\n", "A\n", "PS4\n"], ids=["command", "name", "special"])
def test_localrc_key_ending_in_a_newline_is_refused(key):
    # `$` in a pattern matches before a final newline: "reboot\n" would have become a bare `reboot` line.
    found = messages(problems_of(edit(seed(), ("controller", "localrc", key), "x")))
    assert "expected a shell variable name" in found[format_path(("controller", "localrc", key))]


@pytest.mark.parametrize(
    "field,value",
    [
        ("devstack_branch", "master\n"),
        ("devstack_repo", "/srv/devstack\n"),
        ("devstack_repo", "/srv/\x00devstack"),
    ],
    ids=["branch-newline", "repo-newline", "repo-nul"],
)
def test_devstack_source_must_be_one_line(field, value):
    found = messages(problems_of(edit(seed(), ("controller", field), value)))
    assert f"controller.{field}" in found, found


@pytest.mark.parametrize(
    "key,value",
    [("X", "a\ud800b"), ("X", "\udfff"), ("enable_plugin", "heat https://h/\ud800")],
    ids=["value", "alone", "plugin"],
)
def test_value_that_is_not_utf8_text_is_refused_with_its_path(key, value):
    found = messages(problems_of(edit(seed(), ("controller", "localrc", key), value)))
    assert "lone surrogate" in found[f"controller.localrc.{key}"], found


def test_key_that_is_not_utf8_text_is_refused_and_printable():
    with pytest.raises(ConfigError) as caught:
        validate(edit(seed(), ("controller", "localrc", "A\ud800"), "x"))
    (problem,) = caught.value.problems
    assert problem.path == "controller.localrc.A\\ud800" and "lone surrogate" in problem.message
    str(caught.value).encode("utf-8")


def test_surrogate_from_a_json_escape_is_refused():
    with pytest.raises(ConfigError) as caught:
        parse(json.dumps(edit(seed(), ("controller", "localrc", "X"), "a\ud800b")), "c.json")
    assert [p.path for p in caught.value.problems] == ["controller.localrc.X"]


@pytest.mark.parametrize(
    "entry",
    ["heat https://h/a\x00b", "heat\x1b[2J https://h/x", "heat https://h/x\x7f", "heat https://h/x\u2028master"],
    ids=["nul", "escape", "delete", "line-separator"],
)
def test_enable_plugin_entry_with_control_characters_is_refused(entry):
    data = edit(seed(), ("nodes", 0, "engine", "localrc", "enable_plugin"), ["ok https://h/ok", entry])
    found = messages(problems_of(data))
    assert found == {
        "nodes[0].engine.localrc.enable_plugin[1]": (
            "an enable_plugin entry must be one line, without control characters (it becomes one line of local.conf)"
        )
    }


# ---------------------------------------------------------------- every problem at once


def test_a_bad_list_item_does_not_hide_the_others():
    data = edit(seed(), ("nodes", 0, "tunnel_to"), ["10.1.1.256", 5, "192.168.1.300"])
    data["nodes"][0]["provider"]["credentials"] = [
        {"host": "bad host"},
        {"host": "h", "port": 0},
        {"user": "x"},
        {"host": "also bad"},
    ]
    found = messages(problems_of(data))
    assert set(found) == {
        "nodes[0].tunnel_to[0]",
        "nodes[0].tunnel_to[1]",
        "nodes[0].tunnel_to[2]",
        "nodes[0].provider.credentials[0].host",
        "nodes[0].provider.credentials[1].port",
        "nodes[0].provider.credentials[2]",
        "nodes[0].provider.credentials[3].host",
    }
    assert "'10.1.1.256' is not an address" in found["nodes[0].tunnel_to[0]"]
    assert "'192.168.1.300' is not an address" in found["nodes[0].tunnel_to[2]"]


def test_a_bad_value_inside_an_item_keeps_the_items_other_checks():
    data = edit(seed(), ("nodes", 0, "provider", "credentials"), [{"host": "h1", "port": "7000"}, {"host": "h1"}])
    found = messages(problems_of(data))
    assert set(found) == {"nodes[0].provider.credentials[0].port", "nodes[0].provider.credentials[1].host"}
    assert "listed twice" in found["nodes[0].provider.credentials[1].host"]


def test_problems_come_in_the_order_of_the_config():
    data = seed()
    data["nodes"][0]["tunnel_to"] = ["1.2.3", 5]
    problems = problems_of(data)
    assert [p.path for p in problems] == ["nodes[0].tunnel_to[0]", "nodes[0].tunnel_to[1]"]


def test_one_mistake_is_reported_once():
    data = edit(seed(), ("nodes", 0, "engine", "provider"), {})
    assert messages(problems_of(data)).keys() == {"nodes[0].engine.provider"}
    data = edit(seed(), ("nodes", 0, "provider", "credentials", 0), {"hots": "localhost"})
    assert messages(problems_of(data)) == {"nodes[0].provider.credentials[0].hots": "unknown key; did you mean 'host'?"}


def test_top_level_problem_is_printed_with_its_place():
    with pytest.raises(ConfigError) as caught:
        validate({"type": "LxcEngine"})
    assert str(caught.value).splitlines()[1:] == [
        "  - (top level): missing required key 'provider'",
        "  - (top level): missing required key 'engine'",
    ]


# ---------------------------------------------------------------- addresses

ADDRESS_ERRORS = [
    (
        "network-loopback",
        ("nodes", 0, "start_lxc_network"),
        "127.0.0.0/24",
        "nodes[0].start_lxc_network",
        "127.0.0.0/24 overlaps the loopback range 127.0.0.0/8",
    ),
    (
        "network-multicast",
        ("nodes", 0, "start_lxc_network"),
        "224.1.0.0/24",
        "nodes[0].start_lxc_network",
        "overlaps the multicast range 224.0.0.0/4",
    ),
    (
        "network-this-network",
        ("nodes", 0, "start_lxc_network"),
        "0.0.0.0/24",
        "nodes[0].start_lxc_network",
        "overlaps the 'this network' range 0.0.0.0/8",
    ),
    (
        "network-link-local",
        ("nodes", 0, "start_lxc_network"),
        "169.254.10.0/24",
        "nodes[0].start_lxc_network",
        "overlaps the link-local range 169.254.0.0/16",
    ),
    (
        "network-reserved",
        ("nodes", 0, "start_lxc_network"),
        "240.0.0.0/24",
        "nodes[0].start_lxc_network",
        "overlaps the reserved range",
    ),
    (
        "network-half-the-space",
        ("nodes", 0, "start_lxc_network"),
        "0.0.0.0/1",
        "nodes[0].start_lxc_network",
        "overlaps the 'this network' range",
    ),
    ("tunnel-loopback", ("nodes", 0, "tunnel_to"), ["127.0.0.1"], "nodes[0].tunnel_to[0]", "is a loopback address"),
    (
        "tunnel-broadcast",
        ("nodes", 0, "tunnel_to"),
        ["255.255.255.255"],
        "nodes[0].tunnel_to[0]",
        "is the broadcast address",
    ),
    ("tunnel-multicast", ("nodes", 0, "tunnel_to"), ["224.0.0.5"], "nodes[0].tunnel_to[0]", "is a multicast address"),
    ("tunnel-reserved", ("nodes", 0, "tunnel_to"), ["240.0.0.1"], "nodes[0].tunnel_to[0]", "is in the reserved range"),
    ("tunnel-unspecified", ("nodes", 0, "tunnel_to"), ["0.0.0.0"], "nodes[0].tunnel_to[0]", "'this network'"),
    (
        "host-multicast",
        ("nodes", 0, "provider", "credentials", 0, "host"),
        "239.1.1.1",
        "nodes[0].provider.credentials[0].host",
        "is a multicast address",
    ),
]


@pytest.mark.parametrize(
    "path,value,where,message", [case[1:] for case in ADDRESS_ERRORS], ids=[case[0] for case in ADDRESS_ERRORS]
)
def test_address_that_cannot_serve_is_refused(path, value, where, message):
    found = messages(problems_of(edit(seed(), path, value)))
    assert where in found, found
    assert message in found[where]


# ---------------------------------------------------------------- extreme input: a message, never a traceback


def _nested(depth, fmt):
    if fmt == "json":
        return '{"type": "LxcEngine", "x": ' + "[" * depth + "]" * depth + "}"
    return "type: LxcEngine\nx: " + "[" * depth + "]" * depth + "\n"


EXTREMES = [
    (
        "int-5000-digits-json",
        '{"type": "LxcEngine", "containers_per_host": ' + "9" * 5000 + "}",
        "c.json",
        "containers_per_host",
        "a number with 5000 digits is too large",
    ),
    (
        "int-5000-digits-yaml",
        "type: LxcEngine\ncontainers_per_host: " + "9" * 5000 + "\n",
        "c.yaml",
        "containers_per_host",
        "a number with 5000 digits is too large",
    ),
    (
        "float-5000-digits-json",
        '{"type": "LxcEngine", "x": ' + "9" * 5000 + ".5}",
        "c.json",
        "x",
        "too large for a number",
    ),
    ("nested-5000-json", _nested(5000, "json"), "c.json", None, "nested too deeply"),
    ("nested-5000-yaml", _nested(5000, "yaml"), "c.yaml", None, "nested too deeply"),
    ("nested-100-json", _nested(100, "json"), "c.json", "x" + "[0]" * 31, "nested more than 32 levels deep"),
    (
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7))
        + "type: LxcEngine\n",
        "c.yaml",
        None,
        "more than 100000 values",
    ),
    (
        "merge-bomb",
        "a: &a {"
        + ", ".join(f"k{i}: {i}" for i in range(400))
        + "}\n"
        + "".join(f"m{i}: &m{i} {{<<: [{', '.join(['*a'] + [f'*m{j}' for j in range(i)])}]}}\n" for i in range(12)),
        "c.yaml",
        None,
        "expand to more than 100000 keys",
    ),
]


@pytest.mark.parametrize("text,name,where,words", [case[1:] for case in EXTREMES], ids=[c[0] for c in EXTREMES])
def test_extreme_input_is_a_config_error(text, name, where, words):
    with pytest.raises(ConfigError) as caught:
        validate(parse(text, name))
    found = {p.path: p.message for p in caught.value.problems}
    assert where in found, found
    assert words in found[where]


def test_extreme_values_given_as_data_are_config_errors():
    data = edit(seed(), ("controller", "localrc", "X"), 10**5000)
    data["controller"]["localrc"]["Y"] = float("nan")
    data["controller"]["localrc"]["Z"] = float("inf")
    found = messages(problems_of(data))
    assert set(found) == {"controller.localrc.X", "controller.localrc.Y", "controller.localrc.Z"}
    assert "too large" in found["controller.localrc.X"] and "finite" in found["controller.localrc.Y"]


# ---------------------------------------------------------------- numbers, booleans and merges in YAML and JSON


def _yaml_localrc(line):
    return (
        "type: DevstackEngine\nlocalrc:\n  " + line + "\nprovider: {type: ExistingServers, credentials: [{host: h}]}\n"
    )


NUMBER_SLIPS = [
    (
        "yaml-octal",
        _yaml_localrc("VER: 012"),
        "c.yaml",
        "localrc.VER",
        'line 3, column 8: YAML reads 012 as the number 10: quote it ("012")',
    ),
    ("yaml-octal-0o", _yaml_localrc("VER: 0o17"), "c.yaml", None, None),  # YAML 1.1 has no 0o: it is text
    ("yaml-hex", _yaml_localrc("VER: 0x1f"), "c.yaml", "localrc.VER", "YAML reads 0x1f as the number 31"),
    ("yaml-sexagesimal", _yaml_localrc("T: 1:30"), "c.yaml", "localrc.T", "YAML reads 1:30 as the number 90"),
    ("yaml-underscore", _yaml_localrc("N: 1_000"), "c.yaml", "localrc.N", "YAML reads 1_000 as the number 1000"),
    ("yaml-plus", _yaml_localrc("N: +12"), "c.yaml", "localrc.N", "YAML reads +12 as the number 12"),
    ("yaml-fraction", _yaml_localrc("V: 1.10"), "c.yaml", "localrc.V", 'quote it, e.g. "1.10"'),
    (
        "json-fraction",
        '{"type": "DevstackEngine", "localrc": {"V": 1.10}, '
        '"provider": {"type": "ExistingServers", "credentials": [{"host": "h"}]}}',
        "c.json",
        "localrc.V",
        "got the number 1.1: write a number with a fraction",
    ),
    ("yaml-yes", _yaml_localrc("X: yes"), "c.yaml", "localrc.X", 'YAML reads yes as true: quote it ("yes")'),
    ("yaml-off", _yaml_localrc("X: Off"), "c.yaml", "localrc.X", "YAML reads Off as false"),
    (
        "yaml-on-key",
        _yaml_localrc("ON: 1"),
        "c.yaml",
        "localrc.ON",
        'line 3, column 3: a key must be text, and this one is not read as text by YAML: quote it ("ON")',
    ),
    ("yaml-int-key", _yaml_localrc("1: x"), "c.yaml", "localrc.1", 'quote it ("1")'),
    ("yaml-list-key", _yaml_localrc("? [a, b]\n  : x"), "c.yaml", "localrc.?", "a list or an object"),
    ("yaml-nan", _yaml_localrc("X: .nan"), "c.yaml", "localrc.X", "numbers must be finite"),
    ("yaml-inf", _yaml_localrc("X: -.inf"), "c.yaml", "localrc.X", "numbers must be finite"),
    ("yaml-binary", _yaml_localrc("X: !!binary aGk="), "c.yaml", "localrc.X", "!!binary has no meaning"),
    (
        "json-nan",
        '{"type": "DevstackEngine", "localrc": {"X": NaN}}',
        "c.json",
        "localrc.X",
        "NaN is not a JSON number",
    ),
    (
        "json-infinity",
        '{"type": "DevstackEngine", "localrc": {"X": -Infinity}}',
        "c.json",
        "localrc.X",
        "-Infinity is not a JSON number",
    ),
    (
        "json-1e400",
        '{"type": "DevstackEngine", "localrc": {"X": 1e400}}',
        "c.json",
        "localrc.X",
        "1e400 is too large for a number",
    ),
]


@pytest.mark.parametrize(
    "text,name,where,words", [case[1:] for case in NUMBER_SLIPS], ids=[case[0] for case in NUMBER_SLIPS]
)
def test_value_that_would_not_be_written_as_given_is_refused(text, name, where, words):
    if where is None:
        assert topology.plan(validate(parse(text, name))).nodes[0].localrc["VER"] == "0o17"
        return
    with pytest.raises(ConfigError) as caught:
        validate(parse(text, name))
    found = {p.path: p.message for p in caught.value.problems}
    assert where in found, found
    assert words in found[where]


def test_plain_numbers_booleans_and_dates_keep_their_text():
    text = _yaml_localrc("{A: 12, B: -3, C: 0, D: true, E: False, F: 2024-01-31, G: '012', H: '1.10'}")
    localrc = topology.plan(validate(parse(text, "c.yaml"))).nodes[0].localrc
    assert [localrc[k] for k in "ABCDEFGH"] == ["12", "-3", "0", "True", "False", "2024-01-31", "012", "1.10"]


def test_json_number_with_a_leading_zero_gets_a_hint():
    with pytest.raises(ConfigError) as caught:
        parse('{"type": "LxcEngine", "containers_per_host": 012}', "c.json")
    assert 'line 1, column 46: JSON numbers do not start with 0; write 12, or quote it ("012")' in str(caught.value)


def test_yaml_merge_keys_are_supported_and_the_mappings_own_keys_win():
    text = """
defaults: &defaults
  type: ExistingServers
  credentials: [{host: wrong}]
type: DevstackEngine
localrc: {X: "1"}
provider: {<<: *defaults, credentials: [{host: h1}]}
"""
    data = parse(text, "c.yaml")
    assert data["provider"] == {"type": "ExistingServers", "credentials": [{"host": "h1"}]}


def test_yaml_merge_of_several_mappings_gives_the_first_precedence():
    data = parse("a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc: {<<: [*a, *b], w: 3}\n", "c.yaml")
    assert data["c"] == {"x": 1, "y": 1, "z": 2, "w": 3}


def test_yaml_key_given_twice_is_still_found_beside_a_merge():
    with pytest.raises(ConfigError) as caught:
        parse("a: &a {x: 1}\nc: {<<: *a, y: 1, y: 2}\n", "c.yaml")
    assert [p.path for p in caught.value.problems] == ["c.y"]


@pytest.mark.parametrize(
    "text,words",
    [
        ("a: {<<: 5}\n", "line 1, column 9: a merge key '<<' takes a mapping or a list of mappings"),
        ("a: &a {<<: *a}\n", "line 1, column 8: a merge key '<<' refers to a mapping that contains it"),
        ("a: &a [*a]\n", "line 1, column 4: found unconstructable recursive node"),
    ],
    ids=["scalar", "merge-itself", "alias-itself"],
)
def test_yaml_merge_or_alias_that_cannot_be_is_explained(text, words):
    with pytest.raises(ConfigError) as caught:
        parse(text, "c.yaml")
    assert words in str(caught.value)


# ---------------------------------------------------------------- slips with a suggestion


@pytest.mark.parametrize("key", ["tpye", "Type", "nmae"], ids=str)
def test_misspelled_type_is_suggested_and_the_rest_still_checked(key):
    data = renamed(seed(), ("nodes", 0, "type"), key)
    data["nodes"][0]["nodes_per_server"] = 0
    found = messages(problems_of(data))
    canonical = "name" if key == "nmae" else "type"
    assert found == {
        f"nodes[0].{key}": f"unknown key; did you mean '{canonical}'?",
        "nodes[0].nodes_per_server": "expected at least 1, got 0",
    }


@pytest.mark.parametrize(
    "key,value",
    [
        ("enable_plugins", ["heat https://h/heat"]),
        ("enable_plugins", "heat https://h/heat"),
        ("ENABLE_PLUGIN", "heat https://h/heat"),
        ("enableplugin", "heat https://h/heat"),
    ],
    ids=["plural-list", "plural-string", "upper-case", "no-underscore"],
)
def test_enable_plugin_slips_are_named(key, value):
    found = messages(problems_of(edit(seed(), ("nodes", 0, "engine", "localrc", key), value)))
    assert found[f"nodes[0].engine.localrc.{key}"].startswith("did you mean 'enable_plugin'?")


@pytest.mark.parametrize(
    "hosts", [["a", "A"], ["a", "a."], ["Host-1.Example.", "host-1.example"]], ids=["case", "trailing-dot", "both"]
)
def test_one_host_spelled_two_ways_in_one_list_is_listed_twice(hosts):
    data = edit(seed(), ("nodes", 0, "provider", "credentials"), [{"host": h} for h in hosts])
    found = messages(problems_of(data))
    assert (
        f"'{hosts[1]}' is listed twice (first at credentials[0] as '{hosts[0]}'"
        in found["nodes[0].provider.credentials[1].host"]
    )


def test_one_host_spelled_two_ways_across_groups_is_one_host():
    data = edit(seed(), ("controller", "provider", "host_provider", "credentials", 0, "host"), "Node-1.")
    data = edit(data, ("nodes", 0, "provider", "credentials", 0, "host"), "node-1")
    result = topology.plan(validate(data))
    assert [host.address for host in result.hosts] == ["node-1"]
    assert {node.subnet for node in result.nodes} == {"10.100.1.0/24"}


def test_localhost_and_its_address_together_are_refused():
    data = edit(seed(), ("nodes", 0, "provider", "credentials", 0, "host"), "127.0.0.1")
    found = messages(problems_of(data))
    assert found == {
        "nodes[0].provider.credentials[0].host": (
            "'127.0.0.1' and 'localhost' (at controller.provider.host_provider.credentials[0]) both name this machine; "
            "name it one way everywhere, or the plan would treat it as two hosts"
        )
    }


# ---------------------------------------------------------------- meta-sections, git mirror, host opt-ins

NOVA = "post-config|$NOVA_CONF"
NOVA_PATH = 'controller.meta_sections["post-config|$NOVA_CONF"]'


def with_meta(meta, where=("controller",)):
    return edit(seed(), where + ("meta_sections",), meta)


META_ERRORS = [
    ("no-bar", {"post-config": {}}, "controller.meta_sections.post-config", 'expected "PHASE|FILE"'),
    ("local-phase", {"local|localrc": {}}, 'controller.meta_sections["local|localrc"]', "is written from 'localrc'"),
    (
        "unknown-phase",
        {"post-confg|$NOVA_CONF": {}},
        'controller.meta_sections["post-confg|$NOVA_CONF"]',
        "did you mean 'post-config'?",
    ),
    ("no-file", {"post-config|": {}}, 'controller.meta_sections["post-config|"]', "no file after '|'"),
    (
        "file-command",
        {"post-config|$(reboot)": {}},
        'controller.meta_sections["post-config|$(reboot)"]',
        "found '$' only as $NAME or ${NAME}",
    ),
    ("file-space", {"post-config|/etc/a b": {}}, 'controller.meta_sections["post-config|/etc/a b"]', "found ' '"),
    (
        "file-relative",
        {"post-config|etc/nova.conf": {}},
        'controller.meta_sections["post-config|etc/nova.conf"]',
        "is a relative path",
    ),
    (
        "file-dotdot",
        {"post-config|$NOVA_CONF_DIR/../x": {}},
        'controller.meta_sections["post-config|$NOVA_CONF_DIR/../x"]',
        "climbs out of a folder with '..'",
    ),
    (
        "nova-cpu-braces",
        {"post-config|${NOVA_CPU_CONF}": {}},
        'controller.meta_sections["post-config|${NOVA_CPU_CONF}"]',
        "write it as '$NOVA_CPU_CONF'",
    ),
    ("section-bracket", {NOVA: {"DEFAULT]": {}}}, NOVA_PATH + '["DEFAULT]"]', "section names may hold only"),
    ("option-equals", {NOVA: {"DEFAULT": {"a=b": 1}}}, NOVA_PATH + ".DEFAULT.a=b", "option names may hold only"),
    ("option-dollar", {NOVA: {"DEFAULT": {"$X": 1}}}, NOVA_PATH + '.DEFAULT["$X"]', "option names may hold only"),
    (
        "value-command-is-fine-but-glob-is-not",
        {NOVA: {"DEFAULT": {"x": "*"}}},
        NOVA_PATH + ".DEFAULT.x",
        "replaces with the names of matching files",
    ),
    ("value-two-spaces", {NOVA: {"DEFAULT": {"x": "a  b"}}}, NOVA_PATH + ".DEFAULT.x", "write single spaces"),
    ("value-ends-in-space", {NOVA: {"DEFAULT": {"x": "a "}}}, NOVA_PATH + ".DEFAULT.x", "remove it"),
    ("value-echo-option", {NOVA: {"DEFAULT": {"x": "-n"}}}, NOVA_PATH + ".DEFAULT.x", "takes as its own option"),
    ("value-tab", {NOVA: {"DEFAULT": {"x": "a\tb"}}}, NOVA_PATH + ".DEFAULT.x", "without tabs"),
    ("value-newline", {NOVA: {"DEFAULT": {"x": "a\nb"}}}, NOVA_PATH + ".DEFAULT.x", "one line"),
    ("value-float", {NOVA: {"DEFAULT": {"x": 0.5}}}, NOVA_PATH + ".DEFAULT.x", 'quote it, e.g. "0.5"'),
    (
        "value-null",
        {NOVA: {"DEFAULT": {"x": None}}},
        NOVA_PATH + ".DEFAULT.x",
        "expected a string, a number or true/false, got null",
    ),
    ("value-list", {NOVA: {"DEFAULT": {"x": [1]}}}, NOVA_PATH + ".DEFAULT.x", "expected a string, a number"),
    ("section-not-object", {NOVA: {"DEFAULT": "x=1"}}, NOVA_PATH + ".DEFAULT", "an object: option -> value"),
    ("header-not-object", {NOVA: ["DEFAULT"]}, NOVA_PATH, "an object: ini section -> option -> value"),
    ("not-an-object", "post-config", "controller.meta_sections", '"PHASE|FILE" -> ini section'),
    (
        "placeholder-on-controller",
        {NOVA: {"DEFAULT": {"my_ip": "{controller_ip}"}}},
        NOVA_PATH + ".DEFAULT.my_ip",
        "cannot be used in the controller's own settings",
    ),
    (
        "unknown-placeholder",
        {NOVA: {"DEFAULT": {"my_ip": "{controler_ip}"}}},
        NOVA_PATH + ".DEFAULT.my_ip",
        "did you mean '{controller_ip}'?",
    ),
]


@pytest.mark.parametrize("meta,where,words", [case[1:] for case in META_ERRORS], ids=[case[0] for case in META_ERRORS])
def test_meta_section_refusals_name_their_path_and_what_to_do(meta, where, words):
    found = messages(problems_of(with_meta(meta)))
    assert where in found, found
    assert words in found[where]


def test_every_meta_section_problem_is_reported_at_once():
    meta = {
        "post-confg|nova.conf": {"a b": {"x": 1}},
        NOVA: {"DEFAULT": {"ok": 1, "bad=": "x", "v": "-e", "w": 0.5}, "quota": {"instances": -1}},
    }
    found = messages(problems_of(with_meta(meta)))
    assert sorted(found) == sorted(
        [
            'controller.meta_sections["post-confg|nova.conf"]',
            'controller.meta_sections["post-confg|nova.conf"]["a b"]',
            NOVA_PATH + ".DEFAULT.bad=",
            NOVA_PATH + ".DEFAULT.v",
            NOVA_PATH + ".DEFAULT.w",
        ]
    )
    assert len(problems_of(with_meta(meta))) == 6  # the bad header: its phase and its file


def test_meta_sections_of_a_compute_may_use_the_controller_address():
    meta = {
        "post-config|${NOVA_CONF}": {"DEFAULT": {"my_ip": "{controller_ip}", "debug": True}},
        "post-config|/$Q_PLUGIN_CONF_FILE": {"ml2": {"type_drivers": "local,flat"}},
    }
    result = topology.plan(validate(with_meta(meta, ("nodes", 0, "engine"))))
    compute = result.nodes[1]
    assert compute.meta_sections["post-config|${NOVA_CONF}"]["DEFAULT"] == {
        "my_ip": "10.100.1.2",
        "debug": "True",
        "report_interval": "10",
        "service_down_time": "60",
    }
    assert compute.meta_sections["post-config|/$Q_PLUGIN_CONF_FILE"] == {"ml2": {"type_drivers": "local,flat"}}


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("NUMBER_FAKE_NOVA_COMPUTE", "two", "expected the number of fake nova-compute services per node"),
        ("NUMBER_FAKE_NOVA_COMPUTE", -1, "expected the number of fake nova-compute services per node"),
        ("NUMBER_FAKE_NOVA_COMPUTE", True, "expected the number of fake nova-compute services per node"),
        ("NUMBER_FAKE_NOVA_COMPUTE", 10000, "(0 to 9999)"),
        ("NUMBER_FAKE_NOVA_COMPUTE+", "1", "set it (without '+')"),
    ],
    ids=["word", "negative", "boolean", "too-many", "appended"],
)
def test_number_of_fake_computes_must_be_a_count(key, value, words):
    found = messages(problems_of(edit(seed(), ("nodes", 0, "engine", "localrc", key), value)))
    assert words in found[f"nodes[0].engine.localrc.{key}"], found


@pytest.mark.parametrize(
    "value,where,words",
    [
        (
            "",
            "controller.git_mirror",
            "expected a folder on this machine (absolute, or relative to the config's "
            'folder), one line, got the string ""',
        ),
        ("/srv/mirror\n", "controller.git_mirror", "one line"),
        (3, "controller.git_mirror", "expected a folder on this machine"),
    ],
    ids=["empty", "newline", "number"],
)
def test_git_mirror_is_a_path_on_one_line(value, where, words):
    found = messages(problems_of(edit(seed(), ("controller", "git_mirror"), value)))
    assert words in found[where], found


@pytest.mark.parametrize("where", [("controller", "provider"), ("nodes", 0)], ids=["LxcProvider", "LxcEngine"])
@pytest.mark.parametrize("key", ["host_ca_certificates", "host_proxy"])
def test_host_opt_ins_are_booleans_of_container_groups(where, key):
    found = messages(problems_of(edit(seed(), where + (key,), "yes")))
    assert found[format_path(where + (key,))] == 'expected true or false, got the string "yes"'
    result = topology.plan(validate(edit(seed(), where + (key,), True)))
    group = 0 if where[0] == "controller" else 1
    assert {getattr(node, key) for node in result.nodes if node.group == group} == {True}
    assert {getattr(node, key) for node in result.nodes if node.group != group} == {False}


def test_host_opt_ins_are_not_keys_of_hardware_nodes():
    data = edit(seed(), ("controller", "provider", "host_provider", "host_proxy"), True)
    assert (
        "unknown key for ExistingServers" in messages(problems_of(data))["controller.provider.host_provider.host_proxy"]
    )


PATHS = [
    ("plain", ("a", 0, "b"), "a[0].b"),
    ("plus", ("localrc", "ENABLED_SERVICES+"), "localrc.ENABLED_SERVICES+"),
    (
        "header",
        ("meta_sections", "post-config|$NOVA_CONF", "DEFAULT"),
        'meta_sections["post-config|$NOVA_CONF"].DEFAULT',
    ),
    ("dot", ("m", "a.b"), 'm["a.b"]'),
    ("space", ("m", "a b"), 'm["a b"]'),
    ("quote", ("m", 'a"b'), 'm["a\\"b"]'),
    ("newline", ("m", "a\n"), 'm["a\\n"]'),
    ("empty", ("m", ""), 'm[""]'),
    ("first", ("a.b",), '["a.b"]'),
]


@pytest.mark.parametrize("parts,text", [case[1:] for case in PATHS], ids=[case[0] for case in PATHS])
def test_paths_quote_keys_that_would_blur_them(parts, text):
    assert format_path(parts) == text


# ---------------------------------------------------------------- where the shared helpers live


def modules_after(code):
    """The coordinator modules a fresh interpreter has loaded after running `code`."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if m.startswith('coordinator'))))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_the_shared_helpers_import_neither_the_loader_nor_the_registry():
    loaded = modules_after("import coordinator.problems")
    assert not loaded & {"coordinator.config", "coordinator.plugins"}, loaded


def test_the_registry_loads_its_types_without_the_config_loader():
    loaded = modules_after("from coordinator import plugins\nplugins.load()")
    assert {"coordinator.engines", "coordinator.providers"} <= loaded
    assert "coordinator.config" not in loaded, loaded


def test_the_config_module_still_offers_the_helpers_it_used_to():
    import coordinator.config as config
    import coordinator.problems as problems

    for name in ("ConfigError", "Problem", "describe", "format_path", "kept", "nearest", "PRUNED"):
        assert getattr(config, name) is getattr(problems, name), name


@pytest.mark.parametrize(
    "word,candidates,expected",
    [
        ("Type", ("type", "name"), "type"),
        ("tpye", ("type", "name"), "type"),
        ("zzz", ("type", "name"), None),
    ],
    ids=["case", "slip", "none"],
)
def test_nearest_known_spelling(word, candidates, expected):
    from coordinator.problems import nearest

    assert nearest(word, candidates) == expected


def test_kept_skips_what_the_schema_refused_and_keeps_the_indexes():
    from coordinator.problems import PRUNED, kept

    assert kept(["a", PRUNED, "c"]) == [(0, "a"), (2, "c")]
