"""A storage pool for an lxcpath that is not on btrfs: a sparse file formatted btrfs and loop-mounted at the
lxcpath, as `lxd init` makes by default and as Rally's LxcProvider did when /var/lib/lxc was not on btrfs.

Why: every speed feature of the agent (snapshot clones in milliseconds that share every block, golden images,
whole-cloud snapshots) needs btrfs under the lxcpath, and most machines' root filesystem is ext4. Without a pool
such a machine falls back to overlay: no golden images, so every deploy runs stack.sh again.

The pool is `<lxcpath>.img` by default (`/var/lib/lxc.img`), sparse: it takes disk only as containers write. Its
size comes from the free disk where the file lives (half of it, at most 100 GiB) unless given; a disk with less
free than a pool needs (16 GiB) is refused before anything is made, with the numbers. The mount is made with
util-linux's `mount -o loop` (which frees the loop device at unmount) and `discard`, so space that containers free
is given back to the host's filesystem. `mount_unit()` is the systemd unit that mounts it at boot
(`lxc-agent init-pool` writes it); the agent run by hand (the demo) mounts it itself when it starts.

Pure helpers (sizes, unit text, names) come first; the functions that touch the host follow.
"""

import ctypes
import os
import re
import shutil
import subprocess

from agent.errors import InvalidArgument, StorageError

GIB = 1024**3
MIN_SIZE = 16 * GIB  # a controller's tree and its golden image take about 10 GiB
MAX_DEFAULT_SIZE = 100 * GIB
DEFAULT_SHARE = 0.5  # of the free disk, for a size of "auto"
MOUNT_OPTIONS = "loop,noatime,discard=async"
LABEL = "lxc-agent-pool"
UNIT_DIR = "/etc/systemd/system"
WANTED_BY = "local-fs.target"
# Paths written into a systemd unit and given to mount(8): plain characters only, never free text.
_SAFE_PATH = re.compile(r"/(?:[A-Za-z0-9_.-]+/?)+")
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024 * GIB}


# -- pure -------------------------------------------------------------------------------------------------------------


def default_file(lxcpath):
    """Where the pool of `lxcpath` lives unless told: beside it, `/var/lib/lxc` -> `/var/lib/lxc.img`."""
    return os.path.normpath(lxcpath) + ".img"


def check_paths(lxcpath, image):
    """Both paths absolute, plain and apart (the file is never inside the folder it is mounted on)."""
    for what, path in (("lxcpath", lxcpath), ("storage_pool", image)):
        if not isinstance(path, str) or not _SAFE_PATH.fullmatch(path) or "/../" in path + "/" or "/./" in path:
            raise InvalidArgument(
                f"{what} {path!r}: a storage pool needs an absolute path of letters, digits, '.', '_', '-' and '/'"
            )
    folder, file = os.path.normpath(lxcpath), os.path.normpath(image)
    if file == folder or file.startswith(folder + "/"):
        raise InvalidArgument(f"storage_pool {image} lies inside the lxcpath {lxcpath} it would be mounted on")
    return folder, file


def parse_size(text):
    """'auto' -> None; '40G', '40GiB', '512M' or a number of bytes -> bytes."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise InvalidArgument(f"storage_pool_size {text!r}: give 'auto' or a size such as 40G or 512M")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def choose_size(requested, free, where):
    """The pool's size in bytes (whole GiB for 'auto'), or StorageError with the numbers when the disk holding
    `where` (`free` bytes free) cannot hold it. `requested` is None for 'auto'."""
    size = requested
    if size is None:
        size = min(MAX_DEFAULT_SIZE, int(free * DEFAULT_SHARE) // GIB * GIB)
        if free < MIN_SIZE:
            raise StorageError(
                f"not enough free disk for a storage pool: {where} has {gib(free)} free, a pool needs at least "
                f"{gib(MIN_SIZE)}; free some space, give storage_pool another place, or use storage overlay"
            )
        size = max(size, MIN_SIZE)
    if size < MIN_SIZE:
        raise StorageError(f"storage_pool_size {gib(size)} is below the least a pool needs, {gib(MIN_SIZE)}")
    if size > free:
        raise StorageError(
            f"a storage pool of {gib(size)} does not fit: {where} has {gib(free)} free; give a smaller "
            "storage_pool_size, or another place for storage_pool"
        )
    return size


def gib(size):
    """Bytes as GiB, or MiB below one GiB."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 1024**2:.0f} MiB"


