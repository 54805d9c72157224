"""The image cache through RPC, on real LXC and btrfs: a template runs once per (template, release, packages),
every create is then a snapshot (or overlay, or copy) of its image.

Checked from outside the agent: `btrfs subvolume show`, the folders under the lxcpath, `lxc-ls`, and what the
containers themselves see.
"""

import json
import os
import time

import pytest

from agent import storage
from agent.errors import Conflict, ContainerError, InvalidArgument
from tests.agent.test_lifecycle import subvolume_field
from tests.support import lxc_states, subvolumes

DEBIAN_PACKAGES = ["git", "sudo", "python3"]


def images_dir(lxcpath):
    return os.path.join(lxcpath, ".lxc-agent", "images")


def image_folders(lxcpath):
    folder = images_dir(lxcpath)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def everything_under(lxcpath):
    """Every path under the lxcpath, for "nothing changed" checks."""
    found = []
    for folder, folders, files in os.walk(lxcpath):
        found.extend(os.path.relpath(os.path.join(folder, entry), lxcpath) for entry in folders + files)
    return sorted(found)


def guest_identity(agent, name):
    result = agent.run(name, ["sh", "-c", "hostname; cat /etc/hostname /etc/machine-id; grep 127.0.1.1 /etc/hosts"])
    assert result["exit_code"] == 0, result
    return result["stdout"].split()


def test_the_template_runs_once_and_every_create_is_a_snapshot_of_its_image(loopback_agent, lxcpath, btrfs_mount):
    agent = loopback_agent.connect()
    assert agent.list_images() == [] and agent.info()["images"] == []
    assert agent.create("one", "busybox") == {"name": "one", "created": True}
    [key] = image_folders(lxcpath)
    assert key.startswith("busybox-default-")
    image = os.path.join(images_dir(lxcpath), key)
    assert sorted(os.listdir(image)) == ["config", "lxc-agent-image.json", "rootfs"]
    with open(os.path.join(image, "lxc-agent-image.json")) as handle:
        sealed = json.load(handle)
    image_uuid = subvolume_field(os.path.join(image, "rootfs"), "UUID")

    assert agent.create("two", "busybox", packages=[]) == {"name": "two", "created": True}
    assert agent.create("two", "busybox") == {"name": "two", "created": False}, "[] and None are the same"

    # The second create reused the image: the same subvolume, sealed at the same time, and no other image.
    assert image_folders(lxcpath) == [key]
    assert subvolume_field(os.path.join(image, "rootfs"), "UUID") == image_uuid
    with open(os.path.join(image, "lxc-agent-image.json")) as handle:
        assert json.load(handle) == sealed
    for name in ("one", "two"):
        assert subvolume_field(os.path.join(lxcpath, name, "rootfs"), "Parent UUID") == image_uuid
    assert lxc_states(lxcpath) == {"one": "STOPPED", "two": "STOPPED"}, "the image is not a container"

    [listed] = agent.list_images()
    assert listed["key"] == key and listed["used_by"] == [], "btrfs snapshots do not hold their image"
    assert (listed["template"], listed["release"], listed["packages"]) == ("busybox", None, [])
    assert 0 < listed["size"] < 64 * 2**20
    assert agent.info()["images"] == [
        {"key": key, "template": "busybox", "release": None, "packages": [], "size": listed["size"]}
    ]
    shown = {entry["name"]: entry for entry in agent.list()}
    assert shown["two"]["packages"] == [] and shown["two"]["image"] == key

    # Each container is its own machine, with no network; the image stays as the template made it.
    agent.start(["one", "two"])
    identities = {name: guest_identity(agent, name) for name in ("one", "two")}
    for name, (hostname, in_file, machine_id, _, in_hosts) in identities.items():
        assert hostname == in_file == in_hosts == name
        assert len(machine_id) == 32
    assert identities["one"][2] != identities["two"][2]
    assert not os.path.exists(os.path.join(image, "rootfs", "etc", "machine-id")), "identities go to the containers"
    assert agent.run("one", ["ls", "/sys/class/net"])["stdout"].split() == ["lo"], "no network"

    # destroy() never removes the image; destroy_images() does, and the next create makes a fresh one.
    agent.destroy(["one"])
    assert image_folders(lxcpath) == [key]
    assert agent.destroy_images() == [key]
    assert agent.destroy_images() == [] and agent.destroy_images([key]) == [key], "gone is done"
    assert agent.run("two", ["hostname"])["stdout"] == "two\n", "a snapshot outlives its image"
    agent.create("three", "busybox")
    assert subvolume_field(os.path.join(images_dir(lxcpath), key, "rootfs"), "UUID") != image_uuid
    agent.destroy(["two", "three"])
    agent.destroy_images()
    assert os.listdir(lxcpath) == []
    assert [path for path in subvolumes(btrfs_mount) if path.startswith(os.path.basename(lxcpath))] == []


