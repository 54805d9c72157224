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

import Pyro5.errors

from agent.errors import AgentError, AuthenticationError, CommandTimeout, Conflict

from coordinator import access, devstack, nova, topology

PACKAGES = ("git", "sudo", "python3")      # what devstack needs to start; installed with the container's image
TEMPLATES = {"ubuntu": "ubuntu", "debian": "debian"}
BOOT_TIMEOUT = 300
KERNEL_OPTIONS = {"ipip": "CONFIG_NET_IPIP", "vxlan": "CONFIG_VXLAN"}


class DeployError(Exception):
    """A deploy or destroy step failed; the message names the host or node and what to do."""


class AgentLost(DeployError):
    """The connection to a host's agent broke (the agent died, the host went away, the network failed)."""


class _HostAgent:
    """A proxy to one host's agent whose broken connection becomes AgentLost naming the host and the call,
    instead of Pyro5's traceback."""

    def __init__(self, proxy, address):
        self._proxy, self._address = proxy, address

    def __getattr__(self, name):
        attribute = getattr(self._proxy, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args, **options):
            try:
                return attribute(*args, **options)
            except Pyro5.errors.CommunicationError as error:
                raise AgentLost(f"lost the agent on host {self._address} during {name}(): {error}; check that "
                                f"lxc-agent runs there (`systemctl status lxc-agent`), then deploy again under the "
                                f"same name to resume") from None
        return call


@dataclass
class Settings:
    log_dir: str
    stack_timeout: float = 3 * 3600
    parallel_commands: int = 16           # start scripts run at once per host
    progress: object = None               # callable(phase, done, total) or None
    status: object = None                 # callable(node name, text or None): what a node's stack.sh is doing
    watch_interval: float = 10.0
    converge_timeout: float = nova.CONVERGE_TIMEOUT
    environ: dict = field(default_factory=lambda: dict(os.environ))   # where host_proxy settings come from


@dataclass
class Report:
    phases: dict = field(default_factory=dict)        # phase -> seconds
    skipped: list = field(default_factory=list)       # steps already done by an earlier run
    convergence: dict | None = None                   # nova.converge's result, when the plan has computes


