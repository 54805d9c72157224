#!/usr/bin/env python3
"""Clone, start and destroy N busybox containers through lxc-agent, and with a plain in-process liblxc loop.

Usage: bench/clone_start.py N [--rounds R]
Makes its own loop-file btrfs, PKI and agent on 127.0.0.1, and removes them. Containers get no network
(loopback only), the same on both sides. The last line is `ratio=X.XX` (agent time / plain loop time).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import btrfsutil
import lxc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import pki
from simlab import AgentProcess, force_remove_containers, loop_btrfs


def plain_loop(lxcpath, source, names):
    """What a careful script would do with the bindings directly: snapshot, config, start, wait, destroy."""
    for name in names:
        os.mkdir(os.path.join(lxcpath, name))
        btrfsutil.create_snapshot(os.path.join(lxcpath, source, "rootfs"), os.path.join(lxcpath, name, "rootfs"))
        container = lxc.Container(name, lxcpath)
        assert container.load_config(os.path.join(lxcpath, source, "config"))
        assert container.set_config_item("lxc.rootfs.path", os.path.join(lxcpath, name, "rootfs"))
        assert container.set_config_item("lxc.uts.name", name)
        assert container.save_config()
    for name in names:
        assert lxc.Container(name, lxcpath).start(useinit=False, daemonize=True, close_fds=True), name
    for name in names:
        assert lxc.Container(name, lxcpath).wait("RUNNING", 30), name
    started = time.monotonic()
    for name in names:
        container = lxc.Container(name, lxcpath)
        assert container.stop(), name
        btrfsutil.delete_subvolume(os.path.join(lxcpath, name, "rootfs"))
        shutil.rmtree(os.path.join(lxcpath, name))
    return started


def agent_run(agent, source, names):
    assert agent.clone(source, names) == names
    assert agent.start(names) == names
    started = time.monotonic()
    assert agent.destroy(names) == names
    return started


def timed(function, *args):
    begin = time.monotonic()
    teardown_began = function(*args)
    end = time.monotonic()
    return teardown_began - begin, end - teardown_began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="containers per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating which goes first")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/clone_start.py needs root (LXC, loop mounts)")

    with loop_btrfs(prefix="lxcagent-bench-") as mountpoint, tempfile.TemporaryDirectory() as workdir:
        plain_path, agent_path = f"{mountpoint}/plain", f"{mountpoint}/agent"
        os.mkdir(plain_path)
        pki.create_pki(f"{workdir}/pki", ["127.0.0.1"])
        agent_process = AgentProcess(agent_path, f"{workdir}/pki", log_level="warning")
        try:
            return measure(agent_process.connect(), plain_path, args.n, args.rounds)
        finally:
            agent_process.stop()
            force_remove_containers(plain_path)


def measure(agent, plain_path, n, rounds):
    agent.create("src", "busybox")
    source = lxc.Container("src", plain_path)
    assert source.create("busybox", 0, (), "btrfs")
    source.clear_config_item("lxc.net")
    assert source.set_config_item("lxc.net.0.type", "empty") and source.save_config()

    names = [f"bench-{i:04d}" for i in range(n)]
    totals = {"agent": [0.0, 0.0], "plain": [0.0, 0.0]}
    for round_number in range(rounds):
        order = ["plain", "agent"] if round_number % 2 == 0 else ["agent", "plain"]
        for side in order:
            up, down = (
                timed(plain_loop, plain_path, "src", names)
                if side == "plain"
                else timed(agent_run, agent, "src", names)
            )
            totals[side][0] += up
            totals[side][1] += down
            print(f"round {round_number + 1} {side:5}: clone+start {up:6.2f} s  destroy {down:6.2f} s", flush=True)
    for side in ("plain", "agent"):
        up, down = totals[side]
        print(
            f"{side:5} total for {rounds} x {n}: clone+start {up:6.2f} s, destroy {down:6.2f} s, all {up + down:6.2f} s"
        )
    print(f"ratio={sum(totals['agent']) / sum(totals['plain']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