def test_a_half_made_image_is_never_used_and_goes_with_destroy_images(loopback_agent, lxcpath):
    """What a template run cut short (agent killed) leaves: an image folder that was never sealed."""
    agent = loopback_agent.connect()
    key = storage.image_key("busybox", None, [])
    os.makedirs(os.path.join(images_dir(lxcpath), key, "rootfs", "half"))
    assert agent.list_images() == []
    assert agent.destroy_images() == [key]
    os.makedirs(os.path.join(images_dir(lxcpath), key, "rootfs", "half"))
    agent.create("whole", "busybox")
    assert not os.path.exists(os.path.join(images_dir(lxcpath), key, "rootfs", "half")), "made again from scratch"
    assert [image["key"] for image in agent.list_images()] == [key]
    agent.start(["whole"])
    assert agent.run("whole", ["hostname"])["stdout"] == "whole\n"
    agent.destroy(["whole"])
    assert agent.destroy_images() == [key] and os.listdir(lxcpath) == []


def test_the_copy_backend_makes_a_plain_folder_from_the_image(lxcpath, start_agent):
    agent = start_agent(lxcpath, "--storage", "copy").connect()
    agent.create("full-1", "busybox")
    agent.create("full-2", "busybox")
    [key] = image_folders(lxcpath)
    assert subvolume_field(os.path.join(images_dir(lxcpath), key, "rootfs"), "Name") == "rootfs", (
        "on btrfs the image is a subvolume"
    )
    for name in ("full-1", "full-2"):
        rootfs = os.path.join(lxcpath, name, "rootfs")
        assert os.path.exists(os.path.join(rootfs, "bin", "busybox"))
        assert os.stat(rootfs).st_ino != 256, "a copy is not a btrfs subvolume"
    agent.start(["full-1", "full-2"])
    ids = [guest_identity(agent, name) for name in ("full-1", "full-2")]
    assert [i[0] for i in ids] == ["full-1", "full-2"] and ids[0][2] != ids[1][2]
    agent.destroy(["full-1", "full-2"])
    assert agent.destroy_images() == [key]


@pytest.mark.parametrize(
    "template, release, packages, message",
    [
        ("busybox", None, ["git"], "template 'busybox' cannot add packages; templates that can: debian, ubuntu"),
        ("debian", None, "git", "must be a list"),
        ("debian", None, ["Git"], r"invalid package name\(s\) \['Git'\]"),
        ("debian", None, ["-git"], "starting with a letter or digit"),
        ("debian", None, ["git sudo"], "invalid package name"),
        ("debian", None, ["git,sudo"], "invalid package name"),
        ("debian", None, ["git;reboot"], "invalid package name"),
        ("debian", None, [7], "invalid package name"),
        ("debian", None, [""], "invalid package name"),
        ("debian", "../../etc", ["git"], "invalid release"),
    ],
    ids=[
        "busybox-has-none",
        "a-string",
        "upper-case",
        "leading-dash",
        "space",
        "comma",
        "semicolon",
        "number",
        "empty",
        "release-path",
    ],
)
def test_bad_packages_are_refused_before_anything_changes(
    loopback_agent, lxcpath, btrfs_mount, template, release, packages, message
):
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    before = (lxc_states(lxcpath), subvolumes(btrfs_mount), everything_under(lxcpath))
    with pytest.raises(InvalidArgument, match=message):
        agent.create("new", template, release=release, packages=packages)
    with pytest.raises(InvalidArgument, match=message):
        agent.create("base", template, release=release, packages=packages)
    assert (lxc_states(lxcpath), subvolumes(btrfs_mount), everything_under(lxcpath)) == before


