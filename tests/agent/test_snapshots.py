"""Snapshots of several containers at one moment and restores to them, through RPC on real LXC and btrfs: what a
whole cloud's snapshot is made of.

Checked from outside the agent: `btrfs subvolume list/show`, `lxc-info`, and what the containers themselves see.
"""

import os

import pytest

from agent.errors import InvalidArgument, NotFound, StorageError
from tests.agent.test_images import everything_under
from tests.agent.test_lifecycle import subvolume_field
from tests.support import lxc_states, sh, subvolumes

NAMES = ["snap-a", "snap-b", "snap-c"]


def marks(agent, names):
    return {name: agent.run(name, ["cat", "/root/mark"])["stdout"].strip() for name in names}


def mark(agent, names, text):
    for name in names:
        assert agent.run(name, ["sh", "-c", f"echo {text} > /root/mark; sync"])["exit_code"] == 0


def snapshot_subvolumes(btrfs_mount, lxcpath):
    prefix = os.path.basename(lxcpath) + "/"
    return [path for path in subvolumes(btrfs_mount) if path.startswith(prefix) and "lxc-agent-snapshots" in path]


@pytest.fixture
def three(loopback_agent, lxcpath):
    """snap-a and snap-b running, snap-c stopped, each with /root/mark saying "before"."""
    agent = loopback_agent.connect()
    agent.create("snap-base", "busybox")
    agent.clone("snap-base", NAMES)
    agent.start(NAMES)
    mark(agent, NAMES, "before")
    agent.stop(["snap-c"], 0)
    return agent


def test_containers_are_snapshotted_together_and_restored_as_they_were(three, lxcpath, btrfs_mount):
    agent = three
    taken = agent.snapshot(NAMES, "clean")
    assert {name: entry["taken"] for name, entry in taken.items()} == dict.fromkeys(NAMES, True)
    frozen = {entry["frozen"] for entry in taken.values()}
    assert len(frozen) == 1 and frozen.pop() > 0, "one freeze for all of them"
    assert lxc_states(lxcpath) == {
        "snap-base": "STOPPED",
        "snap-a": "RUNNING",
        "snap-b": "RUNNING",
        "snap-c": "STOPPED",
    }
    again = agent.snapshot(NAMES, "clean")
    assert {name: entry["taken"] for name, entry in again.items()} == dict.fromkeys(NAMES, False), "done already"
    assert again == {name: {**entry, "taken": False} for name, entry in taken.items()}
    for name in NAMES:
        taken = os.path.join(lxcpath, name, "lxc-agent-snapshots", "clean", "rootfs")
        assert subvolume_field(taken, "Parent UUID") == subvolume_field(os.path.join(lxcpath, name, "rootfs"), "UUID")
    listed = {entry["name"]: entry for entry in agent.list_snapshots()}
    assert sorted(listed) == NAMES and {entry["tag"] for entry in listed.values()} == {"clean"}
    assert [listed[name]["was"] for name in NAMES] == ["running", "running", "stopped"]
    assert all(entry["size"] > 0 and entry["created"] for entry in listed.values())

    # Changed after the snapshot, then restored: stopped, with the files of the moment it was taken.
    agent.start(["snap-c"])
    mark(agent, NAMES, "after")
    agent.run("snap-a", ["touch", "/root/new-file"])
    assert agent.restore(NAMES, "clean", 0) == NAMES
    assert {lxc_states(lxcpath)[name] for name in NAMES} == {"STOPPED"}
    agent.start(NAMES)
    assert marks(agent, NAMES) == dict.fromkeys(NAMES, "before")
    assert agent.run("snap-a", ["ls", "/root/new-file"])["exit_code"] != 0
    assert [entry["tag"] for entry in agent.list_snapshots(NAMES)] == ["clean"] * 3, "the snapshot is kept"

    # Again: after more changes, the same snapshot brings the same state back.
    mark(agent, ["snap-b"], "later")
    agent.restore(["snap-b"], "clean", 5)
    agent.start(["snap-b"])
    assert marks(agent, ["snap-b"]) == {"snap-b": "before"}

    # Deleted (twice is no error), and destroy takes a container's snapshots with it.
    agent.snapshot(NAMES, "second")
    assert agent.delete_snapshots(NAMES, "clean") == NAMES
    assert agent.delete_snapshots(NAMES + ["ghost"], "clean") == NAMES + ["ghost"]
    assert {entry["tag"] for entry in agent.list_snapshots()} == {"second"}
    assert len(snapshot_subvolumes(btrfs_mount, lxcpath)) == 3
    agent.destroy(NAMES + ["snap-base"])
    assert snapshot_subvolumes(btrfs_mount, lxcpath) == [] and lxc_states(lxcpath) == {}


