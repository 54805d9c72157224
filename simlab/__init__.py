"""A lab on one machine for tests, benchmarks and the demo: loop-file btrfs, simulated hardware nodes
(network namespaces with addresses in 198.18.0.0/15) and real lxc-agent processes inside them.

Everything made here is removed by the matching cleanup, checked with the real CLIs (lxc-stop, btrfs, ip),
independent of the agent's own code.
"""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Inside a simulated node, as on a real one: its own sysfs (liblxc finds bridges in /sys/class/net) and the
# machine's cgroup mounts (which `ip netns exec` would hide by remounting /sys). Private mounts, gone on exit.
HOST_VIEW = (
    'hold=$(mktemp -d) && mount --rbind /sys/fs/cgroup "$hold" && mount -t sysfs sysfs /sys && '
    'mount --rbind "$hold" /sys/fs/cgroup && umount -l "$hold" && rmdir "$hold" && exec "$@"'
)


def unique(prefix):
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{secrets.token_hex(3)}"


def _run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def loop_btrfs(size="8G", prefix="lxcagent-btrfs-"):
    """A loop-file btrfs mounted in a temporary folder; yields the mount point."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    image, mountpoint = os.path.join(workdir, "image"), os.path.join(workdir, "mnt")
    os.mkdir(mountpoint)
    try:
        _run("truncate", "-s", size, image)
        _run("mkfs.btrfs", "-q", image)
        _run("mount", "-o", "loop", image, mountpoint)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            listing = _run("btrfs", "subvolume", "list", "-o", mountpoint, check=False).stdout
            paths = [line.split(" path ", 1)[1] for line in listing.splitlines() if " path " in line]
            for path in sorted(paths, key=len, reverse=True):  # nested ones first
                _run("btrfs", "subvolume", "delete", os.path.join(mountpoint, path), check=False)
            if _run("umount", mountpoint, check=False).returncode != 0:
                _run("umount", "-l", mountpoint, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


class Lab:
    """A switch (a bridge in its own namespace) joining simulated nodes, plus a port for this namespace.

    Each lab takes a /24 of 198.18.0.0/15 that no address here uses yet (so two test runs can share a machine):
    this namespace .1, node i .(10 + i), all on one L2 segment: nodes reach each other and this namespace directly,
    and nothing here has a route beyond it.
    """

    def __init__(self):
        self.prefix = _free_lab_prefix()
        self.switch = unique("lxcs-")
        self.root_link = unique("lxv")
        self.hosts = []
        _run("ip", "netns", "add", self.switch)
        try:
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            _run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "up0", "netns", self.switch)
            _run("ip", "-n", self.switch, "link", "set", "up0", "master", "br0", "up")
            _run("ip", "addr", "add", f"{self.prefix}.1/24", "dev", self.root_link)
            _run("ip", "link", "set", self.root_link, "up")
        except BaseException:
            self.remove()
            raise

    def add_host(self):
        host = SimulatedHost(self, f"{self.prefix}.{10 + len(self.hosts)}")
        self.hosts.append(host)
        # A new switch port forwards only once its carrier is up: wait until the node answers.
        for _ in range(50):
            if _run("ping", "-c", "1", "-W", "1", host.address, check=False).returncode == 0:
                return host
        raise RuntimeError(f"simulated node {host.netns} at {host.address} does not answer on the lab switch")

    def remove(self):
        for host in self.hosts:
            host.remove()
        _run("ip", "link", "del", self.root_link, check=False)
        _run("ip", "netns", "del", self.switch, check=False)


class SimulatedHost:
    """A hardware node: a network namespace with eth0 on the lab's switch."""

    def __init__(self, lab, address):
        self.netns = unique("lxch-")
        self.address = address
        _run("ip", "netns", "add", self.netns)
        try:
            port = unique("p")
            _run(
                "ip", "-n", lab.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.netns
            )
            _run("ip", "-n", lab.switch, "link", "set", port, "master", "br0", "up")
            for command in (
                ("addr", "add", f"{address}/24", "dev", "eth0"),
                ("link", "set", "eth0", "up"),
                ("link", "set", "lo", "up"),
            ):
                _run("ip", "-n", self.netns, *command)
        except BaseException:
            self.remove()
            raise

    def enter(self, argv):
        """argv run inside this node, with the node's own view of /sys."""
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            HOST_VIEW,
            "sh",
            *argv,
        ]

    def remove(self):
        _run("ip", "netns", "del", self.netns, check=False)


