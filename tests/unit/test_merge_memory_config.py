"""A group's merge_memory: from the config into the plan, older plans read without it, anything but a boolean
refused naming its path."""

import json

import pytest

from coordinator import topology
from tests.unit.test_topology import devstack, lxc_engine, lxc_provider, multihost, plan_of, problems_of


def test_the_config_gives_the_group_merge_memory_and_the_plan_keeps_it():
    config = multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost", merge_memory=True))
    plan = plan_of(config)
    assert [group.merge_memory for group in plan.groups] == [False, True]
    assert topology.Plan.from_dict(json.loads(plan.to_json())) == plan


def test_a_plan_recorded_before_the_setting_has_it_off():
    plan = plan_of(multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost")))
    data = json.loads(plan.to_json())
    for group in data["groups"]:
        del group["merge_memory"]
    assert topology.Plan.from_dict(data) == plan


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_merge_memory_that_is_not_a_boolean_is_refused_naming_its_path(value):
    config = multihost(devstack(lxc_provider("localhost")), lxc_engine("localhost", merge_memory=value))
    problems = problems_of(config)
    assert "nodes[0].merge_memory" in problems, problems
