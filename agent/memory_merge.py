"""Kernel same-page merging for containers whose processes are copies of each other (a host's fake computes).

Clones run the same programs from the same files, yet each nova-compute builds its own Python heap: 64 computes
hold 64 nearly equal copies. KSM merges equal anonymous pages, but only pages it is told about. A container started
with merging gets two things from the worker that starts it, both inherited by every process in it:

- PR_SET_MEMORY_MERGE (Linux 6.4): all its memory may be merged, without programs asking with madvise;
- address-space layout randomisation off (setarch -R as its init's launcher): equal heaps hold equal pointers.
  Measured here with 8 equal Python processes: KSM merged 0.9 MiB of each process's 66 MiB with randomisation on,
  9.3 MiB without it, 20.7 MiB when hash randomisation was off too (the engine sets PYTHONHASHSEED in computes).

Commands that run() attaches come from the agent's side and are not merged; the services init starts are.
Both weaken a container's hardening (ASLR); they are for dummy computes, and only when asked. ksmd is turned on
(with the kernel's scan-time advisor) the first time a container asks, and left on: those containers need it.
"""

import ctypes
import errno
import logging
import os

from agent.errors import InvalidArgument

PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68
KSM = "/sys/kernel/mm/ksm"
# The container's init runs through this launcher from its own root filesystem (util-linux, in every Debian and
# Ubuntu image): liblxc clears personality flags when it executes init with the container's capabilities.
LAUNCHER = ("usr/bin/setarch", "-R")
INIT = "/sbin/init"

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)


def problem():
    """Why this kernel cannot merge a container's memory (None if it can)."""
    if not os.path.isfile(os.path.join(KSM, "run")):
        return "this kernel has no KSM (CONFIG_KSM is not set: no /sys/kernel/mm/ksm)"
    if _libc.prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) < 0:
        code = ctypes.get_errno()
        return f"this kernel has no PR_SET_MEMORY_MERGE (Linux 6.4 or later has it): {os.strerror(code)}"
    return None


def require():
    found = problem()
    if found:
        raise InvalidArgument(f"merge_memory: {found}; start the containers without it", argument="merge_memory")


def ensure_ksmd(ksm=KSM):
    """ksmd on, with the scan-time advisor where the kernel has it (it paces scanning to the memory to scan)."""
    if _read(ksm, "run") != "1":
        _write(ksm, "run", "1")
        log.info("turned kernel same-page merging on (%s/run = 1) for containers started with merge_memory", ksm)
    if _read(ksm, "advisor_mode") == "[none] scan-time":
        _write(ksm, "advisor_mode", "scan-time")
        log.info("set %s/advisor_mode to scan-time: ksmd paces itself to the memory it scans", ksm)


def set_for_children(merge):
    """This process's memory, and that of every process it forks from now on, mergeable (or not again)."""
    if _libc.prctl(PR_SET_MEMORY_MERGE, 1 if merge else 0, 0, 0, 0) < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_MEMORY_MERGE): {os.strerror(code or errno.EINVAL)}")


def init_command(rootfs_layers):
    """lxc.init.cmd that starts the container's init without layout randomisation, or None when the launcher is
    in none of the rootfs layers (top first)."""
    for layer in rootfs_layers:
        if os.path.lexists(os.path.join(layer, LAUNCHER[0])):
            return f"/{LAUNCHER[0]} {LAUNCHER[1]} {INIT}"
    return None


def savings(ksm=KSM):
    """{running, saved}: whether ksmd runs, and the bytes merging saves now (`pages_sharing`: "how many more
    sites are sharing them, i.e. how much saved", in the kernel's words); None on a kernel without KSM."""
    run = _read(ksm, "run")
    if run is None:
        return None
    sharing = _read(ksm, "pages_sharing")
    return {"running": run == "1", "saved": int(sharing or 0) * os.sysconf("SC_PAGE_SIZE")}


def _read(folder, name):
    try:
        with open(os.path.join(folder, name)) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _write(folder, name, value):
    with open(os.path.join(folder, name), "w") as handle:
        handle.write(value)
