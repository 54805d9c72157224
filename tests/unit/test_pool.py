"""The storage pool's pure parts: its size from the free disk, refusals with the numbers, paths, the mount unit."""

import pytest

from agent import pool
from agent.errors import InvalidArgument, StorageError

GIB = pool.GIB


@pytest.mark.parametrize(
    "free,size",
    [
        (80 * GIB, 40 * GIB),  # half the free disk
        (500 * GIB, 100 * GIB),  # at most 100 GiB
        (20 * GIB, 16 * GIB),  # at least 16 GiB while the disk holds that much
        (int(41.7 * GIB), 20 * GIB),  # whole GiB
    ],
)
def test_auto_size_is_half_the_free_disk_within_bounds(free, size):
    assert pool.choose_size(None, free, "/var/lib") == size


def test_a_disk_too_small_is_refused_with_the_numbers():
    with pytest.raises(StorageError) as refused:
        pool.choose_size(None, 3 * GIB + GIB // 2, "/var/lib")
    assert "/var/lib has 3.5 GiB free, a pool needs at least 16.0 GiB" in str(refused.value)


def test_a_requested_size_must_fit_the_free_disk_and_be_large_enough():
    assert pool.choose_size(60 * GIB, 70 * GIB, "/srv") == 60 * GIB
    with pytest.raises(StorageError, match=r"pool of 90.0 GiB does not fit: /srv has 70.0 GiB free"):
        pool.choose_size(90 * GIB, 70 * GIB, "/srv")
    with pytest.raises(StorageError, match=r"2.0 GiB is below the least a pool needs, 16.0 GiB"):
        pool.choose_size(2 * GIB, 70 * GIB, "/srv")


@pytest.mark.parametrize(
    "text,size",
    [("auto", None), (None, None), ("60G", 60 * GIB), ("60GiB", 60 * GIB), ("512M", 512 * 1024**2), (17, 17)],
)
def test_sizes_are_read_as_people_write_them(text, size):
    assert pool.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-5G", "5 X", "1e9", "5G\nOptions=rw"])
def test_sizes_that_are_not_sizes_are_refused(text):
    with pytest.raises(InvalidArgument, match="storage_pool_size"):
        pool.parse_size(text)


def test_the_pool_file_is_beside_the_lxcpath():
    assert pool.default_file("/var/lib/lxc") == "/var/lib/lxc.img"
    assert pool.default_file("/var/lib/lxc/") == "/var/lib/lxc.img"


@pytest.mark.parametrize(
    "lxcpath,image,why",
    [
        ("var/lib/lxc", "/var/lib/lxc.img", "absolute path"),
        ("/var/lib/lxc", "/var/lib/lxc/pool.img", "inside the lxcpath"),
        ("/var/lib/lxc", "/var/lib/lxc", "inside the lxcpath"),
        ("/var/lib/l xc", "/var/lib/lxc.img", "absolute path"),
        ("/var/lib/lxc", "/var/lib/x.img\nExecStart=/bin/sh", "absolute path"),
        ("/var/lib/lxc", "/var/lib/../../etc/x.img", "absolute path"),
    ],
)
def test_pool_paths_are_plain_and_apart(lxcpath, image, why):
    with pytest.raises(InvalidArgument, match=why):
        pool.check_paths(lxcpath, image)


@pytest.mark.parametrize(
    "path,name",
    [
        ("/var/lib/lxc", "var-lib-lxc.mount"),
        ("/srv/lxc-pool/", "srv-lxc\\x2dpool.mount"),
        ("/var/.hidden/lxc", "var-\\x2ehidden-lxc.mount"),
    ],
)
def test_mount_unit_names_are_systemd_s(path, name):
    assert pool.unit_name(path) == name


def test_the_mount_unit_mounts_the_file_at_the_lxcpath_at_boot():
    unit = pool.mount_unit("/var/lib/lxc", "/var/lib/lxc.img")
    assert "What=/var/lib/lxc.img\nWhere=/var/lib/lxc\nType=btrfs\nOptions=loop,noatime,discard=async\n" in unit
    assert "RequiresMountsFor=/var/lib\n" in unit
    assert unit.endswith("[Install]\nWantedBy=local-fs.target\n")
