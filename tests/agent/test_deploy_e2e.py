"""`coordinator deploy` end to end on real containers: the seed's layout scaled down, on one simulated node.

A controller in an LxcProvider container, and an LxcEngine group of 8 computes (1 first + 7 clones), Debian,
devstack from a local repository holding the offline stand-in. Run as a user would: the coordinator CLI.
"""

import json
import subprocess
import sys
import time

import pytest

from examples.fake_devstack import make_fake_devstack_repo
from tests.support import sh

pytestmark = pytest.mark.slow

COMPUTES = 8


def config_for(host, port, repo):
    credentials = [{"user": "root", "host": host, "port": port}]
    return {
        "type": "MultihostEngine",
        "controller": {
            "type": "DevstackEngine",
            "devstack_repo": repo,
            # What a dummy cloud's controller needs, as configs/demo.json has it: devstack's default OVN needs the
            # openvswitch module, which the deploy's pre-flight check refuses on a kernel without it.
            "localrc": {
                "MULTI_HOST": "1",
                "VIRT_DRIVER": "fake",
                "SCREEN_LOGDIR": "$DEST/logs/screen",
                "ENABLED_SERVICES": "key,mysql,rabbit,n-api,n-cond,n-sch,placement-api,g-api,q-svc",
            },
            "provider": {
                "type": "LxcProvider",
                "containers_per_host": 1,
                "container_name_prefix": "controller",
                "distribution": "debian",
                "release": "bookworm",
                "host_provider": {"type": "ExistingServers", "credentials": credentials},
            },
        },
        "nodes": [
            {
                "type": "LxcEngine",
                "distribution": "debian",
                "release": "bookworm",
                "container_name": "devstack-compute",
                "nodes_per_server": COMPUTES,
                "provider": {"type": "ExistingServers", "credentials": credentials},
                "engine": {
                    "name": "DevstackEngine",
                    "devstack_repo": repo,
                    "localrc": {
                        "VIRT_DRIVER": "fake",
                        "RABBIT_HOST": "{controller_ip}",
                        "MYSQL_HOST": "{controller_ip}",
                        "ENABLED_SERVICES": "n-cpu,n-net",
                    },
                },
            }
        ],
    }


def coordinator(*argv, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *argv], capture_output=True, text=True, timeout=1800
    )
    if check and result.returncode != 0:
        raise AssertionError(f"coordinator {argv[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def assert_every_compute_reports(agent, plan, timeout=60):
    """The stand-in's computes report "<nova host> <address> <compute_id>" to the controller: wait until each
    planned nova host has, from its own node's address, each with a compute_id of its own."""
    computes = {host: n["address"] for n in plan["nodes"] if n["role"] == "compute" for host in n["nova_hosts"]}
    assert len(computes) == sum(1 for n in plan["nodes"] if n["role"] == "compute")
    deadline, seen, ids = time.monotonic() + timeout, {}, {}
    while time.monotonic() < deadline and seen != computes:
        reports = agent.run(plan["controller"], ["cat", "/opt/stack/data/fake-devstack/reports"])["stdout"]
        fields = [line.split() for line in reports.splitlines() if len(line.split()) >= 3]
        seen = {host: address for host, address, _ in fields if host in computes}
        ids = {host: compute_id for host, _, compute_id in fields if host in computes}
        time.sleep(1)
    assert seen == computes, "every compute reports as its own nova host, from its own address"
    assert len(set(ids.values())) == len(computes), "each with a compute_id of its own"


def assert_deployed_as_planned(node_agent, plan, shown):
    """`show --json` and the node agree with the plan: every node running, each with the planned local.conf
    (clones carry the first compute's file, re-pointed at their own address by the start script), and every
    compute reporting to the controller."""
    assert [(n["name"], n["state"]) for n in shown["nodes"]] == [(n["name"], "RUNNING") for n in plan["nodes"]]
    agent = node_agent.connect()
    for node in plan["nodes"]:
        written = agent.run(node["name"], ["cat", "/opt/stack/devstack/local.conf"])["stdout"]
        assert written == node["local_conf"], node["name"]
    assert_every_compute_reports(agent, plan)


def assert_nothing_left(node_agent, links_before):
    """No container, the node's links as before the deploy, and none of the agent's NAT rules."""
    assert node_agent.states() == {}
    assert sh("ip", "-br", "link", netns=node_agent.netns) == links_before
    assert "lxc-agent" not in sh("nft", "list", "ruleset", netns=node_agent.netns)


def test_the_seed_layout_deploys_every_compute_reports_and_destroy_leaves_nothing(node_agent, tmp_path):
    repo = make_fake_devstack_repo(str(tmp_path / "devstack"))
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(config_for(node_agent.host, node_agent.port, repo)))
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", node_agent.pki_dir]
    netns = node_agent.netns
    links_before = sh("ip", "-br", "link", netns=netns)

    deployed = coordinator("deploy", str(config), "--name", "e2e", "--log-dir", str(tmp_path / "logs"), *common)
    plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)
    shown = json.loads(coordinator("show", "e2e", "--json", *common).stdout)
    assert len(shown["nodes"]) == 1 + COMPUTES
    assert "controller-" in deployed.stdout and "RUNNING" in deployed.stdout, "the nodes table is printed"
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in deployed.stdout
    assert_deployed_as_planned(node_agent, plan, shown)

    coordinator("destroy", "e2e", *common)
    assert_nothing_left(node_agent, links_before)
    assert coordinator("destroy", "e2e", *common, check=False).returncode == 1, "already gone: a clear error"
