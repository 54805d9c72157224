"""What a real agent over TLS does with arguments it must refuse: each weakness issue #11 found in them, then
generated values of every type at every exposed method. A refusal is an InvalidArgument naming the method and
the argument, comes before anything starts, and leaves the host as it was."""

import json
import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import arguments
from agent.errors import ALL_ERRORS, AgentError, InvalidArgument
from tests.support import sh, without_carrier

BRIDGE = "lxcbr-args"
SUBNET = "10.232.5.0/24"
OWNER = "args-test"


# --- what the tests look at: the agent's processes, descriptors and host --------------------------------------


def process_table():
    """pid -> (state, parent pid) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry)] = (fields[0], int(fields[1]))
    return table


def agent_tree(process):
    """pid -> state of the agent and every process under it (its workers and what they run)."""
    table = process_table()
    children = {}
    for pid, (_, parent) in table.items():
        children.setdefault(parent, []).append(pid)
    tree, queue = {}, [process.process.pid]
    while queue:
        pid = queue.pop()
        if pid in table:
            tree[pid] = table[pid][0]
            queue.extend(children.get(pid, []))
    return tree


# What a busy worker pool may add meanwhile (it starts another worker when a call comes before the last one's
# worker is counted idle again); the leaks found held 3 descriptors per call.
POOL_SLACK = 12


def descriptors(process):
    """Open descriptors of the agent and its workers together."""
    total = 0
    for pid in agent_tree(process):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def zombies(process):
    return sorted(pid for pid, state in agent_tree(process).items() if state == "Z")


def host_state(process):
    """What a refused call must not change: links, nftables, policy rules and the containers under lxcpath."""
    return {
        # Without the carrier: a bridge with no ports settles from UNKNOWN to NO-CARRIER on its own, a while later.
        "links": without_carrier(json.loads(sh("ip", "-j", "link", netns=process.netns))),
        "nft": sh("nft", "list", "ruleset", netns=process.netns),
        "rules": sh("ip", "rule", netns=process.netns),
        "lxcpath": sorted(os.listdir(process.lxcpath)),
    }


def refused(call, *fragments):
    """The InvalidArgument a call gets, checked to be short and to contain each fragment."""
    with pytest.raises(InvalidArgument) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert len(message) < 800, f"a refusal of {len(message)} characters: {message[:300]}..."
    return message


@pytest.fixture
def networked(agent_in_host):
    """An agent in a simulated host with a stopped container `base` and the bridge BRIDGE."""
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, SUBNET, OWNER)
    yield agent_in_host, agent
    agent.destroy(["base"])
    agent.destroy_network(BRIDGE, OWNER)


@pytest.fixture
def running(loopback_agent):
    """An agent on loopback with a running busybox container `box`, its workers started."""
    agent = loopback_agent.connect()
    agent._pyroTimeout = 60  # a command the agent failed to bound must fail the test, not hang it
    agent.create("box", "busybox")
    agent.start(["box"])
    assert agent.run("box", ["true"], timeout=30)["exit_code"] == 0
    yield loopback_agent, agent
    agent.destroy(["box"])


# --- 2: the MTU reaches the container's LXC config ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mtu",
    ["1500\nlxc.hook.pre-start = sh -c 'touch {marker}'", "1500\nlxc.no.such.key = 1"],
    ids=["hook", "unknown-key"],
)
def test_an_mtu_cannot_write_lines_into_the_lxc_config(networked, lxcpath, tmp_path, mtu):
    process, agent = networked
    marker = tmp_path / "run-as-root-on-the-host"
    mtu = mtu.format(marker=marker)
    config = os.path.join(lxcpath, "base", "config")
    with open(config) as handle:
        before = handle.read()
    refused(lambda: agent.set_addresses(BRIDGE, {"base": "10.232.5.10/24"}, mtu), "set_addresses", "mtu")
    with open(config) as handle:
        assert handle.read() == before
    assert [entry["name"] for entry in agent.list()] == ["base"], "every client can still list"
    agent.set_addresses(BRIDGE, {"base": "10.232.5.10/24"}, 1450)
    agent.start(["base"])
    assert not marker.exists()
    assert "mtu 1450" in agent.run("base", ["ip", "link", "show", "eth0"])["stdout"]
    agent.stop(["base"], 0)


@pytest.mark.parametrize(
    "mtu", [-1, 0, 67, 65536, 10**9, "9000x", "1500", 1500.0, True], ids=lambda mtu: f"{type(mtu).__name__}:{mtu!r}"
)
def test_an_mtu_is_an_integer_from_68_to_65535(networked, lxcpath, mtu):
    process, agent = networked
    before = host_state(process)
    refused(lambda: agent.set_addresses(BRIDGE, {"base": "10.232.5.10/24"}, mtu), "set_addresses", "mtu")
    assert host_state(process) == before
    assert agent.list(["base"])[0]["configured_address"] is None, "nothing was configured"


# --- 5: run() starts the command before it checks the timeout and stdin --------------------------------------------


@pytest.mark.parametrize(
    "timeout",
    [math.nan, math.inf, -math.inf, 1e308, True, False, 0, -1, "5", [5]],
    ids=lambda value: f"{type(value).__name__}:{value!r}",
)
def test_a_run_timeout_is_checked_before_the_command_starts(running, timeout):
    process, agent = running
    fds, dead = descriptors(process), zombies(process)
    for _ in range(20):
        refused(lambda: agent.run("box", ["sleep", "300"], timeout=timeout), "run", "timeout")
    assert "sleep 300" not in agent.run("box", ["ps"])["stdout"], "no command was started"
    assert zombies(process) == dead
    assert descriptors(process) <= fds + POOL_SLACK, "no descriptor leaked"


@pytest.mark.parametrize("stdin", [5, ["x"], {"a": "b"}, True], ids=["int", "list", "dict", "bool"])
def test_stdin_of_the_wrong_type_is_refused_before_the_command_starts(running, stdin):
    process, agent = running
    fds = descriptors(process)
    refused(lambda: agent.run("box", ["sleep", "300"], stdin=stdin), "run", "stdin")
    assert "sleep 300" not in agent.run("box", ["ps"])["stdout"], "the command was not left running"
    assert descriptors(process) <= fds + POOL_SLACK


def test_stdin_as_text_or_bytes_reaches_the_command(running):
    _, agent = running
    assert agent.run("box", ["cat"], stdin="text\n")["stdout"] == "text\n"
    assert agent.run("box", ["cat"], stdin=b"bytes\n")["stdout"] == "bytes\n"
    assert agent.run("box", ["wc", "-c"], stdin=bytes(range(256)))["stdout"].split() == ["256"]


@pytest.mark.parametrize(
    "argv, env, user, fragment",
    [
        (["echo", "a\x00b"], None, None, "argv[1]"),
        (["true"], {"A=B": "x"}, None, "env"),
        (["true"], {"A": "x\x00y"}, None, "env['A']"),
        (["true"], {"": "x"}, None, "env"),
        (["true"], None, "root\n", "user"),
        (["true"], None, "../root", "user"),
        ([b"true"], None, None, "argv[0]"),
        ("true", None, None, "argv"),
    ],
    ids=["nul-in-argv", "equals-in-key", "nul-in-value", "empty-key", "user-newline", "user-path", "bytes", "str"],
)
def test_argv_env_and_user_are_checked_before_the_command_starts(running, argv, env, user, fragment):
    _, agent = running
    refused(lambda: agent.run("box", argv, env=env, user=user), "run", fragment)


# --- 6: the cost of a batch ---------------------------------------------------------------------------------------


def test_a_batch_of_ten_thousand_names_is_served_quickly(loopback_agent):
    agent = loopback_agent.connect()
    names = [f"ghost-{i}" for i in range(10_000)]
    started = time.monotonic()
    assert agent.list(names) == []
    assert agent.destroy(names) == names
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("method", ["list", "start", "stop", "destroy", "clone", "destroy_images"])
def test_a_batch_above_the_cap_is_refused_at_once(loopback_agent, method):
    agent = loopback_agent.connect()
    names = [f"ghost-{i}" for i in range(arguments.MAX_BATCH + 1)]
    call = (lambda: agent.clone("base", names)) if method == "clone" else (lambda: getattr(agent, method)(names))
    started = time.monotonic()
    refused(call, method, f"at most {arguments.MAX_BATCH}")
    assert time.monotonic() - started < 5


def test_the_duplicate_check_names_both_places(loopback_agent):
    agent = loopback_agent.connect()
    names = [f"ghost-{i}" for i in range(5000)] + ["ghost-7"]
    refused(lambda: agent.list(names), "listed twice", "names[7]", "names[5000]")


# --- 7: owners and names that only look valid; subnets that are not private -----------------------------------------


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda a: a.ensure_network(BRIDGE, SUBNET, "deploy\n"), "owner"),
        (lambda a: a.destroy_network(BRIDGE, "deploy\n"), "owner"),
        (lambda a: a.ensure_network("lxcbr-nl\n", SUBNET, "deploy"), "bridge"),
        (lambda a: a.destroy_network("lxcbr-nl\n"), "bridge"),
        (lambda a: a.destroy_tunnel("lxt-nl\n"), "name"),
        (lambda a: a.create("box\n", "busybox"), "name"),
        (lambda a: a.destroy(["box\n"]), "names[0]"),
        (lambda a: a.create("box", "busybox", "bookworm\n"), "release"),
        (lambda a: a.create("box", "debian", None, ["git\n"]), "packages[0]"),
        (lambda a: a.destroy_images(["busybox-default-0\n"]), "keys[0]"),
    ],
    ids=[
        "owner",
        "destroy-owner",
        "bridge",
        "destroy-bridge",
        "tunnel",
        "container",
        "batch",
        "release",
        "package",
        "image-key",
    ],
)
def test_a_trailing_newline_is_refused_everywhere(agent_in_host, call, fragment):
    agent = agent_in_host.connect()
    before = host_state(agent_in_host)
    refused(lambda: call(agent), fragment)
    assert host_state(agent_in_host) == before


@pytest.mark.parametrize(
    "subnet", ["1.1.1.0/24", "8.8.0.0/16", "224.1.1.0/24", "192.0.2.0/24", "0.0.0.0/8", "127.0.0.0/24", "240.0.0.0/8"]
)
def test_a_bridge_subnet_is_private(agent_in_host, subnet):
    agent = agent_in_host.connect()
    before = host_state(agent_in_host)
    refused(lambda: agent.ensure_network(BRIDGE, subnet, OWNER), "ensure_network", "subnet", "private")
    assert host_state(agent_in_host) == before


@pytest.mark.parametrize("side", ["local_subnets", "remote_subnets"])
def test_a_tunnel_routes_private_subnets_only(lab, agent_in_host, sim_host, side):
    agent = agent_in_host.connect()
    subnets = {"local_subnets": ["10.232.6.0/24"], "remote_subnets": ["10.232.7.0/24"]}
    subnets[side] = ["1.1.1.0/24"]
    before = host_state(agent_in_host)
    remote = sim_host.address.rsplit(".", 1)[0] + ".250"
    refused(
        lambda: agent.ensure_tunnel("lxt-pub", "vxlan", sim_host.address, remote, **subnets),
        "ensure_tunnel",
        f"{side}[0]",
        "private",
    )
    assert host_state(agent_in_host) == before


def test_public_subnets_pass_where_the_agent_allows_them():
    call = {"bridge": "br0", "subnet": "1.1.1.0/24", "owner": None}
    assert arguments.check_arguments("ensure_network", call, allow_public_subnets=True) == call
    with pytest.raises(InvalidArgument, match="not in a private range"):
        arguments.check_arguments("ensure_network", call, allow_public_subnets=False)
    with pytest.raises(InvalidArgument, match="multicast"):
        arguments.check_arguments("ensure_network", {**call, "subnet": "224.1.1.0/24"}, allow_public_subnets=True)


def test_the_service_applies_its_own_subnet_policy():
    class Service:
        def __init__(self, allow):
            self.allow_public_subnets = allow

        @arguments.checked
        def ensure_network(self, bridge, subnet, owner=None):
            return bridge, subnet, owner

    assert Service(True).ensure_network("br0", "1.1.1.0/24") == ("br0", "1.1.1.0/24", None)
    with pytest.raises(InvalidArgument, match=r"ensure_network: subnet: .* not in a private range"):
        Service(False).ensure_network("br0", "1.1.1.0/24")


# --- 8: close() and the raw Python errors --------------------------------------------------------------------------


def test_every_exposed_method_has_a_schema_and_close_is_not_exposed():
    from agent.service import AgentService

    exposed = {name for name, member in vars(AgentService).items() if getattr(member, "_pyroExposed", False)}
    assert exposed == set(arguments.SCHEMAS)
    assert "close" not in exposed


def test_close_is_not_callable_remotely(running):
    process, agent = running
    with pytest.raises(AttributeError):
        agent.close()
    assert agent.run("box", ["true"])["exit_code"] == 0, "the workers still run commands"


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda a: a.info(1), "info"),
        (lambda a: a.create("box"), "template"),
        (lambda a: a.start(["base"], timeout="x"), "timeout"),
        (lambda a: a.start(["base"], timeout=math.inf), "timeout"),
        (lambda a: a.stop(["base"], timeout=math.nan), "timeout"),
        (lambda a: a.clone("base", ["c1"], snapshot="yes"), "snapshot"),
        (lambda a: a.list(names={"base": 1}), "names"),
        (lambda a: a.run("base", ["true"], bogus=1), "bogus"),
        (lambda a: a.ensure_tunnel("lxt", "vxlan", "198.18.0.1", "198.18.0.2", None, []), "local_subnets"),
        (lambda a: a.ensure_tunnel("lxt", "vxlan", "198.18.0.1", "198.18.0.2", [], [5]), "remote_subnets[0]"),
        (lambda a: a.ensure_tunnel("lxt", "vxlan", "198.18.0.1", "198.18.0.2", [], [], True), "vni"),
        (lambda a: a.set_addresses(BRIDGE, {"base": 167772161}), "addresses['base']"),
        (lambda a: a.set_addresses(BRIDGE, [("base", "10.0.0.1/24")]), "addresses"),
        (lambda a: a.create("box", "busybox", 5), "release"),
        (lambda a: a.create("box", "busybox", None, ("\ud800",)), "packages[0]"),
    ],
    ids=[
        "extra-argument",
        "missing-argument",
        "timeout-text",
        "timeout-inf",
        "timeout-nan",
        "snapshot-text",
        "names-dict",
        "unknown-keyword",
        "subnets-none",
        "subnet-int",
        "vni-bool",
        "address-int",
        "addresses-list",
        "release-int",
        "surrogate",
    ],
)
def test_malformed_calls_get_invalid_argument_naming_method_and_argument(loopback_agent, call, fragment):
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    before = sorted(os.listdir(loopback_agent.lxcpath))
    refused(lambda: call(agent), fragment)
    assert sorted(os.listdir(loopback_agent.lxcpath)) == before


def test_a_refusal_shows_at_most_a_hundred_characters_of_the_value(loopback_agent):
    agent = loopback_agent.connect()
    message = refused(lambda: agent.destroy(["ok", "x" * 100_000 + "\n"]), "destroy", "names[1]")
    assert "x" * 101 not in message
    message = refused(lambda: agent.run("ghost", ["true"], timeout=10**4000), "run", "timeout")
    assert len(message) < 300


# --- every exposed method, every kind of value ----------------------------------------------------------------------

# Values a client might send. None of them names anything that exists, a template, or a private subnet, so no
# call made of them can succeed in changing the host: anything that changes is a bug.
NASTY_TEXT = [
    "",
    " ",
    "\n",
    "ghost",
    "ghost\n",
    "gh\x00ost",
    "../etc",
    "a..b",
    "-lead",
    "x" * 64,
    "x" * 5000,
    "ümlaut",
    "\ud800",
    "1500\nlxc.hook.pre-start = sh -c id",
    "1.1.1.0/24",
    "224.0.0.0/4",
    "10.232.9.300/24",
    "10.232.9.0/24\n",
    "198.18.0.1",
    "vxlan",
    "ipip",
    "lo",
    "all",
    "0x10",
    "nan",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 68, 65535, 2**31, 2**63, 10**100, -(10**300)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(NASTY_TEXT),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.sampled_from(NASTY_TEXT), st.integers(), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)


# Values of the right shape for each argument, so that calls also get past the checks into the modules (and get
# NotFound, or a module's own refusal): no name exists, no template either, no subnet or address can be used here.
PLAUSIBLE = {
    "names": [["ghost"], ["ghost", "ghost-2"], []],
    "name": ["ghost", "lxt-ghost"],
    "source": ["ghost"],
    "template": ["no-such-template"],
    "release": [None, "bookworm"],
    "packages": [None, ["git"]],
    "keys": [None, ["ghost-default-00000000"]],
    "key": ["ghost-default-00000000", "golden-ghost"],
    "labels": [None, {"node": "ghost"}],
    "tag": ["clean", "ghost-tag"],
    "snapshot": [True, False],
    "merge_memory": [False, True],
    "bridge": ["lxcbr-ghost"],
    "addresses": [{"ghost": "10.232.9.5/24"}],
    "mtu": [None, 1450],
    "timeout": [None, 1, 5.5],
    "argv": [["true"], ["sh", "-c", "exit 3"]],
    "stdin": [None, "text", b"bytes"],
    "env": [None, {"LANG": "C"}],
    "user": [None, "stack"],
    "subnet": ["1.1.1.0/24", "224.1.1.0/24"],
    "owner": [None, "ghost-owner"],
    "kind": ["vxlan", "ipip"],
    "local": ["198.18.0.1"],  # a lab's nodes are .10 and up
    "remote": ["198.18.0.2"],
    "local_subnets": [["10.232.9.0/24"], []],
    "remote_subnets": [["10.232.10.0/24"], []],
    "vni": [None, 4242],
}


@st.composite
def calls(draw):
    """(method, args, kwargs): all arguments generated, or all of the right shape but one, or all of the right
    shape; mostly the method's own arity, sometimes one argument too few or too many."""
    method = draw(st.sampled_from(sorted(arguments.SCHEMAS)))
    names = list(arguments.SCHEMAS[method])
    count = draw(st.sampled_from([len(names)] * 6 + [max(len(names) - 1, 0), len(names) + 1]))
    mode = draw(st.sampled_from(["generated", "one-generated", "plausible"]))
    odd = draw(st.integers(0, max(count - 1, 0)))
    args = [
        draw(st.sampled_from(PLAUSIBLE[names[index]]))
        if index < len(names) and (mode == "plausible" or (mode == "one-generated" and index != odd))
        else draw(values)
        for index in range(count)
    ]
    kwargs = {}
    if names and count == len(names) and draw(st.booleans()):
        kwargs[names[-1]] = args.pop()  # the last one by keyword
    return method, tuple(args), kwargs