class Deployer:
    """One deployment: plan + store record + a way to reach each host's agent (connect(host) -> proxy)."""

    def __init__(self, name, plan, store, connect, settings, engine=devstack, nova_engine=nova):
        self.name, self.plan, self.store, self.connect, self.settings = name, plan, store, connect, settings
        self.engine = engine      # what runs devstack inside a node (a recording fake in the driver's tests)
        self.nova = nova_engine   # nova identities and convergence (likewise)
        self._clones_started = None      # when the clones began to start: convergence is counted from there
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
            try:
                proxy = self.connect(host)
            except AuthenticationError:
                raise
            except (AgentError, Pyro5.errors.CommunicationError) as error:
                raise AgentLost(f"cannot reach the agent on host {host.address}: {error}; check that lxc-agent "
                                f"runs there and listens on the port the config or --agent-port gives, then deploy "
                                f"again under the same name to resume") from None
            cache[host.address] = _HostAgent(proxy, host.address)
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
        self._phase("computes", lambda: self._devstack(
            [n for n in self.plan.nodes if n.role != "controller" and n.kind in ("standalone", "first")]))
        self._clones_started = time.monotonic()
        self._phase("clones", self._each_host(self._clones))
        self._phase("cloud", self._converge)
        return self.report

    def preflight(self):
        """What can be known to fail before anything changes, checked on every host first: devstack on a hardware
        node, a tunnel kind a host's kernel lacks, services a host's kernel cannot carry (Open vSwitch for OVN,
        loop devices for cinder volumes), a planned bridge or subnet that another deployment holds.
        DeployError listing every such problem; nothing is changed on any host. Done once per Deployer."""
        if self._checked:
            return
        mirrors = []
        for node in self.plan.nodes:
            if node.git_mirror:
                try:
                    entries = access.mirror_entries(node.git_mirror)
                except devstack.DevstackError as error:
                    mirrors.append(f"{node.name}: {error}")
                    continue
                if node.devstack_repo is None and "devstack" not in entries:
                    mirrors.append(f"{node.name}: git_mirror {node.git_mirror} has no devstack (devstack.bundle, "
                                   f"devstack.git or devstack/); add it there, or give devstack_repo")
        if mirrors:
            raise DeployError("nothing was changed: " + "; ".join(dict.fromkeys(mirrors)))
        unsupported = [node.name for node in self.plan.nodes if node.kind == "host"]
        if unsupported:
            raise DeployError(f"devstack straight on a hardware node ({', '.join(unsupported)}) is not offered; "
                              "put the node in a container with an LxcProvider")
        kinds = {}
        for tunnel in self.plan.tunnels:
            for end in (tunnel.host, tunnel.remote_host):
                if end is not None:
                    kinds.setdefault(end, set()).add(tunnel.kind)
        needs = {}
        for requirement in topology.kernel_requirements(self.plan):
            needs.setdefault(requirement.host, []).append(requirement)
        problems = {}

        def check(host):
            found = []
            agent = self.agent_for(host)
            if kinds.get(host.address) or needs.get(host.address):
                features = agent.info()["kernel_features"]
                for advice in dict.fromkeys(requirement.advice for requirement in needs.get(host.address, ())
                                            if not features.get(requirement.feature)):
                    found.append(f"host {host.address}: {advice}")
                for kind in sorted(kinds.get(host.address, ())):
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
        try:
            work()
        except AgentLost as error:
            raise AgentLost(f"phase {title}: {error}") from None
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

    def _devstack(self, nodes):
        """stack.sh in each node, at once; a first compute is then sealed and stopped for cloning."""
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
                self._lab_network(agent, node)
                self.engine.prepare(agent, node)
                if node.git_mirror:
                    access.push_git_mirror(agent, node, node.git_mirror)
                if node.devstack_repo is None:       # devstack from the git mirror the node now holds
                    self.engine.fetch_remote(agent, node, access.mirror_devstack_url(), node.devstack_branch)
                else:
                    self.engine.fetch(agent, node, node.devstack_repo, node.devstack_branch)
                self.engine.write_local_conf(agent, node)
                log_path = self._attempt_log(node)
                env = dict(pair.split("=", 1) for pair in self._proxy(node)) if node.host_proxy else None
                with self._watching_stack(node):
                    self.engine.run_stack(agent, node, log_path, self.settings.stack_timeout, env=env)
                if node.kind == "first":
                    # No clone may boot into nova under this node's identity: its units wait for start_services.
                    self.nova.seal(agent, node)
                    agent.stop([node.name], 120)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()

    def _clones(self, host):
        """Each first compute's clones, then every node of the group (the first too) with its own address, its
        own nova identity and its devstack units started."""
        firsts = [n for n in self.plan.nodes if n.kind == "first" and n.host == host.address]
        clones = [n for n in self.plan.nodes if n.host == host.address and n.kind == "clone"]
        if not firsts:
            return
        agent = self.agent_for(host)
        for first in firsts:
            group = [node for node in clones if node.source == first.name]
            names = [node.name for node in group]
            # An earlier run of this step (cut off, or marked stale by a changed config): its clones may be
            # snapshots of the first compute before it was stacked again, and nova may know computes by these
            # names with other compute node UUIDs. Both are made anew.
            again = self.store.step_state(self.name, f"clones:{first.name}") not in (None, "done")
            with self._step(f"clones:{first.name}") as todo:
                if todo:
                    for name in names:
                        self._record(host.address, "container", name)
                    if again:
                        if names:
                            agent.destroy(names)
                        self._forget([first, *group])
                    agent.stop([first.name], 120)
                    if names:
                        agent.clone(first.name, names)
                    agent.start([first.name])   # boots alongside its clones; the deploy ends with all of them up
                    self._progress("clones", len(names), len(clones))
                    if group:
                        self._address_and_start(agent, host, group)
                    wait_booted(agent, [first.name], host=host.address)
            with self._step(f"start-scripts:{first.name}") as todo:
                if todo:
                    self._start_scripts(host, first, group)

    def _forget(self, nodes):
        hosts = [host for node in nodes for host in node.nova_hosts]
        controller = next((n for n in self.plan.nodes if n.name == self.plan.controller), None)
        if hosts and controller is not None:
            self.nova.forget(self.agent_for(self.hosts[controller.host]), controller, hosts)

    def _start_scripts(self, host, first, clones):
        """Each node's own nova identity, the start script in each clone (re-pointing it at its own address), then
        the node's devstack units started: the first compute's too, which seal() left disabled. A start script
        that restarts a unit itself finds the node's own identity already in place."""
        nodes = [first, *clones]
        done = [0]
        lock = threading.Lock()

        def one(node):
            agent = self.agent_for(host)
            self.nova.identify(agent, node)
            if node is not first:
                self.engine.run_start_script(agent, node, first.address)
            self.nova.start_services(agent, node)
            with lock:
                done[0] += 1
                self._progress("start scripts", done[0], len(nodes))

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.settings.parallel_commands) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()

    @contextlib.contextmanager
    def _watching_stack(self, node):
        """While stack.sh runs (run() answers only when it ends), ask the node every few seconds which devstack
        phase it is in, over a connection of its own, and pass that to settings.status."""
        if not self.settings.status:
            yield
            return
        stop = threading.Event()

        def watch():
            proxy = None
            try:
                proxy = self.connect(self.hosts[node.host])
                while not stop.wait(self.settings.watch_interval):
                    seen = proxy.run(node.name, ["sh", "-c", devstack.WATCH_STACK, "watch",
                                                 f"{devstack.STACK_STATE_DIR}/stack.log"], timeout=30)
                    phase = devstack.stack_phase(seen["stdout"])
                    if phase and not stop.is_set():
                        self.settings.status(node.name, phase)
            except Exception:        # only a progress display: the stack.sh call itself reports real failures
                pass
            finally:
                if proxy is not None:
                    with contextlib.suppress(Exception):
                        proxy._pyroRelease()

        watcher = threading.Thread(target=watch, name=f"watch-{node.name}", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join(timeout=5)
            self.settings.status(node.name, None)

    def _attempt_log(self, node):
        """A new log file for this stack.sh attempt (`<node>.stack.<time>.log`); `<node>.stack.log` points at the
        newest, so a resumed deploy never overwrites the log of the attempt that failed."""
        folder = os.path.join(self.settings.log_dir, self.name)
        try:
            os.makedirs(folder, exist_ok=True)
            return self._new_log(folder, node)
        except OSError as error:
            raise DeployError(f"cannot write the stack.sh log of {node.name} in {folder}: {error}; give a writable "
                              f"folder with --log-dir") from None

    @staticmethod
    def _new_log(folder, node):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(folder, f"{node.name}.stack.{stamp}.log")
        counter = 1
        while os.path.exists(path):
            counter += 1
            path = os.path.join(folder, f"{node.name}.stack.{stamp}-{counter}.log")
        open(path, "a").close()
        latest = os.path.join(folder, f"{node.name}.stack.log")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(latest)
        os.symlink(os.path.basename(path), latest)
        return path

    def _lab_network(self, agent, node):
        """What the lab's network needs before anything is installed: the host's CA certificates and proxy
        settings, each when the config asks for it."""
        if node.host_ca_certificates:
            access.trust_host_certificates(agent, node, access.host_ca_certificates())
        if node.host_proxy:
            access.set_proxy(agent, node, self._proxy(node))

    def _proxy(self, node):
        """The coordinator's proxy settings for a node, with the cloud's own addresses exempt."""
        return access.proxy_settings(self.settings.environ, [node.address, self.plan.controller_address,
                                                              node.subnet])

    def _converge(self):
        """Map the computes into the cell and wait until every planned nova host is an up service and hypervisor;
        DeployError naming those that never came up, with their logs."""
        expected = {host: node for node in self.plan.nodes for host in node.nova_hosts}
        controller = next((n for n in self.plan.nodes if n.name == self.plan.controller), None)
        if controller is None or not expected:
            return
        agent = self.agent_for(self.hosts[controller.host])
        self.nova.warm_network_api(agent, controller)
        started = self._clones_started or time.monotonic()
        result = self.nova.converge(agent, controller, list(expected), started, self.settings.converge_timeout,
                                    progress=lambda done, total: self._progress("nova computes up", done, total))
        self.report.convergence = result
        if result["waiting"]:
            raise DeployError(self._not_converged(result, expected, controller))

    def _not_converged(self, result, expected, controller, shown=20, logs_of=3):
        """Which computes never came up and why, at most `shown` of them, with the journals of a few."""
        lines, by_node = [], {}
        for host, why in sorted(result["waiting"].items()):
            lines.append(f"{host} (node {expected[host].name}, host {expected[host].host}): {why}")
            by_node.setdefault(expected[host].name, []).append(host)
        if len(lines) > shown:
            lines[shown:] = [f"... and {len(lines) - shown} more"]
        logs = []
        for name, hosts in list(by_node.items())[:logs_of]:
            node = expected[hosts[0]]
            logs.append(f"-- {name}:\n" + self.nova.why_not_up(self.agent_for(self.hosts[node.host]), node, hosts))
        asked = f"\nThe last status call failed: {result['error']}" if result.get("error") else ""
        return (f"{len(result['waiting'])} of {result['expected']} planned nova computes did not come up within "
                f"{nova.duration(self.settings.converge_timeout)} of waiting (controller {controller.name}, "
                f"{controller.address}):\n  " + "\n  ".join(lines) + asked
                + f"\nLast log lines of {len(logs)} of them:\n" + "\n".join(logs)
                + f"\nCheck nova-conductor and rabbitmq on {controller.name} (`journalctl -u 'devstack@n-cond*'`) "
                  f"and the computes' nova-compute journals; deploy again under the same name to keep waiting")

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
