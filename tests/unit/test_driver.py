"""The driver's walk over a plan, with a recording fake agent per host (the real agents have their own tests)."""

import ast
import dataclasses
import inspect
import json
import threading
from pathlib import Path

import Pyro5.errors
import pytest

from agent.errors import CommandTimeout, Conflict
from coordinator import devstack, nova, scale, topology
from coordinator.config import validate
from coordinator.devstack_engine import HASH_SEED_SCRIPT, Devstack
from coordinator.driver import AgentLost, Deployer, DeployError, Settings, wait_booted
from coordinator.engine import Engine, Phase
from coordinator.pacing import Paces
from coordinator.store import Store

SEED_LIKE = {
    "type": "MultihostEngine",
    "controller": {
        "type": "DevstackEngine",
        "localrc": {"MULTI_HOST": "1", "ENABLED_SERVICES+": ",-n-cpu"},
        "provider": {
            "type": "LxcProvider",
            "containers_per_host": 1,
            "container_name_prefix": "ctl",
            "distribution": "debian",
            "release": "bookworm",
            "host_provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"}]},
        },
    },
    "nodes": [
        {
            "type": "LxcEngine",
            "distribution": "debian",
            "release": "bookworm",
            "container_name": "cmp",
            "nodes_per_server": 4,
            "provider": {
                "type": "ExistingServers",
                "credentials": [{"user": "root", "host": "198.18.0.10"}, {"user": "root", "host": "198.18.0.11"}],
            },
            "tunnel_to": ["198.18.0.10"],
            "tunnel_type": "vxlan",
            "engine": {
                "name": "DevstackEngine",
                "localrc": {"RABBIT_HOST": "{controller_ip}", "ENABLED_SERVICES": "n-cpu"},
            },
        }
    ],
}


def _agent_methods():
    """The methods the real agent exposes (AgentService's methods marked @remote), read from its source:
    importing it would load liblxc, which the pure tests do without."""
    tree = ast.parse((Path(__file__).parents[2] / "agent" / "service.py").read_text())
    service = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "AgentService")
    return frozenset(
        item.name
        for item in service.body
        if isinstance(item, ast.FunctionDef) and any(getattr(d, "id", None) == "remote" for d in item.decorator_list)
    )


AGENT_METHODS = _agent_methods()


def test_the_fake_agent_answers_only_what_the_real_agent_exposes():
    assert {
        "create",
        "clone",
        "set_addresses",
        "start",
        "stop",
        "destroy",
        "run",
        "ensure_network",
        "ensure_tunnel",
        "list_tunnels",
        "list_networks",
        "info",
    } <= AGENT_METHODS
    assert "close" not in AGENT_METHODS, "the daemon's own, not a client's"
    with pytest.raises(AttributeError, match="no method 'clone_all'"):
        FakeAgent("h", []).__getattr__("clone_all")


