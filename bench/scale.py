#!/usr/bin/env python3
"""Per-container cost of N networked busybox containers on one simulated node, against 64, in one run.

Usage: bench/scale.py [N] [--small 64]
One lxc-agent in a network namespace (a simulated hardware node), its lxcpath on a loop-file btrfs. Each size
is: the subnet's bridge and NAT, a busybox base, N snapshot clones with static addresses, start, and a check that
every container answers a ping from the node at its own address; then destroy. Containers beyond the first
thousand of the subnet sit on bridge segments (a bridge takes 1,023 ports). Prints each phase's time, the ptys,
bridges and agent descriptors in use at the peak, and last `ratio=X.XX`: the per-container cost (clone to
answering) at N / at the small size.
"""

import argparse
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import limits, pki
from simlab import AgentProcess, Lab, loop_btrfs

SUBNET = ipaddress.IPv4Network("10.150.0.0/20")  # 4,094 addresses: room for N up to 4,000
BRIDGE = "lxcbr-scale"
PTY_NR = "/proc/sys/kernel/pty/nr"
SO_RCVBUFFORCE = 33  # Linux: SO_RCVBUF past rmem_max, for root (Python names it nowhere)


def addresses(count):
    hosts = SUBNET.hosts()
    next(hosts)  # the gateway
    return [f"{next(hosts)}/{SUBNET.prefixlen}" for _ in range(count)]


def deploy(agent, process, count):
    """Seconds for each phase of `count` containers, and what the host holds at the peak."""
    names = [f"s{count}-{i:04d}" for i in range(count)]
    wanted = dict(zip(names, addresses(count), strict=True))
    times = {}
    began = time.monotonic()
    agent.clone("base", names)
    times["clone"] = time.monotonic() - began
    began = time.monotonic()
    agent.set_addresses(BRIDGE, wanted)
    times["address"] = time.monotonic() - began
    began = time.monotonic()
    agent.start(names, timeout=600)
    times["start"] = time.monotonic() - began
    began = time.monotonic()
    silent = ping_all(process.sim_host, [address.split("/")[0] for address in wanted.values()])
    times["answer"] = time.monotonic() - began
    if silent:
        by_address = {address.split("/")[0]: name for name, address in wanted.items()}
        seen = [
            (by_address[address], agent.run(by_address[address], ["ip", "-o", "-4", "addr"])) for address in silent[:3]
        ]
        raise SystemExit(
            f"{len(silent)} of {count} containers did not answer, e.g. {silent[:5]}; inside: "
            + "; ".join(f"{name}: {result['stdout'].strip()!r}" for name, result in seen)
        )
    networks = agent.list_networks()
    peak = {
        "ptys": read_int(PTY_NR),
        "segments": sum(network.get("segments", 0) for network in networks),
        "descriptors": agent_descriptors(process),
    }
    began = time.monotonic()
    agent.destroy(names)
    times["destroy"] = time.monotonic() - began
    return times, peak


def read_int(path):
    with open(path) as handle:
        return int(handle.read())


def ping_all(host, targets):
    """The targets that did not answer, pinged from inside the node (this script again, in its namespace)."""
    result = subprocess.run(
        host.enter([sys.executable, os.path.abspath(__file__), "--ping"]),
        input="\n".join(targets),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the ping inside the node failed: {result.stderr.strip()}")
    return result.stdout.split()


def ping_from_here(targets, tries=5, wait=2.0):
    """ICMP echo to every target over one raw socket, again to the silent ones; prints those that never answer.
    Replies are read while sending: two thousand at once overflow a default receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
    ident = os.getpid() & 0xFFFF
    silent = set(targets)

    def receive(until):
        while silent:
            ready, _, _ = select.select([sock], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                return
            packet, (source, _) = sock.recvfrom(1024)
            kind, ident_seen = packet[20], struct.unpack("!H", packet[24:26])[0]
            if kind == 0 and ident_seen == ident:
                silent.discard(source)

    for _ in range(tries):
        for sequence, target in enumerate(sorted(silent)):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence & 0xFFFF)
            sock.sendto(header[:2] + struct.pack("!H", checksum(header)) + header[4:], (target, 0))
            receive(time.monotonic())
        receive(time.monotonic() + wait)
        if not silent:
            break
    print("\n".join(sorted(silent)))


def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def agent_descriptors(process):
    """Open descriptors of the agent process (its tree's root inside the node's nsenter)."""
    pids = subprocess.run(["pgrep", "-f", f"agent.daemon serve.*{process.lxcpath}"], capture_output=True, text=True)
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids.stdout.split() if os.path.isdir(f"/proc/{pid}"))


def run(process, sizes):
    """Each size deployed, checked and destroyed in turn; per-container seconds to answering, by size."""
    agent = process.connect()
    agent.ensure_network(BRIDGE, str(SUBNET))
    agent.create("base", "busybox")
    per_container = {}
    for count in sizes:
        times, peak = deploy(agent, process, count)
        up = sum(seconds for phase, seconds in times.items() if phase != "destroy")
        per_container[count] = up / count
        print(
            f"{count:5} containers: "
            + "  ".join(f"{phase} {seconds:6.2f} s" for phase, seconds in times.items())
            + f"  -> {1000 * up / count:5.1f} ms each to answering; at the peak {peak['ptys']} ptys in use, "
            f"{1 + peak['segments']} bridge(s), {peak['descriptors']} agent descriptors",
            flush=True,
        )
    agent.destroy(["base"])
    agent.destroy_network(BRIDGE)
    return per_container


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=2000, help="containers in the large run (default 2000)")
    parser.add_argument("--small", type=int, default=64, help="containers in the run it is compared with")
    parser.add_argument("--ping", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ping:
        ping_from_here(sys.stdin.read().split())
        return 0
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (LXC, loop mounts, network namespaces)")
    if not 1 <= args.small <= args.n <= SUBNET.num_addresses - 2:
        sys.exit(f"need 1 <= --small <= N <= {SUBNET.num_addresses - 2}")
    # The node's agent cannot raise what only the first network namespace has (net.core.netdev_max_backlog):
    # raised here, as lxc-agent does on a real host.
    for key, (old, new) in limits.ensure_minimums().items():
        print(f"raised {key} from {old} to {new}, as lxc-agent does on a real host", flush=True)
    lab = Lab()
    try:
        with loop_btrfs(size="16G", prefix="lxcagent-bench-") as mountpoint, tempfile.TemporaryDirectory() as scratch:
            host = lab.add_host()
            pki.create_pki(f"{scratch}/pki", [host.address])
            process = AgentProcess(f"{mountpoint}/node", f"{scratch}/pki", host=host, log_level="warning")
            try:  # inside the mount: stop() removes what a failed run left running there
                per_container = run(process, (args.small, args.n))
            finally:
                process.stop()
    finally:
        lab.remove()
    print(f"ratio={per_container[args.n] / per_container[args.small]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
