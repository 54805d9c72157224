"""Walk a plan through the agents: the only code that changes hosts.

The walk is the phases a provider and an engine declare (engine.py), stage by stage; this module owns what they
share. Phases run their hosts in parallel and use the agents' batch calls. Each step is recorded in the store when
it finishes, so deploying again under the same name continues at the first step not done; every agent operation
is idempotent, so a step cut off half-way is simply done again. Resources are recorded before they are made, so
`destroy` finds even those of a deploy that was killed.
"""

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import Pyro5.errors

from agent.errors import AgentError, AuthenticationError, CommandTimeout, Conflict
from coordinator import heartbeat, nova
from coordinator.devstack_engine import Devstack
from coordinator.engine import walk_order
from coordinator.errors import CoordinatorError
from coordinator.golden_nodes import GoldenNodes
from coordinator.lxc import LxcContainers
from coordinator.pacing import HostFull, MemoryGate, Paces

BOOT_TIMEOUT = 300
BOOT_ROUND = 30.0
CALL_TIMEOUT = 1800.0
RESTORE_STOP_TIMEOUT = 0  # a restore throws the containers' state away: killed at once, no halt to wait for
log = logging.getLogger(__name__)


class DeployError(CoordinatorError):
    """A deploy or destroy step failed; the message names the host or node and what to do."""


class AgentLost(DeployError):
    """The connection to a host's agent broke (the agent died, the host went away, the network failed)."""


class _HostAgent:
    """A proxy to one host's agent that never waits forever and never ends in Pyro5's traceback: each call gets a
    deadline (call_timeout, or a command's own timeout plus call_timeout for run()), a call that may wait longer
    than the host's heartbeat takes to notice a hang is watched by it (coordinator.heartbeat), and a broken,
    silent or garbled connection becomes AgentLost naming the host and the call."""

    def __init__(self, proxy, address, call_timeout, heartbeat):
        self._proxy, self._address, self._call_timeout = proxy, address, call_timeout
        self._heartbeat = heartbeat

    def __getattr__(self, name):
        if name.startswith("_") or name in getattr(self._proxy, "__dict__", {}):  # not a remote method
            return getattr(self._proxy, name)

        def call(*args, **options):
            deadline = self._deadline(name, args, options)
            beat = self._heartbeat
            watched = deadline > beat.interval + beat.timeout
            if watched and beat.failure:  # the agent hangs: no call that long is worth starting
                raise self._stopped_answering(name)
            self._proxy._pyroTimeout = deadline
            try:
                with beat.watching(self._proxy) if watched else contextlib.nullcontext():
                    # The first call's attribute lookup connects and asks the agent for its metadata: in the try.
                    return getattr(self._proxy, name)(*args, **options)
            except Pyro5.errors.CommunicationError as error:
                if watched and beat.failure:  # the heartbeat cut the connection
                    raise self._stopped_answering(name) from None
                if isinstance(error, Pyro5.errors.TimeoutError):
                    raise AgentLost(
                        f"the agent on host {self._address} did not answer {name}() within {deadline:.0f} s: it "
                        f"hangs, or the host or network does; check `systemctl status lxc-agent` and its journal "
                        f"there (restart it if it hangs: containers keep running), then deploy again under the "
                        f"same name to resume"
                    ) from None
                raise AgentLost(
                    f"lost the agent on host {self._address} during {name}(): {error}; check that "
                    f"lxc-agent runs there (`systemctl status lxc-agent`), then deploy again under the "
                    f"same name to resume"
                ) from None

        return call

    def _stopped_answering(self, name):
        return AgentLost(
            f"the agent on host {self._address} did not answer while {name}() waited: "
            f"{self._heartbeat.failure}; it hangs, or the host or network does; check `systemctl status lxc-agent` "
            f"and its journal there (restart it if it hangs: containers keep running), then deploy again under the "
            f"same name to resume"
        )

    def _deadline(self, name, args, options):
        """Seconds to wait for the answer: a command run with a timeout of its own may take that long first."""
        if name == "run":
            own = options.get("timeout", args[5] if len(args) > 5 else None)
            if isinstance(own, int | float) and not isinstance(own, bool) and 0 < own < float("inf"):
                return own + self._call_timeout
        return self._call_timeout