class FakeAgent:
    """Records every call with its host and keeps containers (state, address) just enough to answer like the
    agent: run() needs a running container, and set_addresses() changes only stopped ones (the same address
    again is a no-op). A failure from fail_on comes after the call took effect, as when a coordinator dies
    waiting for an agent that carries on. Bridges have owners as on the agent: another owner's is a Conflict."""

    def __init__(self, host, journal, fail_on=None, containers=None, networks=None, features=None):
        self.host, self.journal, self.fail_on = host, journal, fail_on
        self.containers = {} if containers is None else containers
        self.networks = {} if networks is None else networks
        self.features = features or {
            "vxlan": True,
            "ipip": True,
            "openvswitch": True,
            "loop": True,
            "memory_merge": True,
        }

    def __getattr__(self, operation):
        if operation.startswith("_") or operation not in AGENT_METHODS:
            raise AttributeError(f"the agent has no method {operation!r}")
        effect = getattr(type(self), f"_{operation}", lambda self, *args: None)

        def call(*args, **options):
            self.journal.append((self.host, operation, json.loads(json.dumps(args))))
            declared = inspect.signature(effect).parameters
            result = effect(self, *args, **{key: value for key, value in options.items() if key in declared})
            outcome = self.fail_on(self.host, operation, args) if self.fail_on else None
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome:
                raise RuntimeError(f"{operation} failed on {self.host}")
            return result

        return call

    def _memory(self):
        return {"total": 64 << 30, "available": 48 << 30, "ksm": None, "pressure": 0.0}

    def _create(self, name, *rest):
        self.containers.setdefault(name, {"state": "STOPPED", "address": None})

    def _clone(self, source, names, *rest):
        for name in names:
            self.containers.setdefault(name, {"state": "STOPPED", "address": self.containers[source]["address"]})

    def _set_addresses(self, bridge, addresses, mtu=None):
        changes = [name for name, address in addresses.items() if self.containers[name]["address"] != address]
        running = [name for name in changes if self.containers[name]["state"] == "RUNNING"]
        if running:
            raise RuntimeError(f"container(s) {running} are running; stop them before changing addresses")
        for name in changes:
            self.containers[name]["address"] = addresses[name]

    def _start(self, names, *rest, merge_memory=False):
        for name in names:
            self.containers[name]["state"] = "RUNNING"
            self.containers[name]["merged"] = merge_memory  # as this run of it was started

    def _stop(self, names, *rest):
        for name in names:
            self.containers[name]["state"] = "STOPPED"

    def _destroy(self, names):
        for name in names:
            self.containers.pop(name, None)

    def _run(self, name, *rest):
        if self.containers[name]["state"] != "RUNNING":
            raise RuntimeError(f"container {name!r} is not running; start it first")
        return {"exit_code": 0, "stdout": "running\n", "stderr": ""}

    def _list_tunnels(self):
        return [{"mtu": 1450}]

    def _info(self):
        return {"kernel_features": dict(self.features)}

    def _list_networks(self):
        return [{"bridge": bridge, **held} for bridge, held in sorted(self.networks.items())]

    def _ensure_network(self, bridge, subnet, owner=None):
        held = self.networks.setdefault(bridge, {"subnet": subnet, "owner": owner})
        if held["owner"] != owner:
            raise Conflict(f"host bridge {bridge} belongs to owner {held['owner']!r}", owner=held["owner"])

    def _destroy_network(self, bridge, owner=None):
        held = self.networks.get(bridge)
        if held and held["owner"] not in (None, owner):
            raise Conflict(f"host bridge {bridge} belongs to owner {held['owner']!r}", owner=held["owner"])
        self.networks.pop(bridge, None)


class FakeSteps:
    """Records each devstack (or nova) step; like the real one, it needs the node's container running, and it
    answers only the steps the real module has. Nova's convergence answers that every expected host came up at
    once."""

    def __init__(self, journal, prefix="devstack"):
        self.journal, self.prefix = journal, prefix
        self.real = {"devstack": devstack, "nova": nova}[prefix]

    def __getattr__(self, step):
        if step.startswith("_") or not callable(getattr(self.real, step, None)):
            raise AttributeError(f"coordinator.{self.prefix} has no step {step!r}")

        def call(agent, node, *args, **options):
            self.journal.append((agent.host, f"{self.prefix}.{step}", [node.name]))
            if agent.containers[node.name]["state"] != "RUNNING":
                raise RuntimeError(f"container {node.name!r} is not running; start it first")
            if step == "converge":
                expected = args[0]
                return {
                    "expected": len(expected),
                    "services_up": len(expected),
                    "hypervisors_up": len(expected),
                    "seconds": 1.0,
                    "waiting": {},
                    "controller": node.address,
                }
            return ""

        return call


@pytest.fixture
def world(tmp_path):
    journal = []
    plan = topology.plan(validate(SEED_LIKE))
    store = Store(str(tmp_path / "store.sqlite"))
    store.begin("t", SEED_LIKE, plan.to_dict())
    failures = {}
    lock = threading.Lock()
    hosts = {}  # address -> containers, kept across deployers like a real host's
    networks = {}  # address -> bridge -> {subnet, owner}
    features = {}  # address -> kernel features, when not all

    def connect(host):
        with lock:
            return FakeAgent(
                host.address,
                journal,
                failures.get("fail_on"),
                hosts.setdefault(host.address, {}),
                networks.setdefault(host.address, {}),
                features.get(host.address),
            )

    def deployer():
        return Deployer(
            "t",
            plan,
            store,
            connect,
            Settings(log_dir=str(tmp_path / "logs")),
            engine=Devstack(FakeSteps(journal), FakeSteps(journal, "nova")),
        )

    failures["networks"], failures["features"], failures["hosts"] = networks, features, hosts
    yield plan, store, journal, failures, deployer
    store.close()


