"""How a container's root filesystem is made, cloned and removed on this host: btrfs snapshots, overlayfs
layers over shared read-only bases, or full copies; the image cache the templates run into; and how the host
reads and writes a container's files.

Layout (all under the lxcpath, so nothing outside it is ever written or removed):
  <lxcpath>/.lxc-agent/images/<template>-<release or default>-<hash>/
      config, rootfs/ (a btrfs subvolume where the lxcpath is on btrfs), lxc-agent-image.json
                                               what a template made, once; never started, never changed; the
                                               json (written last) marks it complete
  <lxcpath>/.lxc-agent/images/<key>/           the same for an image saved from a container (save_image): its
                                               rootfs as it was at one moment, kind "saved" in the json
  <lxcpath>/.lxc-agent/bases/<source>-<hex>/   a frozen layer: read-only from then on, shared by its users
  <lxcpath>/<name>/overlay/delta, .../work     the container's own upper and work dirs (liblxc's own layout)
  <lxcpath>/<name>/config                      lxc.rootfs.path = overlay:<top base>:...:<bottom layer>:<delta>
  <lxcpath>/<name>/lxc-agent.json              the mark of a container lxc-agent made (liblxc ignores it)
An overlay stack's bottom layer is a base or an image's rootfs. A layer's users are the containers whose config
names it; there is no other record that could drift. Bases go with their last user; images only when asked
(destroy_images), and never while a container stacks on them.

The containers are privileged: a setuid-root file in a rootfs is setuid root on the host for whoever reaches it.
So only root reaches anything under the lxcpath (LXD's modes, see private_modes).
"""

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time

from agent import btrfs
from agent.errors import Conflict, InvalidArgument, StorageError

BACKENDS = ("btrfs", "overlay", "copy")
AGENT_DIR = ".lxc-agent"
IMAGE_METADATA = "lxc-agent-image.json"
# In the folder of every container lxc-agent made, written by every version at the end of create and clone.
METADATA_FILE = "lxc-agent.json"
# In a container's folder: its snapshots (agent.snapshots), each rootfs a subvolume on btrfs.
SNAPSHOTS_FOLDER = "lxc-agent-snapshots"
# LXD's modes. The lxcpath: others may pass through (to containers they own there, made with other tools) but
# not list it. A container's folder: only root passes, and root itself needs CAP_DAC_OVERRIDE to list or write
# it (the agent and liblxc have it). The agent's own folders and an overlay container's upper and work dirs'
# parent: root's alone. Never a rootfs, an upper dir or a base itself: their mode is the container's "/".
LXCPATH_MODE = 0o711
CONTAINER_MODE = 0o100
PRIVATE_MODE = 0o700
# liblxc passes the overlay options to mount(2), which takes one page; keep well below it.
MAX_OVERLAY_OPTIONS = 3800
_ROOTFS_LINE = re.compile(r"^\s*lxc\.rootfs\.path\s*=(.*)$", re.M)

log = logging.getLogger(__name__)


def choose_backend(lxcpath, requested="auto"):
    """btrfs when the lxcpath is on btrfs, else overlay when it can hold overlay layers, else full copies.

    The agent's first look at its lxcpath when it starts: what earlier agents left open is closed here first."""
    make_private(lxcpath)
    if requested not in ("auto", *BACKENDS):
        raise InvalidArgument(f"unknown storage {requested!r}; use auto, " + ", ".join(BACKENDS))
    if requested == "auto":
        if btrfs.is_btrfs(lxcpath):
            return "btrfs"
        return "copy" if overlay_problem(lxcpath) else "overlay"
    if requested == "btrfs" and not btrfs.is_btrfs(lxcpath):
        raise InvalidArgument(
            f"storage 'btrfs' asked for, but {lxcpath} is not on btrfs; "
            "mount a btrfs filesystem there or use --storage overlay or copy"
        )
    if requested == "overlay":
        problem = overlay_problem(lxcpath)
        if problem:
            raise InvalidArgument(f"storage 'overlay' asked for, but {problem}; use --storage copy")
    return requested