@dataclass
class Settings:
    log_dir: str
    stack_timeout: float = 3 * 3600
    parallel_commands: int = 16  # start scripts run at once per host
    progress: object = None  # callable(phase, done, total) or None
    status: object = None  # callable(node name, text or None): what a node's stack.sh is doing
    watch_interval: float = 10.0
    converge_timeout: float = nova.CONVERGE_TIMEOUT
    # An agent call answers within this (run() within its command's timeout plus this): creating an image from a
    # template downloads a distribution, which can take many minutes on a slow mirror.
    call_timeout: float = CALL_TIMEOUT
    heartbeat_interval: float = heartbeat.INTERVAL  # while a longer call waits, its agent is pinged this often
    environ: dict = field(default_factory=lambda: dict(os.environ))  # where host_proxy settings come from
    golden: bool = True  # golden nodes (golden_nodes.py): reuse them, keep them; deploy --no-golden: neither
    notice: object = None  # callable(text): a line worth showing as it happens (what a golden node decided)


@dataclass
class Report:
    phases: dict = field(default_factory=dict)  # phase -> seconds
    skipped: list = field(default_factory=list)  # steps already done by an earlier run
    convergence: dict | None = None  # nova.converge's result, when the plan has computes


class Deployer:
    """One deployment: plan + store record + a way to reach each host's agent (connect(host) -> proxy), walked
    by a provider (where nodes live) and an engine (how they become a cloud)."""

    def __init__(self, name, plan, store, connect, settings, engine=None, provider=None):
        self.name, self.plan, self.store, self.connect, self.settings = name, plan, store, connect, settings
        self.engine = engine if engine is not None else Devstack()
        self.provider = provider if provider is not None else LxcContainers()
        self.started = time.monotonic()
        self.replicate_started = None  # when copies of ready nodes began: convergence is counted from there
        self.report = Report()
        self._record_lock = threading.Lock()
        self._local = threading.local()
        self._opened = []
        self._heartbeats: dict[str, heartbeat.Heartbeat] = {}  # host address -> its agent's
        self._checked = False
        self.paces = Paces(plan.groups)
        self.memory = MemoryGate()
        self.golden = GoldenNodes(self, settings.golden)
        self.converge_since = None  # after a restore: computes count once they report after this (nova.not_ready)

    error = DeployError

    def agent_for(self, host):
        """This thread's proxy to the host's agent (Pyro5 proxies belong to the thread that made them)."""
        cache = self._local.__dict__.setdefault("agents", {})
        if host.address not in cache:
            try:
                proxy = self.connect(host)
            except AuthenticationError:
                raise
            except (AgentError, Pyro5.errors.CommunicationError) as error:
                raise AgentLost(
                    f"cannot reach the agent on host {host.address}: {error}; check that lxc-agent "
                    f"runs there and listens on the port the config or --agent-port gives, then deploy "
                    f"again under the same name to resume"
                ) from None
            with self._record_lock:
                if host.address not in self._heartbeats:
                    self._heartbeats[host.address] = heartbeat.Heartbeat(
                        lambda: self.connect(host),
                        host.address,
                        self.settings.heartbeat_interval,
                        min(self.settings.call_timeout, heartbeat.TIMEOUT),
                    )
                cache[host.address] = _HostAgent(
                    proxy, host.address, self.settings.call_timeout, self._heartbeats[host.address]
                )
                self._opened.append(cache[host.address])
        return cache[host.address]

    def close(self):
        for beat in self._heartbeats.values():
            beat.close()
        for proxy in self._opened:
            with contextlib.suppress(Exception):
                proxy._pyroClaimOwnership()
                proxy._pyroRelease()
        self._opened.clear()

    # -- the walk ----------------------------------------------------------------------------------------------

    def deploy(self):
        self.preflight()
        self.started = time.monotonic()
        for phase in walk_order(self.provider, self.engine):
            if phase.stage == "replicate" and self.replicate_started is None:
                self.replicate_started = time.monotonic()
            self._phase(phase.name, lambda phase=phase: phase.run(self))
        return self.report

    def scale(self, change):
        """A running deployment grown or shrunk as `change` (scale.Change) says, then the cloud proved again with
        the engine's join phases: removed nodes are taken out first, then the new copies are made."""
        self.preflight()
        self.started = self.replicate_started = time.monotonic()
        for verb, nodes, work in (
            ("remove", change.removed, self.provider.remove),
            ("add", change.added, self.provider.add_copies),
        ):
            if nodes:
                self._phase(
                    f"{verb} computes",
                    lambda nodes=nodes, work=work: self.each_host(
                        lambda host: work(self, host, [node for node in nodes if node.host == host.address])
                    ),
                )
        for phase in walk_order(self.engine):
            if phase.stage == "join":
                self._phase(phase.name, lambda phase=phase: phase.run(self))
        return self.report

    def _containers_by_host(self):
        return {
            host: [node for node in self.plan.nodes_on(host.address) if node.kind != "host"] for host in self.plan.hosts
        }

    def snapshot(self, tag):
        """Every container of the deployment snapshotted under `tag`: hosts at once, and on each host all its
        containers at one moment (the agent freezes them together). What a snapshot under this tag cut short
        left is removed first: its containers' copies are of another moment. Returns {host address: {name: the
        agent's answer: taken, and seconds frozen}}."""
        by_host = self._containers_by_host()
        taken: dict = {}

        def one(host):
            if by_host[host]:
                names = [node.name for node in by_host[host]]
                agent = self.agent_for(host)
                agent.delete_snapshots(names, tag)
                taken[host.address] = agent.snapshot(names, tag)

        self._phase("snapshot", lambda: self.each_host(one))
        return taken

    def restore(self, tag):
        """Every container given back its snapshot `tag` (stopped, restored, started again), then the cloud proved
        again with the engine's join phases: only computes that report after the snapshot's moment count."""
        by_host = self._containers_by_host()
        self.started = self.replicate_started = time.monotonic()

        def restore(host):
            if by_host[host]:
                self.agent_for(host).restore([node.name for node in by_host[host]], tag, RESTORE_STOP_TIMEOUT)

        def start(host):
            if by_host[host]:
                agent = self.agent_for(host)
                self.start(agent, by_host[host])
                self.wait_booted(agent, [node.name for node in by_host[host]], host=host.address)

        self._phase("restore", lambda: self.each_host(restore))
        controller = self.plan.controller_node
        if controller is not None:
            taken = self.agent_for(self.plan.host(controller.host)).list_snapshots([controller.name])
            self.converge_since = next((entry["created"] for entry in taken if entry["tag"] == tag), None)
        self._phase("start", lambda: self.each_host(start))
        for phase in walk_order(self.engine):
            if phase.stage == "join":
                self._phase(phase.name, lambda phase=phase: phase.run(self))
        return self.report

    def preflight(self):
        """What can be known to fail before anything changes: first what the engine finds in the plan alone,
        then what each host's agent answers to the provider and the engine (tunnel kinds and services its kernel
        lacks, a planned bridge or subnet another deployment holds), on every host at once. DeployError listing
        every such problem; nothing is changed on any host. Done once per Deployer."""
        if self._checked:
            return
        found = self.engine.preflight(self.plan)
        if found:
            raise DeployError("nothing was changed: " + "; ".join(found))
        problems = {}

        def check(host):
            agent = self.agent_for(host)
            problems[host.address] = self.engine.preflight_host(self, host, agent) + self.provider.preflight_host(
                self, host, agent
            )

        self.each_host(check)
        found = [problem for host in self.plan.hosts for problem in problems.get(host.address, [])]
        if found:
            raise DeployError(
                "nothing was changed: " + ("; ".join(found) if len(found) == 1 else "\n  " + "\n  ".join(found))
            )
        self._checked = True

    def _phase(self, title, work):
        started = time.monotonic()
        log.info("deployment %s: phase %s", self.name, title)
        try:
            work()
        except AgentLost as error:
            raise AgentLost(f"phase {title}: {error}") from None
        self.report.phases[title] = time.monotonic() - started
        log.info("deployment %s: phase %s done in %.1f s", self.name, title, self.report.phases[title])

    # -- what the provider's and the engine's phases share ---------------------------------------------------------

    def each_host(self, function):
        """Run function(host) for every host at once; the first failure is raised after all have finished."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.plan.hosts))) as pool:
            futures = {pool.submit(function, host): host for host in self.plan.hosts}
            errors = [future.exception() for future in concurrent.futures.as_completed(futures)]
        for error in errors:
            if error is not None:
                raise error

    @contextlib.contextmanager
    def step(self, key):
        """Skip a step an earlier run finished; record how this one ends."""
        if self.store.step_done(self.name, key):
            self.report.skipped.append(key)
            log.debug("deployment %s: step %s done by an earlier run", self.name, key)
            yield False
            return
        with self._record_lock:
            self.store.mark_step(self.name, key, "running")
        try:
            yield True
        except BaseException as error:
            with self._record_lock:
                self.store.mark_step(self.name, key, "failed", str(error)[:2000])
            log.info("deployment %s: step %s failed: %s", self.name, key, str(error)[:500])
            raise
        with self._record_lock:
            self.store.mark_step(self.name, key, "done")
        log.debug("deployment %s: step %s done", self.name, key)

    def record(self, host, kind, name, detail=None):
        """A resource about to be made, so that destroy finds it even if the deploy is killed while making it."""
        with self._record_lock:
            self.store.add_resource(self.name, host, kind, name, detail)

    def forget_resource(self, host, kind, name):
        """A recorded resource that turned out not to be this deployment's."""
        with self._record_lock:
            self.store.remove_resource(self.name, host, kind, name)

    def forget_nodes(self, nodes):
        """The engine's cloud forgets these nodes (through the controller), when the plan has one."""
        controller = self.plan.controller_node
        if controller is not None:
            self.engine.forget(self.agent_for(self.plan.host(controller.host)), controller, nodes)

    def wait_for_memory(self, host):
        """Before a compute's services start: room for it in the host's memory (pacing.MemoryGate)."""
        agent = self.agent_for(host)
        try:
            waited = self.memory.wait(host.address, agent.memory)
        except HostFull as error:
            raise DeployError(str(error)) from None
        if waited >= 10:
            self.notice(f"host {host.address}: a start waited {waited:.0f} s for memory (ksmd merging)")
        return waited

    def notice(self, text):
        log.info("deployment %s: %s", self.name, text)
        if self.settings.notice:
            self.settings.notice(text)

    def progress(self, phase, done, total):
        if self.settings.progress:
            self.settings.progress(phase, done, total)

    def start(self, agent, nodes):
        """Start the nodes' containers: those of a group with merge_memory with their memory merged by KSM."""
        for merge in (False, True):
            names = [node.name for node in nodes if self.plan.groups[node.group].merge_memory == merge]
            if names and merge:
                agent.start(names, merge_memory=True)
            elif names:
                agent.start(names)

    @staticmethod
    def wait_booted(agent, names, host=None):
        wait_booted(agent, names, host=host)

    def attempt_log(self, node, kind):
        """A new log file for this attempt at a node's `kind` of work (`<node>.stack.<time>.log` for stack.sh);
        `<node>.<kind>.log` points at the newest, so a resumed deploy never overwrites the log of the attempt
        that failed."""
        folder = os.path.join(self.settings.log_dir, self.name)
        try:
            os.makedirs(folder, exist_ok=True)
            return self._new_log(folder, node, kind)
        except OSError as error:
            raise DeployError(
                f"cannot write the {kind} log of {node.name} in {folder}: {error}; give a writable "
                f"folder with --log-dir"
            ) from None

    @staticmethod
    def _new_log(folder, node, kind):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(folder, f"{node.name}.{kind}.{stamp}.log")
        counter = 1
        while os.path.exists(path):
            counter += 1
            path = os.path.join(folder, f"{node.name}.{kind}.{stamp}-{counter}.log")
        open(path, "a").close()
        latest = os.path.join(folder, f"{node.name}.{kind}.log")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(latest)
        os.symlink(os.path.basename(path), latest)
        return path

    # -- destroy -------------------------------------------------------------------------------------------------

    def destroy(self):
        """Remove what the deployment made, newest first, host by host; safe to run again."""
        resources = list(reversed(self.store.resources(self.name)))
        order = {"container": 0, "tunnel": 1, "network": 2}
        for kind in sorted(order, key=order.__getitem__):
            by_host: dict = {}
            for resource in resources:
                if resource["kind"] == kind:
                    by_host.setdefault(resource["host"], []).append(resource["name"])
            for address, names in by_host.items():
                agent = self.agent_for(self.plan.host(address))
                log.info("deployment %s: destroying %s %s on host %s", self.name, kind, ", ".join(names), address)
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


