#!/usr/bin/env python3
"""`make demo` (until the coordinator deploys): one lxc-agent, a handful of containers, and it cleans up.

Runs the agent inside a simulated hardware node (a network namespace), so the demo's bridge, NAT and containers
never touch this machine's own network. Prints each step, a table of the containers, and removes everything.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import pki
from simlab import AgentProcess, Lab, loop_btrfs

COUNT = 8
BRIDGE, SUBNET = "lxcbr-demo", "10.100.1.0/24"


STARTED = time.monotonic()  # one clock for the whole demo


def step(text):
    print(f"[{time.monotonic() - STARTED:6.2f} s] {text}", flush=True)


def main():
    if os.geteuid() != 0:
        sys.exit("make demo needs root: LXC containers, a loop-mounted btrfs and a network namespace")
    names = [f"compute-{i:03d}" for i in range(1, COUNT + 1)]
    with loop_btrfs(size="4G", prefix="lxcagent-demo-") as mountpoint, tempfile.TemporaryDirectory() as scratch:
        step(f"loop-file btrfs mounted at {mountpoint}")
        lab = Lab()
        host = lab.add_host()
        agent_process = None
        try:
            pki.create_pki(f"{scratch}/pki", [host.address])
            step(f"simulated hardware node {host.netns} at {host.address}; CA, certificates and token made")
            agent_process = AgentProcess(f"{mountpoint}/lxc", f"{scratch}/pki", host=host)
            agent = agent_process.connect()
            info = agent.info()
            step(
                f"lxc-agent {info['version']} on {host.address}:{agent_process.port} (TLS + token), "
                f"storage {info['storage']}, kernel {info['kernel_features']}"
            )
            agent.create("base", "busybox")
            step("created 'base' from the busybox template")
            gateway = agent.ensure_network(BRIDGE, SUBNET)["gateway"]
            step(f"bridge {BRIDGE} with {gateway} for {SUBNET}, NAT for traffic leaving the node")
            agent.clone("base", names)
            step(f"cloned {COUNT} containers from 'base' (btrfs snapshots)")
            agent.set_addresses(BRIDGE, {name: f"10.100.1.{10 + i}/24" for i, name in enumerate(names)})
            agent.start(names)
            step(f"gave each a static address and started all {COUNT}")
            print(f"\n{'container':14} {'state':8} {'address':12} {'memory':>9}  hostname     ping gateway")
            for entry in agent.list(names):
                name = entry["name"]
                hostname = agent.run(name, ["hostname"])["stdout"].strip()
                ping = agent.run(name, ["ping", "-c", "1", "-W", "2", gateway])["exit_code"] == 0
                print(
                    f"{name:14} {entry['state']:8} {','.join(entry['addresses']):12} "
                    f"{entry['memory'] / 2**20:7.1f} MB  {hostname:12} {'ok' if ping else 'FAILED'}"
                )
            print()
            agent.destroy(names + ["base"])
            agent.destroy_network(BRIDGE)
            step("destroyed the containers, their subvolumes and the bridge")
        finally:
            if agent_process:
                agent_process.stop()
            lab.remove()
    step("removed the node, the agent and the loop-file btrfs: nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
