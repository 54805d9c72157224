"""A real dummy cloud: real devstack (stable/2026.1 from ../shared/openstack) in Debian containers, 1 controller and
an LxcEngine group of 4 fake computes (the first stacked, 3 clones), deployed through the coordinator CLI, then
scaled to 5 computes and down to 3; destroyed and deployed again from the golden images the first deploy kept;
then snapshotted, loaded with servers and restored to the snapshot.

The computes run with merge_memory (their nova-computes mergeable by KSM, without address-space randomisation,
with one hash seed), as a dense cloud would, and lean (what a fake compute does not use turned off). The agent's
lxcpath is a folder of the machine's root filesystem (ext4 here), so it runs on the default storage path: the
storage pool the agent makes there.

Asserts what a cloud's user sees: 4 distinct nova-compute services and 4 hypervisors up, 8 servers (no NICs,
compute API 2.37+) ACTIVE on more than one hypervisor, `openstack server list` answering; then destroy leaves
nothing. About 16 minutes on 2 cores. The containers need the package registries (apt, PyPI through the host's
CA), so the agent runs in this machine's own namespace, on a bridge of the test's own with NAT.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from agent import pool
from coordinator import nova
from simlab import REPO, AgentProcess
from simlab.cloud import MIRROR, cloud_config, free_subnet
from tests.agent.conftest import IMAGE_PACKAGES, fs_type
from tests.agent.test_deploy_e2e import coordinator
from tests.support import sh

pytestmark = [pytest.mark.slow, pytest.mark.devstack, pytest.mark.timeout(3600)]

COMPUTES = 4
SERVERS = 8
MERGED = {"merge_memory": True}
# nova-compute's personality (ADDR_NO_RANDOMIZE is 0x0040000), KSM state and hash seed, read inside a compute
NOVA_COMPUTE_MEMORY = (
    'pid=$(pgrep -o -f "[b]in/nova-compute") && cat /proc/$pid/personality && grep merge_any /proc/$pid/ksm_stat '
    '&& tr "\\0" "\\n" </proc/$pid/environ | grep "^PYTHONHASHSEED="'
)
ADMIN = (
    "cd /opt/stack/devstack && source ./openrc admin admin >/dev/null 2>&1 && "
    "export PATH=/opt/stack/data/venv/bin:$PATH OS_COMPUTE_API_VERSION=2.37 && "
)


@pytest.fixture
def host_agent(pki_dir):
    """An agent in this machine's namespace on the default storage path of an ext4 machine: its lxcpath a plain
    folder on the root filesystem, for which the agent makes its storage pool (a sparse btrfs loop file beside it,
    sized from the free disk). Afterwards the pool is removed as `lxc-agent remove-pool` does, leaving nothing."""
    if not MIRROR.is_dir():
        pytest.skip(
            f"no OpenStack sources at {MIRROR} (git bundles of devstack, nova, ...): real devstack needs "
            "them on machines that cannot reach opendev.org"
        )
    workdir = tempfile.mkdtemp(prefix="lxcagent-cloud-", dir="/var/tmp")
    lxcpath = os.path.join(workdir, "lxc")
    try:
        if fs_type(workdir) == "btrfs":
            pytest.skip(f"{workdir} is on btrfs already: this test is about a machine whose root is not")
        process = AgentProcess(lxcpath, pki_dir)
        try:
            info = process.connect().info()
            assert info["storage"] == "btrfs" and info["pool"]["file"] == pool.default_file(lxcpath), info
            agent = process.connect()
            agent.create("image-warmer", "debian", "bookworm", IMAGE_PACKAGES)
            agent.destroy(["image-warmer"])
            yield process
        finally:
            process.stop()
        removed = subprocess.run(
            [sys.executable, "-m", "agent.daemon", "remove-pool", "--lxcpath", lxcpath, "--no-unit"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert removed.returncode == 0, removed.stderr
        assert not os.path.exists(pool.default_file(lxcpath)) and not os.path.ismount(lxcpath)
        assert sh("losetup", "-j", pool.default_file(lxcpath)) == ""
    finally:
        if os.path.ismount(lxcpath):  # the test failed before its pool could be removed: never leave it mounted
            subprocess.run(["umount", "-l", lxcpath], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def admin(agent, controller, command, timeout=300):
    result = agent.run(controller, ["bash", "-c", ADMIN + command], user="stack", timeout=timeout)
    assert result["exit_code"] == 0, result
    return result["stdout"]


def delete_all(agent, controller, plan):
    """Every server deleted, waiting for it; when one is not, what nova says of it and the computes' errors."""
    result = agent.run(
        controller,
        ["bash", "-c", ADMIN + "openstack server delete --wait $(openstack server list -f value -c ID)"],
        user="stack",
        timeout=300,
    )
    if result["exit_code"] == 0:
        return
    faults = agent.run(
        controller,
        [
            "bash",
            "-c",
            ADMIN + "openstack server list --long -f json; for id in $(openstack server list -f value "
            "-c ID); do openstack server show $id -c status -c fault -c OS-EXT-STS:task_state -f json; done",
        ],
        user="stack",
        timeout=300,
    )["stdout"]
    errors = {
        node["name"]: agent.run(
            node["name"],
            ["sh", "-c", "journalctl --no-pager -u 'devstack@n-cpu*' | grep -E ' ERROR ' | tail -n 30"],
            timeout=60,
        )["stdout"]
        for node in plan["nodes"]
        if node["role"] == "compute"
    }
    pytest.fail(f"deleting the servers failed: {result['stderr']}\n{faults}\n{json.dumps(errors, indent=1)}")