def calls(journal, operation):
    return [(host, args) for host, op, args in journal if op == operation]


CHANGES = {
    "ensure_network",
    "ensure_tunnel",
    "create",
    "clone",
    "set_addresses",
    "start",
    "stop",
    "destroy",
    "destroy_network",
    "destroy_tunnel",
}


def test_the_walk_follows_the_seed_engines_in_order(world):
    plan, store, journal, _, deployer = world
    deployer().deploy()
    operations = [op for _, op, _ in journal if op not in ("run", "list_tunnels")]
    first_devstack = operations.index("devstack.prepare")
    assert operations.index("ensure_network") < operations.index("ensure_tunnel") < operations.index("create")
    assert operations.index("create") < first_devstack < operations.index("clone")
    controller = plan.controller
    devstack_order = [args[0] for _, op, args in journal if op == "devstack.run_stack"]
    assert devstack_order[0] == controller, "the controller is stacked before any compute"
    for node in devstack_order:
        steps = [op for _, op, args in journal if op.startswith("devstack.") and args == [node]]
        assert steps[:2] == ["devstack.wait_for_earlier_stack", "devstack.prepare"], "nothing pulled from under it"
    clones = calls(journal, "clone")
    assert sorted(host for host, _ in clones) == ["198.18.0.10", "198.18.0.11"]
    assert all(len(args[1]) == 3 for _, args in clones), "4 per host: 1 first + 3 clones"
    assert len(calls(journal, "devstack.run_start_script")) == 6
    # Nova: each first compute sealed after its stack.sh and before it is stopped for cloning; every compute given
    # its own identity before its start script, and its units started after it (the firsts' too, which seal
    # disabled); then the controller waits for them all.
    sealed = [args[0] for _, args in calls(journal, "nova.seal")]
    assert sorted(sealed) == sorted(n.name for n in plan.nodes if n.kind == "first")
    for first in sealed:
        on_it = [(op, args) for _, op, args in journal if args[:1] == [first] or (op == "stop" and first in args[0])]
        order = [op for op, _ in on_it]
        assert order.index("devstack.run_stack") < order.index("nova.seal") < order.index("stop")
    computes = sorted(n.name for n in plan.nodes if n.role == "compute")
    assert sorted(args[0] for _, args in calls(journal, "nova.identify")) == computes
    assert sorted(args[0] for _, args in calls(journal, "nova.start_services")) == computes
    for name in computes:
        steps = [op for _, op, args in journal if args == [name] and op.startswith(("devstack.", "nova."))]
        if name in sealed:
            assert "devstack.run_start_script" not in steps, "the first compute keeps its address"
            assert steps.index("nova.identify") < steps.index("nova.start_services")
        else:
            assert (
                steps.index("nova.identify")
                < steps.index("devstack.run_start_script")
                < steps.index("nova.start_services")
            )
    assert [args[0] for _, args in calls(journal, "nova.converge")] == [plan.controller]
    assert operations[-1] == "nova.converge", "the deploy ends by proving the computes are up"


def test_tunnels_are_made_at_both_ends_and_containers_get_the_tunnel_mtu(world):
    plan, _, journal, _, deployer = world
    deployer().deploy()
    tunnels = calls(journal, "ensure_tunnel")
    assert {host for host, _ in tunnels} == {"198.18.0.10", "198.18.0.11"}
    local = next(args for host, args in tunnels if host == "198.18.0.11")
    assert local[1:4] == ["vxlan", "198.18.0.11", "198.18.0.10"]
    assert all(args[2] == 1450 for _, args in calls(journal, "set_addresses"))


