"""The one object the agent exposes over Pyro5: checks every argument, serialises changes, calls the modules."""

import ipaddress
import logging
import os
import re
import socket
import threading

from Pyro5.api import behavior, expose

import agent
from agent import containers, hostinfo, limits, network, storage, tunnels
from agent.errors import BatchError, Conflict, InvalidArgument, NotFound
from agent.workers import WorkerPool

log = logging.getLogger("lxc-agent")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
RELEASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
PACKAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")


def check_names(names, what="container name"):
    """Refuse the whole batch before acting if any name is unusable (it becomes a path and a hostname)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise InvalidArgument(f"expected a list of {what}s, got {type(names).__name__}")
    bad = [name for name in names
           if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name]
    if bad:
        raise InvalidArgument(f"invalid {what}(s) {bad!r}: use letters, digits, '.' and '-', start with a "
                              "letter or digit, at most 63 characters, no '..'")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(f"{what}(s) listed twice: {duplicates}")
    return list(names)


def check_release(release):
    """A release becomes part of an image's folder name, so it is a plain word (bookworm, 22.04) or None."""
    if release is not None and (not isinstance(release, str) or not RELEASE_PATTERN.fullmatch(release)):
        raise InvalidArgument(f"invalid release {release!r}: use letters, digits, '.', '_' and '-' (e.g. "
                              "'bookworm'), at most 32 characters, or leave it out for the template's default")
    return release


def check_packages(template, packages):
    """The sorted, distinct package names, refused before anything changes if unusable for this template."""
    if packages is None:
        return []
    if isinstance(packages, str) or not isinstance(packages, (list, tuple)):
        raise InvalidArgument(f"packages must be a list of package names, got {type(packages).__name__}")
    bad = [package for package in packages if not isinstance(package, str) or not PACKAGE_PATTERN.fullmatch(package)]
    if bad:
        raise InvalidArgument(f"invalid package name(s) {bad!r}: use lower-case letters, digits, '+', '.' and '-', "
                              "starting with a letter or digit")
    if packages and template not in containers.PACKAGE_OPTIONS:
        raise InvalidArgument(f"template {template!r} cannot add packages; templates that can: "
                              + ", ".join(sorted(containers.PACKAGE_OPTIONS)))
    return sorted(set(packages))


