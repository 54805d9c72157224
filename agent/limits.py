"""Host limits that hundreds of system containers need, raised (never lowered) when the agent starts.

Each systemd container takes several inotify instances: with Debian's default of 128 per user, the 27th container's
init fails at once ("Too many open files"), and liblxc fails to spawn the 510th container when ptys run out
(kernel.pty.max). The inotify, map and ARP values follow LXD's production-setup advice; the ARP table limit
matters once a thousand containers share one bridge. Raised limits stay after the agent exits: containers that
still run depend on them.
"""

import logging
import os

log = logging.getLogger(__name__)

MINIMUMS = {
    "fs/inotify/max_user_instances": 1048576,
    "fs/inotify/max_user_watches": 1048576,
    "fs/inotify/max_queued_events": 1048576,
    "vm/max_map_count": 262144,
    "kernel/pid_max": 4194304,
    # A container holds a pty per tty and one for its console (two with the agent's lxc.tty.max of 1); the
    # first 1,024 of the default 4,096 are reserved for the host's own /dev/pts.
    "kernel/pty/max": 65536,
    # A broadcast on a bridge (the gateway's ARP for a container) is queued once per port on the sending CPU's
    # backlog: with the default 1,000, a subnet of 2,000 containers loses half of every broadcast (measured:
    # containers that never got their ARP request). Only the first network namespace has it.
    "net/core/netdev_max_backlog": 16384,
    "net/ipv4/neigh/default/gc_thresh1": 1024,
    "net/ipv4/neigh/default/gc_thresh2": 4096,
    "net/ipv4/neigh/default/gc_thresh3": 8192,
}


PROC_SYS = "/proc/sys"


def current(proc_sys=PROC_SYS):
    """key -> value for every limit this host exposes (a network namespace lacks the neighbour defaults)."""
    values = {}
    for key in MINIMUMS:
        try:
            with open(os.path.join(proc_sys, key)) as handle:
                values[key.replace("/", ".")] = int(handle.read().split()[0])
        except (OSError, ValueError):
            continue
    return values


def ensure_minimums(proc_sys=PROC_SYS):
    """Raise each limit below its minimum; returns what changed. A limit that cannot be written is logged.

    `proc_sys` is where the settings are: /proc/sys, or for tests a folder laid out like it."""
    changed = {}
    for key, minimum in MINIMUMS.items():
        path = os.path.join(proc_sys, key)
        try:
            with open(path) as handle:
                value = int(handle.read().split()[0])
            if value < minimum:
                with open(path, "w") as handle:
                    handle.write(str(minimum))
                changed[key.replace("/", ".")] = (value, minimum)
                log.info("raised %s from %d to %d for many containers", key.replace("/", "."), value, minimum)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            log.warning(
                "cannot raise %s to %d (%s): containers beyond the current limit may fail to start",
                key.replace("/", "."),
                minimum,
                error,
            )
    return changed