def test_a_second_deploy_resumes_after_the_last_finished_step(world):
    plan, store, journal, failures, deployer = world
    failures["fail_on"] = lambda host, op, args: op == "clone" and host == "198.18.0.11"
    with pytest.raises(RuntimeError, match=r"clone failed on 198\.18\.0\.11"):
        deployer().deploy()
    failures.clear()
    journal.clear()
    report = deployer().deploy()
    assert "devstack:" + plan.controller in report.skipped
    assert [args[0] for _, op, args in journal if op == "devstack.run_stack"] == [], "nothing stacked twice"
    assert [host for host, _ in calls(journal, "clone")] == ["198.18.0.11"], "only the unfinished host again"


def once(condition):
    """A fail_on that fails the first call matching condition(host, operation, args), and no other."""
    done = []

    def fail_on(host, operation, args):
        if not done and condition(host, operation, args):
            done.append(True)
            return True
        return False

    return fail_on


def test_a_deploy_cut_off_while_a_first_compute_stops_starts_it_again_to_finish_its_devstack_step(world):
    plan, store, journal, failures, deployer = world
    first = next(node.name for node in plan.nodes if node.kind == "first")
    failures["fail_on"] = once(lambda host, op, args: op == "stop" and args[0] == [first])
    with pytest.raises(RuntimeError, match="stop failed"):
        deployer().deploy()
    assert not store.step_done("t", f"devstack:{first}")
    failures.clear()
    journal.clear()
    deployer().deploy()
    operations = [(op, args) for _, op, args in journal if op in ("start", "devstack.prepare")]
    assert operations.index(("start", [[first]])) < operations.index(("devstack.prepare", [first]))
    assert [args for _, op, args in journal if op == "devstack.run_stack"] == [[first]], "only that node again"


def test_a_deploy_cut_off_while_clones_boot_resumes_and_leaves_their_addresses_alone(world):
    plan, store, journal, failures, deployer = world
    clone = next(node.name for node in plan.nodes if node.kind == "clone")
    failures["fail_on"] = once(lambda host, op, args: op == "run" and args[0] == clone)
    with pytest.raises(RuntimeError, match="run failed"):
        deployer().deploy()
    failures.clear()
    journal.clear()
    deployer().deploy()
    assert all(step["state"] == "done" for step in store.steps("t"))
    assert [op for _, op, _ in journal].count("clone") == 1, "the cut-off host's clone step again, only"
    assert [args for _, op, args in journal if op == "devstack.run_stack"] == []


def test_destroy_removes_containers_then_tunnels_then_networks_and_forgets_them(world):
    plan, store, journal, _, deployer = world
    deployer().deploy()
    journal.clear()
    deployer().destroy()
    kinds = [op for _, op, _ in journal]
    assert kinds.index("destroy") < kinds.index("destroy_tunnel") < kinds.index("destroy_network")
    destroyed = sorted(name for _, args in calls(journal, "destroy") for name in args[0])
    assert destroyed == sorted(node.name for node in plan.nodes)
    assert store.resources("t") == []
    journal.clear()
    deployer().destroy()
    assert journal == [], "destroying again has nothing left to do"


def test_devstack_on_a_hardware_node_is_refused_with_what_to_use_instead(tmp_path):
    config = {
        "type": "DevstackEngine",
        "provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"}]},
    }
    plan = topology.plan(validate(config))
    store = Store(str(tmp_path / "s.sqlite"))
    with pytest.raises(DeployError, match="not offered; put the node in a container with an LxcProvider"):
        Deployer("x", plan, store, lambda host: None, Settings(log_dir=str(tmp_path))).deploy()


def test_networks_are_made_with_the_deployment_as_owner(world):
    plan, _, journal, _, deployer = world
    deployer().deploy()
    made = calls(journal, "ensure_network")
    assert sorted((host, args[0], args[2]) for host, args in made) == sorted(
        (host.address, network.bridge, "t") for host in plan.hosts for network in host.networks
    )


