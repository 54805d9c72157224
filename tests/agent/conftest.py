"""A real lxc-agent process, on loopback or inside a simulated host, reached over TLS with a token."""

import os
import shutil
import tempfile
import warnings

import pytest

from agent import pki, storage
from simlab import AgentProcess, Lab, unique
from tests.support import links, sh

IMAGE_PACKAGES = ["git", "sudo", "python3"]  # what coordinator.driver asks the agent to include


class Teardown:
    """Clean-up steps that all run even when one fails; the failures are reported together at the end, as the
    fixture's error (or as a warning when the fixture is already failing, so that error stays the one shown)."""

    def __init__(self, what):
        self.what = what
        self.failures = []

    def step(self, description, function, *args, **kwargs):
        try:
            function(*args, **kwargs)
        except Exception as error:
            self.failures.append(f"{description}: {type(error).__name__}: {error}")

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if not self.failures:
            return
        report = f"clean-up of {self.what} failed; remove what is left by hand:\n  " + "\n  ".join(self.failures)
        if error_type is not None:
            warnings.warn(report, stacklevel=2)
        else:
            pytest.fail(report, pytrace=False)


def _assert_namespaces_gone(names):
    listed = {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}
    left = sorted(listed & set(names))
    assert not left, f"network namespaces still there: {left} (ip netns del NAME)"


def _assert_link_gone(name):
    assert name not in links(), f"link {name} still there (ip link del {name})"


def _stop(teardown, process, keep_containers=False):
    teardown.step(
        f"stop the agent on {process.lxcpath} (its log: {process.log})", process.stop, keep_containers=keep_containers
    )
    if not keep_containers:
        teardown.step(f"check that the agent on {process.lxcpath} left no container", _assert_no_containers, process)


def _assert_no_containers(process):
    left = process.states()
    assert not left, f"containers still there: {left} (lxc-destroy -P {process.lxcpath} -n NAME -f)"


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
        with Teardown("the lab") as teardown:
            teardown.step("remove the lab", made.remove)
            teardown.step(
                "check that its namespaces are gone",
                _assert_namespaces_gone,
                [made.switch, *(host.netns for host in made.hosts)],
            )
            teardown.step("check that its port in this namespace is gone", _assert_link_gone, made.root_link)


@pytest.fixture
def sim_host(lab):
    return lab.add_host()


def _agent(*args, **kwargs):
    process = AgentProcess(*args, **kwargs)
    try:
        yield process
    finally:
        with Teardown(f"the agent on {process.lxcpath}") as teardown:
            _stop(teardown, process)


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
    with Teardown(f"{len(started)} extra agent(s)") as teardown:
        for process in started:
            _stop(teardown, process)


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
        with Teardown(f"the plain filesystem in {workdir}") as teardown:
            if mountpoint and os.path.ismount(mountpoint):
                teardown.step(f"unmount {mountpoint}", sh, "umount", "-l", mountpoint)
            teardown.step(f"remove {workdir}", shutil.rmtree, workdir)


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
        agent.destroy(["image-warmer"])  # the image stays in the agent's cache
    finally:
        with Teardown("the agent that made the image") as teardown:
            _stop(teardown, warm, keep_containers=True)
    host = lab.add_host()
    node_pki = str(tmp_path / "node-pki")
    pki.create_pki(node_pki, [host.address])
    process = AgentProcess(lxcpath, node_pki, host=host)
    try:
        yield process
    finally:
        with Teardown(f"the agent in node {host.netns}") as teardown:
            _stop(teardown, process)