def test_an_existing_container_made_otherwise_is_a_conflict(loopback_agent, lxcpath):
    agent = loopback_agent.connect()
    agent.create("made", "busybox")
    before = everything_under(lxcpath)
    with pytest.raises(
        Conflict, match="made from template 'busybox', not template 'debian' release 'bookworm' with packages git,sudo"
    ):
        agent.create("made", "debian", release="bookworm", packages=["sudo", "git"])
    assert everything_under(lxcpath) == before


def test_a_failed_template_run_leaves_no_image_and_no_container(loopback_agent, lxcpath, btrfs_mount):
    agent = loopback_agent.connect()
    with pytest.raises(ContainerError, match=r"the template said:\n(.|\n)*Invalid release nosuchrelease") as caught:
        agent.create("doomed", "debian", release="nosuchrelease", packages=["git"])
    assert "image debian-nosuchrelease-" in str(caught.value)
    assert caught.value.container == "doomed"
    assert os.listdir(lxcpath) == [], "no container folder, no half image, no empty image folder"
    assert [path for path in subvolumes(btrfs_mount) if path.startswith(os.path.basename(lxcpath))] == []
    assert agent.list_images() == [] and lxc_states(lxcpath) == {}


def test_an_image_that_overlay_containers_stack_on_is_kept_until_its_last_user_goes(plain_lxcpath, start_agent):
    lxcpath = plain_lxcpath
    agent = start_agent(lxcpath, "--storage", "overlay").connect()
    agent.create("low-1", "busybox")
    agent.create("low-2", "busybox")
    [key] = image_folders(lxcpath)
    image_rootfs = os.path.join(images_dir(lxcpath), key, "rootfs")
    for name in ("low-1", "low-2"):
        with open(os.path.join(lxcpath, name, "config")) as handle:
            assert f"lxc.rootfs.path = overlay:{image_rootfs}:{lxcpath}/{name}/overlay/delta\n" in handle.read()
    assert [image["used_by"] for image in agent.list_images()] == [["low-1", "low-2"]]

    assert agent.destroy_images() == [], "an image in use is skipped"
    with pytest.raises(Conflict, match=rf"{key} by \['low-1', 'low-2'\]") as caught:
        agent.destroy_images([key])
    assert caught.value.images == {key: ["low-1", "low-2"]}
    assert image_folders(lxcpath) == [key]

    # A clone stacks on its source's frozen upper and on the image: it holds the image too.
    agent.destroy(["low-1"])
    agent.clone("low-2", ["low-3"])
    assert [image["used_by"] for image in agent.list_images()] == [["low-2", "low-3"]]
    agent.start(["low-2", "low-3"])
    identities = [guest_identity(agent, name) for name in ("low-2", "low-3")]
    assert [i[0] for i in identities] == ["low-2", "low-3"] and identities[0][2] != identities[1][2]
    assert agent.run("low-3", ["ls", "/bin/busybox"])["exit_code"] == 0
    agent.destroy(["low-2"])
    with pytest.raises(Conflict, match=r"by \['low-3'\]"):
        agent.destroy_images([key])
    agent.destroy(["low-3"])
    assert image_folders(lxcpath) == [key], "destroy() never removes an image"
    assert agent.list_images()[0]["used_by"] == []
    assert agent.destroy_images([key]) == [key]
    assert os.listdir(lxcpath) == [] and lxc_states(lxcpath) == {}


