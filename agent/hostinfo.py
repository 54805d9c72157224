"""What this host offers: kernel features the agent depends on, and memory."""

import errno
import os
import secrets

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent import memory_merge


def _filesystems():
    with open("/proc/filesystems") as handle:
        return {line.split()[-1] for line in handle if line.strip()}


def _can_create_link(kind, **attributes):
    """Ask the kernel itself: create a throwaway link of this kind and delete it (module autoload included).

    EEXIST means the kind is known and a link like it exists already (another agent probing in this
    namespace, or a tunnel with the same vni): the kind is there."""
    name = f"lxa{secrets.token_hex(4)}"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind=kind, **attributes)
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                return True
            if error.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOENT):
                return False
            raise
        ipr.link("del", ifname=name)
    return True


def _has_module(name):
    """A kernel module that is loaded, built in, or installed for this kernel (so loading it on demand works)."""
    if os.path.isdir(f"/sys/module/{name}"):
        return True
    release = os.uname().release
    for listing in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{listing}") as handle:
                if any(os.path.basename(line.split(":", 1)[0]).split(".ko")[0] == name for line in handle):
                    return True
        except FileNotFoundError:
            continue
    return False


def _has_loop_devices():
    """Loop devices a container could use (cinder's LVM backing file needs one)."""
    return os.path.exists("/dev/loop-control") or _has_module("loop")


def kernel_features():
    """What the kernel offers that deployments ask for: filesystems for storage, tunnel kinds, and what some
    OpenStack services need from the host (openvswitch for OVS/OVN, loop devices for cinder's LVM file)."""
    filesystems = _filesystems()
    # A random vni keeps probes of agents starting together in one namespace out of each other's way.
    return {
        "btrfs": "btrfs" in filesystems,
        "overlay": "overlay" in filesystems,
        "vxlan": _can_create_link("vxlan", vxlan_id=1 + secrets.randbelow(2**24 - 1), vxlan_port=4789),
        "ipip": _can_create_link("ipip"),
        "openvswitch": _has_module("openvswitch"),
        "loop": _has_loop_devices(),
        "memory_merge": memory_merge.problem() is None,  # KSM with PR_SET_MEMORY_MERGE: start(merge_memory=True)
    }


def memory_pressure(path="/proc/pressure/memory"):
    """The share of the last 10 s in which some task waited for memory (PSI "some avg10", in %), or None on a
    kernel without pressure stall information. MemAvailable counts page cache as free, but a host whose working
    set outgrew its memory reclaims and reads back the same code pages: this says so when MemAvailable does not."""
    try:
        with open(path) as handle:
            first = handle.readline().split()
    except OSError:
        return None
    fields = dict(field.split("=", 1) for field in first[1:] if "=" in field)
    try:
        return float(fields["avg10"])
    except (KeyError, ValueError):
        return None


def memory():
    """Total and available bytes, from /proc/meminfo."""
    values = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0]) * 1024
    return {"total": values["MemTotal"], "available": values["MemAvailable"]}