def test_a_kernel_without_ipip_is_refused_on_every_host_before_anything_changes(tmp_path):
    config = json.loads(json.dumps(SEED_LIKE))
    config["nodes"][0]["tunnel_type"] = "ipip"
    plan = topology.plan(validate(config))
    store = Store(str(tmp_path / "s.sqlite"))
    store.begin("t", config, plan.to_dict())
    journal = []
    deployer = Deployer(
        "t",
        plan,
        store,
        lambda host: FakeAgent(host.address, journal, features={"vxlan": True, "ipip": False}),
        Settings(log_dir=str(tmp_path)),
        engine=Devstack(FakeSteps(journal), FakeSteps(journal, "nova")),
    )
    with pytest.raises(DeployError) as caught:
        deployer.deploy()
    message = str(caught.value)
    assert message.startswith("nothing was changed:")
    for host in ("198.18.0.10", "198.18.0.11"):
        assert (
            f"host {host}: this kernel has no ipip tunnels (CONFIG_NET_IPIP is not set), which tunnel_type "
            f'"ipip" needs; use "tunnel_type": "vxlan" (this kernel has vxlan)'
        ) in message
    assert not [op for _, op, _ in journal if op in CHANGES]
    assert store.resources("t") == [] and store.steps("t") == []


def test_a_subnet_another_deployment_holds_is_refused_before_anything_changes(world):
    plan, store, journal, failures, deployer = world
    controller_host = plan.hosts[0]
    failures["networks"]["198.18.0.11"] = {"lxcbr-other": {"subnet": "10.100.2.0/25", "owner": "first"}}
    with pytest.raises(DeployError) as caught:
        deployer().deploy()
    message = str(caught.value)
    assert message == (
        "nothing was changed: host 198.18.0.11: subnet 10.100.2.0/24 (bridge lxcbr-0a640200) is in "
        "use by deployment 'first' (bridge lxcbr-other, subnet 10.100.2.0/25); two deployments cannot "
        "share a subnet on one host: give this one another start_lxc_network, or destroy it first "
        "(coordinator destroy first)"
    )
    assert not [op for _, op, _ in journal if op in CHANGES], "not even on the other host"
    assert controller_host.address == "198.18.0.10"
    assert store.resources("t") == []


def test_a_bridge_taken_after_the_preflight_is_refused_and_not_recorded_as_ours(world):
    plan, store, journal, failures, deployer = world
    taken = failures["networks"].setdefault("198.18.0.11", {})
    original = FakeAgent._list_networks

    def list_then_taken(self):
        held = original(self)
        if self.host == "198.18.0.11":  # another coordinator makes it just after our check
            taken["lxcbr-0a640200"] = {"subnet": "10.100.2.0/24", "owner": "first"}
        return held

    FakeAgent._list_networks = list_then_taken
    try:
        with pytest.raises(
            DeployError,
            match=r"host 198\.18\.0\.11: subnet 10\.100\.2\.0/24 \(bridge "
            r"lxcbr-0a640200\) is in use by deployment 'first'",
        ):
            deployer().deploy()
    finally:
        FakeAgent._list_networks = original
    recorded = [(r["host"], r["kind"], r["name"]) for r in store.resources("t")]
    assert ("198.18.0.11", "network", "lxcbr-0a640200") not in recorded
    journal.clear()
    deployer().destroy()
    assert taken == {"lxcbr-0a640200": {"subnet": "10.100.2.0/24", "owner": "first"}}, "the other's bridge stays"
    assert ("198.18.0.11", "destroy_network", ["lxcbr-0a640200", "t"]) not in journal


def test_destroy_forgets_a_recorded_bridge_that_another_deployment_holds(world):
    plan, store, journal, failures, deployer = world
    deployer().deploy()
    held = failures["networks"]["198.18.0.11"]["lxcbr-0a640200"]
    held["owner"] = "first"  # as if recorded by a run killed before its ensure_network was refused
    deployer().destroy()
    assert store.resources("t") == []
    assert failures["networks"]["198.18.0.11"] == {"lxcbr-0a640200": held}


def test_tunnels_are_made_under_the_plans_names_at_both_ends_and_recorded_for_destroy(world):
    plan, store, journal, _, deployer = world
    deployer().deploy()
    made = sorted((host, args[0]) for host, args in calls(journal, "ensure_tunnel"))
    assert made == sorted((end, tunnel.name) for tunnel in plan.tunnels for end in (tunnel.host, tunnel.remote_host))
    recorded = sorted((r["host"], r["name"]) for r in store.resources("t") if r["kind"] == "tunnel")
    assert recorded == made


