"""Starts spread over time: a group's `starts_per_second`, shared by all the threads that start its nodes.

Sixty-four (or two thousand) nova-computes started in the same second all register with rabbit, the conductor
and placement at once; a pace lets the control plane take them in turn. The hosts of a group start their nodes
in parallel, so one Pace per group is shared by every host's threads: its rate is the group's, not a host's.
"""

import threading
import time


class Pace:
    """At most `per_second` turns a second: wait() returns at the caller's turn, turns evenly spaced."""

    def __init__(self, per_second, clock=time.monotonic, sleep=time.sleep):
        if not per_second > 0:
            raise ValueError(f"a pace needs a positive rate, not {per_second!r}")
        self.interval = 1.0 / per_second
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = None

    def wait(self):
        """Block until this caller's turn; returns the seconds it waited."""
        with self._lock:
            now = self._clock()
            turn = now if self._next is None else max(now, self._next)
            self._next = turn + self.interval
        delay = turn - now
        if delay > 0:
            self._sleep(delay)
        return max(0.0, delay)


class Paces:
    """One Pace per group that asks for one (by the plan's groups), made on first use."""

    def __init__(self, groups, clock=time.monotonic, sleep=time.sleep):
        self._rates = {group.index: group.starts_per_second for group in groups if group.starts_per_second}
        self._clock, self._sleep = clock, sleep
        self._made: dict[int, Pace] = {}
        self._lock = threading.Lock()

    def wait(self, group):
        """Wait for a turn of `group`'s pace; at once for a group without one."""
        if group not in self._rates:
            return 0.0
        with self._lock:
            pace = self._made.get(group)
            if pace is None:
                pace = self._made[group] = Pace(self._rates[group], self._clock, self._sleep)
        return pace.wait()


MIB = 1024 * 1024
# What a fake compute takes as it starts, before ksmd merges it: cgroup usage measured with real devstack here
# (159 MiB: 132 MiB rss, 16 MiB page cache). Merged, it settles near 55 MiB.
START_COST = 160 * MIB
# What every host keeps free whatever is started: the larger of 1 GiB and 5 % of its memory.
FLOOR_LEAST, FLOOR_SHARE = 1024 * MIB, 0.05
SETTLE = 60.0  # seconds a started compute is counted at its full cost (nova-compute imports, then ksmd merges)
PATIENCE = 300.0  # seconds without available memory rising before the host is called full
# Memory pressure (PSI "some avg10", %) above which no start goes: measured with 1 + 256 here, MemAvailable still
# showed 4 to 6 GiB while the host thrashed (99 % pressure, load 500): each btrfs clone caches its own copy of
# nova's code, and MemAvailable counts those pages as free.
PRESSURE_LIMIT = 10.0


class HostFull(Exception):
    """A host's available memory stayed below what one more start needs."""


class MemoryGate:
    """Starts that wait for memory: on each host, a start goes only while the host's available memory, less what
    starts of the last SETTLE seconds will still take, stays above a floor, and while no task waits for memory
    more than PRESSURE_LIMIT % of the time (the kernel's pressure stall information).

    Why: computes started faster than ksmd merges them take memory before it is given back. Measured with 1 + 128
    on 2 cores growing to 200 at 0.5 starts a second: available memory fell to 1.5 GiB before KSM caught up. The
    gate lets the starts run as fast as the host has room, and waits for ksmd when it has none; a host whose
    memory does not come back within PATIENCE seconds once its starts settled is full, and the caller is told so
    with the numbers. Each wait is given `read()` -> {"total", "available", "ksm": {"saved"} or None, "pressure":
    % or None}, bytes but for the pressure (the host agent's memory()).
    """

    def __init__(
        self, cost=START_COST, settle=SETTLE, patience=PATIENCE, clock=time.monotonic, sleep=time.sleep, poll=2.0
    ):
        self.cost, self.settle, self.patience = cost, settle, patience
        self._clock, self._sleep, self._poll = clock, sleep, poll
        self._lock = threading.Lock()
        self._host_locks: dict = {}
        self._started: dict = {}  # host -> times of its recent starts

    def _for(self, host):
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock()), self._started.setdefault(host, [])

    def wait(self, host, read):
        """Block until `host` has room for one more start (its memory as `read()` gives it), then count it;
        returns the seconds waited.
        HostFull when its memory stayed short for `patience` seconds."""
        lock, started = self._for(host)
        with lock:  # one caller per host looks at a time, so two never take the same room
            began = self._clock()
            best, since, least_pressure = None, began, None
            while True:
                now = self._clock()
                started[:] = [moment for moment in started if now - moment < self.settle]
                seen = read()
                floor = max(FLOOR_LEAST, int(seen["total"] * FLOOR_SHARE))
                room = seen["available"] - len(started) * self.cost - floor
                pressure = seen.get("pressure")
                calm = pressure is None or pressure < PRESSURE_LIMIT
                if room >= self.cost and calm:
                    started.append(now)
                    return now - began
                if best is None or seen["available"] > best or started:  # risen, or starts still settle
                    best, since = seen["available"], now
                if not calm and (least_pressure is None or pressure < least_pressure):
                    least_pressure, since = pressure, now  # the pressure easing counts as memory coming back
                if now - since >= self.patience:
                    saved = (seen.get("ksm") or {}).get("saved")
                    raise HostFull(
                        f"host {host} has {seen['available'] // MIB} MiB of memory available, and one more "
                        f"compute takes about {self.cost // MIB} MiB as it starts over the {floor // MIB} MiB "
                        f"every host keeps free"
                        + ("" if calm else f", with tasks waiting for memory {pressure:.0f} % of the time")
                        + f", and it has not come back for {self.patience:g} s"
                        + (f" (KSM saves {saved // MIB} MiB now)" if saved is not None else "")
                        + ": this host holds no more computes; plan fewer on it (containers_per_host), give the "
                        "group merge_memory, or add a host"
                    )
                self._sleep(self._poll)
