"""The config loader: the seed's spellings accepted, its slips explained, every problem reported with its path."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from coordinator import plugins, topology
from coordinator.config import ConfigError, Problem, load, load_config, parse, validate

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "configs" / "seed.json"

# Rally's sample deployment configs (shared/compat/rally-samples), as written there.
RALLY_SAMPLES = {
    "devstack-in-existing-servers": """{
    "type": "DevstackEngine",
    "devstack_repo": "https://git.openstack.org/openstack-dev/devstack",
    "devstack_branch": "master",
    "provider": {
        "type": "ExistingServers",
        "credentials": [{"user": "root", "host": "10.2.0.8"}]
    }
}""",
    "devstack-in-lxc": """{
    "type": "DevstackEngine",
    "local_conf": {
        "VIRT_DRIVER": "fake"
    },
    "provider": {
        "type": "LxcProvider",
        "containers_per_host": 4,
        "container_name_prefix": "rally-providertest-02-",
        "start_lxc_network": "10.100.1.0/28",
        "tunnel_to": ["10.5.0.1"],
        "distribution": "ubuntu",
        "release": "raring",
        "host_provider": {
            "type": "ExistingServers",
            "credentials": [{"user": "root", "host": "10.2.250.103"}]
        }
    }
}""",
    "multihost": """{
    "type": "MultihostEngine",
    "controller": {
        "type": "DevstackEngine",
        "local_conf": {
            "ENABLED_SERVICES+": ",-n-cpu,-n-net",
            "MULTI_HOST": "1",
            "SCREEN_LOGDIR": "$DEST/logs/screen"
        },
        "provider": {"type": "DummyProvider",
                     "credentials": [{"host": "host-1.net",
                                      "user": "root"}]}
    },
    "nodes": [
        {
            "type": "DevstackEngine",
            "local_conf": {"ENABLED_SERVICES": "n-cpu,n-net"},
            "provider": {
                "type": "DummyProvider",
                "credentials": [{"host": "host-2.net",
                                 "user": "root"}]
            }
        }
    ]
}""",
}


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


@pytest.mark.parametrize("name", sorted(RALLY_SAMPLES), ids=sorted(RALLY_SAMPLES))
def test_rally_samples_are_accepted(name):
    result = topology.plan(validate(parse(RALLY_SAMPLES[name], f"{name}.json")))
    assert result.nodes


def test_rally_lxc_sample_keeps_release_prefix_and_network():
    result = topology.plan(validate(parse(RALLY_SAMPLES["devstack-in-lxc"], "x.json")))
    assert [node.name for node in result.nodes] == [f"rally-providertest-02-10-100-1-0-00{i}" for i in range(4)]
    assert {node.release for node in result.nodes} == {"raring"}
    assert {node.distribution for node in result.nodes} == {"ubuntu"}
    assert result.nodes[0].localrc["VIRT_DRIVER"] == "fake"
    assert [(t.host, t.remote, t.subnet) for t in result.tunnels] == [("10.2.250.103", "10.5.0.1", "10.100.1.0/28")]


def test_rally_multihost_sample_runs_devstack_on_the_hardware_nodes():
    result = topology.plan(validate(parse(RALLY_SAMPLES["multihost"], "x.json")))
    assert [(n.name, n.role, n.kind, n.address) for n in result.nodes] == [
        ("host-1.net", "controller", "host", "host-1.net"), ("host-2.net", "compute", "host", "host-2.net")]
    assert result.controller_address == "host-1.net"


def _seed_variant(path, new_key):
    return renamed(seed(), path, new_key)


SPELLINGS = [
    # (id, config, check on the plan)
    ("localrc", seed(), lambda p: p.nodes[0].localrc["VIRT_DRIVER"] == "fake"),
    ("local_conf", _seed_variant(("controller", "localrc"), "local_conf"),
     lambda p: p.nodes[0].localrc["VIRT_DRIVER"] == "fake"),
    ("nodes_per_server", seed(), lambda p: len(p.nodes) == 65),
    ("containers_per_host-on-LxcEngine", _seed_variant(("nodes", 0, "nodes_per_server"), "containers_per_host"),
     lambda p: len(p.nodes) == 65),
    ("nodes_per_server-on-LxcProvider",
     _seed_variant(("controller", "provider", "containers_per_host"), "nodes_per_server"),
     lambda p: p.nodes[0].role == "controller"),
    ("engine-name", seed(), lambda p: p.nodes[1].localrc["DATABASE_TYPE"] == "mysql"),
    ("engine-type", _seed_variant(("nodes", 0, "engine", "name"), "type"),
     lambda p: p.nodes[1].localrc["DATABASE_TYPE"] == "mysql"),
    ("host_provider-type", seed(), lambda p: p.hosts[0].address == "localhost"),
    ("host_provider-name", _seed_variant(("controller", "provider", "host_provider", "type"), "name"),
     lambda p: p.hosts[0].address == "localhost"),
    ("container_name", seed(), lambda p: p.nodes[1].name.startswith("devstack-compute-")),
    ("container_name_prefix-on-LxcEngine",
     _seed_variant(("nodes", 0, "container_name"), "container_name_prefix"),
     lambda p: p.nodes[1].name.startswith("devstack-compute-")),
    ("container_name-on-LxcProvider",
     _seed_variant(("controller", "provider", "container_name_prefix"), "container_name"),
     lambda p: p.nodes[0].name.startswith("controller-")),
    ("DummyProvider", edit(seed(), ("nodes", 0, "provider", "type"), "DummyProvider"),
     lambda p: len(p.nodes) == 65),
    ("start_lxc_network", edit(seed(), ("nodes", 0, "start_lxc_network"), "10.200.0.0/24"),
     lambda p: p.nodes[1].subnet == "10.200.0.0/24" and p.nodes[0].subnet == "10.100.1.0/24"),
    ("tunnel_to", edit(seed(), ("nodes", 0, "tunnel_to"), ["10.1.1.20", "192.168.1.13"]),
     lambda p: [t.remote for t in p.tunnels] == ["10.1.1.20", "192.168.1.13"]),
    ("tunnel_type", edit(edit(seed(), ("nodes", 0, "tunnel_to"), ["10.1.1.20"]), ("nodes", 0, "tunnel_type"),
                         "vxlan"),
     lambda p: [t.kind for t in p.tunnels] == ["vxlan"]),
    ("distribution", seed(), lambda p: {n.distribution for n in p.nodes} == {"ubuntu"}),
    ("release", edit(seed(), ("nodes", 0, "release"), "jammy"), lambda p: p.nodes[1].release == "jammy"),
    ("devstack_repo", edit(seed(), ("nodes", 0, "engine", "devstack_repo"), "/srv/git/devstack"),
     lambda p: p.nodes[1].devstack_repo == "/srv/git/devstack"),
    ("devstack_branch", edit(seed(), ("controller", "devstack_branch"), "stable/2024.1"),
     lambda p: p.nodes[0].devstack_branch == "stable/2024.1"),
    ("start_script", edit(seed(), ("nodes", 0, "start_script"), "~/start.sh"),
     lambda p: p.nodes[1].start_script == "~/start.sh" and p.nodes[0].start_script is None),
    ("forward_ssh", edit(seed(), ("controller", "provider", "forward_ssh"), False), lambda p: True),
    ("credential-agent-keys",
     edit(seed(), ("nodes", 0, "provider", "credentials", 0),
          {"user": "root", "host": "localhost", "port": 7000, "ca": "ca.pem", "cert": "c.pem", "key": "k.pem",
           "token_file": "/etc/token"}),
     lambda p: (p.hosts[0].port, p.hosts[0].ca, p.hosts[0].token_file) == (7000, "ca.pem", "/etc/token")),
    ("integral-float-count", edit(seed(), ("nodes", 0, "nodes_per_server"), 4.0), lambda p: len(p.nodes) == 5),
    ("localrc-json-scalars", edit(seed(), ("controller", "localrc", "API_RATE_LIMIT"), False),
     lambda p: p.nodes[0].localrc["API_RATE_LIMIT"] == "False"),
    ("enable_plugin-string", edit(seed(), ("controller", "localrc", "enable_plugin"),
                                  "heat https://opendev.org/openstack/heat"),
     lambda p: p.nodes[0].plugins == (("heat", "https://opendev.org/openstack/heat"),)),
    ("enable_plugin-list", edit(seed(), ("nodes", 0, "engine", "localrc", "enable_plugin"),
                                ["heat https://h/heat master", "x http://{controller_ip}/x"]),
     lambda p: p.nodes[1].plugins == (("heat", "https://h/heat", "master"), ("x", "http://10.100.1.2/x"))),
]


@pytest.mark.parametrize("data,check", [(d, c) for _, d, c in SPELLINGS], ids=[name for name, _, _ in SPELLINGS])
def test_accepted_spelling(data, check):
    assert check(topology.plan(validate(data)))


def _snippet(text):
    """A seed snippet with its slips fixed (braces around it, trailing commas removed)."""
    return json.loads("{" + text.replace(",\n    }", "\n    }") + "}")


CONTROLLER_SNIPPET = '''
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
}'''

COMPUTES_SNIPPET = '''
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
}'''

TUNNEL_SNIPPET = '''
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
}'''


def test_seed_controller_snippet_alone_is_one_devstack_container():
    result = topology.plan(validate(_snippet(CONTROLLER_SNIPPET)))
    assert [(n.name, n.role, n.kind) for n in result.nodes] == [("controller-10-100-1-000", "controller",
                                                                 "standalone")]
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
    ("trailing-comma-object", '{\n  "localrc": {\n    "ENABLED_SERVICES": "n-cpu,n-net",\n  }\n}',
     "line 3, column 38", "trailing comma"),
    ("trailing-comma-list", '{\n  "tunnel_to": ["10.1.1.20",]\n}', "line 2, column 28", "trailing comma"),
    ("slash-comment", '{\n  "provider": {\n    //SOME PROVIDER WHICH RETURNS N NODES\n  }\n}',
     "line 3, column 5", "comments are not allowed in JSON"),
    ("block-comment", '{\n  /* x */ "type": "LxcEngine"\n}', "line 2, column 3", "comments are not allowed"),
    ("stray-colon-after-list", '{\n  "tunnel_to": ["10.1.1.20", "192.168.1.13"]:\n  "provider": {}\n}',
     "line 2, column 45", "stray ':' after the list"),
    ("snippet-without-braces", '"type": "DevstackEngine",\n"localrc": {}', "line 1, column 7",
     "wrap the whole config in '{' and '}'"),
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


@pytest.mark.parametrize("text,words", [
    ("type: LxcEngine\n  provider: x\n bad: [", "line 2, column 11"),
    ("type: LxcEngine\nprovider:\n\t- x\n", "tabs"),
], ids=["bad-indent", "tab"])
def test_yaml_syntax_error_names_line_and_column(text, words):
    with pytest.raises(ConfigError) as caught:
        parse(text, "c.yaml")
    assert words in str(caught.value)


@pytest.mark.parametrize("text,fmt", [('{"type": "A", "type": "B"}', "c.json"), ("type: A\ntype: B\n", "c.yaml")],
                         ids=["json", "yaml"])
def test_key_given_twice_is_a_problem(text, fmt):
    with pytest.raises(ConfigError) as caught:
        parse(text, fmt)
    assert caught.value.problems == (Problem("type", "given twice in one object; only the last would count, "
                                                     "so remove one"),)


@pytest.mark.parametrize("content,words", [(None, "cannot read the config"), (b"\xff\xfe{", "not UTF-8")],
                         ids=["missing", "not-utf8"])
def test_unreadable_file_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert words in str(caught.value)


# ---------------------------------------------------------------- schema errors

SCHEMA_ERRORS = [
    ("wrong-value-type", ("nodes", 0, "engine", "localrc", "VIRT_DRIVER"), ["fake"],
     "nodes[0].engine.localrc.VIRT_DRIVER", "expected a string, a number or true/false, got a list"),
    ("count-as-string", ("nodes", 0, "nodes_per_server"), "64",
     "nodes[0].nodes_per_server", 'expected an integer, got the string "64"'),
    ("count-zero", ("controller", "provider", "containers_per_host"), 0,
     "controller.provider.containers_per_host", "expected at least 1, got 0"),
    ("unknown-engine-type", ("nodes", 0, "type"), "LxcEngin",
     "nodes[0].type", "unknown engine type 'LxcEngin'; known engine types: DevstackEngine, LxcEngine, "
                      "MultihostEngine; did you mean 'LxcEngine'?"),
    ("unknown-provider-type", ("controller", "provider", "host_provider", "type"), "OpenStackProvider",
     "controller.provider.host_provider.type",
     "unknown provider type 'OpenStackProvider'; known provider types: ExistingServers (also DummyProvider), "
     "LxcProvider"),
    ("type-in-wrong-place", ("nodes", 0, "provider", "type"), "LxcProvider",
     "nodes[0].provider.type", "LxcProvider cannot be used here"),
    ("controller-must-be-devstack", ("controller", "type"), "LxcEngine",
     "controller.type", "LxcEngine cannot be used here (the controller is one DevstackEngine); "
                        "use 'DevstackEngine'"),
    ("type-not-a-string", ("nodes", 0, "type"), 5, "nodes[0].type", "expected a type name, got the integer 5"),
    ("missing-type", ("nodes", 0, "type"), DELETE, "nodes[0]", "missing 'type'"),
    ("missing-required", ("nodes", 0, "engine"), DELETE, "nodes[0]", "missing required key 'engine'"),
    ("missing-provider", ("controller", "provider"), DELETE, "controller", "missing required key 'provider'"),
    ("bad-tunnel-type", ("nodes", 0, "tunnel_type"), "gre",
     "nodes[0].tunnel_type", "expected 'ipip' or 'vxlan', got the string \"gre\""),
    ("bad-prefix", ("nodes", 0, "container_name"), "-compute",
     "nodes[0].container_name", "expected a container name prefix"),
    ("bad-distribution", ("nodes", 0, "distribution"), "Ubuntu 22.04",
     "nodes[0].distribution", "expected a distribution name"),
    ("bad-localrc-key", ("controller", "localrc", "BAD KEY"), "1",
     "controller.localrc.BAD KEY", "expected a shell variable name"),
    ("nodes-not-a-list", ("nodes",), {"type": "LxcEngine"}, "nodes", "expected a list of engines, got an object"),
    ("engine-not-an-object", ("nodes", 0, "engine"), "DevstackEngine",
     "nodes[0].engine", "expected an object describing an engine"),
    ("no-credentials", ("nodes", 0, "provider", "credentials"), [],
     "nodes[0].provider.credentials", "expected at least 1 item"),
    ("credential-without-host", ("nodes", 0, "provider", "credentials", 0), {"user": "root"},
     "nodes[0].provider.credentials[0]", "missing required key 'host'"),
    ("bad-port", ("nodes", 0, "provider", "credentials", 0, "port"), 70000,
     "nodes[0].provider.credentials[0].port", "expected at most 65535, got 70000"),
    ("enable_plugin-wrong-type", ("controller", "localrc", "enable_plugin"), 3,
     "controller.localrc.enable_plugin", "expected 'NAME URL [BRANCH]' or a list of them"),
]


@pytest.mark.parametrize("path,value,where,message", [case[1:] for case in SCHEMA_ERRORS],
                         ids=[case[0] for case in SCHEMA_ERRORS])
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
    assert found == {"nodes[0].containers_per_host": (
        "'nodes_per_server' and 'containers_per_host' are two spellings of one setting; give only one")}


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
        "controller.localrc.VIRT_DRIVER", "controller.provider.containers_per_hosts",
        "controller.provider.tunnel_to[0]", "nodes[0].nodes_per_server", "nodes[0].engine.localrc.MYSQL_HOST",
        "nodes[0].provider.type"}


def test_config_must_be_an_object():
    with pytest.raises(ConfigError) as caught:
        validate(["not", "an", "object"])
    assert "the config must be an object with a 'type'" in str(caught.value)


# ---------------------------------------------------------------- checks beyond the schema

SEMANTIC_ERRORS = [
    ("subnet-too-small", ("nodes", 0, "start_lxc_network"), "10.100.1.0/26",
     "nodes[0].start_lxc_network",
     "10.100.1.0/26 is too small for 64 containers per host: it holds 61 (network, gateway and broadcast "
     "addresses are reserved); a /25 would hold them"),
    ("subnet-exactly-full", ("controller", "provider", "start_lxc_network"), "10.100.9.0/31",
     "controller.provider.start_lxc_network", "leaves no address for containers"),
    ("host-bits-set", ("nodes", 0, "start_lxc_network"), "10.100.1.5/24",
     "nodes[0].start_lxc_network", "'10.100.1.5/24' has host bits set; did you mean '10.100.1.0/24'?"),
    ("not-a-network", ("nodes", 0, "start_lxc_network"), "10.100.1/24",
     "nodes[0].start_lxc_network", "expected an IPv4 network such as 10.100.1.0/24"),
    ("ipv6-network", ("nodes", 0, "start_lxc_network"), "fd00::/64",
     "nodes[0].start_lxc_network", "expected an IPv4 network, got the IPv6 network"),
    ("no-prefix-length", ("nodes", 0, "start_lxc_network"), "10.100.1.0",
     "nodes[0].start_lxc_network", "give the prefix length too"),
    ("tunnel-bad-octet", ("nodes", 0, "tunnel_to"), ["10.1.1.20", "192.168.1.300"],
     "nodes[0].tunnel_to[1]", "'192.168.1.300' is not an address"),
    ("tunnel-with-prefix", ("nodes", 0, "tunnel_to"), ["10.1.1.0/24"],
     "nodes[0].tunnel_to[0]", "give an address without a prefix length"),
    ("tunnel-hostname", ("nodes", 0, "tunnel_to"), ["controller.example"],
     "nodes[0].tunnel_to[0]", "expected an IPv4 address"),
    ("tunnel-ipv6", ("nodes", 0, "tunnel_to"), ["fd00::1"], "nodes[0].tunnel_to[0]", "tunnels need an IPv4"),
    ("tunnel-into-own-subnet", ("controller", "provider"),
     {"type": "LxcProvider", "start_lxc_network": "10.50.0.0/24", "tunnel_to": ["10.50.0.9"],
      "host_provider": {"type": "ExistingServers", "credentials": [{"host": "localhost"}]}},
     "controller.provider.tunnel_to[0]", "inside this group's own container network"),
    ("unknown-placeholder", ("nodes", 0, "engine", "localrc", "MYSQL_HOST"), "{contoller_ip}",
     "nodes[0].engine.localrc.MYSQL_HOST", "unknown placeholder '{contoller_ip}'; did you mean '{controller_ip}'?"),
    ("unknown-placeholder-far", ("nodes", 0, "engine", "localrc", "X"), "{zzz}",
     "nodes[0].engine.localrc.X", "unknown placeholder '{zzz}'; known: {controller_ip}"),
    ("placeholder-in-plugin", ("nodes", 0, "engine", "localrc", "enable_plugin"), ["a http://{controler_ip}/a"],
     "nodes[0].engine.localrc.enable_plugin[0]", "did you mean '{controller_ip}'?"),
    ("controller-ip-in-controller", ("controller", "localrc", "SERVICE_HOST"), "{controller_ip}",
     "controller.localrc.SERVICE_HOST", "'{controller_ip}' cannot be used in the controller's own settings"),
    ("multi-line-value", ("controller", "localrc", "X"), "a\nb",
     "controller.localrc.X", "a value must be one line"),
    ("plugin-words", ("controller", "localrc", "enable_plugin"), "heat",
     "controller.localrc.enable_plugin", "expected 'NAME URL [BRANCH]'"),
    ("bad-host-name", ("nodes", 0, "provider", "credentials", 0, "host"), "local host",
     "nodes[0].provider.credentials[0].host", "'local host' is not a host name or IP address"),
    ("host-listed-twice", ("nodes", 0, "provider", "credentials"), [{"host": "a"}, {"host": "a"}],
     "nodes[0].provider.credentials[1].host", "'a' is listed twice"),
    ("provider-inside-lxc-engine", ("nodes", 0, "engine", "provider"),
     {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
     "nodes[0].engine.provider", "LxcEngine makes the containers this devstack runs in"),
]


@pytest.mark.parametrize("path,value,where,message", [case[1:] for case in SEMANTIC_ERRORS],
                         ids=[case[0] for case in SEMANTIC_ERRORS])
def test_check_beyond_the_schema(path, value, where, message):
    found = messages(problems_of(edit(seed(), path, value)))
    assert where in found, found
    assert message in found[where]


def test_controller_ip_in_a_standalone_devstack_is_refused():
    found = messages(problems_of(edit(_snippet(CONTROLLER_SNIPPET), ("localrc", "X"), "{controller_ip}")))
    assert "only known for the nodes of a MultihostEngine" in found["localrc.X"]


@pytest.mark.parametrize("value", ["$DEST/logs/screen", "${VAR}", "${controller_ip}", "{}", "x{1}", "$(date)"],
                         ids=["dollar-name", "dollar-braces", "shell-var-named-like-placeholder", "empty-braces",
                              "not-a-name", "command-text"])
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
