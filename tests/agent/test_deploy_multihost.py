"""`coordinator deploy` across three simulated hardware nodes on one lab switch, end to end on real containers.

Node 0 holds the controller (LxcProvider, Debian); nodes 1 and 2 an LxcEngine group of 4 computes each (1 first +
3 clones) with `tunnel_to` node 0. Checked: each node's subnet, traffic both ways between every compute and the
controller with the sender's own address (no NAT), no route between the compute nodes, a second deployment on a
subnet the first holds refused, and after `coordinator destroy` every node's links, addresses, policy rules, routes
(all tables), nft ruleset and ip_forward exactly as before. ipip where the kernel has it; where it does not
(CONFIG_NET_IPIP unset), the deploy must refuse before changing anything.
"""

import concurrent.futures
import contextlib
import difflib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from agent import pki
from examples.fake_devstack import make_fake_devstack_repo
from simlab import AgentProcess, Lab, unique
from tests.agent.conftest import IMAGE_PACKAGES
from tests.agent.test_deploy_e2e import assert_every_compute_reports, config_for, coordinator
from tests.support import sh

pytestmark = pytest.mark.slow

PER_NODE = 4
PROBE_PORT = 47123

# Listens on a port, accepts `count` connections and prints each peer's address: what the sender's packets said.
SERVER = """
import socket, sys
port, count, wait = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with socket.create_server(("0.0.0.0", port)) as server:
    server.settimeout(wait)
    for _ in range(count):
        connection, (peer, _) = server.accept()
        print(peer, flush=True)
        connection.close()
"""

# Connects (again until the listener is up and the path answers) and prints its own address for the connection.
CLIENT = """
import socket, sys, time
address, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + wait
while True:
    try:
        with socket.create_connection((address, port), timeout=5) as sock:
            print(sock.getsockname()[0])
            break
    except OSError:  # refused until the listener is up; a first SYN may also wait on the fresh tunnel path
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
"""

# One connection attempt: prints "connected", or the errno and how long the failure took.
ATTEMPT = """
import socket, sys, time
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as error:
    print(error.errno, round(time.monotonic() - started, 2))
"""


def warm(lxcpath, pki_dir):
    """The Debian image into lxcpath's cache, by a loopback agent here (the nodes have no route to the mirror)."""
    process = AgentProcess(lxcpath, pki_dir)
    try:
        agent = process.connect()
        agent.create("image-warmer", "debian", "bookworm", IMAGE_PACKAGES)
        agent.destroy(["image-warmer"])
    finally:
        process.stop(keep_containers=True)


@pytest.fixture(scope="module")
def nodes(btrfs_mount, pki_dir, tmp_path_factory):
    """Three simulated nodes, each with its own lxcpath holding the image and an agent on its own port; one PKI
    whose agent certificate names all three addresses (as `lxc-agent init-pki --agent-name` would, repeated)."""
    lab = Lab()
    agents, lxcpaths = [], []
    try:
        hosts = [lab.add_host() for _ in range(3)]
        node_pki = str(tmp_path_factory.mktemp("multihost") / "pki")
        pki.create_pki(node_pki, [host.address for host in hosts])
        for _ in hosts:
            lxcpaths.append(os.path.join(btrfs_mount, unique("multihost-")))
            os.mkdir(lxcpaths[-1])
        # The template's cache copy is serialised by its own lock; the package installs run side by side.
        with concurrent.futures.ThreadPoolExecutor(len(lxcpaths)) as pool:
            for future in [pool.submit(warm, lxcpath, pki_dir) for lxcpath in lxcpaths]:
                future.result()
        for host, lxcpath in zip(hosts, lxcpaths, strict=True):
            agents.append(AgentProcess(lxcpath, node_pki, host=host))
        yield agents
    finally:
        for process in agents:
            with contextlib.suppress(Exception):
                process.connect().destroy_images()
            process.stop()
        lab.remove()
        for lxcpath in lxcpaths:
            shutil.rmtree(lxcpath, ignore_errors=True)


def network_state(netns):
    """What a deploy may change in a node's network namespace, as the real CLIs print it, whole; only the bridges'
    running timers (`gc_timer 285.57`, `forward_delay_timer 4.87` in `ip -d link`) are blanked: they tick."""
    commands = {
        "links": ("ip", "-d", "link"),
        "addresses": ("ip", "-4", "addr"),
        "rules": ("ip", "rule"),
        "routes": ("ip", "route", "show", "table", "all"),
        "nft": ("nft", "list", "ruleset"),
        "ip_forward": ("cat", "/proc/sys/net/ipv4/ip_forward"),
    }
    found = {what: sh(*argv, netns=netns) for what, argv in commands.items()}
    found["links"] = re.sub(r"\b(\w+_timer)\s+[0-9.]+", r"\1 -", found["links"])
    return found