def overlay_problem(lxcpath):
    """Why overlay layers cannot live in lxcpath (None if they can): checked by mounting a tiny overlay there."""
    if ":" in lxcpath or "," in lxcpath:
        return f"the lxcpath {lxcpath} contains ':' or ',', which overlay mount options cannot carry"
    probe = tempfile.mkdtemp(prefix=".overlay-probe-", dir=lxcpath)
    try:
        for part in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(probe, part))
        options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        libc = ctypes.CDLL(None, use_errno=True)
        merged = f"{probe}/merged".encode()
        if libc.mount(b"overlay", merged, b"overlay", 0, options.encode()) != 0:
            error = os.strerror(ctypes.get_errno())
            return f"the kernel cannot mount an overlay with its upper layer in {lxcpath} ({error})"
        if libc.umount2(merged, 0) != 0:
            libc.umount2(merged, 2)  # MNT_DETACH: never leave the probe mounted
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# -- who may reach what ---------------------------------------------------------------------------------------------


def is_agents(lxcpath, name):
    """Whether lxc-agent made the container `name`: its folder holds the agent's metadata file (a regular file,
    whatever it says: the first agent wrote only template and release)."""
    try:
        return stat.S_ISREG(os.lstat(os.path.join(lxcpath, name, METADATA_FILE)).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _set_mode(path, mode):
    """chmod a folder (never through a symlink) unless it has that mode; returns the mode it had, or None if it
    was right (or is not a folder)."""
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(seen.st_mode) or stat.S_IMODE(seen.st_mode) == mode:
        return None
    os.chmod(path, mode, follow_symlinks=False)
    return stat.S_IMODE(seen.st_mode)


def _log_modes(changed):
    for path, was, mode in changed:
        log.info("%s: mode %04o, was %04o (what an earlier lxc-agent left)", path, mode, was)


def make_container_private(lxcpath, name, report=True):
    """The modes of one of the agent's containers' folders, logging what changed (`report`)."""
    changed = []
    for path, mode in (
        (os.path.join(lxcpath, name), CONTAINER_MODE),
        (os.path.join(lxcpath, name, "overlay"), PRIVATE_MODE),
    ):
        was = _set_mode(path, mode)
        if was is not None:
            changed.append((path, was, mode))
    if report:
        _log_modes(changed)
    return changed


def make_private(lxcpath):
    """Give the lxcpath, the agent's own folders and every container folder of the agent their modes (others'
    containers are left as they are), logging what changed: what an agent before this one left open."""
    was = _set_mode(lxcpath, LXCPATH_MODE)
    # A new (empty) lxcpath, made with the umask's mode, is not worth a line in the log.
    changed = [(lxcpath, was, LXCPATH_MODE)] if was is not None and os.listdir(lxcpath) else []
    folders = [os.path.join(lxcpath, AGENT_DIR), images_path(lxcpath), bases_path(lxcpath)]
    for folder in folders + [image_folder(lxcpath, key) for key in image_keys(lxcpath)]:
        was = _set_mode(folder, PRIVATE_MODE)
        if was is not None:
            changed.append((folder, was, PRIVATE_MODE))
    _log_modes(changed)
    for name in sorted(os.listdir(lxcpath)):
        if is_agents(lxcpath, name):
            changed.extend(make_container_private(lxcpath, name))
    return changed


def make_folder(path, mode):
    """A new folder with exactly `mode`, whatever the umask (makedirs gives its parents the umask's mode)."""
    os.mkdir(path, mode)
    os.chmod(path, mode)


def make_agent_folder(folder):
    """One of the agent's own folders under <lxcpath>/.lxc-agent (images, bases), and that one, root's alone."""
    for path in (os.path.dirname(folder), folder):
        if not os.path.isdir(path):
            with contextlib.suppress(FileExistsError):  # made meanwhile
                make_folder(path, PRIVATE_MODE)
        _set_mode(path, PRIVATE_MODE)


# -- paths ---------------------------------------------------------------------------------------------------------


def rootfs_path(lxcpath, name):
    return os.path.join(lxcpath, name, "rootfs")


def snapshot_rootfs(lxcpath, source, name):
    btrfs.snapshot(rootfs_path(lxcpath, source), rootfs_path(lxcpath, name))


def upper_path(lxcpath, name):
    """liblxc puts the work dir beside the upper one: <name>/overlay/work."""
    return os.path.join(lxcpath, name, "overlay", "delta")


def bases_path(lxcpath):
    return os.path.join(lxcpath, AGENT_DIR, "bases")


def _is_base(lxcpath, path):
    """Only a direct child of this lxcpath's bases folder is ever removed as a base."""
    bases = os.path.realpath(bases_path(lxcpath))
    return os.path.dirname(os.path.realpath(path)) == bases and os.path.basename(path) not in ("", ".", "..")


def _image_of_layer(lxcpath, path):
    """The key of the image whose rootfs `path` is, or None."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if os.path.basename(real) != "rootfs" or os.path.dirname(folder) != os.path.realpath(images_path(lxcpath)):
        return None
    return os.path.basename(folder)


def _is_layer(lxcpath, path):
    """A read-only layer lxc-agent made: a base, or an image's rootfs."""
    return _is_base(lxcpath, path) or _image_of_layer(lxcpath, path) is not None


# -- the rootfs line of a container's config ---------------------------------------------------------------------


def read_rootfs_spec(lxcpath, name):
    """The value of lxc.rootfs.path in the container's config (the last one wins, as in liblxc), or None."""
    try:
        with open(os.path.join(lxcpath, name, "config")) as handle:
            values = _ROOTFS_LINE.findall(handle.read())
    except FileNotFoundError:
        return None
    if not values:
        return None
    value = values[-1].strip()
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def write_rootfs_spec(lxcpath, name, spec):
    """Set lxc.rootfs.path in the saved config. liblxc's set_config_item refuses a typed value ("overlay:...",
    "dir:...") through the Python binding, but reads one from the file; so this one line is written here."""
    path = os.path.join(lxcpath, name, "config")
    with open(path) as handle:
        text = handle.read()
    line = f"lxc.rootfs.path = {spec}\n"
    kept, placed = [], False
    for existing in text.splitlines(keepends=True):
        if _ROOTFS_LINE.match(existing):
            if not placed:  # the first one becomes ours, later ones (which would win) go
                kept.append(line)
                placed = True
            continue
        kept.append(existing)
    if not placed:
        kept.append(("" if not kept or kept[-1].endswith("\n") else "\n") + line)
    text = "".join(kept)
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.chmod(path + ".tmp", stat.S_IMODE(os.stat(path).st_mode))
    os.replace(path + ".tmp", path)
    if read_rootfs_spec(lxcpath, name) != spec:
        raise StorageError(f"could not set lxc.rootfs.path of container {name!r} in {path}")


def overlay_spec(lowers, upper):
    return "overlay:" + ":".join([*lowers, upper])


def parse_overlay(spec):
    """(lowers top first, upper) of an "overlay:" or "overlayfs:" rootfs, or None for any other kind."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind not in ("overlay", "overlayfs") or ":" not in rest:
        return None
    *lowers, upper = rest.split(":")
    return lowers, upper


def _check_options_fit(lowers, upper, name):
    work = os.path.join(os.path.dirname(upper), "work")
    length = len(f"upperdir={upper},lowerdir={':'.join(lowers)},workdir={work}")
    if length > MAX_OVERLAY_OPTIONS:
        raise StorageError(
            f"container {name!r} would sit on {len(lowers)} overlay layers, more than one mount "
            "can name; clone its source with snapshot=False (a full copy) to start a new stack"
        )


# -- overlay clones ------------------------------------------------------------------------------------------------


def layers(lxcpath, name):
    """The container's filesystem as the host sees it: directories top first; the host writes only the first.

    For an overlay container that is its own upper dir (the merged view exists only inside the container's
    mount namespace while it runs), then its bases; for any other, its rootfs folder.
    """
    parsed = parse_overlay(read_rootfs_spec(lxcpath, name))
    if parsed is None:
        return [rootfs_path(lxcpath, name)]
    lowers, upper = parsed
    folder = os.path.realpath(os.path.join(lxcpath, name))
    if not os.path.realpath(upper).startswith(folder + os.sep):
        raise StorageError(
            f"the overlay upper dir {upper} of container {name!r} is outside its folder {folder}; "
            "refusing to write into it"
        )
    return [upper, *lowers]


def clone_lowers(lxcpath, source):
    """The read-only layers a new overlay clone of `source` stacks on, freezing the source's own top if needed.

    A dir source: its rootfs moves (rename, same filesystem) into a new base and the source becomes an overlay
    on it with an empty upper. An overlay source whose upper is empty shares its bases as they are; one whose
    upper holds changes gets that upper frozen into a new base on top of its others. Either way the source's
    later writes go to its own new upper, which no clone sees. The source changes only by complete steps: on
    failure each step is undone, and a source left frozen is a valid container.
    """
    spec = read_rootfs_spec(lxcpath, source)
    parsed = parse_overlay(spec)
    if parsed is None:
        top, lowers = rootfs_path(lxcpath, source), []
        kind, _, path = (spec or "").partition(":")
        configured = path if kind in ("dir", "btrfs") else spec
        if not configured or os.path.realpath(configured) != os.path.realpath(top) or not os.path.isdir(top):
            raise StorageError(
                f"the rootfs of source {source!r} is {spec!r}, not its own folder {top}; overlay "
                "clones need that: clone it with snapshot=False (a full copy)",
                container=source,
            )
    else:
        lowers, top = parsed
        foreign = [lower for lower in lowers if not _is_layer(lxcpath, lower)]
        if foreign or os.path.realpath(top) != os.path.realpath(upper_path(lxcpath, source)):
            raise StorageError(
                f"source {source!r} is an overlay that was not made by lxc-agent (layers "
                f"{foreign or [top]}); clone it with snapshot=False (a full copy)",
                container=source,
            )
        if not os.listdir(top):
            return lowers
    base = os.path.join(bases_path(lxcpath), f"{source}-{secrets.token_hex(4)}")
    while os.path.lexists(base):  # rename() would replace an empty folder of that name
        base = os.path.join(bases_path(lxcpath), f"{source}-{secrets.token_hex(4)}")
    upper = upper_path(lxcpath, source)
    _check_options_fit([base, *lowers], upper, source)
    make_agent_folder(bases_path(lxcpath))
    os.rename(top, base)
    made_upper = False
    try:
        _make_upper(upper)
        made_upper = True
        _copy_owner_and_mode(base, upper)
        write_rootfs_spec(lxcpath, source, overlay_spec([base, *lowers], upper))
    except BaseException:
        if read_rootfs_spec(lxcpath, source) != spec:
            write_rootfs_spec(lxcpath, source, spec)
        if made_upper:
            os.rmdir(upper)
        os.rename(base, top)
        raise
    log.info("container %s: its rootfs so far is frozen into the base %s; its own writes go to %s", source, base, upper)
    return [base, *lowers]


def make_overlay(lxcpath, name, lowers):
    """The clone's own empty upper dir (liblxc makes the work dir at start); returns its rootfs spec."""
    upper = upper_path(lxcpath, name)
    _check_options_fit(lowers, upper, name)
    _make_upper(upper)
    _copy_owner_and_mode(lowers[0], upper)
    return overlay_spec(lowers, upper)


def _make_upper(upper):
    """An empty upper dir in <name>/overlay, the folder that also holds the work dir: root's alone."""
    overlay = os.path.dirname(upper)
    if not os.path.isdir(overlay):
        make_folder(overlay, PRIVATE_MODE)
    _set_mode(overlay, PRIVATE_MODE)
    os.mkdir(upper, 0o755)


def _copy_owner_and_mode(model, directory):
    """An upper dir's own mode and owner are those the container sees for the folder (overlay's copy-up)."""
    seen = os.lstat(model)
    os.chown(directory, seen.st_uid, seen.st_gid)
    os.chmod(directory, stat.S_IMODE(seen.st_mode))


def base_users(lxcpath):
    """layer path -> names of the containers whose config stacks on it, for every base or image rootfs in use
    under lxcpath."""
    users: dict[str, list[str]] = {}
    if not os.path.isdir(lxcpath):
        return users
    for name in sorted(os.listdir(lxcpath)):
        parsed = parse_overlay(read_rootfs_spec(lxcpath, name))
        for lower in parsed[0] if parsed else []:
            if _is_layer(lxcpath, lower):
                users.setdefault(os.path.realpath(lower), []).append(name)
    return users


# -- the image cache -----------------------------------------------------------------------------------------------


def images_path(lxcpath):
    """Also the lxcpath liblxc runs the templates in: each image is a container there that never starts."""
    return os.path.join(lxcpath, AGENT_DIR, "images")


def image_key(template, release, packages):
    """<template>-<release or default>-<8 hex of the sorted package list>; the same for the same request."""
    digest = hashlib.sha256(",".join(sorted(packages)).encode()).hexdigest()[:8]
    return f"{template}-{release or 'default'}-{digest}"


def image_folder(lxcpath, key):
    if not key or "/" in key or key in (".", ".."):
        raise StorageError(f"{key!r} is not an image key")
    return os.path.join(images_path(lxcpath), key)


def image_rootfs(lxcpath, key):
    return os.path.join(image_folder(lxcpath, key), "rootfs")


def image_config(lxcpath, key):
    return os.path.join(image_folder(lxcpath, key), "config")


def read_image(lxcpath, key):
    """What a complete image was made from ({key, template, release, packages, size, created}), or None."""
    try:
        with open(os.path.join(image_folder(lxcpath, key), IMAGE_METADATA)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def seal_image(lxcpath, key, made):
    """Mark an image complete (the last step of making it): only sealed images are ever used."""
    _set_mode(image_folder(lxcpath, key), PRIVATE_MODE)  # liblxc made it 0755 (or the umask's)
    path = os.path.join(image_folder(lxcpath, key), IMAGE_METADATA)
    with open(path + ".tmp", "w") as handle:
        json.dump({"key": key, **made}, handle, sort_keys=True)
    os.replace(path + ".tmp", path)


def touch_image(lxcpath, key):
    """Record that a container was just made from a sealed image (`last_used` in its metadata)."""
    made = read_image(lxcpath, key)
    if made is None:
        return
    made["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = os.path.join(image_folder(lxcpath, key), IMAGE_METADATA)
    with open(path + ".tmp", "w") as handle:
        json.dump(made, handle, sort_keys=True)
    os.replace(path + ".tmp", path)


def image_keys(lxcpath):
    """Every folder in the image cache, sealed or not (an interrupted template run leaves an unsealed one)."""
    try:
        return sorted(
            entry
            for entry in os.listdir(images_path(lxcpath))
            if os.path.isdir(os.path.join(images_path(lxcpath), entry))
        )
    except FileNotFoundError:
        return []


def image_users(lxcpath):
    """image key -> containers whose overlay stack names its rootfs (btrfs snapshots and copies do not hold it)."""
    users: dict[str, list[str]] = {}
    for layer, names in base_users(lxcpath).items():
        key = _image_of_layer(lxcpath, layer)
        if key is not None:
            users.setdefault(key, []).extend(names)
    return users


def list_images(lxcpath):
    """The sealed images, each with the containers that stack on it (`used_by`)."""
    users = image_users(lxcpath)
    found = []
    for key in image_keys(lxcpath):
        made = read_image(lxcpath, key)
        if made is not None:
            found.append({**made, "key": key, "used_by": sorted(users.get(key, []))})
    return found


def tree_size(path):
    """Bytes in the files under path (each hard-linked file once), not following symlinks."""
    total, seen = 0, set()
    for folder, _, files in os.walk(path):
        for entry in files:
            try:
                info = os.lstat(os.path.join(folder, entry))
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def copy_rootfs(source, destination):
    """A rootfs as it is now at `destination`: a btrfs snapshot of a subvolume, else a full copy."""
    if btrfs.is_subvolume(source):
        btrfs.snapshot(source, destination)
    else:
        copy_tree(source, destination)


def copy_tree(source, destination):
    """A full copy of a rootfs as it is (owners, modes, links, device nodes, xattrs); `destination` must not exist."""
    result = subprocess.run(
        ["cp", "-a", "--one-file-system", "--", source, destination], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise StorageError(
            f"cannot copy {source} to {destination}: cp exited {result.returncode}: "
            + (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        )


def destroy_images(lxcpath, keys=None):
    """Remove cached images. keys=None: every image no container stacks on; returns the keys removed. Given
    keys: all of them, or none if any is an overlay base in use (Conflict naming the users); returns the keys,
    those that did not exist being removed already."""
    users = image_users(lxcpath)
    present = image_keys(lxcpath)
    if keys is None:
        todo = [key for key in present if key not in users]
    else:
        busy = {key: users[key] for key in keys if key in users}
        if busy:
            raise Conflict(
                "image(s) in use as the overlay base of containers, destroy those first: "
                + "; ".join(f"{key} by {names}" for key, names in sorted(busy.items())),
                images=busy,
            )
        todo = [key for key in keys if key in present]
    for key in todo:
        remove_image_files(lxcpath, key)
    return todo if keys is None else list(keys)


def remove_image_files(lxcpath, key):
    """Remove one image folder (unsealing it first, so a removal cut short leaves no usable half image)."""
    folder = image_folder(lxcpath, key)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, IMAGE_METADATA))
    rootfs = image_rootfs(lxcpath, key)
    existed = os.path.isdir(folder)
    if btrfs.is_subvolume(rootfs):
        btrfs.delete_subvolume(rootfs)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    _remove_empty_agent_folders(lxcpath)
    if existed:
        log.info("image %s: removed", key)


def _remove_empty_agent_folders(lxcpath):
    for folder in (bases_path(lxcpath), images_path(lxcpath), os.path.join(lxcpath, AGENT_DIR)):
        with contextlib.suppress(OSError):  # not empty, or never made
            os.rmdir(folder)


# -- the container's files seen from the host ----------------------------------------------------------------------


def _is_whiteout(seen):
    return stat.S_ISCHR(seen.st_mode) and seen.st_rdev == 0


def _is_opaque(path):
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def lookup(directories, relative):
    """(host path, lstat) of what the container sees at `relative` over `directories` (top first), or None.

    Follows overlayfs: the topmost entry wins, a whiteout hides the name below, folders merge down to the first
    opaque one. Symlinks are not followed: in a guest they may point anywhere on the host.
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"{relative!r} leaves the container's root; refusing to look it up")
    current = list(directories)
    try:
        found = (directories[0], os.lstat(directories[0]))
    except FileNotFoundError:
        return None
    for part in parts:
        if not stat.S_ISDIR(found[1].st_mode):
            return None  # a file or symlink where a folder should be
        entries: list[tuple[str, os.stat_result]] = []
        for directory in current:
            path = os.path.join(directory, part)
            try:
                seen = os.lstat(path)
            except FileNotFoundError:
                continue
            if _is_whiteout(seen) or (entries and not stat.S_ISDIR(seen.st_mode)):
                break
            entries.append((path, seen))
            if not stat.S_ISDIR(seen.st_mode) or _is_opaque(path):
                break
        if not entries:
            return None
        found = entries[0]
        current = [path for path, _ in entries]
    return found


# -- removal -------------------------------------------------------------------------------------------------------


def remove_container_files(lxcpath, name):
    """Remove a container's folder (its subvolumes first: its rootfs and its snapshots', only its own, never a path
    from config), then each base it stacked on that no remaining container names."""
    folder = os.path.join(lxcpath, name)
    parsed = parse_overlay(read_rootfs_spec(lxcpath, name))
    rootfs = rootfs_path(lxcpath, name)
    snapshots = os.path.join(folder, SNAPSHOTS_FOLDER)
    tags = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    # Its snapshots' and a cut-short restore's subvolumes, which rmtree cannot remove.
    for subvolume in [os.path.join(snapshots, tag, "rootfs") for tag in tags] + [rootfs + ".restoring", rootfs]:
        if btrfs.is_subvolume(subvolume):
            btrfs.delete_subvolume(subvolume)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    if parsed:
        remove_unused_bases(lxcpath, parsed[0])


def remove_unused_bases(lxcpath, candidates):
    """Remove those of `candidates` that are bases of this lxcpath and that no container names any more."""
    in_use = base_users(lxcpath)
    for base in candidates:
        if not _is_base(lxcpath, base) or os.path.realpath(base) in in_use or not os.path.isdir(base):
            continue
        if btrfs.is_subvolume(base):
            btrfs.delete_subvolume(base)
        else:
            shutil.rmtree(base)
        log.info("base %s: removed, no container stacks on it any more", base)
    _remove_empty_agent_folders(lxcpath)
