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
def make_netns():
    """Makes uniquely named namespaces (loopback up) on demand; removes them all afterwards, links included."""
    _require_root()
    made = []

    def make():
        name = unique("lxct-")
        made.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(make_netns):
    """One fresh, empty network namespace with loopback up."""
    return make_netns()