def states(nodes):
    return [network_state(node.netns) for node in nodes]


def assert_same(now, then, why):
    """Equal, or a failure showing the lines that differ per node and command."""
    if now == then:
        return
    shown = []
    for index, (new, old) in enumerate(zip(now, then, strict=True)):
        for what in old:
            if new[what] != old[what]:
                shown.append(f"node {index} {what}:")
                shown += difflib.unified_diff(old[what].splitlines(), new[what].splitlines(), lineterm="", n=0)
    raise AssertionError(why + "\n" + "\n".join(shown))


def multihost_config(nodes, repo, tunnel_type):
    controller, computes = nodes[0], nodes[1:]
    config = config_for(controller.host, controller.port, repo)
    group = config["nodes"][0]
    group.update(nodes_per_server=PER_NODE, tunnel_to=[controller.host], tunnel_type=tunnel_type)
    group["provider"]["credentials"] = [{"user": "root", "host": node.host, "port": node.port} for node in computes]
    return config


def setup(nodes, tmp_path, tunnel_type):
    repo = make_fake_devstack_repo(str(tmp_path / "devstack"))
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(multihost_config(nodes, repo, tunnel_type)))
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", nodes[0].pki_dir]
    return config, common


def run_in(node, container, script, *args, timeout=60):
    """python3 -c script in a container, through the node's agent (a proxy of this thread's own)."""
    result = node.connect().run(container, ["python3", "-c", script, *map(str, args)], timeout=timeout)
    assert result["exit_code"] == 0, f"{container}: {result['stderr']}"
    return result["stdout"].split()


def probe(server_node, server, clients, port=PROBE_PORT):
    """A listener in `server`, a connection from each (node, container, address) in `clients`, all at once:
    returns (addresses the listener saw, addresses the clients used)."""
    with concurrent.futures.ThreadPoolExecutor(len(clients) + 1) as pool:
        seen = pool.submit(run_in, server_node, server["name"], SERVER, port, len(clients), 90)
        used = [pool.submit(run_in, node, name, CLIENT, server["address"], port, 60) for node, name, _ in clients]
        return sorted(seen.result()), sorted(address for future in used for address in future.result())


def ipip_available(nodes):
    return nodes[0].connect().info()["kernel_features"]["ipip"]


