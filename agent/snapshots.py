"""Snapshots of containers under a tag, and restoring containers to one: what a whole cloud's snapshot is made of.

Layout, inside the container's own folder (so a snapshot goes with its container):
  <lxcpath>/<name>/lxc-agent-snapshots/<tag>/rootfs       the rootfs as it was (a btrfs snapshot, or a full copy)
  <lxcpath>/<name>/lxc-agent-snapshots/<tag>/config       the container's config then
  <lxcpath>/<name>/lxc-agent-snapshots/<tag>/snapshot.json   written last: the snapshot is complete
A snapshot of several containers is taken at one moment: every running one is frozen (the cgroup freezer) before
the first is copied and thawed after the last, so a controller's database and the computes' files agree. A
restore replaces a stopped container's rootfs and config with a copy of the snapshot's (the snapshot is kept, so
a cloud can be restored to it again and again). Overlay storage takes no snapshots: its merged view exists only
while a container runs.
"""

import contextlib
import json
import logging
import os
import shutil
import time

from agent import btrfs, containers, storage
from agent.errors import StorageError

FOLDER = storage.SNAPSHOTS_FOLDER
MARK = "snapshot.json"
log = logging.getLogger(__name__)


def _folder(lxcpath, name, tag=None):
    folder = os.path.join(lxcpath, name, FOLDER)
    return folder if tag is None else os.path.join(folder, tag)


def read(lxcpath, name, tag):
    """What a complete snapshot records ({tag, created: the host's UTC time as it was taken, was: running or
    stopped, frozen: how many seconds its containers were frozen, size once listed}), or None."""
    try:
        with open(os.path.join(_folder(lxcpath, name, tag), MARK)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _remove_tree(path):
    """A rootfs (subvolume or folder) or a snapshot's folder, whatever a cut-short step left of it."""
    rootfs = os.path.join(path, "rootfs") if os.path.basename(path) != "rootfs" else path
    if btrfs.is_subvolume(rootfs):
        btrfs.delete_subvolume(rootfs)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _refuse_overlay(backend, names):
    if backend == "overlay":
        raise StorageError(
            f"cannot snapshot or restore {names[:3]}{'...' if len(names) > 3 else ''}: this host keeps containers on "
            "overlay storage, whose merged view exists only while one runs; put the lxcpath on btrfs",
        )


def take(lxcpath, names, tag, backend):
    """Snapshot every container of `names` under `tag` at one moment; those that have it already are left as they
    are. Returns {name: {"taken": True if taken now, False if it was there, "frozen": seconds it was frozen}}.

    The containers stay frozen only while btrfs snapshots them: folders and configs are made before, and dirty
    pages written out (each snapshot commits a transaction, which writes what is dirty in its subvolume); the
    files are sized later, when first listed."""
    _refuse_overlay(backend, names)
    todo = [name for name in names if read(lxcpath, name, tag) is None]
    for name in todo:
        folder = _folder(lxcpath, name, tag)
        _remove_tree(folder)  # what a snapshot cut short left
        os.makedirs(folder, mode=storage.PRIVATE_MODE)
        shutil.copyfile(os.path.join(lxcpath, name, "config"), os.path.join(folder, "config"))
    os.sync()
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # before the freeze: nothing they record is later
    began = time.monotonic()
    with containers.frozen(lxcpath, todo) as frozen:
        for name in todo:
            storage.copy_rootfs(storage.rootfs_path(lxcpath, name), os.path.join(_folder(lxcpath, name, tag), "rootfs"))
    held = time.monotonic() - began
    for name in todo:
        made = {"tag": tag, "created": moment, "was": "running" if name in frozen else "stopped", "frozen": held}
        _seal(lxcpath, name, tag, made)
    if todo:
        log.info(
            "snapshot %s: %d container(s) at one moment, %d of them frozen for %.2f s: %s",
            tag,
            len(todo),
            len(frozen),
            held,
            ", ".join(todo),
        )
    return {
        name: {
            "taken": name in todo,
            "frozen": held if name in todo else (read(lxcpath, name, tag) or {}).get("frozen"),
        }
        for name in names
    }


def _seal(lxcpath, name, tag, made):
    folder = _folder(lxcpath, name, tag)
    with open(os.path.join(folder, MARK + ".tmp"), "w") as handle:
        json.dump(made, handle, sort_keys=True)
    os.replace(os.path.join(folder, MARK + ".tmp"), os.path.join(folder, MARK))


def missing(lxcpath, names, tag):
    return [name for name in names if read(lxcpath, name, tag) is None]


def restore(lxcpath, name, tag):
    """The stopped container's rootfs and config replaced by copies of its snapshot `tag`. Each step leaves a
    state the next call completes: the copy is made beside the rootfs, then swapped in."""
    if containers.is_running(lxcpath, name):
        raise StorageError(f"container {name!r} runs; stop it before restoring it", container=name)
    folder = _folder(lxcpath, name, tag)
    rootfs = storage.rootfs_path(lxcpath, name)
    incoming = rootfs + ".restoring"
    _remove_tree(incoming)
    storage.copy_rootfs(os.path.join(folder, "rootfs"), incoming)
    _remove_tree(rootfs)
    os.rename(incoming, rootfs)
    shutil.copyfile(os.path.join(folder, "config"), os.path.join(lxcpath, name, "config.restoring"))
    os.replace(os.path.join(lxcpath, name, "config.restoring"), os.path.join(lxcpath, name, "config"))
    log.info("container %s: restored to its snapshot %s", name, tag)


def listed(lxcpath, names):
    """[{name, tag, created, size, was, frozen}] of the complete snapshots of these containers."""
    found = []
    for name in names:
        try:
            tags = sorted(os.listdir(_folder(lxcpath, name)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for tag in tags:
            made = read(lxcpath, name, tag)
            if made is None:
                continue
            if "size" not in made:  # sized once, when first listed: too slow for the moment it is taken
                made["size"] = storage.tree_size(os.path.join(_folder(lxcpath, name, tag), "rootfs"))
                with contextlib.suppress(OSError):  # deleted meanwhile: it is not listed again
                    _seal(lxcpath, name, tag, made)
            found.append({"name": name, **made, "tag": tag})
    return found


def delete(lxcpath, names, tag):
    """Remove the snapshot `tag` of each container (unsealed first, so one cut short is never taken as whole);
    those without it are done already."""
    for name in names:
        folder = _folder(lxcpath, name, tag)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, MARK))
        _remove_tree(folder)
        with contextlib.suppress(OSError):  # not empty, or never made
            os.rmdir(_folder(lxcpath, name))
