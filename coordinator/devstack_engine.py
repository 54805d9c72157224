"""Devstack as the engine (engine.Engine): stack.sh makes a node ready, nova gives every compute its own identity,
and the deploy ends when nova shows every planned compute up.

Install: stack.sh in the controller, then in each compute made from a template, each in its own step; a first
compute (the source of clones) is then sealed (its devstack units disabled) and stopped. Replicate asks for
`personalize` on every node of a cloned group: its own nova identity, the start script in a clone, its units
started. Join: the computes mapped into the cell, and a wait until every planned nova host is an up service and
hypervisor. What runs inside a node is in devstack.py (stack.sh) and nova.py (identities, convergence); this
module decides when.
"""

import concurrent.futures
import contextlib
import threading

from coordinator import access, devstack, golden, nova, topology
from coordinator.engine import Engine, Phase

WATCH_TIMEOUT = 30  # seconds for one look at which devstack phase a running stack.sh is in
HASH_SEED_FILE = "/etc/systemd/system.conf.d/lxc-cloud-memory-merge.conf"
HASH_SEED_SCRIPT = (
    f"mkdir -p {HASH_SEED_FILE.rsplit('/', 1)[0]} && "
    f"printf '[Manager]\\nDefaultEnvironment=PYTHONHASHSEED=0\\n' > {HASH_SEED_FILE}"
)


