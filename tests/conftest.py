"""Fixtures that make real resources (loop btrfs, network namespaces) and remove them even on failure."""

import os
import subprocess

import pytest

from simlab import loop_btrfs, unique
from tests.support import sh


def _require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (LXC containers, btrfs mounts, network namespaces)")


@pytest.fixture(scope="session")
def btrfs_mount():
    """A loop-file btrfs mounted in a temporary folder, for the whole session."""
    _require_root()
    with loop_btrfs() as mountpoint:
        yield mountpoint


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