def unit_name(path):
    """systemd's name for the mount unit of `path` (`systemd-escape --path --suffix=mount`), for plain paths."""
    parts = [part for part in path.split("/") if part]
    escaped = []
    for part in parts:
        text = part.replace("-", "\\x2d")
        if text.startswith("."):
            text = "\\x2e" + text[1:]
        escaped.append(text)
    return ("-".join(escaped) or "-") + ".mount"


def mount_unit(lxcpath, image):
    """The unit that mounts the pool at boot, before the agent (whose unit requires the lxcpath's mounts)."""
    return "\n".join(
        [
            "# Written by `lxc-agent init-pool`: the agent's storage pool, a btrfs in a loop file.",
            "[Unit]",
            f"Description=lxc-agent storage pool for {lxcpath}",
            f"RequiresMountsFor={os.path.dirname(image)}",
            f"ConditionPathExists={image}",
            "",
            "[Mount]",
            f"What={image}",
            f"Where={lxcpath}",
            "Type=btrfs",
            f"Options={MOUNT_OPTIONS}",
            "",
            "[Install]",
            f"WantedBy={WANTED_BY}",
            "",
        ]
    )


# -- the host ---------------------------------------------------------------------------------------------------------


def backing_file(lxcpath):
    """The file of the loop device mounted at `lxcpath`, or None when nothing from a loop file is mounted there."""
    folder = os.path.normpath(lxcpath)
    source = None
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if _unoctal(fields[4]) == folder:
                source = fields[fields.index("-") + 2]  # the newest mount at a point comes last
    match = re.fullmatch(r"/dev/(loop\d+)", source or "")
    if not match:
        return None
    try:
        with open(f"/sys/block/{match.group(1)}/loop/backing_file") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def _unoctal(text):
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def describe(lxcpath):
    """{file, size, disk} of the pool mounted at `lxcpath` (bytes: its size and what it takes on the host's
    disk), or None."""
    image = backing_file(lxcpath)
    if image is None:
        return None
    try:
        seen = os.stat(image)
    except OSError:
        return {"file": image, "size": None, "disk": None}
    return {"file": image, "size": seen.st_size, "disk": seen.st_blocks * 512}


def ensure(lxcpath, image, size=None, under_systemd=False):
    """The lxcpath on btrfs: nothing to do when it is; else the pool file mounted there, made first when it does
    not exist. Returns what was done: None (already btrfs), "mounted", "made", or "skipped" when the lxcpath is the
    mount point of another filesystem (someone's choice, not to be hidden)."""
    from agent import btrfs  # here, not at the top: the pure helpers above are used where btrfsutil is absent

    folder, file = check_paths(lxcpath, image)
    if os.path.isdir(folder) and btrfs.is_btrfs(folder):
        return None
    if os.path.ismount(folder):
        return "skipped"  # someone mounted another filesystem there on purpose: never stack a pool over it
    if under_systemd:
        # The unit's own mount namespace would keep the mount from the host and from `lxc-attach`.
        raise StorageError(
            f"{folder} is not on btrfs and the agent runs under systemd: run `lxc-agent init-pool` once (it makes "
            f"the pool {file} and a mount unit for it), or set storage to overlay or copy"
        )
    os.makedirs(folder, mode=0o711, exist_ok=True)
    hidden = sorted(os.listdir(folder))
    if hidden:
        raise StorageError(
            f"{folder} is not on btrfs and holds {len(hidden)} entr{'y' if len(hidden) == 1 else 'ies'} "
            f"({', '.join(hidden[:5])}{', ...' if len(hidden) > 5 else ''}): a storage pool mounted there would "
            'hide them; move them away, or keep them with storage overlay or copy (storage_pool = "none")'
        )
    made = not os.path.exists(file)
    if made:
        _make(file, size)
    elif not os.path.isfile(file) or os.path.islink(file):
        raise StorageError(f"storage_pool {file} exists and is not a regular file; remove it or name another")
    _run(
        ["mount", "-t", "btrfs", "-o", MOUNT_OPTIONS, file, folder], f"cannot mount the storage pool {file} at {folder}"
    )
    os.chmod(folder, 0o711)
    return "made" if made else "mounted"


