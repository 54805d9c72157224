"""Walk a plan through the agents: the only code that changes hosts.

Phases run their hosts in parallel and use the agents' batch calls. Each step is recorded in the store when it
finishes, so deploying again under the same name continues at the first step not done; every agent operation is
idempotent, so a step cut off half-way is simply done again. Resources are recorded before they are made, so
`destroy` finds even those of a deploy that was killed.
"""

import concurrent.futures
import contextlib
import ipaddress
import os
import threading
import time
import zlib
from dataclasses import dataclass, field

from agent.errors import CommandTimeout, Conflict

from coordinator import devstack

PACKAGES = ("git", "sudo", "python3")      # what devstack needs to start; installed with the container's image
TEMPLATES = {"ubuntu": "ubuntu", "debian": "debian"}
BOOT_TIMEOUT = 300
KERNEL_OPTIONS = {"ipip": "CONFIG_NET_IPIP", "vxlan": "CONFIG_VXLAN"}


class DeployError(Exception):
    """A deploy or destroy step failed; the message names the host or node and what to do."""


@dataclass
class Settings:
    log_dir: str
    stack_timeout: float = 3 * 3600
    parallel_commands: int = 16           # start scripts run at once per host
    progress: object = None               # callable(phase, done, total) or None


@dataclass
class Report:
    phases: dict = field(default_factory=dict)        # phase -> seconds
    skipped: list = field(default_factory=list)       # steps already done by an earlier run


