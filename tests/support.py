"""Plain helpers for tests: independent checks with the real CLIs, and resource names that never collide."""

import json
import os
import subprocess
import time
from pathlib import Path

from simlab import lxc_states, unique  # noqa: F401  (tests import them from here too)


def sh(*argv, netns=None, check=True, input=None):
    """Run a command, optionally inside a network namespace; return its stdout."""
    if netns:
        argv = ("ip", "netns", "exec", netns) + argv
    result = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def links(netns=None):
    """Link names in a namespace, from `ip -j link` (independent of pyroute2)."""
    return sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=netns)))


def subvolumes(mountpoint):
    """Paths (relative to the mount) of every btrfs subvolume on it."""
    out = sh("btrfs", "subvolume", "list", "-o", mountpoint)
    return sorted(line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line)


def system_state(agent, name, timeout=180):
    """systemd's own verdict once booted; right after start its bus socket may not exist yet ("Failed to connect
    to bus", or "offline" while PID 1 is not systemd yet)."""
    deadline = time.monotonic() + timeout
    while True:
        result = agent.run(name, ["systemctl", "is-system-running", "--wait"], timeout=timeout)
        state = result["stdout"].strip() or result["stderr"].strip()
        if ("Failed to connect to bus" not in state and state != "offline") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


# The kernel's, not the agent's: a bridge without ports loses its carrier (its routes show linkdown) up to a
# second after it comes up, when the link watch runs; so does one whose last port goes.
CARRIER = {"NO-CARRIER", "LOWER_UP", "linkdown"}


def without_carrier(value):
    """`ip -j` output (links, addresses, routes) without what tells the carrier, to compare states."""
    if isinstance(value, dict):
        return {key: without_carrier(item) for key, item in value.items() if key != "operstate"}
    if isinstance(value, list):
        return [without_carrier(item) for item in value if not (isinstance(item, str) and item in CARRIER)]
    return value


def children_by_parent():
    """pid -> the pids of its children, for every process now (read from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def descendants(pid):
    """Every process below `pid` now: children, theirs, and so on."""
    children = children_by_parent()
    found, queue = [], [pid]
    while queue:
        found += children.get(queue[-1], [])
        queue += children.pop(queue.pop(), [])
    return found


def agent_pid(process):
    """The lxc-agent process itself under the nsenter/unshare/sh chain that started it in its node."""
    children = children_by_parent()
    queue = [process.pid]
    while queue:
        pid = queue.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent.daemon" in cmdline and b"serve" in cmdline:
            return pid
        queue += children.get(pid, [])
    raise AssertionError(f"no lxc-agent process under pid {process.pid}")