@pytest.mark.slow
def test_debian_with_packages_runs_the_template_once(loopback_agent, lxcpath):
    """The root namespace reaches the Debian mirror (simulated hosts cannot)."""
    agent = loopback_agent.connect()
    started = time.monotonic()
    assert agent.create("deb-1", "debian", release="bookworm", packages=DEBIAN_PACKAGES)["created"]
    first = time.monotonic() - started
    [key] = image_folders(lxcpath)
    assert key.startswith("debian-bookworm-")
    image_rootfs = os.path.join(images_dir(lxcpath), key, "rootfs")
    image_uuid = subvolume_field(image_rootfs, "UUID")
    [listed] = agent.list_images()
    assert (listed["template"], listed["release"], listed["packages"]) == (
        "debian",
        "bookworm",
        sorted(DEBIAN_PACKAGES),
    )

    started = time.monotonic()
    assert agent.create("deb-2", "debian", release="bookworm", packages=["python3", "sudo", "git"])["created"]
    second = time.monotonic() - started
    print(f"\nfirst create (template run into image {key}): {first:.1f} s; second (from the image): {second:.2f} s")
    assert image_folders(lxcpath) == [key] and agent.list_images() == [listed], "the template did not run again"
    for name in ("deb-1", "deb-2"):
        assert subvolume_field(os.path.join(lxcpath, name, "rootfs"), "Parent UUID") == image_uuid

    assert agent.create("deb-1", "debian", release="bookworm", packages=["sudo", "python3", "git"]) == {
        "name": "deb-1",
        "created": False,
    }
    with pytest.raises(
        Conflict,
        match="with packages git,python3,sudo, not template 'debian' release 'bookworm' with packages git,sudo;",
    ):
        agent.create("deb-1", "debian", release="bookworm", packages=["git", "sudo"])
    with pytest.raises(Conflict):
        agent.create("deb-2", "debian", release="bookworm")
    assert image_folders(lxcpath) == [key]
    assert {entry["name"]: entry["packages"] for entry in agent.list()} == {
        "deb-1": sorted(DEBIAN_PACKAGES),
        "deb-2": sorted(DEBIAN_PACKAGES),
    }

    agent.start(["deb-1", "deb-2"])
    for name in ("deb-1", "deb-2"):
        for argv, expected in (
            (["git", "--version"], "git version"),
            (["sudo", "-V"], "Sudo version"),
            (["python3", "-V"], "Python 3."),
        ):
            result = agent.run(name, argv)
            assert result["exit_code"] == 0 and expected in result["stdout"], (name, argv, result)
    identities = [guest_identity(agent, name) for name in ("deb-1", "deb-2")]
    assert [i[0] for i in identities] == ["deb-1", "deb-2"] and identities[0][2] != identities[1][2]
    with open(os.path.join(image_rootfs, "etc", "machine-id")) as handle:
        assert handle.read().strip() not in (identities[0][2], identities[1][2])

    agent.destroy(["deb-1", "deb-2"])
    assert agent.destroy_images() == [key]
    assert os.listdir(lxcpath) == []


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/ksm/run"), reason="this kernel has no KSM")
def test_containers_and_their_clones_see_no_host_ksm_to_tune(loopback_agent, lxcpath, btrfs_mount):
    """devstack's configure_ksm writes /sys/kernel/mm/ksm/run when it exists; in a container that write fails
    (sys is read-only) and stops stack.sh, so the agent hides the folder. The host keeps its own."""
    agent = loopback_agent.connect()
    agent.create("ksm-one", "busybox")
    agent.clone("ksm-one", ["ksm-two"])
    try:
        agent.start(["ksm-one", "ksm-two"])
        for name in ("ksm-one", "ksm-two"):
            seen = agent.run(name, ["sh", "-c", "ls -A /sys/kernel/mm/ksm; test -e /sys/kernel/mm/ksm/run"])
            assert (seen["exit_code"], seen["stdout"]) == (1, ""), seen
            assert agent.run(name, ["test", "-d", "/sys/kernel/mm"])["exit_code"] == 0, "the rest of /sys is there"
        assert os.path.exists("/sys/kernel/mm/ksm/run")
    finally:
        agent.destroy(["ksm-one", "ksm-two"])
