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