def test_a_boot_wait_that_times_out_names_the_container_and_what_to_check():
    class Hanging:
        def run(self, name, argv, timeout=None):
            raise CommandTimeout(f"'sh' in container {name!r} did not finish within {timeout} s and was killed")

    with pytest.raises(DeployError) as caught:
        wait_booted(Hanging(), ["cmp-1"], timeout=2, host="198.18.0.11")
    message = str(caught.value)
    assert message.startswith("cmp-1 on host 198.18.0.11 did not finish booting within 2 s")
    assert "systemctl list-jobs" in message and "lxc-info" in message
    assert isinstance(caught.value.__cause__, CommandTimeout)


def test_services_a_hosts_kernel_cannot_carry_are_refused_before_anything_changes(world):
    """The seed's controller keeps devstack's default services: OVN needs the openvswitch module, c-vol loop
    devices. A host without them is named with the module, the service and the setting that drops it."""
    plan, _, journal, failures, deployer = world
    failures["features"]["198.18.0.10"] = {"vxlan": True, "ipip": True, "openvswitch": False, "loop": False}
    with pytest.raises(DeployError) as caught:
        deployer().deploy()
    message = str(caught.value)
    assert message.startswith("nothing was changed")
    for words in (
        "ovn-controller",
        "ovn-northd",
        "module openvswitch",
        "CONFIG_OPENVSWITCH",
        "c-vol",
        "CONFIG_BLK_DEV_LOOP",
        "controller.localrc",
        plan.controller,
    ):
        assert words in message, words
    assert not [op for _, op, _ in journal if op in CHANGES], "nothing changed on any host"


def test_a_lost_agent_is_named_with_its_host_and_phase_not_a_traceback(world):
    plan, store, journal, failures, deployer = world
    failures["fail_on"] = lambda host, op, args: (
        Pyro5.errors.ConnectionClosedError("receiving: not enough data")
        if op == "clone" and host == "198.18.0.11"
        else None
    )
    with pytest.raises(AgentLost) as caught:
        deployer().deploy()
    assert str(caught.value).startswith(
        "phase clones: lost the agent on host 198.18.0.11 during clone(): "
        "receiving: not enough data; check that lxc-agent runs there"
    )
    assert "deploy again under the same name to resume" in str(caught.value)
    assert isinstance(caught.value, DeployError), "the CLI reports it like every deploy error"


def test_computes_of_an_lxc_provider_are_stacked_each_and_never_sealed(tmp_path):
    config = json.loads(json.dumps(SEED_LIKE))
    config["nodes"] = [
        {
            "type": "DevstackEngine",
            "localrc": {"RABBIT_HOST": "{controller_ip}", "ENABLED_SERVICES": "n-cpu"},
            "provider": {
                "type": "LxcProvider",
                "containers_per_host": 2,
                "container_name_prefix": "cpu",
                "distribution": "debian",
                "release": "bookworm",
                "host_provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"}]},
            },
        }
    ]
    plan = topology.plan(validate(config))
    store = Store(str(tmp_path / "store.sqlite"))
    store.begin("p", config, plan.to_dict())
    journal, containers = [], {}
    deployer = Deployer(
        "p",
        plan,
        store,
        lambda host: FakeAgent(host.address, journal, containers=containers),
        Settings(log_dir=str(tmp_path / "logs")),
        engine=Devstack(FakeSteps(journal), FakeSteps(journal, "nova")),
    )
    deployer.deploy()
    computes = sorted(n.name for n in plan.nodes if n.role == "compute")
    assert len(computes) == 2
    assert sorted(args[0] for _, args in calls(journal, "devstack.run_stack")) == sorted([plan.controller, *computes])
    assert calls(journal, "nova.seal") == [] and calls(journal, "clone") == []
    assert [args[0] for _, args in calls(journal, "nova.converge")] == [plan.controller]
    store.close()


