"""How a container's root filesystem is made, cloned and removed on this host: btrfs snapshots or full copies."""

import os
import shutil

from agent import btrfs

BACKENDS = ("btrfs", "copy")


def choose_backend(lxcpath, requested="auto"):
    """btrfs when the lxcpath is on btrfs (clones in milliseconds), otherwise full copies."""
    on_btrfs = btrfs.is_btrfs(lxcpath)
    if requested == "auto":
        return "btrfs" if on_btrfs else "copy"
    if requested == "btrfs" and not on_btrfs:
        from agent.errors import InvalidArgument
        raise InvalidArgument(f"storage 'btrfs' asked for, but {lxcpath} is not on btrfs; "
                              "mount a btrfs filesystem there or use --storage copy")
    return requested


def rootfs_path(lxcpath, name):
    return os.path.join(lxcpath, name, "rootfs")


def snapshot_rootfs(lxcpath, source, name):
    btrfs.snapshot(rootfs_path(lxcpath, source), rootfs_path(lxcpath, name))


def remove_container_files(lxcpath, name):
    """Remove a container's folder; its rootfs subvolume first, and only its own (never a path from config)."""
    folder = os.path.join(lxcpath, name)
    rootfs = rootfs_path(lxcpath, name)
    if btrfs.is_subvolume(rootfs):
        btrfs.delete_subvolume(rootfs)
    shutil.rmtree(folder, ignore_errors=False) if os.path.isdir(folder) else None
