"""Images saved from containers (save_image, create_from_image) through RPC, on real LXC and btrfs: what golden
nodes are made of.

Checked from outside the agent: `btrfs subvolume show`, `lxc-info`, the folders under the lxcpath, and what the
containers themselves see.
"""

import json
import os

import pytest

from agent.errors import Conflict, InvalidArgument, NotFound, StorageError
from tests.agent.test_images import everything_under, guest_identity, image_folders, images_dir
from tests.agent.test_lifecycle import subvolume_field
from tests.support import lxc_states, sh

KEY = "golden-test-0001"


def _write(agent, name, text):
    result = agent.run(name, ["sh", "-c", f"echo {text} > /root/mark; sync"])
    assert result["exit_code"] == 0, result


def test_a_running_container_is_saved_as_it_is_and_keeps_running(loopback_agent, lxcpath, btrfs_mount):
    agent = loopback_agent.connect()
    agent.create("node", "busybox")
    agent.start(["node"])
    _write(agent, "node", "before")

    saved = agent.save_image("node", KEY, {"node": "node", "local_conf": "abc"})
    assert saved["key"] == KEY and saved["saved"] is True and 0 < saved["size"] < 64 * 2**20
    assert lxc_states(lxcpath)["node"] == "RUNNING", "thawed after the snapshot"
    assert agent.run("node", ["true"])["exit_code"] == 0
    rootfs = os.path.join(images_dir(lxcpath), KEY, "rootfs")
    assert subvolume_field(rootfs, "Parent UUID") == subvolume_field(os.path.join(lxcpath, "node", "rootfs"), "UUID")
    assert agent.save_image("node", KEY, None) == {"key": KEY, "saved": False, "size": saved["size"]}

    # What the node writes afterwards is not in the image.
    _write(agent, "node", "after")
    [listed] = [image for image in agent.list_images() if image["key"] == KEY]
    assert listed["kind"] == "saved" and listed["source"] == "node"
    assert listed["labels"] == {"node": "node", "local_conf": "abc"} and "last_used" not in listed

    assert agent.create_from_image("copy", KEY) == {"name": "copy", "created": True}
    assert agent.create_from_image("copy", KEY) == {"name": "copy", "created": False}
    agent.start(["copy"])
    assert agent.run("copy", ["cat", "/root/mark"])["stdout"] == "before\n"
    assert guest_identity(agent, "copy")[0] == "copy"
    assert guest_identity(agent, "copy")[2] != guest_identity(agent, "node")[2], "its own machine-id"
    [shown] = agent.list(["copy"])
    assert shown["image"] == KEY
    [listed] = [image for image in agent.list_images() if image["key"] == KEY]
    assert listed["last_used"], "create_from_image records its use"

    # The image outlives the container it was saved from and those made from it, until it is destroyed.
    agent.destroy(["node", "copy"])
    assert image_folders(lxcpath) != [] and KEY in image_folders(lxcpath)
    agent.create_from_image("node", KEY)
    agent.start(["node"])
    assert agent.run("node", ["cat", "/root/mark"])["stdout"] == "before\n"
    agent.destroy(["node"])
    assert agent.destroy_images([KEY]) == [KEY]
    assert KEY not in image_folders(lxcpath)


def test_save_and_create_refuse_what_they_cannot_do_before_anything_changes(loopback_agent, lxcpath):
    agent = loopback_agent.connect()
    agent.create("node", "busybox")
    agent.create("other", "busybox")
    [template_key] = image_folders(lxcpath)
    agent.save_image("node", KEY)
    before = everything_under(lxcpath)

    with pytest.raises(Conflict, match=f"image {KEY} exists already, saved from 'node'"):
        agent.save_image("other", KEY)
    with pytest.raises(Conflict, match="exists already, a template's image"):
        agent.save_image("node", template_key)
    with pytest.raises(NotFound, match="no such container"):
        agent.save_image("ghost", "golden-ghost")
    with pytest.raises(NotFound, match="that key is a template's image: create"):
        agent.create_from_image("new", template_key)
    with pytest.raises(NotFound, match="no saved image golden-none"):
        agent.create_from_image("new", "golden-none")
    with pytest.raises(Conflict, match="made from template 'busybox', not image"):
        agent.create_from_image("other", KEY)
    with pytest.raises(InvalidArgument, match="save_image: key: invalid image key"):
        agent.save_image("node", "../escape")
    with pytest.raises(InvalidArgument, match=r"save_image: labels\['Bad'\]: invalid label name"):
        agent.save_image("node", "golden-2", {"Bad": "x"})
    with pytest.raises(InvalidArgument, match=r"labels\['node'\]: label 'a\\x00b' contains NUL"):
        agent.save_image("node", "golden-2", {"node": "a\0b"})
    with pytest.raises(InvalidArgument, match="at most 32 entries"):
        agent.save_image("node", "golden-2", {f"l{i}": "x" for i in range(33)})
    assert everything_under(lxcpath) == before


def test_a_save_cut_short_is_made_again_and_a_container_left_frozen_is_thawed(loopback_agent, lxcpath):
    """A save killed mid-way leaves an unsealed image folder, and perhaps its container frozen: asking again
    makes the image from scratch and thaws the container."""
    agent = loopback_agent.connect()
    agent.create("node", "busybox")
    agent.start(["node"])
    os.makedirs(os.path.join(images_dir(lxcpath), KEY, "rootfs", "half"))
    sh("lxc-freeze", "-P", lxcpath, "-n", "node")
    assert lxc_states(lxcpath)["node"] == "FROZEN"
    assert [image["key"] for image in agent.list_images() if image.get("kind") == "saved"] == []
    with pytest.raises(NotFound):
        agent.create_from_image("copy", KEY)

    assert agent.save_image("node", KEY)["saved"] is True
    assert lxc_states(lxcpath)["node"] == "RUNNING"
    assert not os.path.exists(os.path.join(images_dir(lxcpath), KEY, "rootfs", "half"))
    with open(os.path.join(images_dir(lxcpath), KEY, "lxc-agent-image.json")) as handle:
        assert json.load(handle)["source"] == "node"
    agent.destroy(["node"])
    present = image_folders(lxcpath)
    assert agent.destroy_images() == present and image_folders(lxcpath) == []


def test_copy_storage_saves_a_full_copy(lxcpath, start_agent):
    agent = start_agent(lxcpath, "--storage", "copy").connect()
    agent.create("node", "busybox")
    agent.start(["node"])
    _write(agent, "node", "copied")
    assert agent.save_image("node", KEY)["saved"] is True
    agent.create_from_image("copy", KEY)
    rootfs = os.path.join(lxcpath, "copy", "rootfs")
    assert os.stat(rootfs).st_ino != 256, "a copy is not a btrfs subvolume"
    agent.start(["copy"])
    assert agent.run("copy", ["cat", "/root/mark"])["stdout"] == "copied\n"
    agent.destroy(["node", "copy"])
    agent.destroy_images()
    assert os.listdir(lxcpath) == []


def test_overlay_storage_keeps_no_saved_images_and_says_so(plain_lxcpath, start_agent):
    agent = start_agent(plain_lxcpath, "--storage", "overlay").connect()
    agent.create("node", "busybox")
    before = everything_under(plain_lxcpath)
    with pytest.raises(StorageError, match=r"overlay storage.*put the lxcpath on btrfs"):
        agent.save_image("node", KEY)
    assert everything_under(plain_lxcpath) == before
    agent.destroy(["node"])
    agent.destroy_images()