def test_clones_made_again_are_destroyed_and_forgotten_by_nova_first(world):
    """A clones step cut off (or marked stale by a changed config) is redone from scratch: its clones may be
    snapshots of an older first compute, and nova may know their hosts with other compute node UUIDs."""
    plan, store, journal, failures, deployer = world
    failures["fail_on"] = once(lambda host, op, args: op == "start" and host == "198.18.0.11" and len(args[0]) == 3)
    with pytest.raises(RuntimeError):
        deployer().deploy()
    failures.pop("fail_on")
    journal.clear()
    deployer().deploy()
    first = next(n for n in plan.nodes if n.kind == "first" and n.host == "198.18.0.11")
    clones = sorted(n.name for n in plan.nodes if n.source == first.name)
    assert [(host, sorted(args[0])) for host, args in calls(journal, "destroy")] == [("198.18.0.11", clones)]
    assert [args[0] for _, args in calls(journal, "nova.forget")] == [plan.controller]
    other = next(n for n in plan.nodes if n.kind == "first" and n.host == "198.18.0.10")
    assert "clones:" + other.name in deployer().deploy().skipped, "the finished host's clones are kept"


class RecordingEngine(Engine):
    """Another engine than devstack: it records what the driver and the provider ask of it."""

    def __init__(self, journal):
        self.journal = journal

    def phases(self):
        return (
            Phase("ready", "install", lambda d: self.journal.append(("engine", "ready", []))),
            Phase("prove", "join", lambda d: self.journal.append(("engine", "prove", []))),
        )

    def preflight(self, plan):
        return []

    def preflight_host(self, deployer, host, agent):
        return []

    def seal(self, agent, node):
        self.journal.append((agent.host, "engine.seal", [node.name]))

    def personalize(self, agent, node, source):
        self.journal.append((agent.host, "engine.personalize", [node.name, source.name]))

    def forget(self, agent, controller, nodes):
        self.journal.append((agent.host, "engine.forget", [node.name for node in nodes]))


def test_the_walk_is_the_phases_the_provider_and_the_engine_declare_stage_by_stage(world, tmp_path):
    plan, store, journal, failures, _ = world
    hosts = {}

    def connect(host):
        return FakeAgent(host.address, journal, containers=hosts.setdefault(host.address, {}))

    report = Deployer(
        "t", plan, store, connect, Settings(log_dir=str(tmp_path)), engine=RecordingEngine(journal)
    ).deploy()
    assert list(report.phases) == ["networks", "tunnels", "containers", "ready", "clones", "prove"]
    personalized = [args for _, op, args in journal if op == "engine.personalize"]
    assert sorted(name for name, _ in personalized) == sorted(n.name for n in plan.nodes if n.role == "compute")
    assert all(source == plan.node(name).source or source == name for name, source in personalized)
    assert not [op for _, op, _ in journal if op.startswith(("devstack.", "nova."))]


def test_an_engine_must_say_how_it_does_everything_the_walk_asks_of_it():
    class Incomplete(Engine):
        def phases(self):
            return ()

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(ValueError, match="unknown stage 'later'"):
        Phase("x", "later", lambda d: None)


def test_scaling_removes_from_nova_before_destroying_and_clones_a_resealed_first_compute(world):
    plan, store, journal, failures, deployer = world
    deployer().deploy()
    config = validate(SEED_LIKE)
    spec = scale.choose_group(config, None)

    def scaled_to(count, old):
        data = scale.scaled(SEED_LIKE, spec, count)
        return scale.change(spec, old, topology.plan(validate(data), previous=old), count)

    def scale_to(new_plan, change):
        journal.clear()
        engine = Devstack(FakeSteps(journal), FakeSteps(journal, "nova"))
        Deployer("t", new_plan, store, deployer().connect, Settings(log_dir="/tmp"), engine=engine).scale(change)

    change, bigger = scaled_to(5, plan)
    scale_to(bigger, change)
    added = sorted(node.name for node in change.added)
    assert added == ["cmp-10-100-1-004", "cmp-10-100-2-004"]
    assert sorted((host, args[1]) for host, args in calls(journal, "clone")) == [
        ("198.18.0.10", ["cmp-10-100-1-004"]),
        ("198.18.0.11", ["cmp-10-100-2-004"]),
    ]
    for first in ("cmp-10-100-1-000", "cmp-10-100-2-000"):
        steps = [op for _, op, args in journal if args[:1] in ([first], [[first]])]
        assert steps.index("nova.seal") < steps.index("stop") < steps.index("start"), steps
        assert steps[-2:] == ["nova.identify", "nova.start_services"], "the first compute is itself again"
    for name in added:
        steps = [op for _, op, args in journal if args == [name]]
        assert steps == ["nova.identify", "devstack.run_start_script", "nova.start_services"], steps
    assert [op for _, op, _ in journal][-1] == "nova.converge"
    assert not calls(journal, "devstack.run_stack"), "no stack.sh in a scale"

    change, smaller = scaled_to(2, bigger)
    scale_to(smaller, change)
    removed = sorted(node.name for node in change.removed)
    assert len(removed) == 6
    order = [(op, host) for host, op, _ in journal if op in ("stop", "nova.forget", "destroy")]
    assert [op for op, _ in order] == ["stop", "nova.forget", "destroy"] * 2, "per host: stopped, forgotten, destroyed"
    assert sorted(name for _, args in calls(journal, "destroy") for name in args[0]) == removed
    assert not {r["name"] for r in store.resources("t")} & set(removed), "their records are dropped"
    assert not calls(journal, "clone")


