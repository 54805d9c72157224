"""`coordinator validate` and `coordinator plan`: exit codes, every error listed, never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator import cli, topology

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "configs" / "seed.json"


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def broken_seed():
    data = json.loads(SEED.read_text())
    data["nodes"][0]["containers_per_hosts"] = 1
    data["nodes"][0]["engine"]["localrc"]["MYSQL_HOST"] = "{contoller_ip}"
    data["controller"]["provider"]["tunnel_to"] = ["10.1.1.256"]
    return data


NNET_WARNING = (
    f"{SEED}: warning: nodes[0].engine.localrc.ENABLED_SERVICES enables 'n-net' (nova-network), which "
    f"was removed from nova in the Rocky release: devstack ignores the name and nothing gives these "
    f"nodes networking through it; remove it (nova's networking is neutron's, q-svc on the controller)\n"
)


def without_nova_network(data):
    """The seed without its `n-net`, whose warning the tests about other warnings leave out."""
    data["nodes"][0]["engine"]["localrc"]["ENABLED_SERVICES"] = "n-cpu"
    return data


def test_validate_seed_prints_one_line_summary(capsys):
    code, out, err = run(capsys, "validate", SEED)
    assert code == 0 and err == NNET_WARNING
    assert out.count("\n") == 1
    assert out == (
        f"{SEED}: valid MultihostEngine: 65 node(s) (1 controller, 64 compute; 1 standalone "
        f"container(s), 1 first compute(s), 63 clone(s)) on 1 host(s), 0 tunnel(s); controller "
        f"controller-10-100-1-000 at 10.100.1.2\n"
    )


def test_validate_lists_every_error_and_exits_1(capsys, tmp_path):
    path = write(tmp_path, "bad.json", broken_seed())
    code, out, err = run(capsys, "validate", path)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}: 3 errors:"
    assert lines[1:] == [
        "  controller.provider.tunnel_to[0]: '10.1.1.256' is not an address: expected an IPv4 address such as "
        "192.168.1.13",
        "  nodes[0].engine.localrc.MYSQL_HOST: unknown placeholder '{contoller_ip}'; did you mean "
        "'{controller_ip}'? (write '${contoller_ip}' for a shell variable)",
        "  nodes[0].containers_per_hosts: unknown key for LxcEngine; did you mean 'containers_per_host'?",
    ]


@pytest.mark.parametrize(
    "name,text,words",
    [
        ("comma.json", '{\n  "type": "LxcEngine",\n}\n', "line 2, column 22: trailing comma"),
        ("missing.json", None, "cannot read the config"),
        (
            "plan-level.json",
            json.dumps(
                {
                    "type": "MultihostEngine",
                    "nodes": [],
                    "controller": {
                        "type": "DevstackEngine",
                        "provider": {
                            "type": "LxcProvider",
                            "containers_per_host": 2,
                            "host_provider": {"type": "ExistingServers", "credentials": [{"host": "a"}]},
                        },
                    },
                }
            ),
            "the controller must be exactly one node",
        ),
    ],
    ids=["syntax", "missing-file", "found-by-the-planner"],
)
def test_validate_reports_one_error_on_one_line(capsys, tmp_path, name, text, words):
    path = tmp_path / name if text is None else write(tmp_path, name, text)
    code, out, err = run(capsys, "validate", path)
    assert code == 1 and out == ""
    assert err.startswith(f"{path}: error: ") and words in err and err.count("\n") == 1


def test_invalid_config_never_shows_a_traceback(tmp_path):
    path = write(tmp_path, "bad.json", broken_seed())
    for command in ("validate", "plan"):
        result = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", command, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr and "3 errors" in result.stderr


def test_plan_json_is_the_whole_plan_and_deterministic(capsys):
    code, out, _ = run(capsys, "plan", SEED, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert len(data["nodes"]) == 65 and data["tunnels"] == []
    assert data["controller_address"] == "10.100.1.2"
    assert {node["role"] for node in data["nodes"]} == {"controller", "compute"}
    assert all(node["local_conf"].startswith("[[local|localrc]]\n") for node in data["nodes"])
    assert run(capsys, "plan", SEED, "--format", "json")[1] == out


def test_plan_table_shows_hosts_subnets_roles_counts_controller_and_tunnels(capsys, tmp_path):
    data = json.loads(SEED.read_text())
    data["nodes"][0]["tunnel_to"] = ["192.168.1.13"]
    data["nodes"][0]["provider"]["credentials"][0]["host"] = "192.168.10.1"
    code, out, _ = run(capsys, "plan", write(tmp_path, "c.json", data))
    assert code == 0
    assert "Controller address: 10.100.1.2 (controller-10-100-1-000)" in out
    assert "1 controller, 64 compute" in out
    lines = out.splitlines()
    assert any(line.split()[:4] == ["0", "localhost", "root", "10.100.1.0/24"] for line in lines)
    assert any(line.split()[:4] == ["1", "192.168.10.1", "root", "10.100.2.0/24"] for line in lines)
    assert any(
        "1 first, 63 clone" in line and "devstack-compute-10-100-2-000 .. devstack-compute-10-100-2-063" in line
        for line in lines
    )
    name = topology.tunnel_name("192.168.10.1", "192.168.1.13", "10.100.2.0/24")
    assert any(line.split() == [name, "ipip", "192.168.10.1", "10.100.2.0/24", "192.168.1.13", "-"] for line in lines)
    assert "[[local|localrc]]" not in out


def test_plan_table_prints_local_conf_of_chosen_nodes(capsys):
    code, out, _ = run(capsys, "plan", SEED, "--nodes", "--local-conf", "--node", "devstack-compute-10-100-1-005")
    assert code == 0
    assert out.count("[[local|localrc]]") == 1
    assert "# local.conf of devstack-compute-10-100-1-005 (compute, 10.100.1.8 on localhost)" in out
    assert 'MYSQL_HOST="10.100.1.2"' in out
    node_lines = [line for line in out.splitlines() if line.strip().startswith("devstack-compute-10-100-1-005")]
    assert node_lines[0].split() == [
        "devstack-compute-10-100-1-005",
        "compute",
        "clone",
        "localhost",
        "10.100.1.8/24",
        "devstack-compute-10-100-1-000",
    ]


def test_plan_table_local_conf_for_every_node(capsys):
    code, out, _ = run(capsys, "plan", SEED, "--local-conf")
    assert code == 0 and out.count("[[local|localrc]]") == 65


def test_plan_unknown_node_name_is_an_error(capsys):
    code, _, err = run(capsys, "plan", SEED, "--node", "nope")
    assert code == 1 and "no node named nope" in err


def test_yaml_config_through_the_cli(capsys, tmp_path):
    path = write(tmp_path, "seed.yaml", yaml.safe_dump(json.loads(SEED.read_text()), sort_keys=False))
    assert run(capsys, "plan", path, "--format", "json")[1] == run(capsys, "plan", SEED, "--format", "json")[1]


@pytest.mark.parametrize(
    "argv",
    [[], ["plan"], ["plan", "x", "--format", "xml"], ["frobnicate", "x"]],
    ids=["no-command", "no-config", "bad-format", "unknown-command"],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_plan_table_shows_the_subnets_behind_a_tunnel(capsys, tmp_path):
    data = json.loads(SEED.read_text())
    data["controller"]["provider"]["host_provider"]["credentials"][0]["host"] = "192.168.1.13"
    data["nodes"][0]["provider"]["credentials"] = [{"host": "192.168.10.1"}, {"host": "192.168.10.2"}]
    data["nodes"][0]["tunnel_to"] = ["192.168.1.13"]
    code, out, _ = run(capsys, "plan", write(tmp_path, "c.json", data))
    assert code == 0
    rows = [line.split()[1:] for line in out.splitlines() if line.strip().startswith("lxt-")]
    assert rows == [
        ["ipip", "192.168.10.1", "10.100.2.0/24", "192.168.1.13", "10.100.1.0/24"],
        ["ipip", "192.168.10.2", "10.100.3.0/24", "192.168.1.13", "10.100.1.0/24"],
    ]


def test_plan_json_is_the_same_whatever_the_hash_seed(tmp_path):
    # Sets and dicts of strings iterate in a per-process order: the plan must not depend on it.
    data = json.loads(SEED.read_text())
    data["controller"]["provider"]["host_provider"]["credentials"][0]["host"] = "192.168.1.13"
    data["nodes"][0]["provider"]["credentials"] = [{"host": h} for h in ("n3", "192.168.10.1", "N1", "n2")]
    data["nodes"][0]["nodes_per_server"] = 3
    data["nodes"][0]["tunnel_to"] = ["192.168.1.13", "10.1.1.20"]
    data["nodes"].append(
        {
            "type": "LxcEngine",
            "container_name": "x",
            "start_lxc_network": "10.7.0.0/26",
            "tunnel_to": ["192.168.1.13"],
            "provider": {"type": "ExistingServers", "credentials": [{"host": "n2"}, {"host": "192.168.1.13"}]},
            "engine": {"type": "DevstackEngine", "localrc": {"Z": "1", "A": "{controller_ip}"}},
        }
    )
    path = write(tmp_path, "c.json", data)
    outputs = set()
    for seed in ("0", "1", "2", "4242"):
        result = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "plan", str(path), "--format", "json"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr.decode()
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert len(json.loads(outputs.pop())["tunnels"]) == 4 * 2 + 1


def test_surrogate_in_a_value_is_an_error_not_a_traceback(capsys, tmp_path):
    path = write(
        tmp_path,
        "c.json",
        '{"type": "DevstackEngine", "localrc": {"X": "a\\ud800b"}, '
        '"provider": {"type": "ExistingServers", "credentials": [{"host": "h"}]}}',
    )
    code, out, err = run(capsys, "plan", path, "--local-conf")
    assert code == 1 and out == ""
    assert err == (
        f"{path}: error: localrc.X: holds a lone surrogate ('\\ud800' at character 2), which is not text "
        f"and cannot be written as UTF-8; remove it\n"
    )


EXTREME_FILES = [
    ("bigint.json", '{"type": "LxcEngine", "containers_per_host": ' + "9" * 5000 + "}", "too large"),
    ("deep.json", "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    (
        "bomb.yaml",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7)),
        "more than 100000 values",
    ),
    ("nan.json", '{"type": "LxcEngine", "x": NaN}', "NaN is not a JSON number"),
]


def test_extreme_files_are_errors_not_tracebacks(tmp_path):
    for name, text, words in EXTREME_FILES:
        path = write(tmp_path, name, text)
        result = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "validate", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr and words in result.stderr, (name, result.stderr)


def test_top_level_problems_are_printed_as_such(capsys, tmp_path):
    code, _, err = run(capsys, "validate", write(tmp_path, "c.json", {"type": "LxcEngine"}))
    assert code == 1
    assert err.splitlines()[1:] == [
        "  (top level): missing required key 'provider'",
        "  (top level): missing required key 'engine'",
    ]


def tunnel_to_outside(data):
    """The seed with its computes on 192.168.10.1 and a tunnel to 192.168.1.13, which is no host of the config."""
    data["nodes"][0]["tunnel_to"] = ["192.168.1.13"]
    data["nodes"][0]["provider"]["credentials"][0]["host"] = "192.168.10.1"
    return data


def test_a_tunnel_to_an_address_that_is_no_host_is_a_warning_in_validate_and_plan(capsys, tmp_path):
    path = write(tmp_path, "c.json", without_nova_network(tunnel_to_outside(json.loads(SEED.read_text()))))
    warning = (
        f"{path}: warning: tunnel_to 192.168.1.13 is not a host of this deployment: only the near end of the "
        f"ipip tunnel from 192.168.10.1 is made, and containers there reach 192.168.1.13 through it alone; "
        f"make the far end on 192.168.1.13 yourself"
    )
    code, out, err = run(capsys, "validate", path)
    assert code == 0 and out.count("\n") == 1 and "1 tunnel(s)" in out
    assert err.count("\n") == 1 and err.startswith(warning)
    assert "give its credential that same address (hosts match by address)" in err
    for argv in (["plan", path], ["plan", path, "--format", "json"]):
        code, out, err = run(capsys, *argv)
        assert code == 0 and err.startswith(warning) and err.count("\n") == 1
    assert json.loads(out)["tunnels"][0]["remote_host"] is None, "stdout stays plain JSON"


def test_a_tunnel_to_a_host_of_the_config_is_no_warning(capsys, tmp_path):
    data = without_nova_network(json.loads(SEED.read_text()))
    data["controller"]["provider"]["host_provider"]["credentials"][0]["host"] = "192.168.1.13"
    data["nodes"][0]["provider"]["credentials"] = [{"host": "192.168.10.1"}, {"host": "192.168.10.2"}]
    data["nodes"][0]["tunnel_to"] = ["192.168.1.13"]
    code, out, err = run(capsys, "validate", write(tmp_path, "c.json", data))
    assert code == 0 and "2 tunnel(s)" in out and err == ""


def test_the_nodes_table_keeps_whole_names_when_stdout_is_not_a_terminal(tmp_path):
    import io

    from coordinator import lifecycle, topology
    from coordinator.config import validate

    data = json.loads(SEED.read_text())
    data["nodes"][0]["container_name"] = "a-rather-long-prefix-for-the-compute-nodes"[:41]
    plan = topology.plan(validate(data))
    out = io.StringIO()
    console = lifecycle.stdout_console(file=out)
    assert not console.is_terminal
    lifecycle.print_nodes(plan, {plan.nodes[1].name: {"state": "RUNNING", "memory": 95 * 2**20}}, console)
    text = out.getvalue()
    for node in plan.nodes:
        assert f" {node.name} " in text and f" {node.address} " in text, node.name
    assert "RUNNING" in text and "95 MiB" in text and "…" not in text


def test_a_deployment_name_that_cannot_be_a_file_or_owner_tag_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "deploy", SEED, "--name", "../x y", "--store", tmp_path / "s.sqlite")
    assert code == 1
    assert err == (
        "coordinator deploy: deployment name '../x y' is not valid: use 1-64 letters, digits, '.', '_' "
        "or '-', starting with a letter or digit\n"
    )
    assert not (tmp_path / "s.sqlite").exists()


def test_plan_shows_the_planned_release_services_and_nova_hosts(capsys):
    code, out, err = run(capsys, "plan", SEED, "--format", "json")
    assert code == 0 and err == NNET_WARNING
    compute = json.loads(out)["nodes"][1]
    assert (compute["distribution"], compute["release"]) == ("ubuntu", "noble")
    assert compute["services"] == ["n-cpu", "n-net", "placement-client"]
    assert compute["nova_hosts"] == [compute["name"] + "1"]


def test_plan_local_conf_shows_the_meta_sections(capsys, tmp_path):
    data = json.loads(SEED.read_text())
    data["nodes"][0]["engine"]["meta_sections"] = {"post-config|$NOVA_CONF": {"quota": {"instances": -1}}}
    code, out, _ = run(
        capsys, "plan", write(tmp_path, "c.json", data), "--local-conf", "--node", "devstack-compute-10-100-1-000"
    )
    assert code == 0
    assert (
        "[[post-config|$NOVA_CONF]]\n[quota]\ninstances = -1\n[DEFAULT]\nreport_interval = 10\nservice_down_time = 60\n"
    ) in out


def test_a_meta_section_refusal_is_printed_with_its_path(capsys, tmp_path):
    data = json.loads(SEED.read_text())
    data["nodes"][0]["engine"]["meta_sections"] = {"post-config|$(reboot)": {}}
    path = write(tmp_path, "c.json", data)
    code, out, err = run(capsys, "validate", path)
    assert code == 1 and out == ""
    assert err.startswith(
        f'{path}: error: nodes[0].engine.meta_sections["post-config|$(reboot)"]: the file '
        f"'$(reboot)' may hold only devstack variables"
    )
