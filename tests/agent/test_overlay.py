"""The overlay storage backend through RPC, on real LXC and real overlay mounts, on a filesystem that is not btrfs.

Checked from outside the agent: the config files liblxc reads, the folders under the lxcpath, `lxc-ls`, and what
the containers themselves see.
"""

import ipaddress
import os
import re
import shutil
import stat
import tempfile

import pytest

from agent import storage
from agent.errors import BatchError, InvalidArgument
from tests.support import lxc_states, sh, unique

CLONES = [f"ovl-{i}" for i in range(4)]
SUBNET = ipaddress.ip_network("10.231.9.0/24")


@pytest.fixture
def overlay_agent(plain_lxcpath, start_agent):
    return start_agent(plain_lxcpath, "--storage", "overlay")


def assert_nothing_left(agent, lxcpath, netns=None):
    assert lxc_states(lxcpath, netns) == {}
    assert len(agent.destroy_images()) == 1, "the template's image stays until asked to go"
    assert os.listdir(lxcpath) == [], "bases, images and container folders are all gone"
    assert lxcpath not in sh("mount"), "nothing stays mounted from the lxcpath"


def bases_dir(lxcpath):
    return os.path.join(lxcpath, ".lxc-agent", "bases")


def bases(lxcpath):
    folder = bases_dir(lxcpath)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def rootfs_line(lxcpath, name):
    """What liblxc reads: the last lxc.rootfs.path line of the container's config."""
    with open(os.path.join(lxcpath, name, "config")) as handle:
        return re.findall(r"^lxc\.rootfs\.path = (.*)$", handle.read(), re.M)[-1]


def image_rootfs(lxcpath):
    """The rootfs of the one image the containers of these tests come from: the bottom of every stack."""
    [image] = os.listdir(os.path.join(lxcpath, ".lxc-agent", "images"))
    return os.path.join(lxcpath, ".lxc-agent", "images", image, "rootfs")


def expected_overlay(lxcpath, name, *base_names):
    lowers = [os.path.join(bases_dir(lxcpath), base) for base in base_names] + [image_rootfs(lxcpath)]
    return "overlay:" + ":".join([*lowers, os.path.join(lxcpath, name, "overlay", "delta")])


def upper(lxcpath, name, relative=""):
    return os.path.join(lxcpath, name, "overlay", "delta", relative)


