"""A whole deployment snapshotted and restored through the coordinator CLI, with the stand-in devstack on one
simulated node: what happened after the snapshot is gone, every compute reports again, a kill in the middle of
either is finished by asking again, and a deployment scaled since is refused with what to do.
"""

import json
import signal
import subprocess
import sys

import pytest

from examples.fake_devstack import make_fake_devstack_repo
from tests.agent.test_deploy_e2e import config_for, coordinator

pytestmark = pytest.mark.slow

COMPUTES = 3
LOAD = "/opt/stack/data/after-the-snapshot"


def killed_midway(argv, after):
    """Run the coordinator and SIGKILL it once `after` seconds have passed (or it ended)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        process.wait(timeout=after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.returncode


def test_a_deployment_is_restored_to_its_snapshot_and_converges_again(node_agent, tmp_path):
    repo = make_fake_devstack_repo(str(tmp_path / "devstack"))
    data = config_for(node_agent.host, node_agent.port, repo)
    data["nodes"][0]["nodes_per_server"] = COMPUTES
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(data))
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", node_agent.pki_dir]
    plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)
    names = [node["name"] for node in plan["nodes"]]
    controller = plan["controller"]
    coordinator("deploy", str(config), "--name", "s1", "--log-dir", str(tmp_path / "logs"), *common)
    agent = node_agent.connect()

    # A snapshot killed in the middle is on record only if it was whole; asked again, it is taken whole.
    killed_midway(["snapshot", "s1", "clean", *common], 0.5)
    recorded = "clean" in coordinator("snapshots", "s1", *common).stdout
    taken = coordinator("snapshot", "s1", "clean", *common, check=False)
    if recorded:  # the killed one finished before the kill
        assert taken.returncode == 1 and "has a snapshot 'clean' already" in taken.stderr
    else:
        assert f"snapshot clean of s1: {len(names)} container(s) on 1 host(s)" in taken.stdout, taken.stderr
    again = coordinator("snapshot", "s1", "clean", *common, check=False)
    assert again.returncode == 1 and "has a snapshot 'clean' already" in again.stderr
    listed = coordinator("snapshots", "s1", *common).stdout
    assert "clean" in listed and f"{len(names)}/{len(names)}" in listed
    assert sorted({entry["name"] for entry in agent.list_snapshots(names)}) == sorted(names)

    # Load after the snapshot: files in the controller and a compute.
    for name in (controller, names[-1]):
        assert agent.run(name, ["touch", LOAD])["exit_code"] == 0

    # A restore killed in the middle, then asked again: the cloud is back as it was, every compute up again.
    killed_midway(["restore", "s1", "clean", *common], 2)
    assert "interrupted" in coordinator("list", *common).stdout
    restored = coordinator("restore", "s1", "clean", *common)
    assert "restored s1 to snapshot clean" in restored.stdout
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in restored.stdout
    assert {entry["name"]: entry["state"] for entry in agent.list(names)} == dict.fromkeys(names, "RUNNING")
    for name in (controller, names[-1]):
        assert agent.run(name, ["test", "-e", LOAD])["exit_code"] == 1, f"{name}: the load is gone"
    reports = agent.run(controller, ["cat", "/opt/stack/data/fake-devstack/reports"])["stdout"]
    assert reports.strip(), "the computes report to the restored controller"
    assert "deployed" in coordinator("list", *common).stdout

    # Scaled since the snapshot: refused, with what to do.
    coordinator("scale", "s1", "--computes", str(COMPUTES + 1), *common)
    refused = coordinator("restore", "s1", "clean", *common, check=False)
    assert refused.returncode == 1
    assert "1 added since" in refused.stderr and f"scale it back to {len(names)} node(s) first" in refused.stderr
    coordinator("scale", "s1", "--computes", str(COMPUTES), *common)
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up" in coordinator("restore", "s1", "clean", *common).stdout

    # Deleted, and destroy leaves nothing.
    coordinator("snapshots", "s1", "--delete", "clean", *common)
    assert agent.list_snapshots() == []
    assert "no snapshots" in coordinator("snapshots", "s1", *common).stdout
    coordinator("destroy", "s1", *common)
    assert node_agent.states() == {}
