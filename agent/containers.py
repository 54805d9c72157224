"""liblxc, one container at a time: create (from a template image, running the template once), clone, configure,
start, stop, destroy, run, inspect.

Every False from liblxc becomes a ContainerError naming the container. Functions that make liblxc fork
(create, start, attach, get_ips, copy clones) are called through agent.workers, never from RPC threads.
Only containers lxc-agent made (storage.is_agents) are ever changed: others under the lxcpath are refused.
"""

import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import lxc

from agent import addressing, btrfs, guest, memory_merge, neighbours, segments, storage
from agent.errors import AgentError, CommandTimeout, Conflict, ContainerError, InvalidArgument, NotFound, StorageError

TEMPLATE_DIR = "/usr/share/lxc/templates"
METADATA_FILE = storage.METADATA_FILE
# What liblxc forks (a container's init, commands in it, templates) inherits the agent's umask, and liblxc resets
# it nowhere: they get a machine's usual one, whatever the agent's own (its systemd unit sets 0077).
GUEST_UMASK = 0o022
# The first record of a create or clone, in the container's folder as soon as it exists: the folder is the
# agent's from then on (destroy removes what a killed agent left), and never taken for a finished container.
UNFINISHED = {"unfinished": True}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 64 * 1024 * 1024
# Templates that add distribution packages, and how they are told (see their --help): apt-based, so what they
# installed can be checked in dpkg's status file.
PACKAGE_OPTIONS = {"debian": "--packages", "ubuntu": "--packages"}
# Host-wide tunables under /sys a container sees but may not change (sys is mounted read-only): each is hidden
# behind an empty read-only tmpfs, so software that tunes them when present (devstack's configure_ksm writes
# /sys/kernel/mm/ksm/run and stops when that fails) finds nothing to tune instead of failing. `optional`: a
# kernel without KSM has no such folder.
HIDDEN_HOST_TUNABLES = ("sys/kernel/mm/ksm",)
# What set_network records in the metadata; the same values asked again are done already.
NETWORK_KEYS = ("bridge", "address", "gateway", "mtu")
TTYS = 1
# Every container's cgroups (payload, monitor, pivot) under one parent per hierarchy. On a cgroup v1 host liblxc
# copies the parent's CPUs into each new top-level cpuset, and every such write walks all the cpusets beside it and
# rebuilds the scheduler's domains: two per start. Under a parent that liblxc has set to pass its CPUs on
# (cgroup.clone_children), the kernel copies them when the cgroup is made, and liblxc's writes change nothing.
CGROUP_PARENT = "lxc-agent"
# On cgroup v1, making a cpuset under a parent that passes its CPUs on walks every cpuset beside it
# (cpuset_css_online): with 2,000 containers, 4,000 monitor and payload cgroups in one parent made that walk 4 % of
# the machine's time while more started (perf, bench/scale.py). Spread over CGROUP_BUCKETS folders by a hash of the
# name, each holds about 60. cgroup v2 makes no such walk, and keeps the one parent.
CGROUP_BUCKETS = 64
CPUSET_V1 = "/sys/fs/cgroup/cpuset"
KILL_WAIT = 30.0  # seconds for killed containers to be torn down, all at once
IPV6_SYSCTLS = "/proc/sys/net/ipv6"

log = logging.getLogger(__name__)


def _container(lxcpath, name):
    return lxc.Container(name, lxcpath)


def _check(ok, name, action, hint=""):
    if not ok:
        raise ContainerError(
            f"liblxc could not {action} container {name!r}" + (f"; {hint}" if hint else ""), container=name
        )


def exists(lxcpath, name):
    return _container(lxcpath, name).defined


def is_running(lxcpath, name):
    return _container(lxcpath, name).running


def list_names(lxcpath):
    return sorted(lxc.list_containers(config_path=lxcpath))


def templates():
    return sorted(entry[len("lxc-") :] for entry in os.listdir(TEMPLATE_DIR) if entry.startswith("lxc-"))


def read_metadata(lxcpath, name):
    try:
        with open(os.path.join(lxcpath, name, METADATA_FILE)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}


