#!/usr/bin/env python3
"""How much faster a repeat deploy is than the first, with golden nodes, measured in one run on a real cloud.

Usage: bench/repeat_deploy.py [--computes 64]
With an agent in this machine's own namespace on a new loop-file btrfs (so no golden image exists yet), deploys a
real cloud through the coordinator CLI (what `make demo COMPUTES=N` deploys: devstack stable/2026.1 from
../shared/openstack, one controller and N merged, lean fake computes, the first stacked and the rest its clones),
destroys it, and deploys
the same config again: the controller and the first compute then start from the golden images the first deploy
kept. The repeated cloud is then snapshotted and restored to its snapshot (`coordinator snapshot`, `restore`).
Prints both deploys' wall-clock times and phases, the snapshot's and the restore's (with the CPU time each kept
the machine busy, which bounds how fast the same work can go on its cores; for the repeat, per compute), then the
golden images' size
and the disk space they hold alone (the filesystem's use with and without them, once both deployments are gone);
last line `ratio=X.XX`, the repeat deploy's time over the first's.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simlab.cloud import MIRROR, coordinator, demo_config, free_subnet, local_agent, require_real_cloud

CONVERGED = re.compile(r"(\d+)/(\d+) nova-compute services up as (\d+) hypervisors .*")
PHASE = re.compile(r"^(\S[\w ]*?)\s+([\d.]+) s$", re.M)


def busy_cpu_seconds():
    """CPU time this machine has spent busy since boot, all cores (/proc/stat: every state but idle and iowait).
    Busy seconds over the number of cores bounds from below the wall-clock time the same work can take here."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def cpu_bound(busy, took):
    """How the CPU time of `took` seconds of work compares with the time itself on this machine's cores."""
    cores = os.cpu_count() or 1
    return (
        f"{busy:.0f} CPU-seconds busy: at least {busy / cores:.0f} s on {cores} cores, "
        f"{busy / cores / took:.0%} of its time"
    )


def deploy(config, common, logs, computes):
    """One deploy; (seconds, {phase: seconds}, what it said about golden nodes, CPU-seconds it kept busy)."""
    began, busy = time.monotonic(), busy_cpu_seconds()
    result = coordinator("deploy", config, "--name", "repeat", "--log-dir", logs, *common)
    took, busy = time.monotonic() - began, busy_cpu_seconds() - busy
    converged = CONVERGED.search(result.stdout)
    if not converged or not converged.group(1) == converged.group(2) == converged.group(3) == str(computes):
        raise SystemExit(f"the cloud did not converge:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    golden = [line for line in result.stderr.splitlines() if "golden image" in line or ": stack.sh: " in line]
    return took, dict(PHASE.findall(result.stderr)), golden, busy


def used_bytes(path):
    """The filesystem's bytes in use, once btrfs has finished removing deleted subvolumes."""
    subprocess.run(["btrfs", "subvolume", "sync", path], check=True, capture_output=True)
    os.sync()
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def snapshot_and_restore(common, lxcpath, computes):
    """The running cloud snapshotted and restored to it: both times, and the disk the snapshot holds alone."""
    began = time.monotonic()
    said = coordinator("snapshot", "repeat", "clean", *common).stdout.strip()
    taken = time.monotonic() - began
    print(f"  {said}", flush=True)
    began, busy = time.monotonic(), busy_cpu_seconds()
    restored = coordinator("restore", "repeat", "clean", *common)
    took, busy = time.monotonic() - began, busy_cpu_seconds() - busy
    converged = CONVERGED.search(restored.stdout)
    if not converged or converged.group(1) != str(computes):
        raise SystemExit(f"the restored cloud did not converge:\n{restored.stdout[-3000:]}\n{restored.stderr[-3000:]}")
    phases = ", ".join(f"{name} {float(value):.0f} s" for name, value in PHASE.findall(restored.stderr))
    with_snapshot = used_bytes(lxcpath)
    coordinator("snapshots", "repeat", "--delete", "clean", *common)
    without = used_bytes(lxcpath)
    print(
        f"snapshot of the running cloud: {taken:.1f} s; restore until converged: {took:.0f} s ({phases}; "
        f"{cpu_bound(busy, took)}); the snapshot held {(with_snapshot - without) / 2**20:.0f} MiB of disk alone "
        f"after the restore",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=64, help="fake computes in the cloud (default 64)")
    args = parser.parse_args(argv)
    require_real_cloud("bench/repeat_deploy.py")
    if args.computes < 1:
        sys.exit("need --computes of 1 or more")
    subnet = free_subnet()
    if subnet is None:
        sys.exit("no free /24 in 10.250.0.0/16 on this machine")
    with local_agent("repeat", "lxcagent-repeat-") as (process, scratch, common):
        config = f"{scratch}/cloud.json"
        with open(config, "w") as handle:
            json.dump(demo_config(args.computes, MIRROR, True, process.port, subnet), handle)
        times = {}
        for label in ("first", "repeat"):
            took, phases, golden, busy = deploy(config, common, f"{scratch}/logs", args.computes)
            times[label] = took
            shown = ", ".join(f"{name} {float(value):.0f} s" for name, value in phases.items())
            print(
                f"{label} deploy of 1 controller + {args.computes} computes: {took:.0f} s ({shown}; "
                f"{cpu_bound(busy, took)})",
                flush=True,
            )
            for line in golden:
                print(f"  {line}", flush=True)
            if label == "repeat":  # no stack.sh ran: what it cost is the computes' own starts (and the controller's)
                print(f"  {busy / args.computes:.1f} CPU-seconds per compute started", flush=True)
                snapshot_and_restore(common, process.lxcpath, args.computes)
            coordinator("destroy", "repeat", *common)
        images = json.loads(coordinator("golden", "list", "--json", *common).stdout)
        lxcpath = process.lxcpath
        with_images = used_bytes(lxcpath)
        coordinator("golden", "prune", *common)
        without = used_bytes(lxcpath)
        print(
            f"golden images: {len(images)}, {sum(image['size'] for image in images) / 2**30:.2f} GiB in their files, "
            f"{(with_images - without) / 2**30:.2f} GiB of disk held by them alone",
            flush=True,
        )
    print(f"ratio={times['repeat'] / times['first']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