def test_a_restore_without_the_snapshot_changes_nothing_and_bad_tags_are_refused(three, lxcpath):
    agent = three
    agent.snapshot(["snap-a"], "only-a")
    before = (lxc_states(lxcpath), everything_under(lxcpath))
    with pytest.raises(NotFound, match=r"no snapshot 'only-a' of container\(s\) \['snap-b'\]"):
        agent.restore(["snap-a", "snap-b"], "only-a", 10)
    with pytest.raises(NotFound, match="no such container"):
        agent.snapshot(["ghost"], "t")
    for tag in ("../up", "a/b", "", ".hidden", "x" * 65, "t\n"):
        with pytest.raises(InvalidArgument, match="snapshot: tag: invalid snapshot tag"):
            agent.snapshot(["snap-a"], tag)
    assert (lxc_states(lxcpath), everything_under(lxcpath)) == before
    agent.destroy(NAMES + ["snap-base"])


def test_a_snapshot_or_restore_cut_short_is_completed_by_asking_again(three, lxcpath, btrfs_mount):
    """What a kill leaves: a snapshot folder never sealed, a container left frozen, a restore's copy beside the
    rootfs (the rootfs swapped out or not). Each is finished by the next call."""
    agent = three
    half = os.path.join(lxcpath, "snap-a", "lxc-agent-snapshots", "clean", "rootfs", "half")
    os.makedirs(half)
    sh("lxc-freeze", "-P", lxcpath, "-n", "snap-b")
    assert agent.list_snapshots(NAMES) == [], "an unsealed snapshot is not one"
    assert {name: entry["taken"] for name, entry in agent.snapshot(NAMES, "clean").items()} == dict.fromkeys(
        NAMES, True
    )
    assert not os.path.exists(half) and lxc_states(lxcpath)["snap-b"] == "RUNNING", "redone, and thawed"

    mark(agent, ["snap-a", "snap-b"], "after")
    agent.stop(["snap-a", "snap-b"], 0)
    rootfs = os.path.join(lxcpath, "snap-a", "rootfs")
    sh("btrfs", "subvolume", "snapshot", rootfs, rootfs + ".restoring")  # cut short before the swap
    rootfs_b = os.path.join(lxcpath, "snap-b", "rootfs")
    sh("btrfs", "subvolume", "snapshot", rootfs_b, rootfs_b + ".restoring")
    sh("btrfs", "subvolume", "delete", rootfs_b)  # cut short in the swap: no rootfs at all
    agent.restore(["snap-a", "snap-b"], "clean", 0)
    assert not os.path.exists(rootfs + ".restoring") and not os.path.exists(rootfs_b + ".restoring")
    agent.start(["snap-a", "snap-b"])
    assert marks(agent, ["snap-a", "snap-b"]) == {"snap-a": "before", "snap-b": "before"}
    agent.destroy(NAMES + ["snap-base"])
    assert snapshot_subvolumes(btrfs_mount, lxcpath) == []


def test_overlay_storage_takes_no_snapshots_and_says_so(plain_lxcpath, start_agent):
    agent = start_agent(plain_lxcpath, "--storage", "overlay").connect()
    agent.create("node", "busybox")
    with pytest.raises(StorageError, match="overlay storage"):
        agent.snapshot(["node"], "clean")
    assert agent.list_snapshots() == []
    agent.destroy(["node"])
    agent.destroy_images()
