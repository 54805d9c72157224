"""`coordinator scale` end to end on real containers in a simulated node, with the stand-in devstack: a running
deployment grown by clones that each report as their own compute, then shrunk, the removed computes gone from the
stand-in nova's service list and from the node, and no other node renamed or re-addressed."""

import json

import pytest

from examples.fake_devstack import make_fake_devstack_repo
from tests.agent.test_deploy_e2e import assert_every_compute_reports, assert_nothing_left, config_for, coordinator
from tests.support import sh

pytestmark = pytest.mark.slow


def layout(common, name):
    shown = json.loads(coordinator("show", name, "--json", *common).stdout)
    return {node["name"]: (node["address"], node["state"]) for node in shown["nodes"]}


def nova_services(node_agent, controller):
    listed = node_agent.connect().run(
        controller,
        ["openstack", "compute", "service", "list", "--service", "nova-compute", "-f", "value", "-c", "Host"],
    )
    return sorted(listed["stdout"].split())


def test_a_running_deployment_grows_and_shrinks_with_stable_names_and_nova_following(node_agent, tmp_path):
    repo = make_fake_devstack_repo(str(tmp_path / "devstack"))
    data = config_for(node_agent.host, node_agent.port, repo)
    data["nodes"][0]["nodes_per_server"] = 3
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(data))
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", node_agent.pki_dir]
    links_before = sh("ip", "-br", "link", netns=node_agent.netns)
    coordinator("deploy", str(config), "--name", "grow", "--log-dir", str(tmp_path / "logs"), *common)
    before = layout(common, "grow")
    controller = next(name for name in before if name.startswith("controller-"))
    first = "devstack-compute-10-100-1-000"

    dry = coordinator("scale", "grow", "--computes", "5", "--dry-run", *common)
    assert dry.stdout.splitlines()[0] == "nodes[0]: 3 -> 5 compute(s) per host"
    assert layout(common, "grow") == before, "a dry run changes nothing"

    grown = coordinator("scale", "grow", "--computes", "5", "--starts-per-second", "2", *common)
    assert "5/5 nova-compute services up as 5 hypervisors" in grown.stdout, grown.stdout + grown.stderr
    assert grown.stdout.splitlines()[1] == "  starts: as fast as they run -> 2 per second"
    after = layout(common, "grow")
    assert {name: after[name] for name in before} == before, "no node renamed or re-addressed"
    added = sorted(set(after) - set(before))
    assert added == ["devstack-compute-10-100-1-003", "devstack-compute-10-100-1-004"]
    assert [after[name] for name in added] == [("10.100.1.6", "RUNNING"), ("10.100.1.7", "RUNNING")]
    plan = json.loads(coordinator("show", "grow", "--json", *common).stdout)
    recorded = {
        "controller": controller,
        "nodes": [
            {
                "name": n["name"],
                "role": "compute" if n["name"] != controller else "controller",
                "address": n["address"],
                "nova_hosts": [n["name"] + "1"] if n["name"] != controller else [],
            }
            for n in plan["nodes"]
        ],
    }
    assert_every_compute_reports(node_agent.connect(), recorded)
    assert nova_services(node_agent, controller) == sorted(f"{name}1" for name in after if name != controller)

    shrunk = coordinator("scale", "grow", "--computes", "2", "--starts-per-second", "2", *common)
    assert "2/2 nova-compute services up as 2 hypervisors" in shrunk.stdout, shrunk.stdout + shrunk.stderr
    assert "starts:" not in shrunk.stdout, "the pace the grow recorded is the deployment's now"
    left = layout(common, "grow")
    assert sorted(left) == sorted([controller, first, "devstack-compute-10-100-1-001"])
    assert {name: left[name] for name in left} == {name: before[name] for name in left}
    assert set(node_agent.states()) == set(left), "the removed containers are gone from the node"
    assert nova_services(node_agent, controller) == [f"{first}1", "devstack-compute-10-100-1-0011"]

    coordinator("destroy", "grow", *common)
    assert_nothing_left(node_agent, links_before)