@pytest.mark.parametrize("tunnel_type", ["vxlan", "ipip"])
def test_three_nodes_deploy_reach_each_other_without_nat_and_destroy_restores_every_node(nodes, tmp_path, tunnel_type):
    if tunnel_type == "ipip" and not ipip_available(nodes):
        pytest.skip(
            "this kernel has no ipip tunnels (CONFIG_NET_IPIP is not set); "
            "test_ipip_on_a_kernel_without_it_is_refused_before_anything_changes checks the refusal"
        )
    config, common = setup(nodes, tmp_path, tunnel_type)
    name = f"multi-{tunnel_type}"
    before = states(nodes)
    started = time.monotonic()
    deployed = coordinator("deploy", str(config), "--name", name, "--log-dir", str(tmp_path / "logs"), *common)
    try:
        print(f"deploy took {time.monotonic() - started:.1f} s\n{deployed.stderr}")
        plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)

        # The plan: node i gets start + i (the default start, 10.100.1.0/24), and tunnels from nodes 1 and 2 to 0.
        start = ipaddress.ip_network("10.100.1.0/24")
        assert [(h["address"], h["subnet"]) for h in plan["hosts"]] == [
            (node.host, str(ipaddress.ip_network((int(start.network_address) + i * start.num_addresses, 24))))
            for i, node in enumerate(nodes)
        ]
        assert [(t["kind"], t["host"], t["remote_host"]) for t in plan["tunnels"]] == [
            (tunnel_type, node.host, nodes[0].host) for node in nodes[1:]
        ]
        by_host = {node.host: node for node in nodes}
        computes = [n for n in plan["nodes"] if n["role"] == "compute"]
        controller = next(n for n in plan["nodes"] if n["role"] == "controller")
        assert len(computes) == 2 * PER_NODE and controller["host"] == nodes[0].host
        for node in nodes:
            assert node.states() == {n["name"]: "RUNNING" for n in plan["nodes"] if n["host"] == node.host}
        for compute in computes:
            assert ipaddress.ip_address(compute["address"]) in ipaddress.ip_network(compute["subnet"])

        # Computes -> controller: the fake devstack's reports, then a listener that sees each sender's address.
        assert_every_compute_reports(nodes[0].connect(), plan)
        seen, used = probe(nodes[0], controller, [(by_host[c["host"]], c["name"], c["address"]) for c in computes])
        assert seen == used == sorted(c["address"] for c in computes), "each compute arrives as itself: no NAT"
        # Controller -> each compute: the compute's listener sees the controller's own address.
        for compute in computes:
            seen, used = probe(by_host[compute["host"]], compute, [(nodes[0], controller["name"], None)])
            assert seen == used == [controller["address"]], compute["name"]

        # Node 1's computes have no way to node 2's: no route, so the attempt fails at once, not by a timeout.
        one = next(c for c in computes if c["host"] == nodes[1].host)
        two = next(c for c in computes if c["host"] == nodes[2].host)
        errno, seconds = run_in(nodes[1], one["name"], ATTEMPT, two["address"], 22, 5)
        assert int(errno) in (101, 113) and float(seconds) < 3, f"errno {errno} after {seconds} s"
        node_two_prefix = str(ipaddress.ip_network(two["subnet"]).network_address).rsplit(".", 1)[0] + "."
        assert node_two_prefix not in sh("ip", "route", "show", "table", "all", netns=nodes[1].netns)
        lookup = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                nodes[1].netns,
                "ip",
                "route",
                "get",
                two["address"],
                "from",
                one["address"],
                "iif",
                one["bridge"],
            ],
            capture_output=True,
            text=True,
        )
        assert lookup.returncode != 0 and "unreachable" in lookup.stderr, f"node 1 routes it: {lookup.stdout}"

        # A second deployment asking for the subnet the first holds on node 0 is refused before changing anything.
        during = states(nodes)
        other = tmp_path / "other.json"
        credentials = [{"host": nodes[0].host, "port": nodes[0].port}]
        other.write_text(
            json.dumps(
                {
                    "type": "DevstackEngine",
                    "devstack_repo": str(tmp_path / "devstack"),
                    "localrc": {"ENABLED_SERVICES": "key,mysql,rabbit,n-api,n-cond,n-sch,placement-api,g-api,q-svc"},
                    "provider": {
                        "type": "LxcProvider",
                        "distribution": "debian",
                        "release": "bookworm",
                        "host_provider": {"type": "ExistingServers", "credentials": credentials},
                    },
                }
            )
        )
        refused = coordinator("deploy", str(other), "--name", "second", *common, check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (
            f"coordinator deploy: nothing was changed: host {nodes[0].host}: subnet 10.100.1.0/24 (bridge "
            f"lxcbr-0a640100) is in use by deployment '{name}'"
        ) in refused.stderr
        assert "Traceback" not in refused.stderr
        assert_same(states(nodes), during, "the refused deploy changed the nodes")
        assert "second" not in coordinator("list", *common).stdout, "a refused deploy leaves no record to destroy"

    except BaseException:
        coordinator("destroy", name, *common, check=False)  # the module's nodes serve the next test too
        raise

    coordinator("destroy", name, *common)
    for node in nodes:
        assert node.states() == {}
    assert_same(states(nodes), before, "every node's links, addresses, rules, routes, nft and ip_forward as before")


def test_ipip_on_a_kernel_without_it_is_refused_before_anything_changes(nodes, tmp_path):
    if ipip_available(nodes):
        pytest.skip("this kernel has ipip: test_three_nodes_deploy_...[ipip] deploys with it instead")
    config, common = setup(nodes, tmp_path, "ipip")
    before = states(nodes)
    refused = coordinator("deploy", str(config), "--name", "multi-ipip", *common, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    assert "coordinator deploy: nothing was changed:" in message, message
    for node in nodes:  # the tunnels' ends: nodes 1 and 2, and node 0 for the way back
        assert (
            f"host {node.host}: this kernel has no ipip tunnels (CONFIG_NET_IPIP is not set), which tunnel_type "
            f'"ipip" needs; use "tunnel_type": "vxlan"'
        ) in message
    assert "Traceback" not in message
    assert_same(states(nodes), before, "the refused deploy changed the nodes")
    assert all(node.states() == {} for node in nodes)
    assert "multi-ipip" not in coordinator("list", *common).stdout
