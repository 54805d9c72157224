"""A group's starts_per_second: from the config into the plan, and turns spaced evenly over every host's threads."""

import json
import threading

import pytest

from coordinator import topology
from coordinator.pacing import Pace, Paces
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
