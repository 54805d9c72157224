#!/usr/bin/env python3
"""Cost per container on one simulated node vs. spread over several, deployed in parallel, in one run.

Usage: bench/multihost.py [--hosts 4] [--per-host 64] [--rounds 2]
Each node runs its own lxc-agent in a network namespace with its own lxcpath on a loop-file btrfs; a deploy on a
node is: bridge + NAT, a busybox base, clones with static addresses, start; the spread run also joins nodes 1..N-1
to node 0 with vxlan tunnels, as computes join the controller's host. Then everything is torn down.
The last line is `ratio=X.XX`: per-container cost spread over the nodes / on one node.
"""

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import pki
from simlab import AgentProcess, Lab, loop_btrfs


def deploy_node(process, index, count, tunnel_to=None):
    agent = process.connect()
    bridge, subnet = f"lxcbr-b{index}", f"10.{200 + index}.0.0/22"
    agent.ensure_network(bridge, subnet)
    mtu = None
    if tunnel_to is not None:
        mtu = agent.ensure_tunnel(f"lxt-b{index}", "vxlan", process.host, tunnel_to.host, [subnet], [])["mtu"]
        tunnel_to.connect().ensure_tunnel(f"lxt-b{index}", "vxlan", tunnel_to.host, process.host, [], [subnet])
    agent.create("base", "busybox")
    names = [f"n{index}-{i:04d}" for i in range(count)]
    agent.clone("base", names)
    agent.set_addresses(
        bridge, {name: f"10.{200 + index}.{1 + i // 250}.{1 + i % 250}/22" for i, name in enumerate(names)}, mtu
    )
    agent.start(names)
    return names


def teardown_node(process, index, names, tunnel_to=None):
    agent = process.connect()
    agent.destroy(names + ["base"])
    if tunnel_to is not None:
        agent.destroy_tunnel(f"lxt-b{index}")
        tunnel_to.connect().destroy_tunnel(f"lxt-b{index}")
    agent.destroy_network(f"lxcbr-b{index}")


def timed_run(processes, per_host, joined):
    """Deploy on every node at once, then tear down; returns seconds for the whole."""
    hub = processes[0] if joined else None
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:
        futures = [pool.submit(deploy_node, p, i, per_host, hub if i else None) for i, p in enumerate(processes)]
        names = [future.result() for future in futures]
        for future in [pool.submit(teardown_node, p, i, names[i], hub if i else None) for i, p in enumerate(processes)]:
            future.result()
    return time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--per-host", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/multihost.py needs root (LXC, loop mounts, network namespaces)")
    lab, processes = Lab(), []
    try:
        with loop_btrfs(prefix="lxcagent-bench-") as mountpoint, tempfile.TemporaryDirectory() as scratch:
            try:  # inside the mount: stop() removes what a failed run left running there
                hosts = [lab.add_host() for _ in range(args.hosts)]
                pki.create_pki(f"{scratch}/pki", [host.address for host in hosts])
                for index, host in enumerate(hosts):
                    processes.append(
                        AgentProcess(f"{mountpoint}/node{index}", f"{scratch}/pki", host=host, log_level="warning")
                    )
                single = spread = 0.0
                for round_number in range(args.rounds):
                    order = ("single", "spread") if round_number % 2 == 0 else ("spread", "single")
                    for side in order:
                        if side == "single":
                            seconds = timed_run(processes[:1], args.per_host, joined=False)
                            single += seconds
                        else:
                            seconds = timed_run(processes, args.per_host, joined=True)
                            spread += seconds
                        count = args.per_host * (1 if side == "single" else args.hosts)
                        print(
                            f"round {round_number + 1} {side:6}: {count:4} containers in {seconds:6.2f} s, "
                            f"{1000 * seconds / count:6.1f} ms each",
                            flush=True,
                        )
                per_single = single / (args.rounds * args.per_host)
                per_spread = spread / (args.rounds * args.per_host * args.hosts)
                print(f"one node:  {1000 * per_single:6.1f} ms per container")
                print(
                    f"{args.hosts} nodes: {1000 * per_spread:6.1f} ms per container (deployed in parallel, "
                    f"sharing {os.cpu_count()} cores)"
                )
                print(f"ratio={per_spread / per_single:.2f}")
            finally:
                for process in processes:
                    process.stop()
    finally:
        lab.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
