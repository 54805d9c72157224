"""Files the agent owns inside a container's rootfs: its identity and its own network setup.

A rootfs is given as its layers, top first (storage.layers): one folder, or an overlay container's upper dir
over its read-only bases. Reads see what the container sees; writes go to the top layer only.
"""

import os
import re
import secrets
import stat

from agent import storage
from agent.errors import StorageError

MARK = "# managed by lxc-agent"


def _make_folders(layers, relative):
    """Every folder on the way to `relative` as a real folder in the top layer, like overlay's copy-up."""
    top = layers[0]
    parts = [part for part in relative.split("/") if part][:-1]
    for depth in range(1, len(parts) + 1):
        inside = "/".join(parts[:depth])
        seen = storage.lookup(layers, inside)
        if seen is not None and not stat.S_ISDIR(seen[1].st_mode):
            # A symlink in a guest may point anywhere on the host: never write through one.
            raise StorageError(
                f"/{inside} in {top} is not a folder (a symlink?); refusing to write /{relative} through it"
            )
        path = os.path.join(top, inside)
        if seen is not None and seen[0] == path:
            continue
        if os.path.lexists(path):
            raise StorageError(
                f"{path} hides /{inside} of the container (an overlay whiteout?); refusing to write /{relative}"
            )
        os.mkdir(path, 0o755)
        if seen is not None:
            os.chown(path, seen[1].st_uid, seen[1].st_gid)
        os.chmod(path, 0o755 if seen is None else stat.S_IMODE(seen[1].st_mode))  # not the agent's umask


def _write(layers, relative, text, mode=0o644):
    _make_folders(layers, relative)
    path = os.path.join(layers[0], relative.lstrip("/"))
    if os.path.islink(path):
        # A symlink in a guest may point anywhere on the host; replace it rather than follow it.
        os.unlink(path)
    with open(path + ".lxc-agent.tmp", "w") as handle:
        handle.write(text)
    os.chmod(path + ".lxc-agent.tmp", mode)
    os.replace(path + ".lxc-agent.tmp", path)


def _read(layers, relative):
    """The text of a regular file as the container sees it, or None."""
    seen = storage.lookup(layers, relative)
    if seen is None or not stat.S_ISREG(seen[1].st_mode):
        return None
    with open(seen[0]) as handle:
        return handle.read()


def write_identity(layers, name):
    """What makes a container a different machine than its image or clone source: host name and machine-id
    (always a fresh one, also where the image had none; D-Bus's own copy follows it unless it is a symlink)."""
    _write(layers, "/etc/hostname", name + "\n")
    _write(
        layers, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    machine_id = secrets.token_hex(16) + "\n"
    _write(layers, "/etc/machine-id", machine_id, 0o444)
    dbus = storage.lookup(layers, "var/lib/dbus/machine-id")
    if dbus is not None and stat.S_ISREG(dbus[1].st_mode):
        _write(layers, "/var/lib/dbus/machine-id", machine_id, 0o444)


def write_network(layers, address, gateway):
    """LXC sets the address before init; this keeps init (ifupdown, busybox udhcpc) from replacing it."""
    if storage.lookup(layers, "etc/network/interfaces") is not None:
        _write(
            layers,
            "/etc/network/interfaces",
            f"{MARK}: eth0 is {address} via {gateway}, set by LXC before init starts.\n"
            "auto lo\niface lo inet loopback\n\n"
            f"auto eth0\niface eth0 inet manual\n",
        )
        return
    script = _read(layers, "etc/init.d/rcS")
    if script is not None:
        static = (
            f"{MARK}\n/bin/ip addr replace {address} dev eth0\n/bin/ip link set eth0 up\n"
            f"/bin/ip route replace default via {gateway}\n"
        )
        script = re.sub(rf"{MARK}\n(/bin/ip [^\n]*\n)+", "", script)
        script = re.sub(r"^.*udhcpc.*$\n?", "", script, flags=re.M)
        _write(layers, "/etc/init.d/rcS", script.rstrip("\n") + "\n" + static, 0o755)
