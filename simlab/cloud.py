"""A real dummy cloud for tests and benchmarks: devstack stable/2026.1 from ../shared/openstack (git bundles, as
these machines cannot reach opendev.org) in Debian containers, one controller and a group of fake computes.

The containers need the package registries (apt, PyPI through the host's CA), so the agent runs in this machine's
own namespace, with the cloud on a bridge and subnet of its own.
"""

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from agent import pki
from simlab import REPO, AgentProcess, loop_btrfs

MIRROR = Path(REPO).parent / "shared" / "openstack"
CONTROLLER_SERVICES = "key,mysql,rabbit,n-api,n-cond,n-sch,placement-api,g-api,q-svc"


def free_subnet(within="10.250.0.0/16", prefixlen=24):
    """A subnet of `prefixlen` (a /24 by default) in `within` that no route of this machine touches, or None."""
    table = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True)
    used = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in table.stdout.splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    for candidate in ipaddress.ip_network(within).subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(route) for route in used if route.prefixlen > 0):
            return str(candidate)
    return None


def require_real_cloud(bench):
    """Exit with the reason when this machine cannot run a benchmark's real cloud (root, the git bundles)."""
    if os.geteuid() != 0:
        sys.exit(f"{bench} needs root (LXC, loop mounts)")
    if not MIRROR.is_dir():
        sys.exit(f"no OpenStack sources at {MIRROR}: real devstack needs the git bundles of ../shared/openstack")


def coordinator(*argv, check=True):
    """The coordinator CLI for a benchmark: its result, or SystemExit with its output when it fails."""
    result = subprocess.run([sys.executable, "-m", "coordinator.cli", *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"coordinator {argv[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def local_agent(deployment, prefix):
    """(agent process, scratch folder, the coordinator's --store/--pki-dir arguments) for a benchmark's real cloud:
    an agent in this machine's namespace on a loop-file btrfs. On the way out the deployment `deployment` is
    destroyed and the agent stopped, before the loop mount goes."""
    with loop_btrfs(size="48G", prefix=prefix) as mountpoint, tempfile.TemporaryDirectory() as scratch:
        lxcpath = os.path.join(mountpoint, "lxc")
        os.mkdir(lxcpath)
        pki.create_pki(f"{scratch}/pki", ["127.0.0.1"])
        process = AgentProcess(lxcpath, f"{scratch}/pki", log_level="warning")
        common = ["--store", f"{scratch}/store.sqlite", "--pki-dir", f"{scratch}/pki"]
        try:
            yield process, scratch, common
        finally:
            coordinator("destroy", deployment, *common, check=False)
            process.stop()


def demo_config(computes, mirror=None, trust_host_ca=False, port=None, subnet=None):
    """configs/demo.json, what `make demo` deploys (merged, lean computes), with `computes` computes; OpenStack from
    `mirror` and the host's CA certificates trusted when given; for a benchmark, on this machine's agent at `port`
    and in `subnet`. The demo and the benchmarks deploy the same cloud through this."""
    with open(os.path.join(REPO, "configs", "demo.json")) as handle:
        data = json.load(handle)
    controller, group = data["controller"], data["nodes"][0]
    group["nodes_per_server"] = computes
    for engine, containers, hosts in (
        (controller, controller["provider"], controller["provider"]["host_provider"]),
        (group["engine"], group, group["provider"]),
    ):
        if mirror:
            engine["git_mirror"] = str(mirror)
        if trust_host_ca:
            containers["host_ca_certificates"] = True
        if subnet:
            containers["start_lxc_network"] = subnet
        if port:
            hosts["credentials"] = [{"user": "root", "host": "127.0.0.1", "port": port}]
    return data


def cloud_config(port, subnet, computes, prefix="rc", compute_settings=None):
    """One controller (LxcProvider) and an LxcEngine group of `computes` fake computes (the first stacked, the rest
    its clones), on this machine's agent at `port`; `compute_settings` are more LxcEngine keys."""
    credentials = [{"user": "root", "host": "127.0.0.1", "port": port}]
    devstack = {"git_mirror": str(MIRROR), "devstack_branch": "stable/2026.1"}
    return {
        "type": "MultihostEngine",
        "controller": {
            "type": "DevstackEngine",
            **devstack,
            "localrc": {
                "DOWNLOAD_DEFAULT_IMAGES": "False",
                "IMAGE_URLS": "",
                "ENABLED_SERVICES": CONTROLLER_SERVICES,
                "Q_AGENT": "none",
                "Q_ML2_PLUGIN_TYPE_DRIVERS": "local,flat",
                "Q_ML2_TENANT_NETWORK_TYPE": "local",
                "NEUTRON_CREATE_INITIAL_NETWORKS": "False",
                "ENABLE_TENANT_TUNNELS": "False",
                "VIRT_DRIVER": "fake",
            },
            "meta_sections": {
                "post-config|/$Q_PLUGIN_CONF_FILE": {"ml2": {"mechanism_drivers": ""}},
                "post-config|$NEUTRON_UWSGI_CONF": {"uwsgi": {"add-header": "Connection: close"}},
            },
            "provider": {
                "type": "LxcProvider",
                "containers_per_host": 1,
                "container_name_prefix": f"{prefix}-ctl",
                "distribution": "debian",
                "release": "bookworm",
                "start_lxc_network": subnet,
                "host_ca_certificates": True,
                "host_provider": {"type": "ExistingServers", "credentials": credentials},
            },
        },
        "nodes": [
            {
                "type": "LxcEngine",
                "distribution": "debian",
                "release": "bookworm",
                "container_name": f"{prefix}-cpu",
                "nodes_per_server": computes,
                "start_lxc_network": subnet,
                "host_ca_certificates": True,
                "provider": {"type": "ExistingServers", "credentials": credentials},
                "engine": {
                    "name": "DevstackEngine",
                    **devstack,
                    "localrc": {
                        "VIRT_DRIVER": "fake",
                        "DATABASE_TYPE": "mysql",
                        "MYSQL_HOST": "{controller_ip}",
                        "RABBIT_HOST": "{controller_ip}",
                        "GLANCE_HOSTPORT": "{controller_ip}:9292",
                        "ENABLED_SERVICES": "n-cpu",
                    },
                },
                **(compute_settings or {}),
            }
        ],
    }
