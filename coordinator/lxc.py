"""The LXC provider: nodes placed as containers through each host's agent (engine.Provider).

Place: one bridge per planned subnet, the planned tunnels at both ends, the containers made from a template
(LxcProvider's, and each LxcEngine's first compute) with their addresses, started. Replicate: each first compute,
once the engine made it ready and sealed it, copied into its clones, which get their own addresses and then their
own identity from the engine.
"""

import concurrent.futures
import ipaddress
import threading

from agent.errors import Conflict
from coordinator.engine import Phase, Provider

PACKAGES = ("git", "sudo", "python3")  # what devstack needs to start; installed with the container's image
KERNEL_OPTIONS = {"ipip": "CONFIG_NET_IPIP", "vxlan": "CONFIG_VXLAN"}
STOP_TIMEOUT = 120


class LxcContainers(Provider):
    """Containers on the plan's hosts, made and copied by their agents."""

    packages = PACKAGES

    def phases(self):
        return (
            Phase("networks", "place", lambda d: d.each_host(lambda host: self._networks(d, host))),
            Phase("tunnels", "place", self._tunnels),
            Phase("containers", "place", lambda d: d.each_host(lambda host: self._containers(d, host))),
            Phase("clones", "replicate", lambda d: d.each_host(lambda host: self._clones(d, host))),
        )

    # -- before anything changes ---------------------------------------------------------------------------------

    def preflight_host(self, deployer, host, agent):
        """The tunnel kinds the host's kernel lacks, and planned bridges or subnets another deployment holds."""
        found = []
        kinds = {tunnel.kind for tunnel in deployer.plan.tunnels if host.address in (tunnel.host, tunnel.remote_host)}
        merging = [group for group in deployer.plan.groups if group.merge_memory and host.address in group.hosts]
        features = agent.info()["kernel_features"] if kinds or merging else {}
        for group in merging:
            if not features.get("memory_merge"):
                found.append(
                    f"host {host.address}: {group.path}.merge_memory needs kernel same-page merging with "
                    "PR_SET_MEMORY_MERGE (Linux 6.4 or later, CONFIG_KSM), which this host's kernel or agent "
                    "lacks; remove merge_memory, or update the kernel or lxc-agent there"
                )
        if kinds:
            for kind in sorted(kinds):
                if not features.get(kind):
                    other = next(k for k in KERNEL_OPTIONS if k != kind)
                    instead = (
                        f'use "tunnel_type": "{other}" (this kernel has {other})'
                        if features.get(other)
                        else f"this kernel has no {other} either: build one with {KERNEL_OPTIONS[kind]}"
                    )
                    found.append(
                        f"host {host.address}: this kernel has no {kind} tunnels "
                        f'({KERNEL_OPTIONS[kind]} is not set), which tunnel_type "{kind}" needs; '
                        f"{instead}"
                    )
        if host.networks:
            held = agent.list_networks()
            for network in host.networks:
                found += held_by_others(deployer.name, host, network, held)
        return found

    # -- place -------------------------------------------------------------------------------------------------

    def _networks(self, d, host):
        with d.step(f"networks:{host.address}") as todo:
            if not todo:
                return
            agent = d.agent_for(host)
            for network in host.networks:
                d.record(host.address, "network", network.bridge)
                try:
                    agent.ensure_network(network.bridge, network.subnet, d.name)
                except Conflict as error:
                    details = getattr(error, "details", {})
                    if "owner" not in details or details["owner"] == d.name:
                        raise
                    # Another deployment's (it took the bridge since the preflight): not ours to destroy.
                    d.forget_resource(host.address, "network", network.bridge)
                    owner = details["owner"]
                    raise d.error(
                        f"host {host.address}: subnet {network.subnet} (bridge {network.bridge}) is in "
                        f"use by " + (f"deployment {owner!r}" if owner else "no deployment") + f": {error}"
                    ) from error

    def _tunnels(self, d):
        for tunnel in d.plan.tunnels:
            with d.step(f"tunnel:{tunnel.name}") as todo:
                if not todo:
                    continue
                local = d.plan.host(tunnel.host)
                d.record(local.address, "tunnel", tunnel.name)
                d.agent_for(local).ensure_tunnel(
                    tunnel.name, tunnel.kind, local.address, tunnel.remote, [tunnel.subnet], list(tunnel.remote_subnets)
                )
                if tunnel.remote_host:
                    remote = d.plan.host(tunnel.remote_host)
                    d.record(remote.address, "tunnel", tunnel.name)
                    d.agent_for(remote).ensure_tunnel(
                        tunnel.name,
                        tunnel.kind,
                        remote.address,
                        local.address,
                        list(tunnel.remote_subnets),
                        [tunnel.subnet],
                    )

    def _containers(self, d, host):
        """The containers made from a template: LxcProvider's, and each LxcEngine's first compute."""
        nodes = d.plan.nodes_on(host.address, "standalone", "first")
        if not nodes:
            return
        with d.step(f"containers:{host.address}") as todo:
            if not todo:
                return
            agent = d.agent_for(host)
            sealed = []  # first computes from a golden image: already stopped for cloning, so not started here
            for done, node in enumerate(nodes, 1):
                d.record(host.address, "container", node.name)
                golden = d.golden.source(agent, host, node)
                if golden:
                    agent.create_from_image(node.name, golden)
                    if node.kind == "first":
                        sealed.append(node)
                else:
                    agent.create(node.name, node.template, node.release, list(PACKAGES))
                d.progress("containers", done, len(nodes))
            self._address_and_start(d, agent, host, nodes, [node for node in nodes if node not in sealed])

    @staticmethod
    def _address_and_start(d, agent, host, nodes, started=None):
        """Addresses for `nodes`, then those of them in `started` (all by default) started and booted."""
        by_bridge: dict = {}
        for node in nodes:
            by_bridge.setdefault(node.bridge, {})[node.name] = f"{node.address}/{node.prefixlen}"
        # Behind a tunnel, a container's packets must fit the tunnel: give it the smallest tunnel MTU.
        mtu = min((tunnel["mtu"] for tunnel in agent.list_tunnels()), default=None)
        for bridge, addresses in by_bridge.items():
            agent.set_addresses(bridge, addresses, mtu)
        started = nodes if started is None else started
        if started:
            d.start(agent, started)
            d.wait_booted(agent, [node.name for node in started], host=host.address)

    # -- replicate ---------------------------------------------------------------------------------------------

    def _clones(self, d, host):
        """Each first compute's clones, then every node of the group (the first too) given its own identity by
        the engine."""
        clones = d.plan.nodes_on(host.address, "clone")
        firsts = d.plan.nodes_on(host.address, "first")
        if not firsts:
            return
        agent = d.agent_for(host)
        for first in firsts:
            group = [node for node in clones if node.source == first.name]
            names = [node.name for node in group]
            # An earlier run of this step (cut off, or marked stale by a changed config): its clones may be
            # snapshots of the first compute before it was made ready again, and the cloud may know members by
            # these names with other identities. Both are made anew.
            again = d.store.step_state(d.name, f"clones:{first.name}") not in (None, "done")
            with d.step(f"clones:{first.name}") as todo:
                if todo:
                    for name in names:
                        d.record(host.address, "container", name)
                    if again:
                        if names:
                            agent.destroy(names)
                        d.forget_nodes([first, *group])
                    self._copy(d, agent, host, first, group)
                    d.progress("clones", len(names), len(clones))
            with d.step(f"start-scripts:{first.name}") as todo:
                if todo:
                    self._personalize(d, host, first, group)

    def _copy(self, d, agent, host, first, group):
        """Clones of a stopped first compute, started with their own addresses, the first started again."""
        names = [node.name for node in group]
        agent.stop([first.name], STOP_TIMEOUT)
        if names:
            agent.clone(first.name, names)
        d.start(agent, [first])  # boots alongside its clones; the deploy ends with all of them up
        if group:
            self._address_and_start(d, agent, host, group)
        d.wait_booted(agent, [first.name], host=host.address)

    # -- a running deployment scaled -----------------------------------------------------------------------------

    def add_copies(self, d, host, nodes):
        """More clones of a host's running first computes: each first compute is sealed again (no copy may boot
        into the cloud under its identity), stopped, copied and started, and every new clone, and the first
        again, personalized by the engine. Safe to run again: existing clones are kept, identities too."""
        agent = d.agent_for(host)
        for first in d.plan.nodes_on(host.address, "first"):
            group = [node for node in nodes if node.source == first.name]
            if not group:
                continue
            for node in group:
                d.record(host.address, "container", node.name)
            d.engine.seal(agent, first)
            self._copy(d, agent, host, first, group)
            self._personalize(d, host, first, group)

    @staticmethod
    def remove(d, host, nodes):
        """Nodes taken out of the cloud: stopped (so none reports to the cloud again), forgotten by the cloud
        (through the engine), then destroyed and their records dropped."""
        if not nodes:
            return
        agent = d.agent_for(host)
        names = [node.name for node in nodes]
        agent.stop(names, STOP_TIMEOUT)
        d.forget_nodes(nodes)
        agent.destroy(names)
        for name in names:
            d.forget_resource(host.address, "container", name)

    @staticmethod
    def _personalize(d, host, first, clones):
        """The engine gives each node of the group its own identity, the first one's too, several at once."""
        nodes = [first, *clones]
        done = [0]
        lock = threading.Lock()

        def one(node):
            d.paces.wait(node.group)  # its group's starts_per_second, over all the group's hosts
            d.wait_for_memory(host)  # never faster than the host's memory (and ksmd's merging) allows
            d.engine.personalize(d.agent_for(host), node, first)
            with lock:
                done[0] += 1
                d.progress("start scripts", done[0], len(nodes))

        with concurrent.futures.ThreadPoolExecutor(max_workers=d.settings.parallel_commands) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()


def held_by_others(deployment, host, network, held):
    """Agent bridges on the host that this deployment may not use: its bridge, or a subnet overlapping its own,
    held by another deployment (or made without an owner, by hand or by an older coordinator)."""
    wanted = ipaddress.ip_network(network.subnet)
    found = []
    for other in held:
        owner = other.get("owner")
        if owner == deployment:
            continue
        overlaps = other.get("subnet") and ipaddress.ip_network(other["subnet"]).overlaps(wanted)
        if other["bridge"] != network.bridge and not overlaps:
            continue
        holder = (
            f"deployment {owner!r}"
            if owner
            else "no deployment (made without an owner: by hand, a script or an older coordinator)"
        )
        advice = (
            f"destroy it first (coordinator destroy {owner})"
            if owner
            else f"remove it first (lxc-agent destroy_network({other['bridge']!r}))"
        )
        found.append(
            f"host {host.address}: subnet {network.subnet} (bridge {network.bridge}) is in use by "
            f"{holder} (bridge {other['bridge']}, subnet {other['subnet']}); two deployments cannot "
            f"share a subnet on one host: give this one another start_lxc_network, or {advice}"
        )
    return found
