"""Containers started by a small process of their own: `python -m agent.starter`, run by a worker per batch.

liblxc's daemonized start forks its caller twice, and the second child stays as the container's monitor for as
long as the container runs: every monitor is a copy-on-write image of whatever called start. Called from a worker
(32 MiB of Python heap, the agent's modules and pyroute2), each start copied that heap's page tables, and 2,000
monitors shared its pages, so the kernel's walks over them (reverse mapping, DAMON) grew with every container.
This process imports liblxc's binding and little else. Measured with 1,500 busybox containers without networking,
a start took 9 to 16 ms from such a process, against 37 to 56 ms from one holding 200 MiB more.

It reads one JSON batch on stdin, {"lxcpath", "umask", "merge_memory", "containers": [{"name", "config"}]} (the
config items the worker chose for this start), and writes {name: started} on stdout. It takes no arguments; names
and config come from the agent's worker, which checked them. Each start is called by a child that exits when it
returns: liblxc moves the caller of a daemonized start into the container's monitor cgroup (it takes the caller for
a short-lived lxc-start), and a process that stayed there would keep that cgroup from being removed at the stop.
"""

import json
import os
import sys

import lxc

from agent import memory_merge


def start(lxcpath, entry):
    """Whether container entry["name"] started: configured for this start and started (daemonized) by a child
    that exits when start returns. Forks.

    The child also makes the container's liblxc object and sets its config: liblxc keeps the log file that
    `lxc.log.file` opens after the object is gone (200 objects given a log file left 60 descriptors open), so
    this process would gather hundreds over a batch of thousands, and every later fork, and every monitor's
    closing of inherited descriptors, would walk them all."""
    child = os.fork()
    if child == 0:
        code = 1  # also when liblxc raises: the child must never return into the loop
        try:
            container = lxc.Container(entry["name"], lxcpath)
            if all(container.set_config_item(key, value) for key, value in entry["config"]):
                code = 0 if container.start(useinit=False, daemonize=True, close_fds=True) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


def start_batch(batch):
    """{name: started} for the batch's containers, in order."""
    os.umask(batch["umask"])
    if batch["merge_memory"]:  # inherited by every child, every monitor and init: the whole batch asked for it
        memory_merge.set_for_children(True)
    return {entry["name"]: start(batch["lxcpath"], entry) for entry in batch["containers"]}


def main():
    json.dump(start_batch(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
