#!/usr/bin/env python3
"""Host memory per fake compute of a real cloud, measured in one run.

Usage: bench/density.py [--computes 16] [--starts-per-second R] [--merge-memory]
Deploys a real cloud through the coordinator CLI (simlab.cloud: devstack stable/2026.1 from ../shared/openstack,
one controller and N fake computes, the first stacked and N-1 clones of it) with an agent in this machine's own
namespace on a loop-file btrfs, then measures
- each compute's cgroup: usage, and working set (usage less inactive file pages, as cAdvisor and the kubelet
  count it), median and max;
- the host's MemAvailable with every compute running, then with the clones stopped: the difference over N-1 is
  what one more compute costs the host.
Prints those and the deploy's convergence time, destroys the cloud, and last `mib_per_compute=X` (host memory
per added compute, MiB).

--merge-memory deploys the computes with merge_memory (agent.memory_merge), waits until KSM has merged what it
will, and measures the host's memory twice side by side: merged, then with KSM's pages unmerged
(/sys/kernel/mm/ksm/run = 2); `merged_ratio=X` is the first over the second. The last line stays
`mib_per_compute` (merged).
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simlab.cloud import cloud_config, coordinator, free_subnet, local_agent, require_real_cloud

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
KSM = "/sys/kernel/mm/ksm"


def mem_available():
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no MemAvailable in /proc/meminfo")


def settled_available(seconds=20, every=2):
    """MemAvailable once it stops moving much: the median of a short series."""
    samples = []
    for _ in range(max(1, seconds // every)):
        samples.append(mem_available())
        time.sleep(every)
    return statistics.median(samples)


def describe(values):
    return f"median {statistics.median(values) / MIB:6.1f} MiB, max {max(values) / MIB:6.1f} MiB"


def ksm(name):
    with open(f"{KSM}/{name}") as handle:
        return int(handle.read().split()[0])


def wait_merged(limit=1800):
    """Until KSM's shared pages stop growing: two full scans in a row that add less than 1 %."""
    began, last, calm = time.monotonic(), -1, 0
    scans = first = ksm("full_scans")
    while time.monotonic() - began < limit and calm < 2:
        time.sleep(5)
        if ksm("full_scans") == scans:
            continue
        scans, sharing = ksm("full_scans"), ksm("pages_sharing")
        calm = calm + 1 if last >= 0 and sharing - last < 0.01 * max(1, last) else 0
        last = sharing
    print(
        f"KSM: {ksm('pages_sharing') * PAGE / MIB:.0f} MiB saved, settled after {scans - first} more full "
        f"scan(s) in {time.monotonic() - began:.0f} s",
        flush=True,
    )


def measure(agent, plan, settle, merged):
    """Working sets, and host memory per added compute: (MemAvailable with the clones stopped - with them
    running) / clones; when merged, also with KSM's pages unmerged, side by side."""
    computes = [node["name"] for node in plan["nodes"] if node["role"] == "compute"]
    clones = [node["name"] for node in plan["nodes"] if node["kind"] == "clone"]
    time.sleep(settle)  # nova-computes finish their first periodic tasks
    if merged:
        wait_merged()
    statuses = {status["name"]: status for status in agent.list(computes)}
    usage = [statuses[name]["memory"] for name in computes]
    working = [statuses[name]["working_set"] for name in computes]
    running = {"as deployed": settled_available()}
    if merged:
        with open(f"{KSM}/run", "w") as handle:
            handle.write("2")  # unmerge every merged page, stop merging
        running["unmerged"] = settled_available()
    agent.stop(clones, 30)
    stopped = settled_available()
    return usage, working, {key: (stopped - value) / max(1, len(clones)) for key, value in running.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=16, help="fake computes (default 16; 64 for the note)")
    parser.add_argument("--starts-per-second", type=float, help="the compute group's starts_per_second")
    parser.add_argument("--settle", type=int, default=60, help="seconds to let the computes settle before measuring")
    parser.add_argument("--merge-memory", action="store_true", help="computes with merge_memory, KSM on and off")
    args = parser.parse_args(argv)
    require_real_cloud("bench/density.py")
    subnet = free_subnet()
    if subnet is None:
        sys.exit("no free /24 in 10.250.0.0/16 on this machine")
    settings = {"starts_per_second": args.starts_per_second} if args.starts_per_second else {}
    if args.merge_memory:
        settings["merge_memory"] = True
    ksm_before = ksm("run") if os.path.exists(f"{KSM}/run") else None
    try:
        with local_agent("density", "lxcagent-density-") as (process, scratch, common):
            config = f"{scratch}/cloud.json"
            with open(config, "w") as handle:
                json.dump(cloud_config(process.port, subnet, args.computes, "dn", settings), handle)
            plan = json.loads(coordinator("plan", config, "--format", "json").stdout)
            began = time.monotonic()
            deployed = coordinator("deploy", config, "--name", "density", "--log-dir", f"{scratch}/logs", *common)
            took = time.monotonic() - began
            converged = re.search(r"(\d+)/(\d+) nova-compute services up .* in (\S+)", deployed.stdout)
            if not converged or converged.group(1) != converged.group(2):
                raise SystemExit(f"the cloud did not converge:\n{deployed.stdout[-3000:]}")
            print(f"deployed 1 controller + {args.computes} fake computes in {took:.0f} s; {converged.group(0)}")
            usage, working, per_compute = measure(process.connect(), plan, args.settle, args.merge_memory)
            print(f"compute cgroup usage:       {describe(usage)}")
            print(f"compute working set:        {describe(working)}")
            for how, value in per_compute.items():
                print(
                    f"host memory per compute:    {value / MIB:6.1f} MiB ({how}; MemAvailable, clones running vs "
                    "stopped)"
                )
            if args.merge_memory:
                print(f"merged_ratio={per_compute['as deployed'] / per_compute['unmerged']:.2f}")
    finally:
        if ksm_before is not None and ksm("run") != ksm_before:
            with open(f"{KSM}/run", "w") as handle:  # as this machine had it (2 unmerged already)
                handle.write(str(ksm_before) if ksm_before != 0 else "2")
            if ksm_before == 0:
                with open(f"{KSM}/run", "w") as handle:
                    handle.write("0")
    print(f"mib_per_compute={per_compute['as deployed'] / MIB:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
