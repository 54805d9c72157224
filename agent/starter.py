"""Containers started by a small process of their own: `python -m agent.starter`, run by a worker per batch.

liblxc's daemonized start forks its caller twice, and the second child stays as the container's monitor for as
long as the container runs: every monitor is a copy-on-write image of whatever called start. Called from a worker
(32 MiB of Python heap, the agent's modules and pyroute2), each start copied that heap's page tables, and 2,000
monitors shared its pages, so the kernel's walks over them (reverse mapping, DAMON) grew with every container.
This process imports liblxc's binding and little else. Measured with 1,500 busybox containers without networking,
a start took 9 to 16 ms from such a process, against 37 to 56 ms from one holding 200 MiB more.

It reads one JSON batch on stdin, {"lxcpath", "umask", "merge_memory", "containers": [{"name", "config"}]} (the
config items the worker chose for this start), and writes a JSON line {"name", "started"} on stdout as each start
returns, so the worker can finish each container's network (agent.neighbours) while the others start. It takes
no arguments; names and config come from the agent's worker, which checked them. Each start is called by a child
that exits when it returns: liblxc moves the caller of a daemonized start into the container's monitor cgroup (it
takes the caller for a short-lived lxc-start), and a process that stayed there would keep that cgroup from being
removed at the stop.

STARTS_AT_ONCE children start containers side by side. A start is a chain of handoffs (the caller, the monitor,
the container's init, each waiting for the other's namespaces and cgroups), and one start at a time left the two
cores here idle a quarter of the time with 1,500 containers running (perf). bench/scale.py measured 2,000 starts
in 88.6 s one at a time, 59.8 s two at a time and 49.8 s four at a time on 2 cores (64 starts: 1.53, 1.03 and
1.01 s); eight at a time was no faster than four.
"""

import json
import os
import select
import sys

import lxc

from agent import memory_merge

STARTS_AT_ONCE = 4


def spawn_start(lxcpath, entry):
    """The pid of a child that starts container entry["name"] (daemonized), configured for this start, and exits
    0 if it started.

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
    return child


def start_batch(batch, at_once=STARTS_AT_ONCE, report=None):
    """{name: started} for the batch's containers, in order; at most `at_once` of them starting at a time, begun
    in the batch's order. report(name, started) is called as each start returns.

    Each child is awaited through a pidfd, so this reaps its own children only (the tests call it in-process)."""
    os.umask(batch["umask"])
    if batch["merge_memory"]:  # inherited by every child, every monitor and init: the whole batch asked for it
        memory_merge.set_for_children(True)
    waiting = list(reversed(batch["containers"]))
    starting: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, name)
    started: dict[str, bool] = {}
    poller = select.poll()
    try:
        while waiting or starting:
            while waiting and len(starting) < at_once:
                entry = waiting.pop()
                pid = spawn_start(batch["lxcpath"], entry)
                pidfd = os.pidfd_open(pid)
                starting[pidfd] = (pid, entry["name"])
                poller.register(pidfd, select.POLLIN)
            for pidfd, _ in poller.poll():
                pid, name = starting.pop(pidfd)
                poller.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                started[name] = os.waitstatus_to_exitcode(status) == 0
                if report:
                    report(name, started[name])
    finally:  # a child left when this fails (it cannot be stopped halfway through a start) is still reaped
        for pidfd, (pid, _) in starting.items():
            os.waitpid(pid, 0)
            os.close(pidfd)
    return {entry["name"]: started[entry["name"]] for entry in batch["containers"]}


def main():
    def report(name, started):
        print(json.dumps({"name": name, "started": started}), flush=True)

    start_batch(json.load(sys.stdin), report=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
