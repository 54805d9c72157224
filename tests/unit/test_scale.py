"""`coordinator scale`'s pure part: which group, the config with its new count, and the nodes added and removed."""

import dataclasses
import json
from pathlib import Path

import pytest

from coordinator import cli, scale, topology
from coordinator.config import validate
from coordinator.store import Store
from tests.unit.test_driver import SEED_LIKE

SEED = json.loads((Path(__file__).parents[2] / "configs" / "seed.json").read_text())


def scaled_plan(data, count, group=None):
    config = validate(data)
    old = topology.plan(config)
    spec = scale.choose_group(config, group)
    new_data = scale.scaled(data, spec, count)
    change, plan = scale.change(spec, old, topology.plan(validate(new_data), previous=old), count)
    return old, new_data, change, plan


def test_the_seeds_one_cloned_group_grows_by_clones_and_nothing_else_moves():
    old, data, change, plan = scaled_plan(SEED, 66)
    assert data["nodes"][0]["nodes_per_server"] == 66, "the count is set where the config wrote it (alias kept)"
    assert SEED["nodes"][0]["nodes_per_server"] == 64, "the config on record is not changed in place"
    assert [(n.name, n.address, n.kind, n.source) for n in change.added] == [
        ("devstack-compute-10-100-1-064", "10.100.1.67", "clone", "devstack-compute-10-100-1-000"),
        ("devstack-compute-10-100-1-065", "10.100.1.68", "clone", "devstack-compute-10-100-1-000"),
    ]
    assert change.removed == ()
    assert plan.nodes[: len(old.nodes)] == old.nodes, "the nodes kept are the recorded plan's own"
    assert change.describe()[0] == "nodes[0]: 64 -> 66 compute(s) per host"


def test_shrinking_removes_the_last_clones_of_each_host():
    old, _, change, plan = scaled_plan(SEED_LIKE, 2)
    assert sorted(n.name for n in change.removed) == [
        "cmp-10-100-1-002",
        "cmp-10-100-1-003",
        "cmp-10-100-2-002",
        "cmp-10-100-2-003",
    ]
    assert {n.name for n in plan.nodes} == {n.name for n in old.nodes} - {n.name for n in change.removed}
    lines = change.describe()
    assert lines[0] == "nodes[0]: 4 -> 2 compute(s) per host"
    assert "  host 198.18.0.10: removes 2: cmp-10-100-1-002 (10.100.1.5), cmp-10-100-1-003 (10.100.1.6)" in lines


def test_the_same_count_changes_nothing():
    _, _, change, _ = scaled_plan(SEED_LIKE, 4)
    assert (change.added, change.removed) == ((), ())
    assert change.describe()[-1] == "  nothing to change"


def test_a_group_is_named_when_there_are_several_and_only_cloned_groups_scale():
    data = json.loads(json.dumps(SEED_LIKE))
    data["nodes"].append(json.loads(json.dumps(data["nodes"][0])) | {"container_name": "other"})
    config = validate(data)
    with pytest.raises(scale.ScaleError, match=r"2 groups of cloned computes \(nodes\[0\], nodes\[1\]\): name one"):
        scale.choose_group(config, None)
    assert scale.choose_group(config, "nodes[1]").path == "nodes[1]"
    with pytest.raises(
        scale.ScaleError,
        match=r"controller is the controller, not a group of cloned computes; the groups scale can change",
    ):
        scale.choose_group(config, "controller")


def test_a_change_that_would_move_another_node_is_refused():
    config = validate(SEED_LIKE)
    old = topology.plan(config)
    spec = scale.choose_group(config, None)
    moved = dataclasses.replace(
        old, nodes=tuple(dataclasses.replace(n, address="10.9.9.9") if n.role == "controller" else n for n in old.nodes)
    )
    with pytest.raises(scale.ScaleError, match="would change other nodes"):
        scale.change(spec, moved, topology.plan(config), 4)


def test_a_scale_can_set_the_groups_pace_which_the_new_plan_carries():
    config = validate(SEED_LIKE)
    old = topology.plan(config)
    spec = scale.choose_group(config, None)
    data = scale.scaled(SEED_LIKE, spec, 5, 2.5)
    assert data["nodes"][0]["starts_per_second"] == 2.5, "beside the count, in the group's LxcEngine"
    assert "starts_per_second" not in SEED_LIKE["nodes"][0], "the config on record is not changed in place"
    change, plan = scale.change(spec, old, topology.plan(validate(data), previous=old), 5, 2.5)
    assert change.pace == (None, 2.5)
    assert change.describe()[:2] == [
        "nodes[0]: 4 -> 5 compute(s) per host",
        "  starts: as fast as they run -> 2.5 per second",
    ]
    assert [group.starts_per_second for group in plan.groups if group.role == "compute"] == [2.5]

    again = scale.choose_group(validate(data), None)
    same, _ = scale.change(again, plan, topology.plan(validate(data), previous=plan), 5, 2.5)
    assert same.pace is None and same.describe()[-1] == "  nothing to change", "the pace it already has"
    slower, _ = scale.change(again, plan, topology.plan(validate(data), previous=plan), 5, 0.5)
    assert slower.describe()[1:] == ["  starts: 2.5 per second -> 0.5 per second", "  no compute to add or remove"]


def test_a_scale_that_only_changes_the_pace_records_it_without_asking_any_agent(tmp_path, capsys):
    """The seed's hosts do not exist here: any agent call would fail. Only the recorded config changes."""
    path = str(tmp_path / "deployments.sqlite")
    store = Store(path)
    try:
        store.begin("perf", SEED, topology.plan(validate(SEED)).to_dict())
        store.set_status("perf", "deployed")
    finally:
        store.close()
    argv = ["scale", "perf", "--computes", "64", "--starts-per-second", "4", "--store", path]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  starts: as fast as they run -> 4 per second",
        "  no compute to add or remove",
    ]
    store = Store(path)
    try:
        assert store.get("perf")["config"]["nodes"][0]["starts_per_second"] == 4
    finally:
        store.close()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  nothing to change"], "the pace on record now"