def hypervisor_hosts(agent, controller):
    """Every hypervisor nova lists, whatever its state."""
    listed = json.loads(admin(agent, controller, "openstack hypervisor list -f json"))
    return sorted(h["Hypervisor Hostname"] for h in listed)


def test_a_real_cloud_has_every_compute_as_its_own_hypervisor_and_boots_servers(host_agent, pki_dir, tmp_path):
    subnet = free_subnet()
    if subnet is None:
        pytest.skip("no free /24 in 10.250.0.0/16 on this machine")
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(cloud_config(host_agent.port, subnet, COMPUTES, compute_settings=MERGED)))
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", pki_dir]
    plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)
    controller = plan["controller"]
    expected = sorted(host for node in plan["nodes"] for host in node["nova_hosts"])
    assert len(expected) == COMPUTES and len(set(expected)) == COMPUTES

    try:
        deployed = coordinator("deploy", str(config), "--name", "cloud", "--log-dir", str(tmp_path / "logs"), *common)
        assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in deployed.stdout, (
            deployed.stdout + deployed.stderr
        )
        agent = host_agent.connect()

        # What nova says, asked independently of the deployer's own check.
        services = json.loads(admin(agent, controller, "openstack compute service list --service nova-compute -f json"))
        assert sorted(s["Host"] for s in services) == expected
        assert {s["State"] for s in services} == {"up"}
        # 2.53: hypervisor IDs are the compute nodes' UUIDs (the compute_id files).
        hypervisors = json.loads(
            admin(agent, controller, "OS_COMPUTE_API_VERSION=2.53 openstack hypervisor list -f json")
        )
        assert sorted(h["Hypervisor Hostname"] for h in hypervisors) == expected
        assert {h["State"] for h in hypervisors} == {"up"}
        ids = {}
        for node in plan["nodes"]:
            for host in node["nova_hosts"]:  # devstack's fake driver: <node>N from nova-fake.conf-N
                index = host[len(node["name"]) :]
                read = agent.run(
                    node["name"],
                    [
                        "sh",
                        "-c",
                        'state=$(sed -n "s/^state_path = //p" "$1"); cat "$state/compute_id"; ls /opt/stack/data/nova',
                        "show",
                        f"/etc/nova/nova-fake.conf-{index}",
                    ],
                )
                assert read["exit_code"] == 0, read
                compute_id, *folders = read["stdout"].split()
                ids[host] = compute_id
                assert host in folders and not [f for f in folders if f.endswith("1") and f != host], folders
        assert len(set(ids.values())) == COMPUTES, f"every compute has its own compute_id: {ids}"
        for node in plan["nodes"]:
            if node["role"] == "compute":  # merge_memory reached the first compute and the clones alike
                seen = agent.run(node["name"], ["sh", "-c", NOVA_COMPUTE_MEMORY])
                assert seen["stdout"].split() == ["00040000", "ksm_merge_any:", "yes", "PYTHONHASHSEED=0"], seen
                # Lean: nothing a fake compute does not use runs in it (devstack left apache2 and sshd running).
                running = agent.run(
                    node["name"], ["systemctl", "list-units", "--state=running", "--no-legend", "--plain"]
                )["stdout"]
                assert "devstack@n-cpu" in running and not [
                    unit for unit in nova.LEAN_UNITS if f"{unit} " in running
                ], running
        assert {h["ID"] for h in hypervisors} == set(ids.values()), "nova's compute nodes are these UUIDs"

        # A client boots servers without networks, and they spread over the hypervisors.
        admin(
            agent,
            controller,
            "head -c 1048576 /dev/zero > /tmp/dummy.img && openstack image create "
            "--disk-format raw --container-format bare --file /tmp/dummy.img dummy -f json",
        )
        admin(
            agent,
            controller,
            f"openstack server create --image dummy --flavor m1.tiny --nic none "
            f"--min {SERVERS} --max {SERVERS} load -f json",
        )
        deadline = time.monotonic() + 300
        while True:
            servers = json.loads(admin(agent, controller, "openstack server list --long -f json"))
            states = [server["Status"] for server in servers]
            if states.count("ACTIVE") == SERVERS or "ERROR" in states or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert states == ["ACTIVE"] * SERVERS, servers
        used = {server["Host"] for server in servers}
        assert len(used) > 1 and used <= set(expected), used
        delete_all(agent, controller, plan)
        deadline = time.monotonic() + 120
        while True:  # a deleted server may be listed as DELETED for a moment after the API has said so
            left = json.loads(admin(agent, controller, "openstack server list -f json"))
            if not left or {server["Status"] for server in left} != {"DELETED"} or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert left == [], left

        # Scaled up, the new clone becomes its own hypervisor; scaled down, the removed computes leave nova.
        grown = coordinator("scale", "cloud", "--computes", str(COMPUTES + 1), *common)
        assert f"{COMPUTES + 1}/{COMPUTES + 1} nova-compute services up" in grown.stdout, grown.stdout + grown.stderr
        first = next(node["name"] for node in plan["nodes"] if node["kind"] == "first")
        added = first[: -len("000")] + f"{COMPUTES:03d}"
        assert hypervisor_hosts(agent, controller) == sorted([*expected, f"{added}1"])
        shrunk = coordinator("scale", "cloud", "--computes", str(COMPUTES - 1), *common)
        assert f"{COMPUTES - 1}/{COMPUTES - 1} nova-compute services up" in shrunk.stdout, shrunk.stdout + shrunk.stderr
        kept = sorted(expected)[: COMPUTES - 1]
        assert hypervisor_hosts(agent, controller) == kept, "removed computes leave nova's hypervisor list"
        services = json.loads(admin(agent, controller, "openstack compute service list --service nova-compute -f json"))
        assert sorted(s["Host"] for s in services) == kept

        # Destroyed and deployed again: the controller and the first compute start from their golden images, no
        # stack.sh runs, and the cloud converges and boots servers as before.
        destroyed = coordinator("destroy", "cloud", *common, check=False)
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
        again = coordinator("deploy", str(config), "--name", "again", "--log-dir", str(tmp_path / "logs"), *common)
        for node in plan["nodes"]:
            if node["kind"] in ("standalone", "first"):
                assert f"{node['name']}: golden image reused (golden-" in again.stderr, again.stderr
        assert not os.path.exists(tmp_path / "logs" / "again"), "no stack.sh ran"
        assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in again.stdout, (
            again.stdout + again.stderr
        )
        assert hypervisor_hosts(agent, controller) == expected, "only this deployment's computes"
        admin(
            agent,
            controller,
            "head -c 1048576 /dev/zero > /tmp/dummy.img && openstack image create "
            "--disk-format raw --container-format bare --file /tmp/dummy.img dummy -f json",
        )
        admin(agent, controller, "openstack server create --image dummy --flavor m1.tiny --nic none --wait again")
        admin(agent, controller, "openstack server delete --wait again")

        # Snapshot, load (servers booted), restore: the servers are gone, every compute is up again, and the
        # cloud boots new ones.
        taken = coordinator("snapshot", "again", "clean", *common)
        assert f"snapshot clean of again: {1 + COMPUTES} container(s)" in taken.stdout, taken.stdout + taken.stderr
        for server in ("load-1", "load-2"):
            admin(
                agent, controller, f"openstack server create --image dummy --flavor m1.tiny --nic none --wait {server}"
            )
        assert len(json.loads(admin(agent, controller, "openstack server list -f json"))) == 2
        restored = coordinator("restore", "again", "clean", *common)
        assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in restored.stdout, (
            restored.stdout + restored.stderr
        )
        assert json.loads(admin(agent, controller, "openstack server list -f json")) == [], "the load is gone"
        admin(agent, controller, "openstack server create --image dummy --flavor m1.tiny --nic none --wait after")
        admin(agent, controller, "openstack server delete --wait after")
    finally:
        for name in ("cloud", "again"):
            destroyed = coordinator("destroy", name, *common, check=False)
            assert destroyed.returncode == 0 or "no deployment named" in destroyed.stderr, destroyed.stderr
    assert host_agent.states() == {}
    pruned = coordinator("golden", "prune", *common)
    assert "2 golden image(s) removed" in pruned.stdout, pruned.stdout + pruned.stderr
    assert subnet.rsplit(".", 1)[0] not in sh("ip", "-4", "-br", "addr")
