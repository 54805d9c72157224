"""The storage pool on a real ext4 lxcpath: made by the agent at its start (a sparse loop file formatted btrfs),
used by clones (btrfs snapshots, not copies), kept across agent restarts and unmounts, refused on a disk too small
or over a folder that holds something, written as a systemd mount unit, and removed leaving nothing."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from agent import pool
from simlab import REPO, AgentProcess, force_remove_containers
from tests.agent.conftest import fs_type
from tests.support import sh

SIZE = "16G"  # the least a pool takes; sparse, so it costs only what is written


def loop_devices(image):
    """Loop devices backed by `image`, from util-linux's losetup (independent of the agent's own reading)."""
    return [line.split(":", 1)[0] for line in sh("losetup", "-j", image).splitlines() if line.strip()]


def subvolume_field(path, field):
    """One field of `btrfs subvolume show` (the real CLI): a snapshot's "Parent UUID" is its source's "UUID"."""
    for line in sh("btrfs", "subvolume", "show", path).splitlines():
        key, _, value = line.strip().partition(":")
        if key == field:
            return value.strip()
    raise AssertionError(f"{path}: no {field} in btrfs subvolume show")


def lxc_agent(*argv):
    return subprocess.run(
        [sys.executable, "-m", "agent.daemon", *argv], capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.fixture
def ext4_lxcpath(plain_lxcpath):
    """An lxcpath on ext4; whatever pool a test leaves on it is unmounted and deleted afterwards."""
    stats = os.statvfs(os.path.dirname(plain_lxcpath))
    if stats.f_bavail * stats.f_frsize < pool.MIN_SIZE + pool.GIB:
        pytest.skip(f"{os.path.dirname(plain_lxcpath)} has less than {pool.gib(pool.MIN_SIZE)} free for a pool")
    yield plain_lxcpath
    image = pool.default_file(plain_lxcpath)
    if os.path.ismount(plain_lxcpath):
        force_remove_containers(plain_lxcpath)
        subprocess.run(["umount", plain_lxcpath], check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(image)


def test_an_agent_on_ext4_makes_a_btrfs_pool_whose_clones_are_snapshots_and_keeps_it(ext4_lxcpath, pki_dir):
    lxcpath, image = ext4_lxcpath, pool.default_file(ext4_lxcpath)
    assert fs_type(lxcpath) == "ext2/ext3"
    process = AgentProcess(lxcpath, pki_dir, extra=("--storage-pool-size", SIZE))
    try:
        agent = process.connect()
        info = agent.info()
        assert info["storage"] == "btrfs"
        assert info["pool"]["file"] == image and info["pool"]["size"] == 16 * pool.GIB
        assert fs_type(lxcpath) == "btrfs" and os.path.getsize(image) == 16 * pool.GIB
        assert os.stat(image).st_blocks * 512 < 1024**3, "the pool file is sparse"
        assert len(loop_devices(image)) == 1
        with open(process.log) as log:
            assert f"storage pool: made {image} (16.0 GiB" in log.read()

        agent.create("base", "busybox")
        agent.clone("base", ["c1", "c2"])
        base_uuid = subvolume_field(f"{lxcpath}/base/rootfs", "UUID")
        for name in ("c1", "c2"):  # snapshots of base's rootfs, not copies
            assert subvolume_field(f"{lxcpath}/{name}/rootfs", "Parent UUID") == base_uuid
        agent.start(["c1"])
    finally:
        process.stop(keep_containers=True)

    # The agent again, as after an upgrade: the same pool, the same containers, no second loop device.
    process = AgentProcess(lxcpath, pki_dir)
    try:
        agent = process.connect()
        assert agent.info()["pool"]["file"] == image
        assert {entry["name"]: entry["state"] for entry in agent.list()} == {
            "base": "STOPPED",
            "c1": "RUNNING",
            "c2": "STOPPED",
        }
        assert len(loop_devices(image)) == 1
        agent.stop(["c1"])
    finally:
        process.stop(keep_containers=True)

    # As after a reboot: the pool unmounted (its loop device goes with it); the next agent mounts it again.
    sh("umount", lxcpath)
    assert loop_devices(image) == [] and fs_type(lxcpath) != "btrfs"
    process = AgentProcess(lxcpath, pki_dir)
    try:
        agent = process.connect()
        assert agent.info()["storage"] == "btrfs"
        assert sorted(entry["name"] for entry in agent.list()) == ["base", "c1", "c2"]
        with open(process.log) as log:
            assert f"storage pool: mounted {image} at {lxcpath}" in log.read()

        refused = lxc_agent("remove-pool", "--lxcpath", lxcpath, "--no-unit")
        assert refused.returncode == 1 and "still holds 3 container(s)" in refused.stderr, refused
        assert os.path.exists(image) and fs_type(lxcpath) == "btrfs"
        agent.destroy(["base", "c1", "c2"])
    finally:
        process.stop()

    removed = lxc_agent("remove-pool", "--lxcpath", lxcpath, "--no-unit")
    assert removed.returncode == 0, removed
    assert not os.path.exists(image) and not os.path.ismount(lxcpath) and loop_devices(image) == []
    assert os.listdir(lxcpath) == []


@pytest.fixture
def small_disk():
    """A 300 MiB ext4 mounted in a temporary folder: too small for any pool."""
    workdir = tempfile.mkdtemp(prefix="lxcagent-small-", dir="/var/tmp")
    mountpoint = os.path.join(workdir, "mnt")
    os.mkdir(mountpoint)
    try:
        sh("truncate", "-s", "300M", f"{workdir}/disk")
        sh("mkfs.ext4", "-q", f"{workdir}/disk")
        sh("mount", "-o", "loop", f"{workdir}/disk", mountpoint)
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=False)
        shutil.rmtree(workdir)


def test_a_disk_too_small_for_a_pool_is_refused_up_front_with_the_numbers(small_disk, pki_dir):
    lxcpath = os.path.join(small_disk, "lxc")
    with pytest.raises(RuntimeError) as refused:
        AgentProcess(lxcpath, pki_dir)
    said = str(refused.value)
    assert re.search(f"not enough free disk for a storage pool: {small_disk} has 2[0-9][0-9] MiB free", said), said
    assert "a pool needs at least 16.0 GiB" in said
    assert not os.path.exists(pool.default_file(lxcpath)) and fs_type(lxcpath) == "ext2/ext3"


def test_no_pool_is_mounted_over_a_folder_that_holds_something(ext4_lxcpath, pki_dir):
    with open(os.path.join(ext4_lxcpath, "old-container"), "w"):
        pass
    with pytest.raises(RuntimeError) as refused:
        AgentProcess(ext4_lxcpath, pki_dir)
    assert "holds 1 entry (old-container): a storage pool mounted there would hide them" in str(refused.value)
    assert not os.path.exists(pool.default_file(ext4_lxcpath)) and not os.path.ismount(ext4_lxcpath)


def test_under_systemd_the_agent_asks_for_init_pool_instead_of_mounting_in_its_own_namespace(ext4_lxcpath, pki_dir):
    result = subprocess.run(
        [sys.executable, "-m", "agent.daemon", "serve", "--listen", "127.0.0.1:0", "--lxcpath", ext4_lxcpath]
        + ["--no-tls", "--token-file", f"{pki_dir}/token"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "INVOCATION_ID": "0123456789abcdef"},
        timeout=60,
    )
    assert result.returncode == 1, result
    assert "run `lxc-agent init-pool` once" in result.stderr
    assert not os.path.exists(pool.default_file(ext4_lxcpath)) and not os.path.ismount(ext4_lxcpath)


def test_init_pool_makes_the_pool_and_a_mount_unit_systemd_accepts(ext4_lxcpath, tmp_path):
    units = tmp_path / "units"
    made = lxc_agent("init-pool", "--lxcpath", ext4_lxcpath, "--storage-pool-size", SIZE, "--unit-dir", str(units))
    assert made.returncode == 0, made
    name = sh("systemd-escape", "--path", "--suffix=mount", ext4_lxcpath).strip()
    unit = units / name
    assert unit.is_file() and (units / "local-fs.target.wants" / name).resolve() == unit
    assert f"What={pool.default_file(ext4_lxcpath)}\nWhere={ext4_lxcpath}\n" in unit.read_text()
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    assert fs_type(ext4_lxcpath) == "btrfs"
    again = lxc_agent("init-pool", "--lxcpath", ext4_lxcpath, "--unit-dir", str(units))
    assert again.returncode == 0 and "already mounted" in again.stdout, again

    removed = lxc_agent("remove-pool", "--lxcpath", ext4_lxcpath, "--unit-dir", str(units))
    assert removed.returncode == 0, removed
    assert not unit.exists() and not (units / "local-fs.target.wants" / name).is_symlink()
    assert not os.path.exists(pool.default_file(ext4_lxcpath)) and not os.path.ismount(ext4_lxcpath)
