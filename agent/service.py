"""The one object the agent exposes over Pyro5: checks every argument, serialises changes, calls the modules
that own the host's containers, storage and networks (they decide what is done already), maps their results, and
logs each call it refuses."""

import functools
import ipaddress
import logging
import os
import re
import socket
import threading

from Pyro5.api import behavior, expose

import agent
from agent import addressing, containers, hostinfo, limits, network, storage, tunnels
from agent.errors import AgentError, BatchError, Conflict, InvalidArgument, NotFound
from agent.workers import WorkerPool

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
RELEASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
PACKAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")


def check_names(names, what="container name"):
    """Refuse the whole batch before acting if any name is unusable (it becomes a path and a hostname)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise InvalidArgument(f"expected a list of {what}s, got {type(names).__name__}")
    bad = [name for name in names if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name]
    if bad:
        raise InvalidArgument(
            f"invalid {what}(s) {bad!r}: use letters, digits, '.' and '-', start with a "
            "letter or digit, at most 63 characters, no '..'"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(f"{what}(s) listed twice: {duplicates}")
    return list(names)


def check_release(release):
    """A release becomes part of an image's folder name, so it is a plain word (bookworm, 22.04) or None."""
    if release is not None and (not isinstance(release, str) or not RELEASE_PATTERN.fullmatch(release)):
        raise InvalidArgument(
            f"invalid release {release!r}: use letters, digits, '.', '_' and '-' (e.g. "
            "'bookworm'), at most 32 characters, or leave it out for the template's default"
        )
    return release


def check_packages(template, packages):
    """The sorted, distinct package names, refused before anything changes if unusable for this template."""
    if packages is None:
        return []
    if isinstance(packages, str) or not isinstance(packages, (list, tuple)):
        raise InvalidArgument(f"packages must be a list of package names, got {type(packages).__name__}")
    bad = [package for package in packages if not isinstance(package, str) or not PACKAGE_PATTERN.fullmatch(package)]
    if bad:
        raise InvalidArgument(
            f"invalid package name(s) {bad!r}: use lower-case letters, digits, '+', '.' and '-', "
            "starting with a letter or digit"
        )
    if packages and template not in containers.PACKAGE_OPTIONS:
        raise InvalidArgument(
            f"template {template!r} cannot add packages; templates that can: "
            + ", ".join(sorted(containers.PACKAGE_OPTIONS))
        )
    return sorted(set(packages))


