"""A real lxc-agent process in a simulated host (a network namespace), reached over TLS with a token."""

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from agent import pki
from agent.client import connect
from tests.support import lxc_states, sh, unique

_host_numbers = itertools.count(1)
# Inside the simulated host, as on a real one: its own sysfs (liblxc finds bridges in /sys/class/net) and the
# machine's cgroup mounts (which `ip netns exec` would hide by remounting /sys). Private mounts, gone on exit.
HOST_VIEW = ('hold=$(mktemp -d) && mount --rbind /sys/fs/cgroup "$hold" && mount -t sysfs sysfs /sys && '
             'mount --rbind "$hold" /sys/fs/cgroup && umount -l "$hold" && rmdir "$hold" && exec "$@"')
SIM_ADDRESSES = [f"198.18.{n}.2" for n in range(1, 64)]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki") / "pki")
    pki.create_pki(directory, ["localhost", "127.0.0.1", *SIM_ADDRESSES])
    return directory


class SimulatedHost:
    """A network namespace joined to the root namespace by a veth pair with a /30 from 198.18.0.0/15."""

    def __init__(self):
        number = next(_host_numbers)
        self.netns = unique("lxch-")
        self.root_link = unique("lxv")
        self.gateway, self.address = f"198.18.{number}.1", f"198.18.{number}.2"
        sh("ip", "netns", "add", self.netns)
        try:
            sh("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            sh("ip", "addr", "add", f"{self.gateway}/30", "dev", self.root_link)
            sh("ip", "link", "set", self.root_link, "up")
            sh("ip", "addr", "add", f"{self.address}/30", "dev", "eth0", netns=self.netns)
            sh("ip", "link", "set", "eth0", "up", netns=self.netns)
            sh("ip", "link", "set", "lo", "up", netns=self.netns)
        except BaseException:
            self.remove()
            raise

    def remove(self):
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


class AgentProcess:
    """`lxc-agent serve` as a child process; stops it and removes every container it left."""

    def __init__(self, lxcpath, pki_dir, listen, netns=None, extra=()):
        self.lxcpath, self.pki_dir, self.netns = lxcpath, pki_dir, netns
        self.host, port = listen.rsplit(":", 1)
        self.log = os.path.join(os.path.dirname(lxcpath), os.path.basename(lxcpath) + ".agent.log")
        argv = [sys.executable, "-m", "agent.daemon", "serve", "--listen", listen, "--lxcpath", lxcpath,
                "--tls-cert", f"{pki_dir}/agent.crt", "--tls-key", f"{pki_dir}/agent.key",
                "--tls-ca", f"{pki_dir}/ca.crt", "--token-file", f"{pki_dir}/token", *extra]
        if netns:
            argv = ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--propagation", "private",
                    "sh", "-c", HOST_VIEW, "sh", *argv]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.wait(10)
            raise AssertionError(f"lxc-agent did not start: {line!r}\n{open(self.log).read()}")
        self.port = int(line.rsplit(":", 1)[1])

    def connect(self, **overrides):
        options = {"pki_dir": self.pki_dir, **overrides}
        return connect(self.host, self.port, **options)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        force_remove_containers(self.lxcpath, self.netns)

    def states(self):
        return lxc_states(self.lxcpath, self.netns)


def force_remove_containers(lxcpath, netns=None):
    """Cleanup with the real CLIs, independent of the code under test."""
    if not os.path.isdir(lxcpath):
        return
    in_netns = ["ip", "netns", "exec", netns] if netns else []
    for name in os.listdir(lxcpath):
        subprocess.run(in_netns + ["lxc-stop", "-P", lxcpath, "-n", name, "-k"], capture_output=True)
        rootfs = os.path.join(lxcpath, name, "rootfs")
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["btrfs", "subvolume", "delete", rootfs], capture_output=True, check=True)
        subprocess.run(["rm", "-rf", os.path.join(lxcpath, name)], capture_output=True)


def free_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def sim_host():
    host = SimulatedHost()
    try:
        yield host
    finally:
        host.remove()


@pytest.fixture
def agent_in_host(sim_host, lxcpath, pki_dir):
    """An agent inside a simulated host: its bridges, NAT and container links stay in that namespace."""
    process = AgentProcess(lxcpath, pki_dir, f"{sim_host.address}:{free_port()}", netns=sim_host.netns)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def loopback_agent(lxcpath, pki_dir):
    """An agent on 127.0.0.1 in this namespace, for tests that create no network."""
    process = AgentProcess(lxcpath, pki_dir, f"127.0.0.1:{free_port()}")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def wait_for():
    def wait(predicate, timeout=10.0, interval=0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()
    return wait