def write_metadata(lxcpath, name, metadata):
    """Record how the container was made, so asking again for the same thing is recognised as done."""
    path = os.path.join(lxcpath, name, METADATA_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(metadata, handle, sort_keys=True)
    os.replace(path + ".tmp", path)


def require_agents(lxcpath, names):
    """Conflict naming those of `names` that exist but were not made by lxc-agent, before anything changes; the
    folders of the others are made private again (an earlier agent left them open to every user)."""
    foreign = [name for name in names if not storage.is_agents(lxcpath, name) and exists(lxcpath, name)]
    if foreign:
        raise Conflict(
            f"container(s) {foreign} in {lxcpath} were not made by lxc-agent (no {METADATA_FILE} in their "
            "folders), and it changes nothing it did not make: manage them with the lxc-* tools, or use other names",
            containers=foreign,
        )
    for name in names:
        if storage.is_agents(lxcpath, name):
            storage.make_container_private(lxcpath, name)


@contextlib.contextmanager
def _umask(mask):
    """The umask of what liblxc forks meanwhile; only in worker processes, which run one call at a time."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _hide_host_tunables(container, name):
    mounted = container.get_config_item("lxc.mount.entry") or []
    for path in HIDDEN_HOST_TUNABLES:
        entry = f"tmpfs {path} tmpfs ro,nosuid,nodev,noexec,size=4k,optional 0 0"
        if entry not in mounted:
            _check(container.set_config_item("lxc.mount.entry", entry), name, f"hide /{path} in")


def _disconnect(container, name):
    """A new container starts with no network until an address is assigned (the template's lxcbr0 may not exist)."""
    container.clear_config_item("lxc.net")
    _check(container.set_config_item("lxc.net.0.type", "empty"), name, "configure the network of")


def create(lxcpath, name, template, release=None, packages=(), backend="btrfs"):
    """A container from the image for (template, release, packages), made the way clones are made for the
    backend; the template runs only if that image is not cached yet. On any failure remove what was made for the
    container (and a half-made image). Forks (runs the template; copies). Returns the image key."""
    if storage.is_agents(lxcpath, name) and not exists(lxcpath, name):
        raise Conflict(
            f"container {name!r} is unfinished (its create or clone was cut short); destroy it and ask again",
            container=name,
        )
    if os.path.exists(os.path.join(lxcpath, name)):
        raise Conflict(
            f"{os.path.join(lxcpath, name)} exists but is not a container; remove it or pick another name",
            container=name,
        )
    packages = sorted(packages)
    key = ensure_image(lxcpath, name, template, release, packages)
    _from_image(
        lxcpath, name, key, backend, {"template": template, "release": release, "packages": packages, "image": key}
    )
    log.info("container %s: created from image %s (%s)", name, key, backend)
    return key


def already_created(lxcpath, name, template, release, packages):
    """Whether asking to create `name` from (template, release, packages) is done already: True when it exists
    made from exactly that, False when there is no such container. Conflict when it exists made otherwise."""
    if not exists(lxcpath, name):
        return False
    made = read_metadata(lxcpath, name)
    if (made.get("template"), made.get("release"), sorted(made.get("packages") or [])) == (
        template,
        release,
        sorted(packages),
    ) and not made.get("clone_of"):
        return True
    raise Conflict(
        f"container {name!r} exists but was made from {origin(made)}, not "
        f"{describe(template, release, sorted(packages))}; destroy it first or pick another name",
        container=name,
    )


def origin(metadata):
    """How a container was made, in words, from its metadata."""
    if metadata.get("unfinished"):
        return "an unfinished create or clone (cut short; destroy it and ask again)"
    if metadata.get("clone_of"):
        return f"a clone of {metadata['clone_of']!r}"
    if metadata.get("saved_from"):
        return f"image {metadata.get('image')} (saved from {metadata['saved_from']!r})"
    if metadata.get("template"):
        return describe(metadata["template"], metadata.get("release"), metadata.get("packages") or [])
    return "something else (not made by lxc-agent)"


def describe(template, release, packages):
    """How a container or image was asked for, in words."""
    return (
        f"template {template!r}"
        + (f" release {release!r}" if release else "")
        + (f" with packages {','.join(packages)}" if packages else "")
    )


def ensure_image(lxcpath, name, template, release, packages):
    """The key of the sealed image for (template, release, sorted packages), running the template into it first
    if there is none. `name` is the container it is for (named in errors). Forks."""
    key = storage.image_key(template, release, packages)
    made = storage.read_image(lxcpath, key)
    if made is not None:
        if (made.get("template"), made.get("release"), made.get("packages")) != (template, release, packages):
            was = describe(made.get("template"), made.get("release"), made.get("packages") or [])
            raise StorageError(
                f"image {key} was made from {was}, not {describe(template, release, packages)}; "
                "remove it with destroy_images",
                container=name,
            )
        return key
    storage.remove_image_files(lxcpath, key)  # what an interrupted run left: never sealed, never used
    images = storage.images_path(lxcpath)
    storage.make_agent_folder(images)
    image = _container(images, key)
    args: tuple[str, ...] = ("--release", release) if release else ()
    if packages:
        args += (f"{PACKAGE_OPTIONS[template]}={','.join(packages)}",)
    try:
        with _captured_output() as output, _umask(GUEST_UMASK):
            created = image.create(template, 0, args, "btrfs" if btrfs.is_btrfs(lxcpath) else "dir")
        if not created:
            raise ContainerError(
                f"liblxc could not create container {name!r} from "
                f"{describe(template, release, packages)}: running the template into image "
                f"{key} failed; the template said:\n" + _tail(output[0], 15),
                container=name,
            )
        missing = _missing_packages(storage.image_rootfs(lxcpath, key), packages)
        if missing:
            raise ContainerError(
                f"could not create container {name!r}: the template {template!r} ran but did not "
                f"install {', '.join(missing)} (a wrong name, or the mirror unreachable?); the "
                "template said:\n" + _tail(output[0], 15),
                container=name,
            )
        _disconnect(image, key)
        _check(image.save_config(), name, f"save the config of image {key} for")
        size = storage.tree_size(storage.image_rootfs(lxcpath, key))
        storage.seal_image(
            lxcpath,
            key,
            {
                "template": template,
                "release": release,
                "packages": packages,
                "size": size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    except BaseException:
        storage.remove_image_files(lxcpath, key)
        raise
    log.info(
        "image %s: built from %s for container %s (%d bytes)", key, describe(template, release, packages), name, size
    )
    return key


@contextlib.contextmanager
def frozen(lxcpath, names):
    """Every running container of `names` frozen (the cgroup freezer) before the body runs, and thawed after it,
    whatever happens; yields those frozen. One found frozen already (a save or snapshot cut short) is taken as it
    is, and thawed after too."""
    held = []
    try:
        for name in names:
            container = _container(lxcpath, name)
            if container.state == "RUNNING":
                _check(container.freeze(), name, "freeze")
            if container.state == "FROZEN":
                held.append(name)
        yield held
    finally:
        for name in held:
            container = _container(lxcpath, name)
            if container.state == "FROZEN" and not container.unfreeze():
                log.error("container %s: could not be thawed; thaw it with lxc-unfreeze", name)


def save_image(lxcpath, name, key, labels, backend):
    """The container's filesystem and config as they are now, kept as the sealed image `key` (kind "saved") that
    create_from_image makes containers from. A running container is frozen (its cgroup freezer) while its rootfs
    is copied, so every file is as it was at one moment, as after a power cut; one found frozen (an earlier save
    cut short) is copied as it is, and thawed after. btrfs: a snapshot, milliseconds; copy: a full copy while it
    is frozen. Overlay storage keeps no saved images. Asking again for the same key and container is done already
    ({"saved": False}); a key another container or a template holds is a Conflict."""
    made = storage.read_image(lxcpath, key)
    if made is not None:
        if made.get("kind") == "saved" and made.get("source") == name:
            return {"key": key, "saved": False, "size": made.get("size")}
        holder = f"saved from {made.get('source')!r}" if made.get("kind") == "saved" else "a template's image"
        raise Conflict(f"image {key} exists already, {holder}; pick another key or destroy_images it", image=key)
    if backend == "overlay":
        raise StorageError(
            f"cannot save container {name!r} as an image: this host keeps containers on overlay storage, whose "
            "merged view exists only while one runs; put the lxcpath on btrfs (snapshots) or use --storage copy",
            container=name,
        )
    storage.remove_image_files(lxcpath, key)  # what a cut-short save left: never sealed, never used
    storage.make_agent_folder(storage.images_path(lxcpath))
    storage.make_folder(storage.image_folder(lxcpath, key), storage.PRIVATE_MODE)
    try:
        with frozen(lxcpath, [name]):
            storage.copy_rootfs(storage.rootfs_path(lxcpath, name), storage.image_rootfs(lxcpath, key))
        shutil.copyfile(os.path.join(lxcpath, name, "config"), storage.image_config(lxcpath, key))
        size = storage.tree_size(storage.image_rootfs(lxcpath, key))
        storage.seal_image(
            lxcpath,
            key,
            {
                "kind": "saved",
                "source": name,
                "labels": dict(labels),
                "size": size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    except BaseException:
        storage.remove_image_files(lxcpath, key)
        raise
    log.info("image %s: saved from container %s (%d bytes)", key, name, size)
    return {"key": key, "saved": True, "size": size}


def create_from_image(lxcpath, name, key, backend):
    """A container from an image save_image made, with its own host name, machine-id and no network, made the
    way clones are for the backend. True if made, False if it exists made from this image already; Conflict if
    it exists made otherwise, NotFound if the host has no such saved image."""
    if exists(lxcpath, name):
        made = read_metadata(lxcpath, name)
        if made.get("saved_from") and made.get("image") == key:
            return False
        raise Conflict(
            f"container {name!r} exists but was made from {origin(made)}, not image {key}; destroy it first "
            "or pick another name",
            container=name,
        )
    if storage.is_agents(lxcpath, name) or os.path.exists(os.path.join(lxcpath, name)):
        raise Conflict(
            f"{os.path.join(lxcpath, name)} exists but is no finished container (a create cut short?); destroy "
            f"{name!r} and ask again",
            container=name,
        )
    image = storage.read_image(lxcpath, key)
    if image is None or image.get("kind") != "saved":
        raise NotFound(
            f"no saved image {key} on this host"
            + (" (that key is a template's image: create() uses those)" if image else "")
            + "; list_images() shows them",
            image=key,
        )
    _from_image(lxcpath, name, key, backend, {"image": key, "saved_from": image.get("source")})
    storage.touch_image(lxcpath, key)
    log.info("container %s: created from saved image %s (%s)", name, key, backend)
    return True


def _missing_packages(rootfs, packages):
    """Those of `packages` that dpkg does not list as installed (by name or as provided): Debian's and Ubuntu's
    templates carry on when apt fails."""
    if not packages:
        return []
    installed = set()
    try:
        with open(os.path.join(rootfs, "var/lib/dpkg/status"), errors="replace") as handle:
            stanzas = handle.read().split("\n\n")
    except FileNotFoundError:
        return list(packages)
    for stanza in stanzas:
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line[0].isspace())
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        installed.add(fields.get("Package", "").strip().split(":")[0])
        for provided in fields.get("Provides", "").split(","):
            installed.add(provided.strip().split(" ")[0].split(":")[0])
    return [package for package in packages if package not in installed]


def _from_image(lxcpath, name, key, backend, metadata):
    """The container's own rootfs from an image: a btrfs snapshot, an overlay with the image as its bottom
    layer, or a full copy; with its own name, host name and machine-id, and no network."""
    # Fails if it exists: the cleanup below only ever removes its own.
    storage.make_folder(os.path.join(lxcpath, name), storage.CONTAINER_MODE)
    try:
        write_metadata(lxcpath, name, UNFINISHED)
        container = _container(lxcpath, name)
        _check(container.load_config(storage.image_config(lxcpath, key)), name, f"load the config of image {key} for")
        if backend == "overlay":
            lowers = [storage.image_rootfs(lxcpath, key)]
            spec = storage.make_overlay(lxcpath, name, lowers)
            # Until the overlay line replaces it, the saved config must not name the shared image itself.
            rootfs = storage.upper_path(lxcpath, name)
        else:
            rootfs = storage.rootfs_path(lxcpath, name)
            if backend == "btrfs":
                btrfs.snapshot(storage.image_rootfs(lxcpath, key), rootfs)
            else:
                # Not liblxc's copy: out of a btrfs-backed image on the same filesystem it insists on a snapshot.
                storage.copy_tree(storage.image_rootfs(lxcpath, key), rootfs)
        _check(container.set_config_item("lxc.rootfs.path", rootfs), name, "set the rootfs of")
        _check(container.set_config_item("lxc.uts.name", name), name, "set the host name of")
        _hide_host_tunables(container, name)
        # Each tty is a pty held from start to stop (and, in a systemd guest, a getty): templates ask for 4 or 5,
        # which with the console stops a host at about 500 containers under the default kernel.pty.max. One tty
        # keeps `lxc-console -n NAME` working; the agent itself only attaches.
        _check(container.set_config_item("lxc.tty.max", str(TTYS)), name, "set the ttys of")
        _disconnect(container, name)
        _check(container.save_config(), name, "save the config of")
        if backend == "overlay":
            storage.write_rootfs_spec(lxcpath, name, spec)
            _check_rootfs(lxcpath, name, [storage.upper_path(lxcpath, name), *lowers])
        guest.write_identity(storage.layers(lxcpath, name), name)
        write_metadata(lxcpath, name, metadata)
    except BaseException:
        storage.remove_container_files(lxcpath, name)
        raise


@contextlib.contextmanager
def _captured_output():
    """The template's stdout and stderr, into a file: for the error message, and never into the agent's own
    stdout (a pipe nobody reads would fill up and stop the template)."""
    text: list[str] = []
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(1), os.dup(2)
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            capture.seek(0)
            text.append(capture.read().decode("utf-8", "replace"))


def _tail(text, count):
    return "\n".join(text.rstrip().splitlines()[-count:]) or "(nothing)"


def clone(lxcpath, name, source, backend="btrfs"):
    """A clone with its own identity. btrfs: a snapshot of the rootfs; overlay: its own upper dir over the
    source's frozen layers (see storage.clone_lowers); copy: liblxc's full copy (forks)."""
    folder = os.path.join(lxcpath, name)
    # Fails if it exists: what follows may only ever clean up its own folder.
    storage.make_folder(folder, storage.CONTAINER_MODE)
    try:
        if backend != "copy":
            write_metadata(lxcpath, name, UNFINISHED)
        if backend == "btrfs":
            storage.snapshot_rootfs(lxcpath, source, name)
            container = _configured_like(lxcpath, name, source)
            _check(
                container.set_config_item("lxc.rootfs.path", storage.rootfs_path(lxcpath, name)),
                name,
                "set the rootfs of",
            )
        elif backend == "overlay":
            lowers = storage.clone_lowers(lxcpath, source)
            _check_rootfs(lxcpath, source, [storage.upper_path(lxcpath, source), *lowers])
            spec = storage.make_overlay(lxcpath, name, lowers)
            container = _configured_like(lxcpath, name, source)
        else:
            os.rmdir(folder)  # liblxc makes it: with the umask's mode, so none but root sees the copy being made
            # An overlay source is copied as the container sees it (merged) into a plain folder.
            overlay_source = storage.parse_overlay(storage.read_rootfs_spec(lxcpath, source)) is not None
            with _umask(0o077):
                copied = _container(lxcpath, source).clone(
                    name, config_path=lxcpath, flags=lxc.LXC_CLONE_KEEPNAME, bdevtype="dir" if overlay_source else None
                )
            _check(copied, name, f"copy {source!r} to")
            storage.make_container_private(lxcpath, name, report=False)
            write_metadata(lxcpath, name, UNFINISHED)
            container = _container(lxcpath, name)
        _check(container.set_config_item("lxc.uts.name", name), name, "set the host name of")
        address = read_metadata(lxcpath, source).get("address")
        if container.get_config_item("lxc.net.0.type") == "veth" and address:
            # The source's address until set_addresses gives the clone its own; the name keeps the MAC apart.
            _check(
                container.set_config_item("lxc.net.0.hwaddr", addressing.mac_address(name, address)),
                name,
                "set the MAC of",
            )
        _check(container.save_config(), name, "save the config of")
        if backend == "overlay":  # after save_config, which writes the source's rootfs line
            storage.write_rootfs_spec(lxcpath, name, spec)
            _check_rootfs(lxcpath, name, [storage.upper_path(lxcpath, name), *lowers])
        guest.write_identity(storage.layers(lxcpath, name), name)
        metadata = read_metadata(lxcpath, source)
        metadata.update({"clone_of": source})
        write_metadata(lxcpath, name, metadata)
    except BaseException:
        storage.remove_container_files(lxcpath, name)
        raise
    log.info("container %s: cloned from %s (%s)", name, source, backend)


def clones_to_make(lxcpath, source, names):
    """(names to clone, name -> why not) for cloning `source` to `names`: a name already cloned from this source
    is done and in neither. NotFound or Conflict when the source cannot be cloned at all."""
    if not exists(lxcpath, source):
        raise NotFound(f"source container {source!r} does not exist on this host", container=source)
    require_agents(lxcpath, [source])
    if read_metadata(lxcpath, source).get("unfinished"):
        raise Conflict(f"source container {source!r} is {origin(UNFINISHED)}", container=source)
    if is_running(lxcpath, source):
        raise Conflict(
            f"source container {source!r} is running; stop it before cloning so the clones get a consistent filesystem",
            container=source,
        )
    todo, refused = [], {}
    for name in names:
        if not exists(lxcpath, name):
            todo.append(name)
            continue
        made = read_metadata(lxcpath, name)
        if made.get("clone_of") != source:
            refused[name] = f"exists already, made from {origin(made)}, not cloned from {source!r}"
    return todo, refused


def _configured_like(lxcpath, name, source):
    container = _container(lxcpath, name)
    _check(container.load_config(os.path.join(lxcpath, source, "config")), name, f"load the config of {source!r} for")
    return container


def _check_rootfs(lxcpath, name, layers):
    """What liblxc will mount for the container, read back through liblxc from the saved config."""
    seen = _container(lxcpath, name).get_config_item("lxc.rootfs.path")
    expected = ":".join([*layers[1:], layers[0]])
    if [os.path.realpath(path) for path in seen.split(":")] != [os.path.realpath(path) for path in expected.split(":")]:
        raise ContainerError(
            f"liblxc reads the rootfs of container {name!r} as {seen!r}, not the overlay "
            f"{expected!r} that was written to its config",
            container=name,
        )


def set_network(lxcpath, name, bridge, address, gateway, mtu=None):
    """Static address in the LXC config and in the container's own network setup, so its init keeps it. The
    container joins `bridge`, or the segment of it that its address falls in (agent.segments)."""
    link = segments.link_for(bridge, str(ipaddress.IPv4Interface(address).network), address)
    container = _container(lxcpath, name)
    container.clear_config_item("lxc.net")
    items = [
        ("lxc.net.0.type", "veth"),
        ("lxc.net.0.link", link),
        ("lxc.net.0.flags", "up"),
        ("lxc.net.0.name", "eth0"),
        ("lxc.net.0.hwaddr", addressing.mac_address(name, address)),
        ("lxc.net.0.ipv4.address", address),
        ("lxc.net.0.ipv4.gateway", gateway),
    ]
    if os.path.isdir(IPV6_SYSCTLS):  # a kernel booted without IPv6 has none to turn off (liblxc would fail)
        # The subnets are IPv4. With IPv6 on, every container joining sends neighbour discovery and MLD that the
        # bridge floods to every other container: starts slow down with the number running (measured: 20 ms each
        # with none running, 140 ms with 1,750). The container's loopback keeps ::1.
        items.append(("lxc.sysctl.net.ipv6.conf.eth0.disable_ipv6", "1"))
    if mtu:
        items.append(("lxc.net.0.mtu", str(mtu)))
    for key, value in items:
        _check(container.set_config_item(key, value), name, f"set {key} = {value} for")
    _check(container.save_config(), name, "save the config of")
    guest.write_network(storage.layers(lxcpath, name), address, gateway)
    metadata = read_metadata(lxcpath, name)
    metadata.update({"bridge": bridge, "link": link, "address": address, "gateway": gateway, "mtu": mtu})
    write_metadata(lxcpath, name, metadata)
    log.info(
        "container %s: address %s on bridge %s via %s%s",
        name,
        address,
        bridge if link == bridge else f"{bridge} (segment {link})",
        gateway,
        f", MTU {mtu}" if mtu else "",
    )


def ensure_networks(lxcpath, bridge, addresses, gateway, mtu=None):
    """Give each container {name: address/prefix} its static address on the bridge; returns name -> reason for
    those that failed. One that has exactly this already is left alone, running or not; a change needs it
    stopped (Conflict naming the running ones, before anything changes)."""
    require_agents(lxcpath, list(addresses))
    wanted = {"bridge": bridge, "gateway": gateway, "mtu": mtu}
    changes = [
        name
        for name in addresses
        if {key: read_metadata(lxcpath, name).get(key) for key in NETWORK_KEYS}
        != {**wanted, "address": addresses[name]}
    ]
    running = [name for name in changes if is_running(lxcpath, name)]
    if running:
        raise Conflict(f"container(s) {running} are running; stop them before changing addresses")
    return each(_set_network_from, lxcpath, changes, bridge, addresses, gateway, mtu)


def _set_network_from(lxcpath, name, bridge, addresses, gateway, mtu):
    set_network(lxcpath, name, bridge, addresses[name], gateway, mtu)


def segments_needed(lxcpath, names):
    """bridge -> the segments of it (agent.segments) that the containers `names` join: they must exist before
    those containers start."""
    needed: dict[str, set[int]] = {}
    for name in names:
        made = read_metadata(lxcpath, name)
        if made.get("link") and made["link"] != made.get("bridge"):
            network = str(ipaddress.IPv4Interface(made["address"]).network)
            needed.setdefault(made["bridge"], set()).add(segments.index_of(network, made["address"]))
    return needed


def links_without_mtu(lxcpath, names):
    """The links (bridges, segments) that containers `names` join without an MTU of their own in their config."""
    made = [read_metadata(lxcpath, name) for name in names]
    return {each["link"] for each in made if each.get("link") and not each.get("mtu")}


def _seconds_left(deadline):
    """liblxc waits take whole seconds."""
    return max(0, math.ceil(deadline - time.monotonic()))


def each(function, lxcpath, names, *args):
    """Apply function(lxcpath, name, *args) to every name; returns name -> reason for those that failed."""
    failed = {}
    for name in names:
        try:
            function(lxcpath, name, *args)
        except Exception as error:  # one bad container must not hide what happened to the others
            failed[name] = str(error) if isinstance(error, AgentError) else f"{type(error).__name__}: {error}"
    return failed


def start_many(lxcpath, names, timeout=30.0, merge_memory=False, link_mtus=None):
    """Start each (daemonized, through agent.starter) and wait until all run; returns name -> error text for those
    that failed. Each container on an agent bridge has its port confined (agent.neighbours) as soon as it runs, a
    container running already too: while thousands start, each one's coming up is flooded only to the ports of
    those still starting.

    merge_memory: each container's processes get their memory merged by KSM with the others' (agent.memory_merge),
    for this run of it; a container already running is left as it runs. link_mtus: {link: MTU} of the links that
    containers without an MTU of their own join (links_without_mtu), read by the caller just before."""
    require_agents(lxcpath, names)
    with neighbours.confining() as confine:
        return _start_confining(lxcpath, names, timeout, merge_memory, link_mtus, confine)


def _start_confining(lxcpath, names, timeout, merge_memory, link_mtus, confine):
    def confine_if_networked(name):
        for facts in neighbour_facts(lxcpath, [name]):
            confine(facts)

    batch = []
    for name in names:
        if _container(lxcpath, name).running:
            confine_if_networked(name)
            continue
        # For this start only, like the log: the saved config stays as it is.
        config = [
            ["lxc.log.file", _log_file(lxcpath, name)],
            ["lxc.log.level", "ERROR"],
            ["lxc.cgroup.dir", cgroup_dir(name, cpuset_v1=os.path.isdir(CPUSET_V1))],
        ]
        made = read_metadata(lxcpath, name)
        if made.get("link"):  # a port the agent finds by name (agent.neighbours)
            config.append(["lxc.net.0.veth.pair", neighbours.port_name(name)])
        inherited = None if made.get("mtu") else (link_mtus or {}).get(made.get("link"))
        if inherited:
            # The MTU liblxc would inherit from the link. Left to liblxc, it learns it by dumping every link of
            # the host, and each veth's peer namespace costs a linear search in the kernel: a start took 20 ms
            # with none running and 65 ms with 1,250 (bench/scale.py).
            config.append(["lxc.net.0.mtu", str(inherited)])
        launcher = memory_merge.init_command(storage.layers(lxcpath, name)) if merge_memory else None
        if launcher:
            config.append(["lxc.init.cmd", launcher])
        batch.append({"name": name, "config": config})
    started = _run_starter(
        {"lxcpath": lxcpath, "umask": GUEST_UMASK, "merge_memory": merge_memory, "containers": batch},
        confine_if_networked,
    )
    failed = {
        name: f"liblxc could not start it: {_last_errors(_log_file(lxcpath, name))} (log: {_log_file(lxcpath, name)})"
        for name, ok in started.items()
        if not ok
    }
    deadline = time.monotonic() + timeout
    for name in [name for name, ok in started.items() if ok]:
        if not _container(lxcpath, name).wait("RUNNING", _seconds_left(deadline)):
            failed[name] = f"did not reach RUNNING within {timeout:.0f} s"
        else:
            log.info("container %s: started", name)
    return failed


def cgroup_dir(name, cpuset_v1):
    """liblxc's lxc.cgroup.dir for container `name`: where its monitor, payload and pivot cgroups are made. Pure."""
    if not cpuset_v1:
        return CGROUP_PARENT
    bucket = hashlib.sha256(name.encode()).digest()[0] % CGROUP_BUCKETS
    return f"{CGROUP_PARENT}/{bucket:02d}"


def neighbour_facts(lxcpath, names):
    """agent.neighbours.facts of each container in `names` that has an address on an agent bridge."""
    found = [neighbours.facts(name, read_metadata(lxcpath, name)) for name in names]
    return [entry for entry in found if entry]


def _log_file(lxcpath, name):
    return os.path.join(lxcpath, name, "lxc.log")


def _run_starter(batch, on_started):
    """{name: started} from agent.starter, run for this batch: a small process, so the containers' monitors
    (copies of it) do not each copy the worker's heap; see agent.starter. on_started(name) is called for each
    container as soon as the starter reports it started."""
    if not batch["containers"]:
        return {}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    wanted = {entry["name"] for entry in batch["containers"]}
    started = {}
    with tempfile.TemporaryFile("w+") as errors:  # a file: a pipe left unread could fill and stall the starter
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.starter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        with process:
            assert process.stdin is not None and process.stdout is not None  # both PIPE
            process.stdin.write(json.dumps(batch))  # read whole before the first start: no pipe stalls
            process.stdin.close()
            for line in process.stdout:
                try:
                    report = json.loads(line)
                    name, ok = report["name"], report["started"]
                except (ValueError, KeyError, TypeError):
                    break  # the starter's output is broken: the check below names what is missing
                if name not in wanted or name in started or not isinstance(ok, bool):
                    break
                started[name] = ok
                if ok:
                    on_started(name)
        if process.returncode != 0 or set(started) != wanted:
            errors.seek(0)
            raise ContainerError(
                f"the agent's starter process failed (exit {process.returncode}) starting "
                f"{sorted(wanted - set(started))}: {errors.read().strip()[-2000:] or 'no output'}"
            )
    return started


def _last_errors(log_file, count=3):
    """liblxc's own words for a failed start: the last ERROR lines of the container's log."""
    try:
        with open(log_file, errors="replace") as handle:
            lines = [line.split(" - ", 1)[-1].strip() for line in handle if " ERROR " in line]
    except OSError:
        return "no log"
    return " | ".join(lines[-count:]) or "no error logged"


def stop_many(lxcpath, names, timeout=10.0):
    """Signal every init to halt at once and wait for all up to `timeout` seconds (none when 0), then kill those
    still running, all at once (kill_many); returns name -> reason."""
    require_agents(lxcpath, names)
    running = [name for name in names if _container(lxcpath, name).running]
    if timeout > 0:
        for name in running:
            _container(lxcpath, name).shutdown(0)
        deadline = time.monotonic() + timeout
        for name in running:
            if _container(lxcpath, name).wait("STOPPED", _seconds_left(deadline)):
                log.info("container %s: stopped (halted)", name)
    return kill_many(lxcpath, running)


def kill_many(lxcpath, names, wait=KILL_WAIT):
    """SIGKILL the init of each running container of `names`, all before waiting for any, then wait up to `wait`
    seconds for all; returns name -> reason for those still running.

    liblxc's stop() returns only when its container's monitor has torn it down, so killing one after another
    lined every teardown up: the restore of a 1 + 64 real cloud spent 256 s killing its containers. The kernel
    kills every process of a container's PID namespace when its init dies, and the monitor tears the container down
    as when init exits on its own. A pidfd makes sure the signal goes to the init that was asked for, not to a
    process that took its PID after it exited. A frozen container (a snapshot cut short) is thawed first, as
    liblxc's stop() does: a frozen process takes no signal."""
    killed = []
    for name in names:
        container = _container(lxcpath, name)
        pid = container.init_pid
        if pid <= 0:
            continue
        if container.state == "FROZEN" and not container.unfreeze():
            log.warning("container %s: could not be thawed, so its kill waits until it is", name)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # exited meanwhile
        try:
            if _container(lxcpath, name).init_pid == pid:  # the pidfd is this container's init
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed.append(name)
        except ProcessLookupError:
            continue
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + wait
    failed = {}
    for name in killed:
        if _container(lxcpath, name).wait("STOPPED", _seconds_left(deadline)):
            log.info("container %s: stopped (killed)", name)
        else:
            failed[name] = f"still running {wait:.0f} s after its init was killed"
    return failed


def destroy(lxcpath, name):
    still = kill_many(lxcpath, [name])  # a no-op when destroy_many killed it already
    if still:
        raise ContainerError(f"container {name!r} could not be destroyed: {still[name]}", container=name)
    storage.remove_container_files(lxcpath, name)
    log.info("container %s: destroyed", name)


def destroy_many(lxcpath, names):
    """Destroy each that exists (one that does not is done already), and what a cut-short create or clone left;
    returns name -> reason for those that failed. Conflict, before anything changes, if one is not the agent's."""
    present = [name for name in names if exists(lxcpath, name) or storage.is_agents(lxcpath, name)]
    require_agents(lxcpath, present)
    failed = kill_many(lxcpath, [name for name in present if is_running(lxcpath, name)])  # at once: see kill_many
    return {**failed, **each(destroy, lxcpath, [name for name in present if name not in failed])}


def addresses(lxcpath, name):
    """IPv4 addresses seen inside the running container. Forks (liblxc enters its namespace)."""
    container = _container(lxcpath, name)
    return list(container.get_ips(family="inet")) if container.running else []


def memory_bytes(lxcpath, name):
    """Memory charged to the container's cgroup (v1 or v2), or None when it is not running."""
    container = _container(lxcpath, name)
    if not container.running:
        return None
    for key in ("memory.usage_in_bytes", "memory.current"):
        try:
            return int(container.get_cgroup_item(key))
        except (KeyError, ValueError):
            continue
    return None


def working_set_bytes(lxcpath, name):
    """The cgroup's usage less its inactive file pages, as cAdvisor and the kubelet count a container's memory:
    what it needs, not the cache the kernel drops first under pressure. None when it is not running."""
    usage = memory_bytes(lxcpath, name)
    if usage is None:
        return None
    container = _container(lxcpath, name)
    try:
        lines = container.get_cgroup_item("memory.stat").splitlines()
    except (KeyError, AttributeError):
        return usage
    stat = dict(line.split(" ", 1) for line in lines if " " in line)
    # cgroup v1 counts the subtree in total_inactive_file; v2's inactive_file is the subtree's already.
    inactive = stat.get("total_inactive_file") or stat.get("inactive_file") or "0"
    return max(0, usage - int(inactive))


def status_many(lxcpath, names):
    return [status(lxcpath, name) for name in names if _container(lxcpath, name).defined]


def status(lxcpath, name, with_addresses=True):
    container = _container(lxcpath, name)
    metadata = read_metadata(lxcpath, name)
    return {
        "name": name,
        "state": container.state,
        "addresses": addresses(lxcpath, name) if with_addresses else [],
        "configured_address": metadata.get("address"),
        "memory": memory_bytes(lxcpath, name),
        "working_set": working_set_bytes(lxcpath, name),
        "clone_of": metadata.get("clone_of"),
        "template": metadata.get("template"),
        "release": metadata.get("release"),
        "packages": metadata.get("packages", []),
        "image": metadata.get("image"),
    }


def _guest_user(lxcpath, name, user):
    """uid, gid and home of a user inside the container, read from its own /etc/passwd."""
    found = storage.lookup(storage.layers(lxcpath, name), "etc/passwd")
    if found and stat.S_ISREG(found[1].st_mode):
        with open(found[0]) as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 7 and fields[0] == user:
                    return int(fields[2]), int(fields[3]), fields[5]
    raise InvalidArgument(f"no user {user!r} in container {name!r} (looked in its /etc/passwd)", container=name)


def run(lxcpath, name, argv, stdin=None, env=None, user=None, timeout=None):
    """Run argv inside the container through liblxc attach; returns exit code, stdout, stderr. Forks."""
    container = _container(lxcpath, name)
    if not container.defined:
        raise NotFound(f"container {name!r} does not exist", container=name)
    require_agents(lxcpath, [name])
    if not container.running:
        raise Conflict(f"container {name!r} is not running; start it first", container=name)
    uid, gid, home = _guest_user(lxcpath, name, user) if user else (0, 0, "/root")
    data = stdin if isinstance(stdin, bytes) else (stdin or "").encode()
    environment = {"PATH": DEFAULT_PATH, "HOME": home, "USER": user or "root", "LOGNAME": user or "root"}
    environment.update(env or {})
    extra_env = [f"{key}={value}" for key, value in environment.items()]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    _close_on_exec_all()
    # Python ignores SIGPIPE and an ignored signal survives exec: `yes | head` would never end in there.
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    pid = -1
    try:
        with _umask(GUEST_UMASK):
            pid = container.attach(
                lxc.attach_run_command,
                list(argv),
                env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                extra_env_vars=extra_env,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                uid=uid,
                gid=gid,
                initial_cwd=home,
            )
    finally:
        signal.signal(signal.SIGPIPE, previous)
        for fd in (in_r, out_w, err_w) if pid >= 0 else (in_r, out_w, err_w, in_w, out_r, err_r):
            os.close(fd)  # the command's ends; ours too when nothing was started
    if pid < 0:
        raise ContainerError(f"liblxc could not attach to container {name!r} to run {argv[0]!r}", container=name)
    return _collect(pid, name, argv, in_w, out_r, err_r, data, timeout)


def _kill_tree(pid):
    """Kill a timed-out command and everything it started (they would otherwise live on in the container)."""
    for _ in range(2):  # a second pass catches children forked while the first was killing
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry))
        tree, queue = [], [pid]
        while queue:
            current = queue.pop()
            tree.append(current)
            queue.extend(children.get(current, []))
        for member in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


def _close_on_exec_all():
    """The worker holds pipes to the agent; a command (or a daemon it starts) must not inherit them."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2:
            with contextlib.suppress(OSError):  # the fd of the listdir itself, already closed
                os.set_inheritable(fd, False)


def _collect(pid, name, argv, in_w, out_r, err_r, stdin, timeout):
    """Feed stdin and read both outputs without deadlock; kill the command when the timeout passes. Whatever goes
    wrong here, the command is killed and reaped and every pipe closed: an unreaped command would keep its
    container from ever stopping (its PID namespace waits for it)."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    selector = selectors.DefaultSelector()
    pipes = {in_w, out_r, err_r}

    def close(fd):
        pipes.discard(fd)
        os.close(fd)

    timed_out = False
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        for fd in (out_r, err_r):
            selector.register(fd, selectors.EVENT_READ)
        if stdin:
            os.set_blocking(in_w, False)
            selector.register(in_w, selectors.EVENT_WRITE)
        else:
            close(in_w)
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                if key.fd == in_w:
                    try:
                        stdin = stdin[os.write(in_w, stdin[:65536]) :]
                    except BrokenPipeError:
                        stdin = b""
                    if not stdin:
                        selector.unregister(in_w)
                        close(in_w)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    close(key.fd)
                elif sum(map(len, chunks[key.fd])) < OUTPUT_LIMIT:
                    chunks[key.fd].append(data)
    except BaseException:
        _kill_tree(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        for fd in list(pipes):
            close(fd)
        selector.close()
    if timed_out:
        _kill_tree(pid)
    _, status_code = os.waitpid(pid, 0)
    stdout = b"".join(chunks[out_r]).decode("utf-8", "replace")
    stderr = b"".join(chunks[err_r]).decode("utf-8", "replace")
    if timed_out:
        raise CommandTimeout(
            f"{argv[0]!r} in container {name!r} did not finish within {timeout} s and was killed",
            container=name,
            stdout=stdout,
            stderr=stderr,
        )
    return {"exit_code": os.waitstatus_to_exitcode(status_code), "stdout": stdout, "stderr": stderr}
