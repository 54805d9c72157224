"""Golden nodes end to end with the stand-in devstack, through the coordinator CLI on one simulated node: the
first deploy stacks and keeps its stacked nodes, a repeat deploy starts from them and runs no stack.sh (also when
killed and resumed), a changed local.conf stacks that node again and says why, and prune removes only images no
deployment uses.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from coordinator.store import Store
from examples.fake_devstack import make_fake_devstack_repo
from tests.agent.test_deploy_e2e import assert_every_compute_reports, config_for, coordinator

pytestmark = pytest.mark.slow

COMPUTES = 3


def golden_config(node_agent, mirror):
    """test_deploy_e2e's layout with 3 computes, devstack from a git mirror (what golden keys need)."""
    config = config_for(node_agent.host, node_agent.port, None)
    config["controller"].pop("devstack_repo")
    config["controller"]["git_mirror"] = mirror
    group = config["nodes"][0]
    group["nodes_per_server"] = COMPUTES
    group["engine"].pop("devstack_repo")
    group["engine"]["git_mirror"] = mirror
    return config


def stack_logs(logs, name):
    folder = os.path.join(logs, name)
    return sorted(entry for entry in os.listdir(folder) if ".stack." in entry) if os.path.isdir(folder) else []


def golden_list(common):
    return json.loads(coordinator("golden", "list", "--json", *common).stdout)


def test_a_repeat_deploy_starts_from_golden_nodes_and_skips_stack_sh(node_agent, tmp_path):
    mirror = tmp_path / "mirror"
    make_fake_devstack_repo(str(mirror / "devstack"))
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(golden_config(node_agent, str(mirror))))
    logs = str(tmp_path / "logs")
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", node_agent.pki_dir]
    plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)
    controller = plan["controller"]
    first = next(node["name"] for node in plan["nodes"] if node["kind"] == "first")
    deploy = ["deploy", str(config), "--log-dir", logs, *common]

    # The first deploy stacks the controller and the first compute, and keeps both.
    made = coordinator(*deploy, "--name", "g1")
    for name in (controller, first):
        assert f"{name}: stack.sh: no golden image of {name} on this host yet" in made.stderr
        assert f"{name}: golden image kept (golden-" in made.stderr
    assert len(stack_logs(logs, "g1")) == 2 * 2, "two stack.sh runs, each a log and its link"
    images = golden_list(common)
    assert sorted(image["node"] for image in images) == sorted([controller, first])
    assert all(image["used_by"] == ["g1"] and image["size"] > 0 for image in images)
    keys = {image["node"]: image["key"] for image in images}
    kept = Store(str(tmp_path / "store.sqlite")).golden_images()
    assert {(entry["host"], entry["key"], entry["deployment"]) for entry in kept} == {
        (node_agent.host, key, "g1") for key in keys.values()
    }, "the store remembers where each was kept"
    # In use while g1 is on record: not removed, and asking for one by key is refused.
    assert "0 golden image(s) removed" in coordinator("golden", "prune", *common).stdout
    refused = coordinator("golden", "prune", keys[controller], *common, check=False)
    assert refused.returncode == 1 and f"{keys[controller]} on {node_agent.host} by g1" in refused.stderr
    coordinator("destroy", "g1", *common)
    assert {image["key"] for image in golden_list(common)} == set(keys.values()), "destroy keeps golden images"

    # The same config again, killed right after its first node was made from a golden image, then resumed.
    killed = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", *deploy, "--name", "g2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    seen = ""
    deadline = time.monotonic() + 600
    while "golden image reused" not in seen and time.monotonic() < deadline:
        line = killed.stderr.readline()
        if not line:
            break
        seen += line
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert f"{controller}: golden image reused ({keys[controller]})" in seen
    again = coordinator(*deploy, "--name", "g2")
    assert f"{first}: golden image reused ({keys[first]})" in again.stderr
    assert stack_logs(logs, "g2") == [], "no stack.sh ran"
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in again.stdout
    agent = node_agent.connect()
    assert_every_compute_reports(agent, plan)
    shown = {entry["name"]: entry for entry in agent.list()}
    assert shown[controller]["image"] == keys[controller] and shown[first]["image"] == keys[first]
    assert all(image["last_used"] and image["used_by"] == ["g2"] for image in golden_list(common))
    coordinator("destroy", "g2", *common)

    # A changed controller local.conf: the controller stacks again and says why; the first compute is reused.
    changed = golden_config(node_agent, str(mirror))
    changed["controller"]["localrc"]["API_RATE_LIMIT"] = "False"
    config.write_text(json.dumps(changed))
    third = coordinator(*deploy, "--name", "g3")
    assert f"{controller}: stack.sh: local.conf changed" in third.stderr
    assert f"{first}: golden image reused" in third.stderr
    assert len(stack_logs(logs, "g3")) == 2, "one stack.sh run: the controller's"
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up" in third.stdout
    assert len(golden_list(common)) == 3
    coordinator("destroy", "g3", *common)

    # Nothing on record uses them any more: prune removes every one, and the host has none left.
    pruned = coordinator("golden", "prune", *common)
    assert "3 golden image(s) removed" in pruned.stdout
    assert coordinator("golden", "list", *common).stdout.startswith("no golden images")
    assert [image for image in agent.list_images() if image.get("kind") == "saved"] == []
    assert Store(str(tmp_path / "store.sqlite")).golden_images() == [], "the store forgets them too"