class Deployer:
    """One deployment: plan + store record + a way to reach each host's agent (connect(host) -> proxy)."""

    def __init__(self, name, plan, store, connect, settings, engine=devstack):
        self.name, self.plan, self.store, self.connect, self.settings = name, plan, store, connect, settings
        self.engine = engine      # what runs devstack inside a node (a recording fake in the driver's tests)
        self.hosts = {host.address: host for host in plan.hosts}
        self.report = Report()
        self._record_lock = threading.Lock()
        self._local = threading.local()
        self._opened = []
        self._checked = False

    def agent_for(self, host):
        """This thread's proxy to the host's agent (Pyro5 proxies belong to the thread that made them)."""
        cache = self._local.__dict__.setdefault("agents", {})
        if host.address not in cache:
            cache[host.address] = self.connect(host)
            with self._record_lock:
                self._opened.append(cache[host.address])
        return cache[host.address]

    def close(self):
        for proxy in self._opened:
            with contextlib.suppress(Exception):
                proxy._pyroClaimOwnership()
                proxy._pyroRelease()
        self._opened.clear()

    # -- the walk ----------------------------------------------------------------------------------------------

    def deploy(self):
        self.preflight()
        self._phase("networks", self._each_host(self._networks))
        self._phase("tunnels", lambda: self._tunnels())
        self._phase("containers", self._each_host(self._base_containers))
        self._phase("controller", lambda: self._devstack([n for n in self.plan.nodes if n.role == "controller"]))
        self._phase("first computes", lambda: self._devstack(
            [n for n in self.plan.nodes if n.kind == "first"], stop_after=True))
        self._phase("clones", self._each_host(self._clones))
        return self.report

    def preflight(self):
        """What can be known to fail before anything changes, checked on every host first: devstack on a hardware
        node, a tunnel kind a host's kernel lacks, a planned bridge or subnet that another deployment holds.
        DeployError listing every such problem; nothing is changed on any host. Done once per Deployer."""
        if self._checked:
            return
        unsupported = [node.name for node in self.plan.nodes if node.kind == "host"]
        if unsupported:
            raise DeployError(f"devstack straight on a hardware node ({', '.join(unsupported)}) is not offered; "
                              "put the node in a container with an LxcProvider")
        kinds = {}
        for tunnel in self.plan.tunnels:
            for end in (tunnel.host, tunnel.remote_host):
                if end is not None:
                    kinds.setdefault(end, set()).add(tunnel.kind)
        problems = {}

        def check(host):
            found = []
            agent = self.agent_for(host)
            if kinds.get(host.address):
                features = agent.info()["kernel_features"]
                for kind in sorted(kinds[host.address]):
                    if not features.get(kind):
                        other = next(k for k in KERNEL_OPTIONS if k != kind)
                        instead = (f'use "tunnel_type": "{other}" (this kernel has {other})' if features.get(other)
                                   else f"this kernel has no {other} either: build one with {KERNEL_OPTIONS[kind]}")
                        found.append(f"host {host.address}: this kernel has no {kind} tunnels "
                                     f"({KERNEL_OPTIONS[kind]} is not set), which tunnel_type \"{kind}\" needs; "
                                     f"{instead}")
            if host.networks:
                held = agent.list_networks()
                for network in host.networks:
                    found += self._held_by_others(host, network, held)
            problems[host.address] = found

        self._each_host(check)()
        found = [problem for host in self.plan.hosts for problem in problems.get(host.address, [])]
        if found:
            raise DeployError("nothing was changed: " + ("; ".join(found) if len(found) == 1 else
                                                         "\n  " + "\n  ".join(found)))
        self._checked = True

    def _held_by_others(self, host, network, held):
        """Agent bridges on the host that this deployment may not use: its bridge, or a subnet overlapping its
        own, held by another deployment (or made without an owner, by hand or by an older coordinator)."""
        wanted = ipaddress.ip_network(network.subnet)
        found = []
        for other in held:
            owner = other.get("owner")
            if owner == self.name:
                continue
            overlaps = other.get("subnet") and ipaddress.ip_network(other["subnet"]).overlaps(wanted)
            if other["bridge"] != network.bridge and not overlaps:
                continue
            holder = (f"deployment {owner!r}" if owner else
                      "no deployment (made without an owner: by hand, a script or an older coordinator)")
            advice = (f"destroy it first (coordinator destroy {owner})" if owner else
                      f"remove it first (lxc-agent destroy_network({other['bridge']!r}))")
            found.append(f"host {host.address}: subnet {network.subnet} (bridge {network.bridge}) is in use by "
                         f"{holder} (bridge {other['bridge']}, subnet {other['subnet']}); two deployments cannot "
                         f"share a subnet on one host: give this one another start_lxc_network, or {advice}")
        return found

    def _phase(self, title, work):
        started = time.monotonic()
        work()
        self.report.phases[title] = time.monotonic() - started

    def _each_host(self, function):
        """Run function(host) for every host at once; the first failure is raised after all have finished."""
        def run_all():
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.hosts))) as pool:
                futures = {pool.submit(function, host): host for host in self.plan.hosts}
                errors = [future.exception() for future in concurrent.futures.as_completed(futures)]
            for error in errors:
                if error is not None:
                    raise error
        return run_all

    @contextlib.contextmanager
    def _step(self, key):
        """Skip a step an earlier run finished; record how this one ends."""
        if self.store.step_done(self.name, key):
            self.report.skipped.append(key)
            yield False
            return
        with self._record_lock:
            self.store.mark_step(self.name, key, "running")
        try:
            yield True
        except BaseException as error:
            with self._record_lock:
                self.store.mark_step(self.name, key, "failed", str(error)[:2000])
            raise
        with self._record_lock:
            self.store.mark_step(self.name, key, "done")

    def _record(self, host, kind, name, detail=None):
        with self._record_lock:
            self.store.add_resource(self.name, host, kind, name, detail)

    def _progress(self, phase, done, total):
        if self.settings.progress:
            self.settings.progress(phase, done, total)

    # -- phases ------------------------------------------------------------------------------------------------

    def _networks(self, host):
        with self._step(f"networks:{host.address}") as todo:
            if not todo:
                return
            agent = self.agent_for(host)
            for network in host.networks:
                self._record(host.address, "network", network.bridge)
                try:
                    agent.ensure_network(network.bridge, network.subnet, self.name)
                except Conflict as error:
                    details = getattr(error, "details", {})
                    if "owner" not in details or details["owner"] == self.name:
                        raise
                    # Another deployment's (it took the bridge since the preflight): not ours to destroy.
                    with self._record_lock:
                        self.store.remove_resource(self.name, host.address, "network", network.bridge)
                    owner = details["owner"]
                    raise DeployError(f"host {host.address}: subnet {network.subnet} (bridge {network.bridge}) "
                                      f"is in use by " + (f"deployment {owner!r}" if owner else "no deployment")
                                      + f": {error}") from error

    def _tunnels(self):
        for index, tunnel in enumerate(self.plan.tunnels):
            name = tunnel_name(self.name, index)
            with self._step(f"tunnel:{name}") as todo:
                if not todo:
                    continue
                local = self.hosts[tunnel.host]
                self._record(local.address, "tunnel", name)
                self.agent_for(local).ensure_tunnel(name, tunnel.kind, local.address, tunnel.remote,
                                                  [tunnel.subnet], list(tunnel.remote_subnets))
                if tunnel.remote_host:
                    remote = self.hosts[tunnel.remote_host]
                    self._record(remote.address, "tunnel", name)
                    self.agent_for(remote).ensure_tunnel(name, tunnel.kind, remote.address, local.address,
                                                       list(tunnel.remote_subnets), [tunnel.subnet])

    def _base_containers(self, host):
        """The containers made from a template: LxcProvider's, and each LxcEngine's first compute."""
        nodes = [n for n in self.plan.nodes if n.host == host.address and n.kind in ("standalone", "first")]
        if not nodes:
            return
        with self._step(f"containers:{host.address}") as todo:
            if not todo:
                return
            agent = self.agent_for(host)
            for done, node in enumerate(nodes, 1):
                template = TEMPLATES.get(node.distribution)
                if template is None:
                    raise DeployError(f"{node.name}: no LXC template for distribution {node.distribution!r}; "
                                      f"use one of {sorted(TEMPLATES)}")
                self._record(host.address, "container", node.name)
                agent.create(node.name, template, node.release, list(PACKAGES))
                self._progress("containers", done, len(nodes))
            self._address_and_start(agent, host, nodes)

    def _address_and_start(self, agent, host, nodes):
        by_bridge = {}
        for node in nodes:
            by_bridge.setdefault(node.bridge, {})[node.name] = f"{node.address}/{node.prefixlen}"
        # Behind a tunnel, a container's packets must fit the tunnel: give it the smallest tunnel MTU.
        mtu = min((tunnel["mtu"] for tunnel in agent.list_tunnels()), default=None)
        for bridge, addresses in by_bridge.items():
            agent.set_addresses(bridge, addresses, mtu)
        names = [node.name for node in nodes]
        agent.start(names)
        wait_booted(agent, names, host=host.address)

    def _devstack(self, nodes, stop_after=False):
        def one(node):
            with self._step(f"devstack:{node.name}") as todo:
                if not todo:
                    return
                agent = self.agent_for(self.hosts[node.host])
                # A first compute is stopped at the end of this step: a run cut off just after that left it
                # stopped. Starting a running container is a no-op.
                agent.start([node.name])
                wait_booted(agent, [node.name], host=node.host)
                self.engine.wait_for_earlier_stack(agent, node, self.settings.stack_timeout)
                self.engine.prepare(agent, node)
                self.engine.fetch(agent, node, node.devstack_repo, node.devstack_branch)
                self.engine.write_local_conf(agent, node)
                log_path = os.path.join(self.settings.log_dir, self.name, f"{node.name}.stack.log")
                self.engine.run_stack(agent, node, log_path, self.settings.stack_timeout)
                if stop_after:
                    agent.stop([node.name], 120)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()

    def _clones(self, host):
        clones = [n for n in self.plan.nodes if n.host == host.address and n.kind == "clone"]
        firsts = {n.name: n for n in self.plan.nodes if n.kind == "first" and n.host == host.address}
        if not clones:
            return
        agent = self.agent_for(host)
        by_source = {}
        for node in clones:
            by_source.setdefault(node.source, []).append(node)
        for source, group in by_source.items():
            names = [node.name for node in group]
            with self._step(f"clones:{source}") as todo:
                if todo:
                    for name in names:
                        self._record(host.address, "container", name)
                    agent.stop([source], 120)
                    agent.clone(source, names)
                    agent.start([source])   # boots alongside its clones; the deploy ends with all of them up
                    self._progress("clones", len(names), len(clones))
                    self._address_and_start(agent, host, group)
                    wait_booted(agent, [source], host=host.address)
            with self._step(f"start-scripts:{source}") as todo:
                if todo:
                    self._start_scripts(host, group, firsts[source].address)

    def _start_scripts(self, host, nodes, first_address):
        done = [0]
        lock = threading.Lock()

        def one(node):
            self.engine.run_start_script(self.agent_for(host), node, first_address)
            with lock:
                done[0] += 1
                self._progress("start scripts", done[0], len(nodes))

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.settings.parallel_commands) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()

    # -- destroy -------------------------------------------------------------------------------------------------

    def destroy(self):
        """Remove what the deployment made, newest first, host by host; safe to run again."""
        resources = list(reversed(self.store.resources(self.name)))
        order = {"container": 0, "tunnel": 1, "network": 2}
        for kind in sorted(order, key=order.get):
            by_host = {}
            for resource in resources:
                if resource["kind"] == kind:
                    by_host.setdefault(resource["host"], []).append(resource["name"])
            for address, names in by_host.items():
                agent = self.agent_for(self.hosts[address])
                if kind == "container":
                    agent.destroy(names)
                elif kind == "tunnel":
                    for name in names:
                        agent.destroy_tunnel(name)
                else:
                    for name in names:
                        try:
                            agent.destroy_network(name, self.name)
                        except Conflict as error:
                            # Held by another deployment: recorded before a make that was refused, never ours.
                            owner = getattr(error, "details", {}).get("owner")
                            if owner in (None, self.name):
                                raise
                for name in names:
                    self.store.remove_resource(self.name, address, kind, name)


