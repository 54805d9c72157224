"""A group's starts_per_second: from the config into the plan, and turns spaced evenly over every host's threads."""

import json
import threading

import pytest

from coordinator import topology
from coordinator.pacing import HostFull, MemoryGate, Pace, Paces
from tests.unit.test_topology import devstack, lxc_engine, lxc_provider, multihost, plan_of, problems_of


class FakeTime:
    """A clock that moves only when slept on (by any thread), so spacing is exact and the test takes no time."""

    def __init__(self):
        self.now = 100.0
        self.slept = []
        self._lock = threading.Lock()

    def clock(self):
        return self.now

    def sleep(self, seconds):
        with self._lock:
            self.slept.append(seconds)


def test_turns_are_spaced_by_the_rate_from_the_first():
    time = FakeTime()
    pace = Pace(4, time.clock, time.sleep)
    assert [pace.wait() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert time.slept == [0.25, 0.5, 0.75, 1.0]


def test_a_caller_after_a_quiet_spell_goes_at_once_and_is_not_owed_turns():
    time = FakeTime()
    pace = Pace(2, time.clock, time.sleep)
    pace.wait()
    time.now += 10
    assert pace.wait() == 0.0
    assert pace.wait() == 0.5


def test_threads_of_every_host_share_one_pace():
    time = FakeTime()
    pace = Pace(10, time.clock, time.sleep)
    waits = []
    threads = [threading.Thread(target=lambda: waits.append(pace.wait())) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(round(wait, 6) for wait in waits) == [round(index / 10, 6) for index in range(20)]


def test_paces_are_per_group_and_a_group_without_one_never_waits():
    time = FakeTime()
    groups = [
        topology.Group(0, "controller", "controller", "standalone", ("h",), 1, 1, "controller.localrc"),
        topology.Group(1, "nodes[0]", "compute", "cloned", ("h",), 4, 4, "nodes[0].engine.localrc", 2.0),
        topology.Group(2, "nodes[1]", "compute", "cloned", ("h",), 4, 4, "nodes[1].engine.localrc", 1.0),
    ]
    paces = Paces(groups, time.clock, time.sleep)
    assert [paces.wait(0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [paces.wait(1) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert [paces.wait(2) for _ in range(2)] == [0.0, 1.0]


def test_a_pace_needs_a_positive_rate():
    with pytest.raises(ValueError, match="positive rate"):
        Pace(0)


def test_the_config_gives_the_group_its_pace_and_the_plan_keeps_it():
    config = multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost", starts_per_second=2.5))
    plan = plan_of(config)
    assert [group.starts_per_second for group in plan.groups] == [None, 2.5]
    assert topology.Plan.from_dict(json.loads(plan.to_json())) == plan


def test_a_plan_recorded_before_the_setting_has_no_pace():
    plan = plan_of(multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost")))
    data = json.loads(plan.to_json())
    for group in data["groups"]:
        del group["starts_per_second"]
    assert topology.Plan.from_dict(data) == plan


@pytest.mark.parametrize("value", [0, -1, "fast", True])
def test_a_pace_that_is_not_a_positive_number_is_refused_naming_its_path(value):
    config = multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost", starts_per_second=value))
    problems = problems_of(config)
    assert "nodes[0].starts_per_second" in problems, problems


GIB, MIB = 1 << 30, 1 << 20


class MovingClock:
    """A clock that sleeping moves on."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def gate_and_time():
    fake = MovingClock()
    return MemoryGate(cost=100 * MIB, settle=60.0, patience=30.0, clock=fake.clock, sleep=fake.sleep), fake


def memory(available, total=16 * GIB, saved=None, pressure=None):
    return {
        "total": total,
        "available": available,
        "ksm": None if saved is None else {"saved": saved},
        "pressure": pressure,
    }


def test_starts_go_at_once_while_the_host_has_room():
    gate, fake = gate_and_time()
    for _ in range(10):
        assert gate.wait("h", lambda: memory(8 * GIB)) == 0.0
    assert fake.now == 0.0


def test_starts_still_settling_count_against_the_room_until_they_settle():
    """The floor is 1 GiB on 16 GiB; 1 GiB + 300 MiB leaves room for three starts of 100 MiB, not four, since the
    three have not taken their memory yet when the fourth looks. The fourth goes when the first has settled."""
    gate, fake = gate_and_time()
    for _ in range(3):
        assert gate.wait("h", lambda: memory(GIB + 300 * MIB)) == 0.0
    assert gate.wait("h", lambda: memory(GIB + 300 * MIB)) == pytest.approx(60.0, abs=2.0)
    assert gate.wait("other host", lambda: memory(GIB + 300 * MIB)) == 0.0, "each host has its own room"


def test_a_start_waits_while_ksmd_gives_memory_back():
    gate, fake = gate_and_time()
    readings = iter([900 * MIB, 950 * MIB, 1000 * MIB, 1100 * MIB, 1200 * MIB])
    assert gate.wait("h", lambda: memory(next(readings), saved=400 * MIB)) == pytest.approx(8.0)


def test_a_host_whose_memory_does_not_come_back_is_called_full_with_the_numbers():
    gate, fake = gate_and_time()
    with pytest.raises(HostFull) as full:
        gate.wait("10.0.0.5", lambda: memory(700 * MIB, saved=2 * GIB))
    said = str(full.value)
    assert "host 10.0.0.5 has 700 MiB of memory available" in said
    assert "about 100 MiB as it starts over the 1024 MiB every host keeps free" in said
    assert "and it has not come back for 30 s (KSM saves 2048 MiB now)" in said
    assert "containers_per_host" in said and "merge_memory" in said
    assert 30.0 <= fake.now <= 34.0


def test_the_floor_is_five_percent_of_a_large_host():
    gate, _ = gate_and_time()
    with pytest.raises(HostFull, match="over the 6553 MiB every host keeps free"):
        gate.wait("big", lambda: memory(6 * GIB, total=128 * GIB))


def test_a_start_waits_while_the_host_thrashes_whatever_memavailable_says():
    """Measured with 1 + 256: MemAvailable showed 4 to 6 GiB while tasks waited for memory 99 % of the time (each
    clone's code pages, counted as free, were read back again and again). Pressure holds starts back."""
    gate, fake = gate_and_time()
    readings = iter([99.0, 60.0, 30.0, 12.0, 4.0])
    assert gate.wait("h", lambda: memory(6 * GIB, pressure=next(readings))) == pytest.approx(8.0)


def test_a_host_that_keeps_thrashing_is_called_full_and_says_so():
    gate, fake = gate_and_time()
    with pytest.raises(HostFull) as full:
        gate.wait("h", lambda: memory(6 * GIB, pressure=99.5))
    said = str(full.value)
    assert "with tasks waiting for memory 100 % of the time, and it has not come back for 30 s" in said, said
