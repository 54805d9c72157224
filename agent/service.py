"""The one object the agent exposes over Pyro5: checks every argument against its declaration in
agent.arguments before anything happens, serialises changes, calls the modules that own the host's containers,
storage and networks (they decide what is done already), maps their results, and logs each call it refuses.
Only the methods marked @remote are exposed; close() is for the daemon, in process."""

import functools
import ipaddress
import logging
import os
import socket
import threading

from Pyro5.api import behavior, expose

import agent
from agent import (
    addressing,
    arguments,
    containers,
    hostinfo,
    limits,
    memory_merge,
    neighbours,
    network,
    pool,
    segments,
    snapshots,
    storage,
    tunnels,
)
from agent.errors import AgentError, BatchError, Conflict, InvalidArgument, NotFound
from agent.workers import WorkerPool

log = logging.getLogger(__name__)


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


def remote(method):
    """Exposed over Pyro5; its arguments checked against agent.arguments.SCHEMAS before its body runs; a call
    that raises logged once (refusals by the schema too)."""
    return expose(reported(arguments.checked(method)))


@behavior(instance_mode="single")
class AgentService:
    """Batch, idempotent operations on this host's containers and networks.

    `allow_public_subnets` (the agent config's setting of that name): bridges and tunnels may use subnets outside
    the private ranges (agent.arguments.PRIVATE_NETWORKS)."""

    def __init__(self, lxcpath, storage_backend="auto", command_workers=16, allow_public_subnets=False):
        if not isinstance(allow_public_subnets, bool):
            raise InvalidArgument(f"allow_public_subnets must be true or false, not {allow_public_subnets!r}")
        self.allow_public_subnets = allow_public_subnets
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
        """Stop the worker processes: for the daemon, as it stops; not exposed."""
        self._lifecycle.shutdown()
        self._commands.shutdown()

    # -- reading -----------------------------------------------------------------------------------------------

    @remote
    def ping(self):
        """The agent's version, at once: a client waiting on a long call (a stack.sh run) asks this over another
        connection to know the agent still serves (coordinator.heartbeat)."""
        return agent.__version__

    @remote
    def memory(self):
        """The host's memory now, cheaply: total and available bytes, KSM's merging (`ksm`: whether ksmd
        runs, and the bytes it saves) and memory pressure (`pressure`: % of the last 10 s some task waited for
        memory, or None). A coordinator starting merged computes waits on this so it never starts them faster
        than ksmd merges them."""
        return {**hostinfo.memory(), "ksm": memory_merge.savings(), "pressure": hostinfo.memory_pressure()}

    @remote
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
            "pool": pool.describe(self.lxcpath),
            "kernel_features": dict(self._features),
            "memory": hostinfo.memory(),
            "limits": limits.current(),
            "templates": containers.templates(),
            "images": images,
        }

    @remote
    def list_images(self):
        """The cached images: key, size (bytes), created, and `used_by`, the containers that stack on one as their
        overlay base (btrfs snapshots and copies do not hold it); a template's image has template, release and
        packages, an image save_image kept has kind "saved", source, labels and last_used."""
        return storage.list_images(self.lxcpath)

    @remote
    def list(self, names=None):
        """State, addresses and memory of the given containers, or of all under lxcpath."""
        names = containers.list_names(self.lxcpath) if names is None else names
        return self._lifecycle.call(containers.status_many, self.lxcpath, names)

    # -- containers ----------------------------------------------------------------------------------------------

    @remote
    def create(self, name, template, release=None, packages=None):
        """A container from an LXC template with extra distribution packages (debian, ubuntu). The template runs
        once per (template, release, packages) into a cached image; every create makes its container from that
        image like a clone. Asking again for the same template, release and packages is a no-op."""
        known = containers.templates()
        if template not in known:
            raise arguments.invalid(
                "create", "template", f"unknown template {arguments.show(template)}; this host has: " + ", ".join(known)
            )
        packages = sorted(set(packages or []))
        if packages and template not in containers.PACKAGE_OPTIONS:
            raise arguments.invalid(
                "create",
                "packages",
                f"template {template!r} cannot add packages; templates that can: "
                + ", ".join(sorted(containers.PACKAGE_OPTIONS)),
            )
        with self._changes:
            if containers.already_created(self.lxcpath, name, template, release, packages):
                return {"name": name, "created": False}
            self._lifecycle.call(containers.create, self.lxcpath, name, template, release, packages, self.backend)
            return {"name": name, "created": True}

    @remote
    def destroy_images(self, keys=None):
        """Remove cached images; containers made from them are not touched. keys=None removes every image no
        container stacks on (an overlay base in use is skipped) and returns the keys removed. Given keys are all
        removed and returned, or, if any is an overlay base in use, none: Conflict naming the users. Keys that do
        not exist are already done."""
        with self._changes:
            return storage.destroy_images(self.lxcpath, keys)

    @remote
    def save_image(self, name, key, labels=None):
        """Keep the container as it is now as the image `key`, for create_from_image: a running one is frozen
        while its rootfs is snapshotted (btrfs) or copied (copy storage), then thawed. `labels` ({name: text}) are
        kept with the image for whoever lists it. The same key for the same container again is done already."""
        with self._changes:
            self._require_existing([name])
            containers.require_agents(self.lxcpath, [name])
            return self._lifecycle.call(containers.save_image, self.lxcpath, name, key, labels or {}, self.backend)

    @remote
    def create_from_image(self, name, key):
        """A container made from an image save_image kept, with its own host name and machine-id, and no network
        yet; asking again for the same image is a no-op."""
        with self._changes:
            created = self._lifecycle.call(containers.create_from_image, self.lxcpath, name, key, self.backend)
            return {"name": name, "created": created}

    # -- snapshots of containers -------------------------------------------------------------------------------

    @remote
    def snapshot(self, names, tag):
        """Snapshot every named container under `tag` at one moment: the running ones are all frozen before the
        first is copied and thawed after the last (agent.snapshots). Those that have `tag` already are left as
        they are: {name: {"taken": True if taken now, "frozen": seconds its containers were frozen}}."""
        with self._changes:
            self._require_existing(names)
            containers.require_agents(self.lxcpath, names)
            return self._lifecycle.call(snapshots.take, self.lxcpath, names, tag, self.backend)

    @remote
    def restore(self, names, tag, timeout=120):
        """Stop the named containers (killing what still runs after `timeout` seconds) and give each the rootfs
        and config of its snapshot `tag`, which is kept; they are left stopped, for start(). NotFound, before
        anything changes, when any lacks the snapshot."""
        with self._changes:
            self._require_existing(names)
            containers.require_agents(self.lxcpath, names)
            lacking = snapshots.missing(self.lxcpath, names, tag)
            if lacking:
                raise NotFound(
                    f"no snapshot {tag!r} of container(s) {arguments.show(lacking)}; list_snapshots() shows theirs",
                    containers=lacking,
                )
            failed = self._lifecycle.call(containers.stop_many, self.lxcpath, names, timeout)
            if not failed:
                failed = self._lifecycle.call(containers.each, snapshots.restore, self.lxcpath, names, tag)
            return self._finish("restore", names, failed)

    @remote
    def list_snapshots(self, names=None):
        """[{name, tag, created, size (bytes in its files), was (running or stopped)}] of the complete snapshots
        of the given containers, or of all of the agent's."""
        names = containers.list_names(self.lxcpath) if names is None else names
        return snapshots.listed(self.lxcpath, [name for name in names if storage.is_agents(self.lxcpath, name)])

    @remote
    def delete_snapshots(self, names, tag):
        """Remove the snapshot `tag` of each named container; a container or snapshot that is not there is done."""
        with self._changes:
            present = [name for name in names if containers.exists(self.lxcpath, name)]
            containers.require_agents(self.lxcpath, present)
            snapshots.delete(self.lxcpath, present, tag)
            return list(names)

    @remote
    def clone(self, source, names, snapshot=True):
        """Clone a stopped source to every name; names already cloned from this source are left alone."""
        if source in names:
            raise arguments.invalid("clone", f"names[{names.index(source)}]", f"cannot clone {source!r} onto itself")
        with self._changes:
            todo, failed = containers.clones_to_make(self.lxcpath, source, names)
            backend = self.backend if snapshot else "copy"
            failed.update(self._lifecycle.call(containers.each, containers.clone, self.lxcpath, todo, source, backend))
            return self._finish("clone", names, failed)

    @remote
    def set_addresses(self, bridge, addresses, mtu=None):
        """Give each container {name: "10.0.0.5/24"} a static address on this host's bridge.

        A container that already has exactly this is left alone, running or not; a change needs it stopped."""
        names = list(addresses)
        host_network = network.get_host_network(bridge)
        if host_network is None:
            raise NotFound(f"bridge {bridge!r} is not set up on this host; call ensure_network first")
        subnet = ipaddress.ip_network(host_network["subnet"])
        for name, address in addresses.items():
            interface = ipaddress.ip_interface(address)
            if interface.network != subnet or interface.ip in addressing.reserved(subnet):
                raise arguments.invalid(
                    "set_addresses",
                    f"addresses[{name!r}]",
                    f"address {address} must be a host address inside {subnet} other than the gateway "
                    f"{host_network['gateway']}",
                )
            try:
                segments.index_of(str(subnet), address)  # within what the bridge and its segments carry
            except InvalidArgument as error:
                raise arguments.invalid("set_addresses", f"addresses[{name!r}]", str(error)) from None
        with self._changes:
            self._require_existing(names)
            failed = containers.ensure_networks(self.lxcpath, bridge, addresses, host_network["gateway"], mtu)
            return self._finish("set_addresses", names, failed)

    @remote
    def start(self, names, timeout=60, merge_memory=False):
        """Start and wait until running. merge_memory: their processes' memory merged by KSM with each other's
        (agent.memory_merge: for copies of one container, like fake computes; turns ksmd on)."""
        with self._changes:
            self._require_existing(names)
            if merge_memory:
                memory_merge.require()
                if names:
                    memory_merge.ensure_ksmd()
            for bridge, indexes in containers.segments_needed(self.lxcpath, names).items():
                network.ensure_segments(bridge, indexes)
            mtus = network.link_mtus(containers.links_without_mtu(self.lxcpath, names))
            # Each port is confined (agent.neighbours) in the worker, as soon as its container runs.
            failed = self._lifecycle.call(containers.start_many, self.lxcpath, names, timeout, merge_memory, mtus)
            return self._finish("start", names, failed)

    @remote
    def stop(self, names, timeout=10):
        """Halt gracefully (all at once), killing what is still running after `timeout` seconds."""
        with self._changes:
            self._require_existing(names)
            # In a worker: liblxc's shutdown and wait keep Python's lock while they wait, and would freeze every
            # other client's call (and a heartbeat) for up to `timeout` seconds.
            failed = self._lifecycle.call(containers.stop_many, self.lxcpath, names, timeout)
            neighbours.forget(containers.neighbour_facts(self.lxcpath, [name for name in names if name not in failed]))
            return self._finish("stop", names, failed)

    @remote
    def destroy(self, names):
        """Stop and remove each container with its storage; names that do not exist are already done."""
        with self._changes:
            known = containers.neighbour_facts(self.lxcpath, names)  # read before the metadata goes
            failed = self._lifecycle.call(containers.destroy_many, self.lxcpath, names)  # stops too: see stop()
            neighbours.forget([entry for entry in known if entry["name"] not in failed])
            return self._finish("destroy", names, failed)

    @remote
    def run(self, name, argv, stdin=None, env=None, user=None, timeout=None):
        """Run a command in a running container (liblxc attach, no SSH); exit code, stdout and stderr. stdin is
        text or bytes."""
        return self._commands.call(containers.run, self.lxcpath, name, argv, stdin, env, user, timeout)

    # -- host network --------------------------------------------------------------------------------------------

    @remote
    def ensure_network(self, bridge, subnet, owner=None):
        """Bridge with the subnet's first address, forwarding and NAT for traffic leaving the host. `owner` (the
        coordinator gives its deployment's name) is recorded on the bridge: another owner asking for that bridge,
        or for a subnet overlapping it, gets a Conflict naming the holder; the same owner again is a no-op."""
        with self._changes:
            return network.ensure_host_network(bridge, subnet, owner)

    @remote
    def destroy_network(self, bridge, owner=None):
        """Remove the bridge and its NAT; a bridge with an owner only for that owner (Conflict otherwise)."""
        with self._changes:
            network.destroy_host_network(bridge, owner)

    @remote
    def list_networks(self):
        return network.list_host_networks()

    # -- tunnels between hosts -------------------------------------------------------------------------------------

    @remote
    def ensure_tunnel(self, name, kind, local, remote, local_subnets, remote_subnets, vni=None):
        """One end of a tunnel: containers in local_subnets reach remote_subnets (or the remote itself) through
        it, without NAT. The other host's agent is asked for the mirror image. Returns the tunnel's MTU."""
        with self._changes:
            return tunnels.ensure_tunnel(name, kind, local, remote, local_subnets, remote_subnets, vni)

    @remote
    def destroy_tunnel(self, name):
        with self._changes:
            tunnels.destroy_tunnel(name)

    @remote
    def list_tunnels(self):
        return tunnels.list_tunnels()

    # -- helpers -------------------------------------------------------------------------------------------------

    def _require_existing(self, names):
        missing = [name for name in names if not containers.exists(self.lxcpath, name)]
        if missing:
            raise NotFound(f"no such container(s) on this host: {arguments.show(missing)}", containers=missing)

    @staticmethod
    def _finish(operation, names, failed):
        if failed:
            raise BatchError(operation, [name for name in names if name not in failed], failed)
        return list(names)