def tunnel_name(deployment, index):
    """`lxt-<index>-<6 hex from the deployment's whole name>` (Linux allows 15 characters): deployments whose
    names begin alike get tunnels of their own, where a name prefix would have them share, and rewrite, one."""
    return f"lxt-{index:03d}-{zlib.crc32(deployment.encode()) & 0xFFFFFF:06x}"


def wait_booted(agent, names, timeout=BOOT_TIMEOUT, host=None):
    """Until systemd in each container says running (or degraded); containers without systemd count at once."""
    deadline = time.monotonic() + timeout
    where = f" on host {host}" if host else ""
    for name in names:
        while True:
            try:
                result = agent.run(name, ["sh", "-c", "command -v systemctl >/dev/null || exit 42; "
                                                      "systemctl is-system-running --wait"],
                                   timeout=max(1.0, deadline - time.monotonic()))
            except CommandTimeout as error:
                raise DeployError(f"{name}{where} did not finish booting within {timeout} s: `systemctl "
                                  f"is-system-running --wait` in it did not return ({error}); check that it runs "
                                  f"(`lxc-info -P <the agent's lxcpath> -n {name}` on that host) and look for a "
                                  f"start job that hangs "
                                  f"(`systemctl list-jobs`, `journalctl -b` in it)") from error
            state = result["stdout"].strip()
            if result["exit_code"] == 42 or state in ("running", "degraded"):  # "offline": not up yet
                break
            if time.monotonic() > deadline:
                raise DeployError(f"{name}{where} did not finish booting within {timeout} s (systemd says "
                                  f"{state or result['stderr'].strip()!r}); look at `systemctl --failed` in it")
            time.sleep(0.5)