def reported(method):
    """Log a call that raises, once, with the method's name: the caller gets the error, the host's log keeps a
    record of it. Refusals (nothing was changed) and the agent's own failures at WARNING; anything else, a bug,
    with its traceback."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (InvalidArgument, NotFound, Conflict) as error:
            log.warning("refused %s: %s", method.__name__, error)
            raise
        except AgentError as error:
            log.warning("%s failed: %s", method.__name__, error)
            raise
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            raise

    return call


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

    @reported
    def info(self):
        images = [
            {key: image.get(key) for key in ("key", "template", "release", "packages", "size")}
            for image in storage.list_images(self.lxcpath)
        ]
        return {
            "version": agent.__version__,
            "hostname": socket.gethostname(),
            "lxcpath": self.lxcpath,
            "storage": self.backend,
            "kernel_features": dict(self._features),
            "memory": hostinfo.memory(),
            "limits": limits.current(),
            "templates": containers.templates(),
            "images": images,
        }

    @reported
    def list_images(self):
        """The cached template images: key, template, release, packages, size (bytes), created, and `used_by`,
        the containers that stack on one as their overlay base (btrfs snapshots and copies do not hold it)."""
        return storage.list_images(self.lxcpath)

    @reported
    def list(self, names=None):
        """State, addresses and memory of the given containers, or of all under lxcpath."""
        names = containers.list_names(self.lxcpath) if names is None else check_names(names)
        return self._lifecycle.call(containers.status_many, self.lxcpath, names)

    # -- containers ----------------------------------------------------------------------------------------------

    @reported
    def create(self, name, template, release=None, packages=None):
        """A container from an LXC template with extra distribution packages (debian, ubuntu). The template runs
        once per (template, release, packages) into a cached image; every create makes its container from that
        image like a clone. Asking again for the same template, release and packages is a no-op."""
        check_names([name])
        if template not in containers.templates():
            raise InvalidArgument(f"unknown template {template!r}; this host has: " + ", ".join(containers.templates()))
        release = check_release(release)
        packages = check_packages(template, packages)
        with self._changes:
            if containers.already_created(self.lxcpath, name, template, release, packages):
                return {"name": name, "created": False}
            self._lifecycle.call(containers.create, self.lxcpath, name, template, release, packages, self.backend)
            return {"name": name, "created": True}

    @reported
    def destroy_images(self, keys=None):
        """Remove cached images; containers made from them are not touched. keys=None removes every image no
        container stacks on (an overlay base in use is skipped) and returns the keys removed. Given keys are all
        removed and returned, or, if any is an overlay base in use, none: Conflict naming the users. Keys that do
        not exist are already done."""
        if keys is not None:
            keys = check_names(keys, "image key")
        with self._changes:
            return storage.destroy_images(self.lxcpath, keys)

    @reported
    def clone(self, source, names, snapshot=True):
        """Clone a stopped source to every name; names already cloned from this source are left alone."""
        check_names([source], "source name")
        names = check_names(names)
        if source in names:
            raise InvalidArgument(f"cannot clone {source!r} onto itself")
        with self._changes:
            todo, failed = containers.clones_to_make(self.lxcpath, source, names)
            backend = self.backend if snapshot else "copy"
            failed.update(self._lifecycle.call(containers.each, containers.clone, self.lxcpath, todo, source, backend))
            return self._finish("clone", names, failed)

    @reported
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
            failed = containers.ensure_networks(self.lxcpath, bridge, addresses, host_network["gateway"], mtu)
            return self._finish("set_addresses", names, failed)

    @reported
    def start(self, names, timeout=60):
        names = check_names(names)
        with self._changes:
            self._require_existing(names)
            failed = self._lifecycle.call(containers.start_many, self.lxcpath, names, float(timeout))
            return self._finish("start", names, failed)

    @reported
    def stop(self, names, timeout=10):
        """Halt gracefully (all at once), killing what is still running after `timeout` seconds."""
        names = check_names(names)
        with self._changes:
            self._require_existing(names)
            failed = containers.stop_many(self.lxcpath, names, float(timeout))
            return self._finish("stop", names, failed)

    @reported
    def destroy(self, names):
        """Stop and remove each container with its storage; names that do not exist are already done."""
        names = check_names(names)
        with self._changes:
            failed = containers.destroy_many(self.lxcpath, names)
            return self._finish("destroy", names, failed)

    @reported
    def run(self, name, argv, stdin=None, env=None, user=None, timeout=None):
        """Run a command in a running container (liblxc attach, no SSH); exit code, stdout and stderr."""
        check_names([name])
        if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgument("argv must be a non-empty list of strings, e.g. ['hostname']")
        if env is not None and not (
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise InvalidArgument("env must map strings to strings")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        return self._commands.call(containers.run, self.lxcpath, name, list(argv), stdin, env, user, timeout)

    # -- host network --------------------------------------------------------------------------------------------

    @reported
    def ensure_network(self, bridge, subnet, owner=None):
        """Bridge with the subnet's first address, forwarding and NAT for traffic leaving the host. `owner` (the
        coordinator gives its deployment's name) is recorded on the bridge: another owner asking for that bridge,
        or for a subnet overlapping it, gets a Conflict naming the holder; the same owner again is a no-op."""
        with self._changes:
            return network.ensure_host_network(bridge, subnet, owner)

    @reported
    def destroy_network(self, bridge, owner=None):
        """Remove the bridge and its NAT; a bridge with an owner only for that owner (Conflict otherwise)."""
        with self._changes:
            network.destroy_host_network(bridge, owner)

    @reported
    def list_networks(self):
        return network.list_host_networks()

    # -- tunnels between hosts -------------------------------------------------------------------------------------

    @reported
    def ensure_tunnel(self, name, kind, local, remote, local_subnets, remote_subnets, vni=None):
        """One end of a tunnel: containers in local_subnets reach remote_subnets (or the remote itself) through
        it, without NAT. The other host's agent is asked for the mirror image. Returns the tunnel's MTU."""
        with self._changes:
            return tunnels.ensure_tunnel(name, kind, local, remote, list(local_subnets), list(remote_subnets), vni)

    @reported
    def destroy_tunnel(self, name):
        with self._changes:
            tunnels.destroy_tunnel(name)

    @reported
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
        if interface.network != subnet or interface.ip in addressing.reserved(subnet):
            raise InvalidArgument(
                f"address {address!r} for {name!r} must be a host address inside {subnet} "
                f"other than the gateway {gateway}"
            )

    @staticmethod
    def _finish(operation, names, failed):
        if failed:
            raise BatchError(operation, [name for name in names if name not in failed], failed)
        return list(names)