def _make(file, size):
    parent = os.path.dirname(file)
    os.makedirs(parent, exist_ok=True)
    stats = os.statvfs(parent)
    size = choose_size(size, stats.f_bavail * stats.f_frsize, parent)
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(descriptor, size)  # sparse: disk is taken only as the pool is written
    finally:
        os.close(descriptor)
    try:
        _run(["mkfs.btrfs", "-q", "-L", LABEL, file], f"cannot format the storage pool {file} as btrfs")
    except BaseException:
        os.unlink(file)
        raise


def remove(lxcpath, image):
    """Unmount the pool from the lxcpath and delete its file (and with it every image kept in it). Refuses while
    containers live in it. Returns what was removed (a list of paths)."""
    folder, file = check_paths(lxcpath, image)
    removed = []
    mounted = backing_file(folder)
    if mounted is not None and os.path.normpath(mounted) != file:
        raise StorageError(f"{folder} holds another loop file ({mounted}), not the storage pool {file}; left alone")
    if mounted is not None:
        containers = sorted(entry for entry in os.listdir(folder) if not entry.startswith("."))
        if containers:
            raise StorageError(
                f"the storage pool {file} still holds {len(containers)} container(s) in {folder} "
                f"({', '.join(containers[:5])}{', ...' if len(containers) > 5 else ''}): destroy them first"
            )
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(folder.encode(), 0) != 0:
            error = os.strerror(ctypes.get_errno())
            raise StorageError(f"cannot unmount the storage pool at {folder}: {error}; is a process using it?")
        removed.append(f"{folder} (unmounted)")
    if os.path.lexists(file):
        os.unlink(file)
        removed.append(file)
    return removed


def install_unit(lxcpath, image, unit_dir=UNIT_DIR):
    """Write the pool's mount unit and enable it (the link `systemctl enable` makes); tell a running systemd.
    Returns the unit's path."""
    folder, file = check_paths(lxcpath, image)
    name = unit_name(folder)
    path = os.path.join(unit_dir, name)
    os.makedirs(os.path.join(unit_dir, f"{WANTED_BY}.wants"), exist_ok=True)
    with open(path + ".new", "w") as handle:
        handle.write(mount_unit(folder, file))
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)
    link = os.path.join(unit_dir, f"{WANTED_BY}.wants", name)
    if not os.path.islink(link):
        os.symlink(path, link)
    _reload_systemd(unit_dir)
    return path


def remove_unit(lxcpath, unit_dir=UNIT_DIR):
    """Remove the pool's mount unit and its link, if there; returns what was removed."""
    name = unit_name(os.path.normpath(lxcpath))
    removed = []
    for path in (os.path.join(unit_dir, f"{WANTED_BY}.wants", name), os.path.join(unit_dir, name)):
        if os.path.lexists(path):
            os.unlink(path)
            removed.append(path)
    if removed:
        _reload_systemd(unit_dir)
    return removed


def _reload_systemd(unit_dir):
    if unit_dir == UNIT_DIR and os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)


def _run(argv, what):
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise StorageError(f"{what}: {argv[0]} is not installed (apt-get install btrfs-progs util-linux)") from error
    if result.returncode != 0:
        raise StorageError(f"{what}: {argv[0]} exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return result