def write_on_host(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def sees(agent, name, path):
    result = agent.run(name, ["cat", path])
    return result["stdout"] if result["exit_code"] == 0 else None


def test_overlay_clones_share_one_base_and_never_see_later_changes_to_their_source(overlay_agent, plain_lxcpath):
    lxcpath = plain_lxcpath
    agent = overlay_agent.connect()
    assert agent.info()["storage"] == "overlay"
    agent.create("src", "busybox")
    assert agent.clone("src", CLONES) == CLONES

    # The source was an overlay on the template's image; its own upper (its identity) froze into one base over
    # the image, and the source and every clone stack on both.
    [base] = bases(lxcpath)
    assert base.startswith("src-")
    assert not os.path.exists(os.path.join(lxcpath, "src", "rootfs"))
    assert os.path.exists(os.path.join(bases_dir(lxcpath), base, "etc", "hostname"))
    assert os.path.exists(os.path.join(image_rootfs(lxcpath), "bin", "busybox"))
    for name in ["src", *CLONES]:
        assert rootfs_line(lxcpath, name) == expected_overlay(lxcpath, name, base)
    assert agent.clone("src", CLONES) == CLONES, "asking again is a no-op"
    assert bases(lxcpath) == [base]

    agent.start(["src", *CLONES])
    assert set(lxc_states(lxcpath).values()) == {"RUNNING"}
    for name in CLONES:
        assert agent.run(name, ["hostname"])["stdout"].strip() == name
        assert sees(agent, name, "/etc/hostname") == f"{name}\n"
    assert agent.run("src", ["hostname"])["stdout"].strip() == "src"
    assert agent.run(CLONES[0], ["id", "-un"], user="root")["stdout"] == "root\n", "/etc/passwd read from base"

    # The source changes after cloning: through the container, and from the host side while it is stopped.
    assert agent.run("src", ["sh", "-c", "echo inside > /etc/after-clone-inside"])["exit_code"] == 0
    agent.stop(["src"])
    write_on_host(upper(lxcpath, "src", "etc/after-clone-host"), "host\n")
    agent.start(["src"])
    assert sees(agent, "src", "/etc/after-clone-inside") == "inside\n"
    assert sees(agent, "src", "/etc/after-clone-host") == "host\n"
    for name in CLONES:
        assert sees(agent, name, "/etc/after-clone-inside") is None
        assert sees(agent, name, "/etc/after-clone-host") is None
        assert not os.path.exists(upper(lxcpath, name, "etc/after-clone-host"))
    assert not os.path.exists(os.path.join(bases_dir(lxcpath), base, "etc", "after-clone-inside"))
    # Users are read from what each container sees: the source's /etc/passwd is now a copy in its upper.
    agent.run("src", ["sh", "-c", "echo 'tester:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd"])
    assert agent.run("src", ["id", "-u"], user="tester")["stdout"] == "1234\n"
    with pytest.raises(InvalidArgument, match="no user 'tester'"):
        agent.run(CLONES[0], ["id", "-u"], user="tester")
    # A clone's own changes stay its own too.
    agent.run(CLONES[1], ["sh", "-c", "echo mine > /root/note"])
    assert [sees(agent, name, "/root/note") for name in ["src", *CLONES]] == [None, None, "mine\n", None, None]

    # The base outlives its source while clones use it, and goes with the last of them.
    assert agent.destroy(["src"]) == ["src"]
    assert bases(lxcpath) == [base]
    agent.stop([CLONES[0]])
    agent.start([CLONES[0]])
    assert agent.run(CLONES[0], ["hostname"])["stdout"].strip() == CLONES[0]
    assert agent.destroy(CLONES[:2]) == CLONES[:2]
    assert bases(lxcpath) == [base]
    assert agent.destroy(CLONES[2:]) == CLONES[2:]
    assert_nothing_left(agent, lxcpath)


def test_a_clone_of_a_clone_stacks_a_frozen_layer_of_its_source(overlay_agent, plain_lxcpath):
    lxcpath = plain_lxcpath
    agent = overlay_agent.connect()
    agent.create("root", "busybox")
    agent.clone("root", ["child"])
    [root_base] = bases(lxcpath)
    agent.start(["child"])
    agent.run("child", ["sh", "-c", "echo before > /etc/from-child; rm /etc/profile"])
    agent.stop(["child"])

    assert agent.clone("child", ["grandchild"]) == ["grandchild"]
    [child_base] = [base for base in bases(lxcpath) if base != root_base]
    assert child_base.startswith("child-")
    assert rootfs_line(lxcpath, "child") == expected_overlay(lxcpath, "child", child_base, root_base)
    assert rootfs_line(lxcpath, "grandchild") == expected_overlay(lxcpath, "grandchild", child_base, root_base)

    agent.start(["child", "grandchild"])
    assert agent.run("grandchild", ["hostname"])["stdout"].strip() == "grandchild"
    assert sees(agent, "grandchild", "/etc/from-child") == "before\n"
    assert sees(agent, "grandchild", "/etc/profile") is None, "a deletion in the source is inherited"
    agent.run("child", ["sh", "-c", "echo after > /etc/child-later"])
    assert sees(agent, "grandchild", "/etc/child-later") is None

    agent.destroy(["child"])
    assert bases(lxcpath) == sorted([root_base, child_base])
    agent.stop(["grandchild"])
    agent.start(["grandchild"])
    assert sees(agent, "grandchild", "/etc/from-child") == "before\n"
    agent.destroy(["grandchild"])
    assert bases(lxcpath) == [root_base], "the root still uses its own base"
    agent.destroy(["root"])
    assert_nothing_left(agent, lxcpath)


def test_auto_picks_overlay_where_the_lxcpath_is_not_btrfs_and_no_pool_is_wanted(plain_lxcpath, start_agent):
    process = start_agent(plain_lxcpath, "--storage-pool", "none")
    info = process.connect().info()
    assert (info["storage"], info["pool"]) == ("overlay", None)
    with open(process.log) as log:
        said = log.read()
    assert "is not on btrfs, so clones are not snapshots and no golden image" in said, said


def test_static_addresses_are_written_into_each_clone_s_own_upper(sim_host, plain_lxcpath, start_agent):
    lxcpath = plain_lxcpath
    bridge = unique("lxbr")
    names = CLONES[:2]
    process = start_agent(lxcpath, "--storage", "overlay", host=sim_host)
    agent = process.connect()
    agent.create("src", "busybox")
    network = agent.ensure_network(bridge, str(SUBNET))
    agent.clone("src", names)
    addresses = {name: f"{SUBNET[20 + i]}/24" for i, name in enumerate(names)}
    assert agent.set_addresses(bridge, addresses) == names
    [base] = bases(lxcpath)
    with open(os.path.join(image_rootfs(lxcpath), "etc", "init.d", "rcS")) as handle:
        assert "udhcpc" in handle.read(), "the image keeps the template's script"
    for name in names:
        with open(upper(lxcpath, name, "etc/init.d/rcS")) as handle:
            script = handle.read()
        assert f"ip addr replace {addresses[name]} dev eth0" in script and "udhcpc" not in script
        assert os.access(upper(lxcpath, name, "etc/init.d/rcS"), os.X_OK)
    assert rootfs_line(lxcpath, names[0]) == expected_overlay(lxcpath, names[0], base), (
        "saving the network config keeps the overlay rootfs"
    )

    agent.start(names)
    for name in names:
        shown = agent.run(name, ["ip", "-4", "addr", "show", "eth0"])["stdout"]
        assert re.search(rf"inet {re.escape(addresses[name])}\b", shown), shown
        assert agent.run(name, ["ping", "-c", "1", "-W", "2", network["gateway"]])["exit_code"] == 0
    agent.destroy([*names, "src"])
    agent.destroy_network(bridge)
    assert_nothing_left(agent, lxcpath, process.netns)


def test_a_full_copy_of_an_overlay_source_is_a_plain_folder_of_what_it_sees(overlay_agent, plain_lxcpath):
    lxcpath = plain_lxcpath
    agent = overlay_agent.connect()
    agent.create("src", "busybox")
    agent.clone("src", ["snap"])
    write_on_host(upper(lxcpath, "src", "etc/only-in-upper"), "upper\n")
    assert agent.clone("src", ["full"], snapshot=False) == ["full"]
    assert rootfs_line(lxcpath, "full") == f"dir:{lxcpath}/full/rootfs"
    with open(os.path.join(lxcpath, "full", "rootfs", "etc", "only-in-upper")) as handle:
        assert handle.read() == "upper\n"
    agent.start(["full"])
    assert agent.run("full", ["hostname"])["stdout"].strip() == "full"
    agent.destroy(["src", "snap"])
    assert bases(lxcpath) == []
    assert agent.run("full", ["ls", "/bin/busybox"])["exit_code"] == 0
    agent.destroy(["full"])
    assert_nothing_left(agent, lxcpath)


def test_a_failed_clone_leaves_its_source_and_others_intact(overlay_agent, plain_lxcpath):
    lxcpath = plain_lxcpath
    agent = overlay_agent.connect()
    agent.create("src", "busybox")
    os.mkdir(os.path.join(lxcpath, "squatter"))  # a folder that is not a container
    write_on_host(os.path.join(lxcpath, "squatter", "keep"), "mine\n")
    with pytest.raises(BatchError) as caught:
        agent.clone("src", ["fine", "squatter"])
    assert caught.value.succeeded == ["fine"] and list(caught.value.failed) == ["squatter"]
    assert os.path.exists(os.path.join(lxcpath, "squatter", "keep"))
    [base] = bases(lxcpath)
    assert rootfs_line(lxcpath, "src") == expected_overlay(lxcpath, "src", base)
    agent.start(["src", "fine"])
    assert agent.run("src", ["hostname"])["stdout"].strip() == "src"
    assert agent.run("fine", ["hostname"])["stdout"].strip() == "fine"
    agent.destroy(["src", "fine"])
    agent.destroy_images()
    assert os.listdir(lxcpath) == ["squatter"]


def test_a_stack_too_deep_to_mount_is_refused_before_anything_changes(overlay_agent, plain_lxcpath):
    lxcpath = plain_lxcpath
    agent = overlay_agent.connect()
    names = [f"g{depth:02d}-" + "x" * 56 for depth in range(60)]
    agent.create(names[0], "busybox")
    made = 1
    with pytest.raises(BatchError, match="more than one mount can name") as caught:  # noqa: PT012 (clones until refused)
        for made in range(1, len(names)):
            agent.clone(names[made - 1], [names[made]])
    deepest, refused = names[made - 1], names[made]
    assert list(caught.value.failed) == [refused]
    assert not os.path.exists(os.path.join(lxcpath, refused))
    *layers, bottom = rootfs_line(lxcpath, deepest).split(":")[1:-1]
    assert bottom == image_rootfs(lxcpath)
    assert len(layers) == made - 1 > 20
    assert bases(lxcpath) == sorted(os.path.basename(layer) for layer in layers), "no base made for the refused"
    # The deepest stack allowed is one liblxc can mount.
    agent.start([deepest])
    assert agent.run(deepest, ["hostname"])["stdout"].strip() == deepest
    agent.destroy(list(reversed(names[:made])))
    assert_nothing_left(agent, lxcpath)


def test_the_host_reads_a_container_s_files_as_a_real_overlay_mount_shows_them(plain_fs):
    workdir = tempfile.mkdtemp(prefix="lookup-", dir=plain_fs)
    top, bottom, merged = (os.path.join(workdir, part) for part in ("top", "bottom", "merged"))
    try:
        for path, text in {
            "bottom/etc/passwd": "old",
            "bottom/etc/gone": "old",
            "bottom/opaque/hidden": "old",
            "bottom/file-then-dir": "old",
            "bottom/dir-then-file/inner": "old",
            "bottom/both/lower": "old",
            "top/both/upper": "new",
            "top/etc/passwd": "new",
            "top/opaque/shown": "new",
            "top/file-then-dir/inner": "new",
            "top/dir-then-file": "new",
        }.items():
            write_on_host(os.path.join(workdir, path), text)
        os.mknod(os.path.join(top, "etc", "gone"), 0o600 | stat.S_IFCHR, 0)  # a whiteout
        os.setxattr(os.path.join(top, "opaque"), "trusted.overlay.opaque", b"y")
        os.symlink("/etc", os.path.join(top, "link"))
        os.mkdir(merged)
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={top}:{bottom}", merged)
        try:
            for relative in [
                "etc/passwd",
                "etc/gone",
                "opaque/hidden",
                "opaque/shown",
                "file-then-dir/inner",
                "dir-then-file",
                "dir-then-file/inner",
                "both/lower",
                "both/upper",
                "link",
                "link/passwd",
                "missing",
                "etc/missing",
            ]:
                found = storage.lookup([top, bottom], relative)
                real = os.path.join(merged, relative)
                assert (found is not None) == os.path.lexists(real) or relative == "link/passwd", relative
                if found and os.path.isfile(real) and not os.path.islink(real):
                    with open(found[0]) as mine, open(real) as theirs:
                        assert mine.read() == theirs.read(), relative
            assert storage.lookup([top, bottom], "link/passwd") is None, "a guest symlink is not followed"
        finally:
            sh("umount", merged)
    finally:
        shutil.rmtree(workdir)
