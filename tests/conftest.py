"""Fixtures that make real resources (loop btrfs, network namespaces) and remove them even on failure."""

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.support import sh, unique


def _require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (LXC containers, btrfs mounts, network namespaces)")


@pytest.fixture(scope="session")
def btrfs_mount():
    """A loop-file btrfs mounted in a temporary folder, for the whole session."""
    _require_root()
    workdir = tempfile.mkdtemp(prefix="lxcagent-btrfs-")
    image, mountpoint = os.path.join(workdir, "image"), os.path.join(workdir, "mnt")
    os.mkdir(mountpoint)
    sh("truncate", "-s", "8G", image)
    sh("mkfs.btrfs", "-q", image)
    sh("mount", "-o", "loop", image, mountpoint)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", mountpoint], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def lxcpath(btrfs_mount, request):
    """A fresh lxcpath on the loop btrfs for one test."""
    path = os.path.join(btrfs_mount, unique(request.node.name[:20].replace("[", "_") + "-"))
    os.mkdir(path)
    return path


@pytest.fixture
def netns():
    """A uniquely named, empty network namespace with loopback up."""
    _require_root()
    name = unique("lxct-")
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