def test_any_value_at_any_method_gets_a_project_error_and_changes_nothing(agent_in_host):
    process = agent_in_host
    agent = process.connect()
    # Start both worker pools, so what they hold is counted before.
    assert agent.list(["ghost"]) == []
    with pytest.raises(AgentError):
        agent.run("ghost", ["true"])
    before, fds = host_state(process), descriptors(process)
    errors = {}

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(calls())
    def one_call(call):
        method, args, kwargs = call
        try:
            getattr(agent, method)(*args, **kwargs)
        except AgentError as error:
            assert type(error) in ALL_ERRORS
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            assert len(str(error)) < 800, f"{method}: a refusal of {len(str(error))} characters"
        except Exception as error:
            raise AssertionError(f"{method}{args!r:.300} {kwargs!r:.200}: {type(error).__name__}: {error}") from error
        assert process.process.poll() is None, "the agent is still running"
        assert host_state(process) == before, f"{method}{args!r:.300} changed the host"
        assert not zombies(process), f"{method}{args!r:.300} left zombies"
        assert descriptors(process) <= fds + POOL_SLACK, f"{method}{args!r:.300}: descriptors grew"

    one_call()
    assert agent.info()["version"]
    assert errors.get("InvalidArgument", 0) > 50 and errors.get("NotFound", 0) > 0, errors
