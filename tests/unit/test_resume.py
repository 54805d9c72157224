"""What a deploy of a changed config under an existing name redoes (coordinator.resume), on planned seed configs."""

import copy

import pytest

from coordinator import resume, topology
from coordinator.config import validate
from coordinator.store import Store

SEED = {
    "type": "MultihostEngine",
    "controller": {
        "type": "DevstackEngine",
        "localrc": {"ENABLED_SERVICES+": ",-n-cpu"},
        "provider": {
            "type": "LxcProvider",
            "containers_per_host": 1,
            "container_name_prefix": "ctl",
            "distribution": "debian",
            "release": "bookworm",
            "host_provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"}]},
        },
    },
    "nodes": [
        {
            "type": "LxcEngine",
            "distribution": "debian",
            "release": "bookworm",
            "container_name": "cmp",
            "nodes_per_server": 3,
            "provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"}]},
            "engine": {
                "name": "DevstackEngine",
                "localrc": {"RABBIT_HOST": "{controller_ip}", "ENABLED_SERVICES": "n-cpu"},
            },
        }
    ],
}


def planned(change=None):
    config = copy.deepcopy(SEED)
    if change:
        change(config)
    return topology.plan(validate(config)).to_dict()


def test_the_same_plan_redoes_nothing():
    assert resume.plan_changes(planned(), planned()) == resume.Changes((), (), ())


def test_a_controller_localrc_change_redoes_from_the_controller_on():
    def change(config):
        config["controller"]["localrc"]["API_WORKERS"] = "2"

    changes = resume.plan_changes(planned(), planned(change))
    assert changes.layout == ()
    assert changes.redo == (
        "devstack:ctl-10-100-1-000",
        "devstack:cmp-10-100-1-000",
        "clones:cmp-10-100-1-000",
        "start-scripts:cmp-10-100-1-000",
    )
    assert changes.reasons == ("devstack:ctl-10-100-1-000: local_conf changed",)


def test_a_compute_repo_change_redoes_the_compute_and_its_clones_only():
    def change(config):
        config["nodes"][0]["engine"]["devstack_repo"] = "/srv/devstack"

    changes = resume.plan_changes(planned(), planned(change))
    assert changes.redo == ("devstack:cmp-10-100-1-000", "clones:cmp-10-100-1-000", "start-scripts:cmp-10-100-1-000")
    assert changes.reasons == ("devstack:cmp-10-100-1-000: devstack_repo changed",)


def test_a_start_script_change_redoes_the_start_scripts():
    def change(config):
        config["nodes"][0]["start_script"] = "systemctl restart devstack@n-cpu-1"

    assert resume.plan_changes(planned(), planned(change)).redo == ("start-scripts:cmp-10-100-1-000",)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["nodes"][0].update(nodes_per_server=4), "node cmp-10-100-1-003 is new"),
        (lambda c: c["nodes"][0].update(release="trixie"), "node cmp-10-100-1-001: release 'bookworm' -> 'trixie'"),
        (lambda c: c["nodes"][0].update(start_lxc_network="10.200.0.0/24"), "node cmp-10-200-0-000 is new"),
    ],
    ids=["more-computes", "release", "network"],
)
def test_another_layout_is_named_and_redoes_nothing(change, words):
    changes = resume.plan_changes(planned(), planned(change))
    assert changes.redo == () and any(words in line for line in changes.layout), changes.layout


def test_the_store_marks_only_finished_steps_stale(tmp_path):
    store = Store(str(tmp_path / "store.sqlite"))
    store.begin("d", SEED, planned())
    store.mark_step("d", "devstack:a", "done")
    store.mark_step("d", "devstack:b", "failed")
    store.replace_config("d", {"changed": True}, {"plan": 2}, ["devstack:a", "devstack:b", "devstack:c"])
    assert (
        store.step_state("d", "devstack:a"),
        store.step_state("d", "devstack:b"),
        store.step_state("d", "devstack:c"),
    ) == ("stale", "failed", None)
    assert not store.step_done("d", "devstack:a")
    assert store.get("d")["config"] == {"changed": True} and store.get("d")["plan"] == {"plan": 2}
    store.close()