def wait_booted(agent, names, timeout=BOOT_TIMEOUT, host=None):
    """Until systemd in each container says running (or degraded); containers without systemd count at once.
    Asked in rounds of at most BOOT_ROUND seconds, so that an agent that stops answering meanwhile is noticed
    within a round and the call deadline, not the whole boot timeout."""
    deadline = time.monotonic() + timeout
    where = f" on host {host}" if host else ""
    for name in names:
        while True:
            try:
                result = agent.run(
                    name,
                    ["sh", "-c", "command -v systemctl >/dev/null || exit 42; systemctl is-system-running --wait"],
                    timeout=max(1.0, min(BOOT_ROUND, deadline - time.monotonic())),
                )
            except CommandTimeout as error:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise DeployError(
                    f"{name}{where} did not finish booting within {timeout} s: `systemctl "
                    f"is-system-running --wait` in it did not return ({error}); check that it runs "
                    f"(`lxc-info -P <the agent's lxcpath> -n {name}` on that host) and look for a "
                    f"start job that hangs "
                    f"(`systemctl list-jobs`, `journalctl -b` in it)"
                ) from error
            state = result["stdout"].strip()
            if result["exit_code"] == 42 or state in ("running", "degraded"):  # "offline": not up yet
                break
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{name}{where} did not finish booting within {timeout} s (systemd says "
                    f"{state or result['stderr'].strip()!r}); look at `systemctl --failed` in it"
                )
            time.sleep(0.5)
