"""A real dummy cloud for tests and benchmarks: devstack stable/2026.1 from ../shared/openstack (git bundles, as
these machines cannot reach opendev.org) in Debian containers, one controller and a group of fake computes.

The containers need the package registries (apt, PyPI through the host's CA), so the agent runs in this machine's
own namespace, with the cloud on a bridge and subnet of its own.
"""

import ipaddress
import subprocess
from pathlib import Path

from simlab import REPO

MIRROR = Path(REPO).parent / "shared" / "openstack"
CONTROLLER_SERVICES = "key,mysql,rabbit,n-api,n-cond,n-sch,placement-api,g-api,q-svc"


def free_subnet(within="10.250.0.0/16"):
    """A /24 in `within` that no route of this machine touches, or None."""
    table = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True)
    used = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in table.stdout.splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    for candidate in ipaddress.ip_network(within).subnets(new_prefix=24):
        if not any(candidate.overlaps(route) for route in used if route.prefixlen > 0):
            return str(candidate)
    return None


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
