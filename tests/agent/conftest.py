"""A real lxc-agent process, on loopback or inside a simulated host, reached over TLS with a token."""

import os
import shutil
import subprocess
import tempfile

import pytest

from agent import pki, storage
from simlab import AgentProcess, Lab, unique
from tests.support import sh

IMAGE_PACKAGES = ["git", "sudo", "python3"]   # what coordinator.driver asks the agent to include


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki") / "pki")
    pki.create_pki(directory, ["localhost", "127.0.0.1"])
    return directory


@pytest.fixture
def lab():
    """Simulated hardware nodes on one switch; `lab.add_host()` makes one."""
    made = Lab()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def sim_host(lab):
    return lab.add_host()


def _agent(*args, **kwargs):
    process = AgentProcess(*args, **kwargs)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def agent_in_host(sim_host, lxcpath, pki_dir):
    """An agent inside a simulated host: its bridges, NAT and container links stay in that namespace."""
    yield from _agent(lxcpath, pki_dir, host=sim_host)


@pytest.fixture
def loopback_agent(lxcpath, pki_dir):
    """An agent on 127.0.0.1 in this namespace, for tests that create no network."""
    yield from _agent(lxcpath, pki_dir)


@pytest.fixture
def start_agent(pki_dir):
    """Start extra agents with their own options; all are stopped after the test."""
    started = []

    def start(lxcpath, *extra, host=None):
        started.append(AgentProcess(lxcpath, pki_dir, host=host, extra=extra))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def fs_type(path):
    return sh("stat", "-f", "-c", "%T", path).strip()


@pytest.fixture(scope="session")
def plain_fs():
    """A folder on the root filesystem if it is not btrfs and can hold overlay upper dirs, else on a loop ext4."""
    if os.geteuid() != 0:
        pytest.skip("needs root (LXC containers, overlay mounts)")
    workdir = tempfile.mkdtemp(prefix="lxcagent-plain-", dir="/var/tmp")
    mountpoint = None
    try:
        if fs_type(workdir) == "btrfs" or storage.overlay_problem(workdir):
            mountpoint = os.path.join(workdir, "mnt")
            os.mkdir(mountpoint)
            sh("truncate", "-s", "2G", os.path.join(workdir, "image"))
            sh("mkfs.ext4", "-q", os.path.join(workdir, "image"))
            sh("mount", "-o", "loop", os.path.join(workdir, "image"), mountpoint)
        yield mountpoint or workdir
    finally:
        if mountpoint:
            subprocess.run(["umount", "-l", mountpoint], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def plain_lxcpath(plain_fs, request):
    path = os.path.join(plain_fs, unique(request.node.name[:20].replace("[", "_") + "-"))
    os.mkdir(path)
    assert fs_type(path) != "btrfs"
    return path


@pytest.fixture
def node_agent(lab, lxcpath, pki_dir, tmp_path):
    """An agent in a simulated node whose Debian image was made beforehand: nodes have no route to the mirror.

    Its PKI (`.pki_dir`, for the coordinator's --pki-dir) names the node's address, which varies per lab, as
    `lxc-agent init-pki --agent-name ADDRESS` would on a real node, so clients check the name as well."""
    warm = AgentProcess(lxcpath, pki_dir)
    try:
        agent = warm.connect()
        agent.create("image-warmer", "debian", "bookworm", IMAGE_PACKAGES)
        agent.destroy(["image-warmer"])   # the image stays in the agent's cache
    finally:
        warm.stop(keep_containers=True)
    host = lab.add_host()
    node_pki = str(tmp_path / "node-pki")
    pki.create_pki(node_pki, [host.address])
    process = AgentProcess(lxcpath, node_pki, host=host)
    try:
        yield process
    finally:
        process.stop()
