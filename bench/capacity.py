#!/usr/bin/env python3
"""How many real computes this machine holds: the demo's cloud with N computes, deployed and measured idle.

Usage: bench/capacity.py [--computes 64] [--idle 120] [--servers 8]
Deploys what `make demo COMPUTES=N` deploys (configs/demo.json: a controller and N merged, lean fake computes, the
first stacked and N-1 clones of it; devstack stable/2026.1 from ../shared/openstack) through the coordinator CLI,
with an agent in this machine's own namespace on a loop-file btrfs, then prints
- how long the deploy took and its convergence (every compute an up nova-compute service and hypervisor);
- MemAvailable with every compute up, and what KSM saves;
- over --idle seconds of an idle cloud: how busy the machine's cores were, the controller's CPU and the computes'
  (their sum, and the median and max of one), all in % of one core;
- the oldest nova-compute heartbeat (seconds since its service last reported, as nova records it);
- that a client boots --servers servers without networks (compute API 2.37) and deletes them, and how long it took;
then destroys the cloud, and last `computes_up=N` (nova-compute services up at the end).
"""

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coordinator.providers import prefix_for
from simlab.cloud import MIRROR, coordinator, demo_config, free_subnet, local_agent, require_real_cloud

MIB = 1024 * 1024
KSM = "/sys/kernel/mm/ksm"
ADMIN = (
    "cd /opt/stack/devstack && source ./openrc admin admin >/dev/null 2>&1 && "
    "export PATH=/opt/stack/data/venv/bin:$PATH OS_COMPUTE_API_VERSION=2.37 && "
)


def mem_available():
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))


def ksm_saved():
    try:
        with open(f"{KSM}/pages_sharing") as handle:
            return int(handle.read()) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def cpu_times():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def container_cpu(name):
    """CPU nanoseconds a container's payload cgroup used so far (cgroup v1 cpuacct, else v2 cpu.stat)."""
    for root in ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"):
        found = _payload(root, name)
        if found:
            with open(os.path.join(found, "cpuacct.usage")) as handle:
                return int(handle.read())
    found = _payload("/sys/fs/cgroup/unified", name) or _payload("/sys/fs/cgroup", name)
    if found and os.path.exists(os.path.join(found, "cpu.stat")):
        with open(os.path.join(found, "cpu.stat")) as handle:
            usage = next(int(line.split()[1]) for line in handle if line.startswith("usage_usec"))
        return usage * 1000
    raise SystemExit(f"no cgroup with the CPU time of container {name}")


def _payload(root, name):
    for parent, folders, _ in os.walk(os.path.join(root, "lxc-agent")):
        if f"lxc.payload.{name}" in folders:
            return os.path.join(parent, f"lxc.payload.{name}")
        if parent.count(os.sep) - root.count(os.sep) >= 2:
            folders[:] = []
    return None


def admin(agent, controller, command, timeout=600):
    result = agent.run(controller, ["bash", "-c", ADMIN + command], user="stack", timeout=timeout)
    if result["exit_code"] != 0:
        raise SystemExit(f"{command!r} failed in {controller}: {result['stderr'][-2000:]}")
    return result["stdout"]


def nova_computes(agent, controller):
    """(services up, oldest heartbeat in seconds) from nova's service list."""
    services = json.loads(admin(agent, controller, "openstack compute service list --service nova-compute -f json"))
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ages = [
        (now - datetime.datetime.fromisoformat(service["Updated At"].split(".")[0])).total_seconds()
        for service in services
        if service.get("Updated At")
    ]
    return sum(1 for service in services if service["State"] == "up"), max(ages, default=float("nan"))


def idle_figures(seconds, controller, computes):
    busy0, total0 = cpu_times()
    used0 = {name: container_cpu(name) for name in [controller, *computes]}
    time.sleep(seconds)
    busy1, total1 = cpu_times()
    used = {name: (container_cpu(name) - used0[name]) / 1e9 / seconds * 100 for name in used0}
    per_compute = [used[name] for name in computes]
    return {
        "machine": (busy1 - busy0) / max(1, total1 - total0) * 100,
        "controller": used[controller],
        "computes": sum(per_compute),
        "compute_median": statistics.median(per_compute),
        "compute_max": max(per_compute),
    }


