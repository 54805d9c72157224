"""The agent's log records every change it makes to its host, and every call it refuses, from a real agent."""

import os
import re

import pytest

from agent.errors import AuthenticationError, Conflict, InvalidArgument, NotFound

SUBNET = "10.231.9.0/24"
BRIDGE = "lxcbr-log"
TUNNEL = "lxtlog"


def records(agent_process):
    """(level, logger, message) of each line of the agent's log, workers' lines included."""
    with open(agent_process.log) as handle:
        return [match.groups() for match in re.finditer(r"^\S+ \S+ (\w+) ([\w.]+): (.*)$", handle.read(), re.M)]


def assert_logged(agent_process, level, logger, pattern):
    found = records(agent_process)
    assert any(seen[:2] == (level, logger) and re.search(pattern, seen[2]) for seen in found), (
        f"no {level} {logger} line matching {pattern!r} in:\n" + "\n".join(" ".join(seen) for seen in found)
    )


def test_container_changes_and_refusals_are_logged(agent_in_host):
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, SUBNET, owner="log-test")
    agent.clone("base", ["web"])
    agent.set_addresses(BRIDGE, {"web": "10.231.9.10/24"})
    agent.start(["web"])
    agent.stop(["web"], timeout=1)
    agent.destroy(["web", "base"])
    agent.destroy_images()
    agent.destroy_network(BRIDGE, owner="log-test")

    containers, storage = "agent.containers", "agent.storage"
    assert_logged(agent_in_host, "INFO", containers, r"^image busybox-default-\w+: built from template 'busybox'")
    assert_logged(agent_in_host, "INFO", containers, r"^container base: created from image busybox-default-")
    assert_logged(agent_in_host, "INFO", containers, r"^container web: cloned from base \(btrfs\)")
    assert_logged(
        agent_in_host,
        "INFO",
        containers,
        r"^container web: address 10\.231\.9\.10/24 on bridge "
        rf"{BRIDGE} via 10\.231\.9\.1$",
    )
    assert_logged(agent_in_host, "INFO", containers, r"^container web: started$")
    assert_logged(agent_in_host, "INFO", containers, r"^container web: stopped \((halted|killed)\)$")
    for name in ("web", "base"):
        assert_logged(agent_in_host, "INFO", containers, rf"^container {name}: destroyed$")
    assert_logged(agent_in_host, "INFO", storage, r"^image busybox-default-\w+: removed$")
    assert_logged(agent_in_host, "INFO", "agent.network", rf"^bridge {BRIDGE}: created")
    assert_logged(agent_in_host, "INFO", "agent.network", rf"^bridge {BRIDGE}: address 10\.231\.9\.1/24$")
    assert_logged(agent_in_host, "INFO", "agent.network", r"ip_forward to 1$")
    assert_logged(agent_in_host, "INFO", "agent.firewall", rf"masquerade 10\.231\.9\.0/24 .* bridge {BRIDGE}")
    assert_logged(agent_in_host, "INFO", "agent.firewall", rf"removed the masquerade of bridge {BRIDGE}")
    assert_logged(agent_in_host, "INFO", "agent.network", rf"^bridge {BRIDGE}: removed$")

    # Refused: once each, at WARNING, with the method's name.
    with pytest.raises(InvalidArgument):
        agent.start(["../escape"])
    with pytest.raises(NotFound):
        agent.stop(["absent"])
    agent.create("again", "busybox")
    agent.clone("again", ["again-clone"])
    with pytest.raises(Conflict):
        agent.create("again-clone", "busybox")
    with pytest.raises(AuthenticationError):
        agent_in_host.connect(token="not-the-token")
    refused = [
        re.match(r"refused (the connection|\w+)", message).group(1)
        for level, _, message in records(agent_in_host)
        if level == "WARNING" and message.startswith("refused")
    ]
    assert refused == ["start", "stop", "create", "the connection"]
    agent.destroy(["again", "again-clone"])


def test_a_tunnel_and_its_rules_are_logged(lab, start_agent, lxcpath):
    ends = []
    for side in ("a", "b"):
        host = lab.add_host()
        os.mkdir(os.path.join(lxcpath, side))
        ends.append((host, start_agent(os.path.join(lxcpath, side), host=host)))
    (host_a, process_a), (host_b, _) = ends
    agent = process_a.connect()
    agent.ensure_tunnel(TUNNEL, "vxlan", host_a.address, host_b.address, [SUBNET], ["10.231.10.0/24"])
    agent.destroy_tunnel(TUNNEL)

    for pattern in (
        rf"^tunnel {TUNNEL}: created, vxlan from {host_a.address} to {host_b.address} \(vni \d+\)$",
        rf"^tunnel {TUNNEL}: MTU \d+$",
        rf"^tunnel {TUNNEL}: transit address 169\.254\.",
        rf"^tunnel {TUNNEL}: up$",
        rf"^tunnel {TUNNEL}: route to 10\.231\.10\.0/24 via 169\.254\.",
        rf"^tunnel {TUNNEL}: rule from {SUBNET} to 10\.231\.10\.0/24 lookup \d+$",
        rf"^tunnel {TUNNEL}: removed the rule from {SUBNET} to 10\.231\.10\.0/24 lookup \d+$",
        rf"^tunnel {TUNNEL}: removed the route to 10\.231\.10\.0/24 from table \d+$",
        rf"^tunnel {TUNNEL}: removed$",
        rf"^tunnel {TUNNEL}: set /proc/sys/net/ipv4/conf/{TUNNEL}/rp_filter to 2$",
    ):
        logger = "agent.network" if "rp_filter" in pattern else "agent.tunnels"
        assert_logged(process_a, "INFO", logger, pattern)
    assert_logged(process_a, "INFO", "agent.firewall", rf"tunnel {TUNNEL} is exempt from masquerade")
    assert_logged(process_a, "INFO", "agent.firewall", rf"removed the masquerade exemption of tunnel {TUNNEL}")
