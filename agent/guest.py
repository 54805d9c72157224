"""Files the agent owns inside a container's rootfs: its identity and its own network setup."""

import os
import re
import secrets

from agent.errors import StorageError

MARK = "# managed by lxc-agent"


def _write(rootfs, relative, text, mode=0o644):
    path = os.path.join(rootfs, relative.lstrip("/"))
    if os.path.islink(path):
        # A symlink in a guest may point anywhere on the host; replace it rather than follow it.
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root = os.path.realpath(rootfs)
    if not os.path.realpath(os.path.dirname(path)).startswith(root + os.sep):
        raise StorageError(f"{relative} in {rootfs} leads outside the container (a symlinked folder); "
                           "refusing to write through it")
    with open(path + ".lxc-agent.tmp", "w") as handle:
        handle.write(text)
    os.chmod(path + ".lxc-agent.tmp", mode)
    os.replace(path + ".lxc-agent.tmp", path)


def write_identity(rootfs, name):
    """What makes a clone a different machine than its source: host name and machine-id."""
    _write(rootfs, "/etc/hostname", name + "\n")
    _write(rootfs, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n"
                                 "::1\tlocalhost ip6-localhost ip6-loopback\n")
    if os.path.exists(os.path.join(rootfs, "etc/machine-id")):
        _write(rootfs, "/etc/machine-id", secrets.token_hex(16) + "\n", 0o444)


def write_network(rootfs, address, gateway):
    """LXC sets the address before init; this keeps init (ifupdown, busybox udhcpc) from replacing it."""
    interfaces = os.path.join(rootfs, "etc/network/interfaces")
    rcs = os.path.join(rootfs, "etc/init.d/rcS")
    if os.path.exists(interfaces):
        _write(rootfs, "/etc/network/interfaces",
               f"{MARK}: eth0 is {address} via {gateway}, set by LXC before init starts.\n"
               "auto lo\niface lo inet loopback\n\n"
               f"auto eth0\niface eth0 inet manual\n")
    elif os.path.exists(rcs):
        with open(rcs) as handle:
            script = handle.read()
        static = (f"{MARK}\n/bin/ip addr replace {address} dev eth0\n/bin/ip link set eth0 up\n"
                  f"/bin/ip route replace default via {gateway}\n")
        script = re.sub(rf"{MARK}\n(/bin/ip [^\n]*\n)+", "", script)
        script = re.sub(r"^.*udhcpc.*$\n?", "", script, flags=re.M)
        _write(rootfs, "/etc/init.d/rcS", script.rstrip("\n") + "\n" + static, 0o755)