def boot_and_delete(agent, controller, count):
    began = time.monotonic()
    admin(
        agent,
        controller,
        "head -c 1048576 /dev/zero >/tmp/dummy.img && (openstack image show dummy >/dev/null 2>&1 || openstack "
        "image create --disk-format raw --container-format bare --public --file /tmp/dummy.img dummy >/dev/null)",
    )
    admin(
        agent,
        controller,
        f"openstack server create --image dummy --flavor m1.tiny --nic none --min {count} --max {count} "
        "--wait capacity >/dev/null",
        timeout=1200,
    )
    servers = json.loads(admin(agent, controller, "openstack server list --long -f json"))
    active = [server for server in servers if server["Status"] == "ACTIVE"]
    hosts = {server["Host"] for server in active}
    admin(agent, controller, "openstack server delete --wait $(openstack server list -f value -c ID)", timeout=1200)
    left = json.loads(admin(agent, controller, "openstack server list -f json"))
    return len(active), len(hosts), len(left), time.monotonic() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=64, help="fake computes (default 64)")
    parser.add_argument("--idle", type=int, default=120, help="seconds of idle cloud to measure (default 120)")
    parser.add_argument("--settle", type=int, default=120, help="seconds to let it settle first (default 120)")
    parser.add_argument("--servers", type=int, default=8, help="servers a client boots and deletes (default 8)")
    args = parser.parse_args(argv)
    require_real_cloud("bench/capacity.py")
    subnet = free_subnet(prefixlen=min(24, prefix_for(args.computes + 1)))
    if subnet is None:
        sys.exit("no free subnet for the cloud in 10.250.0.0/16 on this machine")
    up = 0
    with local_agent("capacity", "lxcagent-capacity-") as (process, scratch, common):
        config = f"{scratch}/cloud.json"
        with open(config, "w") as handle:
            json.dump(demo_config(args.computes, MIRROR, True, process.port, subnet), handle)
        plan = json.loads(coordinator("plan", config, "--format", "json").stdout)
        controller = plan["controller"]
        computes = [node["name"] for node in plan["nodes"] if node["role"] == "compute"]
        began = time.monotonic()
        deployed = coordinator("deploy", config, "--name", "capacity", "--log-dir", f"{scratch}/logs", *common)
        took = time.monotonic() - began
        converged = re.search(r"(\d+)/(\d+) nova-compute services up .* in (\S+)", deployed.stdout)
        if not converged:
            raise SystemExit(f"the cloud did not converge:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}")
        print(f"deployed 1 controller + {args.computes} fake computes in {took:.0f} s; {converged.group(0)}")
        phases = re.findall(r"^(\w[\w ]*?)\s+(\d+\.\d) s$", deployed.stdout, re.M)
        print("phases: " + ", ".join(f"{name} {seconds} s" for name, seconds in phases), flush=True)
        time.sleep(args.settle)
        agent = process.connect()
        available, saved = mem_available() / MIB, ksm_saved() / MIB
        print(f"MemAvailable with every compute up: {available:.0f} MiB (KSM saves {saved:.0f} MiB)")
        idle = idle_figures(args.idle, controller, computes)
        print(
            f"idle for {args.idle} s: the machine {idle['machine']:.0f} % busy; controller {idle['controller']:.1f} % "
            f"of a core, computes {idle['computes']:.1f} % together (one: median {idle['compute_median']:.2f} %, "
            f"max {idle['compute_max']:.2f} %)"
        )
        up, oldest = nova_computes(agent, controller)
        print(f"nova-compute services up: {up}/{args.computes}; oldest heartbeat {oldest:.0f} s ago")
        if args.servers:
            active, hosts, left, seconds = boot_and_delete(agent, controller, args.servers)
            print(
                f"a client booted {active}/{args.servers} servers (on {hosts} hypervisors) and deleted them "
                f"({left} left) in {seconds:.0f} s"
            )
        up, oldest = nova_computes(agent, controller)
    print(f"computes_up={up}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