def _free_lab_prefix():
    used = _run("ip", "-4", "-o", "addr").stdout
    for third in range(256):
        for second in (18, 19):
            prefix = f"198.{second}.{third}"
            if f" {prefix}." not in used:
                return prefix
    raise RuntimeError("every /24 of 198.18.0.0/15 is in use here; remove old labs (ip netns list)")


class AgentProcess:
    """`lxc-agent serve` as a child process, on loopback or inside a SimulatedHost.

    stop() ends it and removes every container it left under its lxcpath.
    """

    def __init__(self, lxcpath, pki_dir, host=None, extra=(), log_level="info"):
        self.lxcpath, self.pki_dir, self.sim_host = lxcpath, pki_dir, host
        self.host = host.address if host else "127.0.0.1"
        self.log = f"{lxcpath.rstrip('/')}.{unique('agent-')}.log"  # one per agent: several may share an lxcpath
        # Port 0: the kernel picks a free port in the agent's own namespace, and the agent prints it.
        argv = [
            sys.executable,
            "-m",
            "agent.daemon",
            "serve",
            "--listen",
            f"{self.host}:0",
            "--lxcpath",
            lxcpath,
            "--tls-cert",
            f"{pki_dir}/agent.crt",
            "--tls-key",
            f"{pki_dir}/agent.key",
            "--tls-ca",
            f"{pki_dir}/ca.crt",
            "--token-file",
            f"{pki_dir}/token",
            "--log-level",
            log_level,
            *extra,
        ]
        if host:
            argv = host.enter(argv)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.wait(10)
            with open(self.log) as log:
                raise RuntimeError(f"lxc-agent did not start: {line!r}\n{log.read()}")
        self.port = int(line.rsplit(":", 1)[1])

    @property
    def netns(self):
        return self.sim_host.netns if self.sim_host else None

    def connect(self, **overrides):
        """A client; for a lab node the address varies per run, so only the CA is checked, not the name."""
        from agent.client import connect

        options = {"pki_dir": self.pki_dir, "check_hostname": self.sim_host is None, **overrides}
        return connect(self.host, self.port, **options)

    def states(self):
        return lxc_states(self.lxcpath, self.netns)

    def stop(self, keep_containers=False):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_containers:
            force_remove_containers(self.lxcpath, self.netns)


def lxc_states(lxcpath, netns=None):
    """name -> state from `lxc-ls --fancy`, the real CLI, independent of the bindings.

    LXC's command sockets are abstract, so they exist per network namespace: ask from the agent's namespace.
    """
    argv = ["lxc-ls", "-P", lxcpath, "--fancy", "--fancy-format", "NAME,STATE"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    rows = [line.split() for line in _run(*argv).stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows}


def force_remove_containers(lxcpath, netns=None):
    """Stop and remove every container under lxcpath with the real CLIs.

    LXC's command sockets are abstract, so they exist per network namespace: stop from the agent's namespace.
    """
    if not os.path.isdir(lxcpath):
        return
    in_netns = ["ip", "netns", "exec", netns] if netns else []
    for name in os.listdir(lxcpath):
        folder = os.path.join(lxcpath, name)
        if not os.path.isdir(folder):
            continue
        subprocess.run(in_netns + ["lxc-stop", "-P", lxcpath, "-n", name, "-k"], capture_output=True)
        rootfs = os.path.join(folder, "rootfs")
        if os.path.isdir(rootfs):
            _run("btrfs", "subvolume", "delete", rootfs, check=False)
        shutil.rmtree(folder, ignore_errors=True)