def test_computes_start_at_their_groups_pace_and_the_controller_at_once(world):
    """Every node a provider personalizes waits its group's turn first; turns come at starts_per_second."""
    plan, store, journal, _, deployer = world
    paced = dataclasses.replace(
        plan,
        groups=tuple(
            dataclasses.replace(group, starts_per_second=4.0) if group.role == "compute" else group
            for group in plan.groups
        ),
    )
    waits = []
    lock = threading.Lock()

    class Recording(Paces):
        def wait(self, group):
            waited = super().wait(group)
            with lock:
                waits.append((group, waited))
            return waited

    d = deployer()
    d.plan = paced
    d.paces = Recording(paced.groups, clock=lambda: 0.0, sleep=lambda seconds: None)
    d.deploy()
    computes = [node for node in paced.nodes if node.role == "compute"]
    group = computes[0].group
    assert sorted(waited for seen, waited in waits if seen == group) == [index / 4.0 for index in range(len(computes))]
    assert all(waited == 0.0 for seen, waited in waits if seen != group)


def test_a_group_with_merge_memory_starts_merged_with_the_same_hash_seed_and_others_do_not(world):
    """merge_memory (LxcEngine): every start of the group's containers asks the agent for merging, the first
    compute gets Python's hash seed fixed before it is sealed and copied; the controller is started plainly."""
    plan, store, journal, failures, deployer = world
    merged = dataclasses.replace(
        plan,
        groups=tuple(
            dataclasses.replace(group, merge_memory=True) if group.role == "compute" else group for group in plan.groups
        ),
    )
    d = deployer()
    d.plan = merged
    d.deploy()
    computes = {node.name for node in merged.nodes if node.role == "compute"}
    started = {name: state for host in failures["hosts"].values() for name, state in host.items()}
    assert {name for name, state in started.items() if state.get("merged")} == computes
    assert all(started[node.name].get("merged") is False for node in merged.nodes if node.role == "controller")
    firsts = [node.name for node in merged.nodes if node.kind == "first"]
    seeded = [args[0] for _, op, args in journal if op == "run" and args[1][-1] == HASH_SEED_SCRIPT]
    assert sorted(seeded) == sorted(firsts)
    order = [
        ("seed" if op == "run" and args[1][-1] == HASH_SEED_SCRIPT else op, args[0])
        for _, op, args in journal
        if op in ("run", "nova.seal", "clone")
    ]
    for first in firsts:
        assert order.index(("seed", first)) < order.index(("nova.seal", first)) < order.index(("clone", first))


def test_merge_memory_on_a_host_whose_kernel_lacks_it_is_refused_before_anything_changes(world):
    plan, store, journal, failures, deployer = world
    merged = dataclasses.replace(
        plan, groups=tuple(dataclasses.replace(group, merge_memory=True) for group in plan.groups)
    )
    host = merged.groups[-1].hosts[0]
    failures["features"][host] = {"vxlan": True, "ipip": True, "openvswitch": True, "loop": True}
    d = deployer()
    d.plan = merged
    with pytest.raises(DeployError) as caught:
        d.deploy()
    assert f"host {host}: {merged.groups[-1].path}.merge_memory needs kernel same-page merging" in str(caught.value)
    assert [op for _, op, _ in journal if op not in ("info", "list_networks", "list_tunnels")] == []
