"""Golden nodes' pure part: the key, which changes with everything that decides what stack.sh makes of a node,
and the words for a miss."""

import dataclasses
import json
import re
from pathlib import Path

from agent import arguments
from coordinator import golden, topology
from coordinator.config import validate

DEMO = json.loads((Path(__file__).parents[2] / "configs" / "demo.json").read_text())
PACKAGES = ("git", "sudo", "python3")
MIRROR = {"devstack": "a" * 64, "nova": "b" * 64}


def demo_nodes(**changes):
    data = json.loads(json.dumps(DEMO))
    data["controller"]["git_mirror"] = "/srv/mirror"
    data["nodes"][0]["engine"]["git_mirror"] = "/srv/mirror"
    data["nodes"][0]["nodes_per_server"] = 3
    for path, value in changes.items():
        target = data
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    plan = topology.plan(validate(data))
    return {node.kind: node for node in plan.nodes}


def decide(node, mirror=MIRROR, lab="", merge=False, packages=PACKAGES):
    return golden.decide(node, packages, mirror, None, lab, merge)


def test_the_same_node_gets_the_same_key_and_the_key_is_a_valid_image_key():
    first, again = decide(demo_nodes()["standalone"]), decide(demo_nodes()["standalone"])
    assert first.key == again.key and first.reason is None
    assert re.fullmatch(r"golden-[0-9a-f]{40}", first.key)
    assert first.components["node"] == "controller-10-100-1-000"
    assert first.components["image"] == "debian bookworm git,python3,sudo"


def test_every_input_that_decides_the_result_changes_the_key():
    nodes = demo_nodes()
    base = decide(nodes["standalone"])
    variants = {
        "local.conf": decide(demo_nodes(**{"controller.localrc.API_RATE_LIMIT": "True"})["standalone"]),
        "sources": decide(nodes["standalone"], mirror={**MIRROR, "nova": "c" * 64}),
        "image": decide(nodes["standalone"], packages=("git",)),
        "lab": decide(nodes["standalone"], lab="-----BEGIN CERTIFICATE-----"),
        "devstack": decide(demo_nodes(**{"controller.devstack_branch": "stable/2025.2"})["standalone"]),
        "node": decide(dataclasses.replace(nodes["standalone"], name="controller-2")),
    }
    keys = {name: decision.key for name, decision in variants.items()}
    assert base.key not in keys.values() and len(set(keys.values())) == len(keys)
    for name, decision in variants.items():
        reason = golden.miss_reason(decision.components, [golden.labels(base.components, "perf1")])
        expected = {
            "sources": "the git mirror changed (nova)",
            "node": "no golden image of controller-2 on this host yet",
            "devstack": "devstack changed",  # a branch: local.conf says it too, devstack comes first
        }.get(name, f"{name} changed")
        assert reason == expected, name


def test_a_first_compute_is_kept_sealed_and_its_hash_seed_counts():
    first = demo_nodes()["first"]
    plain, merged = decide(first), decide(first, merge=True)
    assert plain.components["role"] == "sealed and stopped"
    assert merged.components["role"] == "sealed and stopped, hash seed 0" and merged.key != plain.key
    assert golden.miss_reason(merged.components, [golden.labels(plain.components, "x")]) == "role changed"


def test_what_cannot_be_pinned_gets_no_key_and_says_why():
    nodes = demo_nodes()
    without_mirror = golden.decide(nodes["standalone"], PACKAGES, None, None, "", False)
    assert without_mirror.key is None and "without a git_mirror" in without_mirror.reason
    remote = dataclasses.replace(nodes["standalone"], devstack_repo="https://opendev.org/openstack/devstack")
    fetched = golden.decide(remote, PACKAGES, MIRROR, None, "", False)
    assert fetched.key is None and "fetched from elsewhere" in fetched.reason
    local = golden.decide(
        dataclasses.replace(nodes["standalone"], devstack_repo="/srv/devstack"), PACKAGES, MIRROR, "f" * 40, "", False
    )
    assert local.key and "f" * 40 in local.components["devstack"]
    assert golden.decide(nodes["clone"], PACKAGES, MIRROR, None, "", False).key is None


def test_the_nearest_image_is_the_newest_of_the_same_node_and_labels_fit_the_agents_rules():
    node = demo_nodes()["standalone"]
    now = decide(node)
    older = golden.labels(decide(node, lab="old").components, "a")
    newer = golden.labels(decide(node, mirror={"devstack": "d" * 64}).components, "b")
    other = golden.labels(decide(demo_nodes()["first"]).components, "c")
    assert golden.miss_reason(now.components, [other, newer, older]) == "the git mirror changed (devstack, nova)"
    assert golden.miss_reason(now.components, [golden.labels(now.components, "x")]) == (
        "its golden image was removed meanwhile"
    )
    checked = arguments.check_arguments(
        "save_image", {"name": node.name, "key": now.key, "labels": golden.labels(now.components, "perf1")}
    )
    assert checked["labels"]["deployment"] == "perf1" and checked["labels"]["local_conf"]