class Devstack(Engine):
    """devstack and nova; `steps` and `nova` are the modules that act inside nodes (recording fakes in the
    driver's tests)."""

    def __init__(self, steps=devstack, nova_steps=nova):
        self.steps, self.nova = steps, nova_steps

    def phases(self):
        def install(*roles):
            return lambda d: self._install(
                d, [node for node in d.plan.nodes if node.role in roles and node.kind in ("standalone", "first")]
            )

        return (
            Phase("controller", "install", install("controller")),
            Phase("computes", "install", install("compute")),
            Phase("cloud", "join", self._converge),
        )

    # -- before anything changes ---------------------------------------------------------------------------------

    def preflight(self, plan):
        """Devstack on a hardware node (not offered), and git mirrors that are missing or lack devstack."""
        problems = []
        for node in plan.nodes:
            if node.git_mirror:
                try:
                    entries = access.mirror_entries(node.git_mirror)
                except devstack.DevstackError as error:
                    problems.append(f"{node.name}: {error}")
                    continue
                if node.devstack_repo is None and "devstack" not in entries:
                    problems.append(
                        f"{node.name}: git_mirror {node.git_mirror} has no devstack (devstack.bundle, "
                        f"devstack.git or devstack/); add it there, or give devstack_repo"
                    )
        unsupported = [node.name for node in plan.nodes if node.kind == "host"]
        if unsupported:
            problems.append(
                f"devstack straight on a hardware node ({', '.join(unsupported)}) is not offered; "
                "put the node in a container with an LxcProvider"
            )
        return list(dict.fromkeys(problems))

    def preflight_host(self, deployer, host, agent):
        """Services the host's kernel cannot carry (Open vSwitch for OVN, loop devices for cinder volumes)."""
        needs = [
            requirement
            for requirement in topology.kernel_requirements(deployer.plan)
            if requirement.host == host.address
        ]
        if not needs:
            return []
        features = agent.info()["kernel_features"]
        return [
            f"host {host.address}: {advice}"
            for advice in dict.fromkeys(
                requirement.advice for requirement in needs if not features.get(requirement.feature)
            )
        ]

    # -- install -----------------------------------------------------------------------------------------------

    def _install(self, d, nodes):
        """stack.sh in each node, at once; a first compute is then sealed and stopped for cloning."""

        def one(node):
            with d.step(f"devstack:{node.name}") as todo:
                if not todo:
                    return
                host = d.plan.host(node.host)
                agent = d.agent_for(host)
                if d.golden.reused(agent, host, node):
                    # Made from its golden image when placed: stack.sh has run in it, a first compute is sealed.
                    if node.kind == "first":
                        agent.stop([node.name], 120)
                    return
                # A first compute is stopped at the end of this step: a run cut off just after that left it
                # stopped. Starting a running container is a no-op.
                d.start(agent, [node])
                d.wait_booted(agent, [node.name], host=node.host)
                self._stack(d, agent, node)
                if node.kind == "first":
                    if d.plan.groups[node.group].merge_memory:
                        self._same_hash_seed(agent, node)
                    # No clone may boot into nova under this node's identity: its units wait for personalize.
                    self.seal(agent, node)
                    agent.stop([node.name], 120)
                d.golden.keep(agent, host, node)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(one, node) for node in nodes]:
                future.result()

    def _stack(self, d, agent, node):
        steps = self.steps
        steps.wait_for_earlier_stack(agent, node, d.settings.stack_timeout)
        self._lab_network(d, agent, node)
        steps.prepare(agent, node)
        if node.git_mirror:
            access.push_git_mirror(agent, node, node.git_mirror)
        if node.devstack_repo is None:  # devstack from the git mirror the node now holds
            steps.fetch_remote(agent, node, access.mirror_devstack_url(), node.devstack_branch)
        else:
            steps.fetch(agent, node, node.devstack_repo, node.devstack_branch)
        steps.write_local_conf(agent, node)
        log_path = d.attempt_log(node, "stack")
        env = dict(pair.split("=", 1) for pair in self._proxy(d, node)) if node.host_proxy else None
        with self._watching_stack(d, node):
            steps.run_stack(agent, node, log_path, d.settings.stack_timeout, env=env)

    def _lab_network(self, d, agent, node):
        """What the lab's network needs before anything is installed: the host's CA certificates and proxy
        settings, each when the config asks for it."""
        if node.host_ca_certificates:
            access.trust_host_certificates(agent, node, access.host_ca_certificates())
        if node.host_proxy:
            access.set_proxy(agent, node, self._proxy(d, node))

    @staticmethod
    def _proxy(d, node):
        """The coordinator's proxy settings for a node, with the cloud's own addresses exempt."""
        return access.proxy_settings(d.settings.environ, [node.address, d.plan.controller_address, node.subnet])

    @contextlib.contextmanager
    def _watching_stack(self, d, node):
        """While stack.sh runs (run() answers only when it ends), ask the node every few seconds which devstack
        phase it is in, over a connection of its own, and pass that to settings.status."""
        if not d.settings.status:
            yield
            return
        stop = threading.Event()

        def watch():
            proxy = None
            try:
                proxy = d.connect(d.plan.host(node.host))
                proxy._pyroTimeout = WATCH_TIMEOUT + d.settings.call_timeout  # an agent that hangs ends the watch
                while not stop.wait(d.settings.watch_interval):
                    seen = proxy.run(
                        node.name,
                        ["sh", "-c", devstack.WATCH_STACK, "watch", f"{devstack.STACK_STATE_DIR}/stack.log"],
                        timeout=WATCH_TIMEOUT,
                    )
                    phase = devstack.stack_phase(seen["stdout"])
                    if phase and not stop.is_set():
                        d.settings.status(node.name, phase)
            except Exception:  # only a progress display: the stack.sh call itself reports real failures
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
            d.settings.status(node.name, None)

    def golden_decision(self, d, node, packages):
        """What decides what stack.sh makes of a node (golden.decide): the git mirror's repositories, a local
        devstack_repo's commit, the rendered local.conf, the CA certificates and proxy settings it is given, and
        for a first compute its hash seed (merge_memory)."""
        mirror = d.golden.mirror(node.git_mirror) if node.git_mirror else None
        path = devstack.local_repo_path(node.devstack_repo) if node.devstack_repo is not None else None
        commit = devstack.local_commit(path, node.devstack_branch, node)[0] if path else None
        lab = []
        if node.host_ca_certificates:
            lab += access.host_ca_certificates()
        if node.host_proxy:
            lab += self._proxy(d, node)
        merge = node.kind == "first" and d.plan.groups[node.group].merge_memory
        return golden.decide(node, packages, mirror, commit, "\n".join(lab), merge)

    # -- replicate: asked by the provider ------------------------------------------------------------------------

    @staticmethod
    def _same_hash_seed(agent, node):
        """Python's string hashes seeded alike in every service of the node and its clones (read by systemd when
        they boot): equal dicts then sit alike in equal heaps, which KSM merges (agent.memory_merge)."""
        result = agent.run(node.name, ["sh", "-c", HASH_SEED_SCRIPT], timeout=60)
        if result["exit_code"] != 0:
            raise devstack.DevstackError(
                f"{node.name} on host {node.host}: could not write {HASH_SEED_FILE} for merge_memory "
                f"(exit code {result['exit_code']}): {result['stderr'].strip()[-500:]}",
                node.name,
                node.host,
                result["exit_code"],
            )

    def seal(self, agent, node):
        self.nova.seal(agent, node)

    def personalize(self, agent, node, source):
        """Its own nova identity first, then the start script in a clone (re-pointing it at its own address),
        then its devstack units started: the source's too, which seal() left disabled. A start script that
        restarts a unit itself finds the node's own identity already in place."""
        self.nova.identify(agent, node)
        if node is not source:
            self.steps.run_start_script(agent, node, source.address)
        self.nova.start_services(agent, node)

    def forget(self, agent, controller, nodes):
        hosts = [host for node in nodes for host in node.nova_hosts]
        if hosts:
            self.nova.forget(agent, controller, hosts)

    # -- join --------------------------------------------------------------------------------------------------

    def _converge(self, d):
        """Map the computes into the cell and wait until every planned nova host is an up service and hypervisor;
        the deployer's error naming those that never came up, with their logs."""
        expected = d.plan.nova_hosts()
        controller = d.plan.controller_node
        if controller is None or not expected:
            return
        agent = d.agent_for(d.plan.host(controller.host))
        self.nova.warm_network_api(agent, controller)
        started = d.replicate_started or d.started
        result = self.nova.converge(
            agent,
            controller,
            list(expected),
            started,
            d.settings.converge_timeout,
            progress=lambda done, total: d.progress("nova computes up", done, total),
            since=d.converge_since,
        )
        d.report.convergence = result
        if result["waiting"]:
            raise d.error(self._not_converged(d, result, expected, controller))

    def _not_converged(self, d, result, expected, controller, shown=20, logs_of=3):
        """Which computes never came up and why, at most `shown` of them, with the journals of a few."""
        lines: list = []
        by_node: dict = {}
        for host, why in sorted(result["waiting"].items()):
            lines.append(f"{host} (node {expected[host].name}, host {expected[host].host}): {why}")
            by_node.setdefault(expected[host].name, []).append(host)
        if len(lines) > shown:
            lines[shown:] = [f"... and {len(lines) - shown} more"]
        logs = []
        for name, hosts in list(by_node.items())[:logs_of]:
            node = expected[hosts[0]]
            logs.append(f"-- {name}:\n" + self.nova.why_not_up(d.agent_for(d.plan.host(node.host)), node, hosts))
        asked = f"\nThe last status call failed: {result['error']}" if result.get("error") else ""
        return (
            f"{len(result['waiting'])} of {result['expected']} planned nova computes did not come up within "
            f"{nova.duration(d.settings.converge_timeout)} of waiting (controller {controller.name}, "
            f"{controller.address}):\n  "
            + "\n  ".join(lines)
            + asked
            + f"\nLast log lines of {len(logs)} of them:\n"
            + "\n".join(logs)
            + f"\nCheck nova-conductor and rabbitmq on {controller.name} (`journalctl -u 'devstack@n-cond*'`) "
            f"and the computes' nova-compute journals; deploy again under the same name to keep waiting"
        )
