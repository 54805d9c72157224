"""The driver's walk over a plan, with a recording fake agent per host (the real agents have their own tests)."""

import json
import threading

import pytest

from coordinator import topology
from coordinator.config import validate
from coordinator.driver import Deployer, DeployError, Settings
from coordinator.store import Store

SEED_LIKE = {
    "type": "MultihostEngine",
    "controller": {"type": "DevstackEngine", "localrc": {"MULTI_HOST": "1", "ENABLED_SERVICES+": ",-n-cpu"},
                   "provider": {"type": "LxcProvider", "containers_per_host": 1, "container_name_prefix": "ctl",
                                "distribution": "debian", "release": "bookworm",
                                "host_provider": {"type": "ExistingServers",
                                                  "credentials": [{"user": "root", "host": "198.18.0.10"}]}}},
    "nodes": [{"type": "LxcEngine", "distribution": "debian", "release": "bookworm", "container_name": "cmp",
               "nodes_per_server": 4,
               "provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "198.18.0.10"},
                                                                       {"user": "root", "host": "198.18.0.11"}]},
               "tunnel_to": ["198.18.0.10"], "tunnel_type": "vxlan",
               "engine": {"name": "DevstackEngine", "localrc": {"RABBIT_HOST": "{controller_ip}",
                                                               "ENABLED_SERVICES": "n-cpu"}}}],
}


class FakeAgent:
    """Records every call with its host and keeps containers (state, address) just enough to answer like the
    agent: run() needs a running container, and set_addresses() changes only stopped ones (the same address
    again is a no-op). A failure from fail_on comes after the call took effect, as when a coordinator dies
    waiting for an agent that carries on."""

    def __init__(self, host, journal, fail_on=None, containers=None):
        self.host, self.journal, self.fail_on = host, journal, fail_on
        self.containers = {} if containers is None else containers

    def __getattr__(self, operation):
        if operation.startswith("_"):
            raise AttributeError(operation)
        effect = getattr(type(self), f"_{operation}", lambda self, *args: None)

        def call(*args, **options):
            self.journal.append((self.host, operation, json.loads(json.dumps(args))))
            result = effect(self, *args)
            if self.fail_on and self.fail_on(self.host, operation, args):
                raise RuntimeError(f"{operation} failed on {self.host}")
            return result
        return call

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

    def _start(self, names, *rest):
        for name in names:
            self.containers[name]["state"] = "RUNNING"

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


class FakeEngine:
    """Records each devstack step; like the real one, it needs the node's container running."""

    def __init__(self, journal):
        self.journal = journal

    def __getattr__(self, step):
        def call(agent, node, *args):
            self.journal.append((agent.host, f"devstack.{step}", [node.name]))
            if agent.containers[node.name]["state"] != "RUNNING":
                raise RuntimeError(f"container {node.name!r} is not running; start it first")
        return call


@pytest.fixture
def world(tmp_path):
    journal = []
    plan = topology.plan(validate(SEED_LIKE))
    store = Store(str(tmp_path / "store.sqlite"))
    store.begin("t", SEED_LIKE, plan.to_dict())
    failures = {}
    lock = threading.Lock()
    hosts = {}   # address -> containers, kept across deployers like a real host's

    def connect(host):
        with lock:
            return FakeAgent(host.address, journal, failures.get("fail_on"), hosts.setdefault(host.address, {}))

    def deployer():
        return Deployer("t", plan, store, connect, Settings(log_dir=str(tmp_path / "logs")), engine=FakeEngine(journal))

    yield plan, store, journal, failures, deployer
    store.close()


def calls(journal, operation):
    return [(host, args) for host, op, args in journal if op == operation]


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
    clones = calls(journal, "clone")
    assert sorted(host for host, _ in clones) == ["198.18.0.10", "198.18.0.11"]
    assert all(len(args[1]) == 3 for _, args in clones), "4 per host: 1 first + 3 clones"
    assert len(calls(journal, "devstack.run_start_script")) == 6


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
    with pytest.raises(RuntimeError, match="clone failed on 198.18.0.11"):
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
    config = {"type": "DevstackEngine", "provider": {"type": "ExistingServers",
                                                     "credentials": [{"user": "root", "host": "198.18.0.10"}]}}
    plan = topology.plan(validate(config))
    store = Store(str(tmp_path / "s.sqlite"))
    with pytest.raises(DeployError, match="not offered; put the node in a container with an LxcProvider"):
        Deployer("x", plan, store, lambda host: None, Settings(log_dir=str(tmp_path))).deploy()
