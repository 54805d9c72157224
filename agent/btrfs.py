"""btrfs subvolumes through btrfsutil: the fast path for container clones."""

import btrfsutil

from agent.errors import StorageError


def is_btrfs(path):
    """True if `path` lies on a btrfs filesystem."""
    try:
        btrfsutil.subvolume_id(path)
    except btrfsutil.BtrfsUtilError:
        return False
    return True


def is_subvolume(path):
    try:
        return btrfsutil.is_subvolume(path)
    except btrfsutil.BtrfsUtilError:
        return False


def snapshot(source, destination):
    """A writable snapshot: shares every block with `source` until either side writes."""
    try:
        btrfsutil.create_snapshot(source, destination)
    except btrfsutil.BtrfsUtilError as error:
        raise StorageError(f"cannot snapshot {source} to {destination}: {error}") from error


def delete_subvolume(path):
    """Delete a subvolume and any nested ones (a container may create its own)."""
    try:
        btrfsutil.delete_subvolume(path, recursive=True)
    except btrfsutil.BtrfsUtilError as error:
        raise StorageError(f"cannot delete btrfs subvolume {path}: {error}") from error