@expose
@behavior(instance_mode="single")
class AgentService:
    """Batch, idempotent operations on this host's containers and networks."""

    def __init__(self, lxcpath, storage_backend="auto", command_workers=16):
        os.makedirs(lxcpath, exist_ok=True)
        self.lxcpath = lxcpath
        self.backend = storage.choose_backend(lxcpath, storage_backend)
        # One change at a time on this host; reads and commands in containers do not wait for it.
        self._changes = threading.Lock()
        self._lifecycle = WorkerPool(2)
        self._commands = WorkerPool(command_workers)
        self._features = hostinfo.kernel_features()
        limits.ensure_minimums()

    def close(self):
        self._lifecycle.shutdown()
        self._commands.shutdown()

    # -- reading -----------------------------------------------------------------------------------------------

    def info(self):
        images = [{key: image.get(key) for key in ("key", "template", "release", "packages", "size")}
                  for image in storage.list_images(self.lxcpath)]
        return {"version": agent.__version__, "hostname": socket.gethostname(), "lxcpath": self.lxcpath,
                "storage": self.backend, "kernel_features": dict(self._features),
                "memory": hostinfo.memory(), "limits": limits.current(), "templates": containers.templates(), "images": images}

    def list_images(self):
        """The cached template images: key, template, release, packages, size (bytes), created, and `used_by`,
        the containers that stack on one as their overlay base (btrfs snapshots and copies do not hold it)."""
        return storage.list_images(self.lxcpath)

    def list(self, names=None):
        """State, addresses and memory of the given containers, or of all under lxcpath."""
        names = containers.list_names(self.lxcpath) if names is None else check_names(names)
        return self._lifecycle.call(containers.status_many, self.lxcpath, names)

    # -- containers ----------------------------------------------------------------------------------------------

    def create(self, name, template, release=None, packages=None):
        """A container from an LXC template with extra distribution packages (debian, ubuntu). The template runs
        once per (template, release, packages) into a cached image; every create makes its container from that
        image like a clone. Asking again for the same template, release and packages is a no-op."""
        check_names([name])
        if template not in containers.templates():
            raise InvalidArgument(f"unknown template {template!r}; this host has: "
                                  + ", ".join(containers.templates()))
        release = check_release(release)
        packages = check_packages(template, packages)
        with self._changes:
            if containers.exists(self.lxcpath, name):
                made = containers.read_metadata(self.lxcpath, name)
                if (made.get("template"), made.get("release"), sorted(made.get("packages") or [])) \
                        == (template, release, packages) and not made.get("clone_of"):
                    return {"name": name, "created": False}
                raise Conflict(f"container {name!r} exists but was made from {self._origin(made)}, not "
                               f"{containers.describe(template, release, packages)}; destroy it first or pick "
                               "another name", container=name)
            log.info("create %s from %s", name, containers.describe(template, release, packages))
            key = self._lifecycle.call(containers.create, self.lxcpath, name, template, release, packages,
                                       self.backend)
            log.info("created %s from image %s", name, key)
            return {"name": name, "created": True}

    def destroy_images(self, keys=None):
        """Remove cached images; containers made from them are not touched. keys=None removes every image no
        container stacks on (an overlay base in use is skipped) and returns the keys removed. Given keys are all
        removed and returned, or, if any is an overlay base in use, none: Conflict naming the users. Keys that do
        not exist are already done."""
        if keys is not None:
            keys = check_names(keys, "image key")
        with self._changes:
            users = storage.image_users(self.lxcpath)
            present = storage.image_keys(self.lxcpath)
            if keys is None:
                todo = [key for key in present if key not in users]
            else:
                busy = {key: users[key] for key in keys if key in users}
                if busy:
                    raise Conflict("image(s) in use as the overlay base of containers, destroy those first: "
                                   + "; ".join(f"{key} by {names}" for key, names in sorted(busy.items())),
                                   images=busy)
                todo = [key for key in keys if key in present]
            for key in todo:
                log.info("remove image %s", key)
                storage.remove_image_files(self.lxcpath, key)
            return todo if keys is None else keys

    def clone(self, source, names, snapshot=True):
        """Clone a stopped source to every name; names already cloned from this source are left alone."""
        check_names([source], "source name")
        names = check_names(names)
        if source in names:
            raise InvalidArgument(f"cannot clone {source!r} onto itself")
        with self._changes:
            if not containers.exists(self.lxcpath, source):
                raise NotFound(f"source container {source!r} does not exist on this host", container=source)
            if containers.is_running(self.lxcpath, source):
                raise Conflict(f"source container {source!r} is running; stop it before cloning so the clones "
                               "get a consistent filesystem", container=source)
            todo, failed = [], {}
            for name in names:
                if not containers.exists(self.lxcpath, name):
                    todo.append(name)
                    continue
                made = containers.read_metadata(self.lxcpath, name)
                if made.get("clone_of") != source:
                    failed[name] = f"exists already, made from {self._origin(made)}, not cloned from {source!r}"
            backend = self.backend if snapshot else "copy"
            log.info("clone %s -> %d container(s) by %s", source, len(todo), backend)
            failed.update(self._lifecycle.call(containers.each, containers.clone, self.lxcpath, todo,
                                               source, backend))
            return self._finish("clone", names, failed)

    def set_addresses(self, bridge, addresses, mtu=None):
        """Give each container {name: "10.0.0.5/24"} a static address on this host's bridge.

        A container that already has exactly this is left alone, running or not; a change needs it stopped."""
        if not isinstance(addresses, dict):
            raise InvalidArgument("addresses must map container name -> address/prefix")
        names = check_names(list(addresses))
        host_network = network.get_host_network(bridge)
        if host_network is None:
            raise NotFound(f"bridge {bridge!r} is not set up on this host; call ensure_network first")
        subnet = ipaddress.ip_network(host_network["subnet"])
        for name, address in addresses.items():
            self._check_address(name, address, subnet, host_network["gateway"])
        with self._changes:
            self._require_existing(names)
            wanted = {"bridge": bridge, "gateway": host_network["gateway"], "mtu": mtu}
            changes = [name for name in names
                       if {key: containers.read_metadata(self.lxcpath, name).get(key)
                           for key in ("bridge", "address", "gateway", "mtu")} != {**wanted, "address": addresses[name]}]
            running = [name for name in changes if containers.is_running(self.lxcpath, name)]
            if running:
                raise Conflict(f"container(s) {running} are running; stop them before changing addresses")
            failed = containers.each(_set_network_from_table, self.lxcpath, changes, bridge, addresses,
                                     host_network["gateway"], mtu)
            return self._finish("set_addresses", names, failed)

    def start(self, names, timeout=60):
        names = check_names(names)
        with self._changes:
            self._require_existing(names)
            failed = self._lifecycle.call(containers.start_many, self.lxcpath, names, float(timeout))
            return self._finish("start", names, failed)

    def stop(self, names, timeout=10):
        """Halt gracefully (all at once), killing what is still running after `timeout` seconds."""
        names = check_names(names)
        with self._changes:
            self._require_existing(names)
            failed = containers.stop_many(self.lxcpath, names, float(timeout))
            return self._finish("stop", names, failed)

    def destroy(self, names):
        """Stop and remove each container with its storage; names that do not exist are already done."""
        names = check_names(names)
        with self._changes:
            present = [name for name in names if containers.exists(self.lxcpath, name)]
            failed = containers.each(containers.destroy, self.lxcpath, present)
            return self._finish("destroy", names, failed)

    def run(self, name, argv, stdin=None, env=None, user=None, timeout=None):
        """Run a command in a running container (liblxc attach, no SSH); exit code, stdout and stderr."""
        check_names([name])
        if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgument("argv must be a non-empty list of strings, e.g. ['hostname']")
        if env is not None and not (isinstance(env, dict)
                                    and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise InvalidArgument("env must map strings to strings")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        return self._commands.call(containers.run, self.lxcpath, name, list(argv), stdin, env, user, timeout)

    # -- host network --------------------------------------------------------------------------------------------

    def ensure_network(self, bridge, subnet, owner=None):
        """Bridge with the subnet's first address, forwarding and NAT for traffic leaving the host. `owner` (the
        coordinator gives its deployment's name) is recorded on the bridge: another owner asking for that bridge,
        or for a subnet overlapping it, gets a Conflict naming the holder; the same owner again is a no-op."""
        with self._changes:
            return network.ensure_host_network(bridge, subnet, owner)

    def destroy_network(self, bridge, owner=None):
        """Remove the bridge and its NAT; a bridge with an owner only for that owner (Conflict otherwise)."""
        with self._changes:
            network.destroy_host_network(bridge, owner)

    def list_networks(self):
        return network.list_host_networks()

    # -- tunnels between hosts -------------------------------------------------------------------------------------

    def ensure_tunnel(self, name, kind, local, remote, local_subnets, remote_subnets, vni=None):
        """One end of a tunnel: containers in local_subnets reach remote_subnets (or the remote itself) through
        it, without NAT. The other host's agent is asked for the mirror image. Returns the tunnel's MTU."""
        with self._changes:
            return tunnels.ensure_tunnel(name, kind, local, remote, list(local_subnets), list(remote_subnets), vni)

    def destroy_tunnel(self, name):
        with self._changes:
            tunnels.destroy_tunnel(name)

    def list_tunnels(self):
        return tunnels.list_tunnels()

    # -- helpers -------------------------------------------------------------------------------------------------

    def _require_existing(self, names):
        missing = [name for name in names if not containers.exists(self.lxcpath, name)]
        if missing:
            raise NotFound(f"no such container(s) on this host: {missing}", containers=missing)

    @staticmethod
    def _check_address(name, address, subnet, gateway):
        try:
            interface = ipaddress.ip_interface(address)
        except ValueError:
            raise InvalidArgument(f"address {address!r} for {name!r} is not an IPv4 address/prefix") from None
        reserved = {subnet.network_address, subnet.broadcast_address, ipaddress.ip_address(gateway)}
        if interface.network != subnet or interface.ip in reserved:
            raise InvalidArgument(f"address {address!r} for {name!r} must be a host address inside {subnet} "
                                  f"other than the gateway {gateway}")

    @staticmethod
    def _origin(made):
        if made.get("clone_of"):
            return f"a clone of {made['clone_of']!r}"
        if made.get("template"):
            return containers.describe(made["template"], made.get("release"), made.get("packages") or [])
        return "something else (not made by lxc-agent)"

    @staticmethod
    def _finish(operation, names, failed):
        if failed:
            raise BatchError(operation, [name for name in names if name not in failed], failed)
        return list(names)


def _set_network_from_table(lxcpath, name, bridge, addresses, gateway, mtu):
    containers.set_network(lxcpath, name, bridge, addresses[name], gateway, mtu)

