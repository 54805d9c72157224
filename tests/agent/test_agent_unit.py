"""The systemd unit the agent ships: hardened as far as a manager of privileged containers can be, and an agent
under its capability bounding set and umask still makes, starts, networks, runs, stops and removes containers.

PID 1 here is not systemd, so the unit's capability bounding set and umask are applied with setpriv and sh, which
is how systemd applies them; its namespaces and seccomp filters were checked under a real systemd (README,
Security).
"""

import ipaddress
import os
import re
import shutil
import subprocess

import pytest

from simlab import AgentProcess
from tests.support import lxc_states

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lxc-agent.service")
# The exposure systemd-analyze rated the unit before it was hardened: 9.6 (UNSAFE).
MAX_EXPOSURE = 6.5
REQUIRED = {
    "UMask": "0077",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectClock": "yes",
    "ProtectKernelLogs": "yes",
    "RestrictRealtime": "yes",
}
# Each would break the agent or its containers; the unit says why in a comment.
UNUSABLE = ["NoNewPrivileges", "ProtectKernelTunables", "ProtectControlGroups", "PrivateDevices", "ProtectHostname"]
SUBNET = ipaddress.ip_network("10.231.13.0/24")
BRIDGE = "lxcbr-unit"


def unit_settings():
    """name -> values (in order) of the [Service] section; comments apart."""
    settings: dict[str, list[str]] = {}
    comments = []
    section = None
    with open(UNIT) as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("#"):
                comments.append(line)
            elif line.startswith("["):
                section = line
            elif "=" in line and section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings, "\n".join(comments)


def systemd_analyze(*argv):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(["systemd-analyze", *argv], capture_output=True, text=True, timeout=60)


def test_the_unit_is_hardened_and_verified():
    settings, comments = unit_settings()
    assert {key: settings.get(key, [None])[-1] for key in REQUIRED} == REQUIRED
    families = set(" ".join(settings.get("RestrictAddressFamilies", [])).split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= families
    assert "AF_PACKET" not in families
    dropped = " ".join(settings.get("CapabilityBoundingSet", []))
    assert dropped.startswith("~") and {"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME"} <= set(dropped[1:].split())
    for option in UNUSABLE:
        assert option not in settings, f"{option} would break the agent or its containers"
        assert re.search(rf"^#\s+(\S+, )*{option}\b", comments, re.M), f"the unit does not say why not {option}"

    verified = systemd_analyze("verify", "--man=no", UNIT)
    problems = [
        line
        for line in verified.stderr.splitlines()
        if "lxc-agent.service" in line and "Command /usr/local/bin/lxc-agent" not in line
    ]
    assert problems == [], verified.stderr
    rated = systemd_analyze("security", "--offline=true", "--no-pager", UNIT)
    exposure = re.search(r"Overall exposure level for lxc-agent\.service: (\d+\.\d+)", rated.stdout)
    assert exposure, rated.stdout + rated.stderr
    assert float(exposure.group(1)) <= MAX_EXPOSURE, rated.stdout


class UnderTheUnit:
    """A simulated host (simlab) whose agent runs with the unit's capability bounding set (setpriv drops each) and
    umask, as systemd would start it."""

    def __init__(self, host):
        settings, _ = unit_settings()
        dropped = " ".join(settings["CapabilityBoundingSet"]).lstrip("~").split()
        self.bounding_set = ",".join("-" + cap.lower().removeprefix("cap_") for cap in dropped)
        self.umask = settings["UMask"][-1]
        self.host = host
        self.netns, self.address = host.netns, host.address

    def enter(self, argv):
        return self.host.enter(
            [
                *("setpriv", "--bounding-set", self.bounding_set, "--"),
                *("sh", "-c", f'umask {self.umask} && exec "$@"', "sh", *argv),
            ]
        )


def status_fields(pid, *fields):
    with open(f"/proc/{pid}/status") as handle:
        found = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    return [found[field] for field in fields]


def test_an_agent_under_the_units_capabilities_and_umask_runs_containers(lxcpath, pki_dir, sim_host):
    host = UnderTheUnit(sim_host)
    netns = sim_host.netns
    process = AgentProcess(lxcpath, pki_dir, host=host)
    try:
        agent_pid = subprocess.run(
            ["pgrep", "-f", f"agent.daemon serve .*--lxcpath {lxcpath} "], capture_output=True, text=True
        ).stdout.split()
        assert len(agent_pid) == 1, agent_pid
        umask, bounding = status_fields(agent_pid[0], "Umask", "CapBnd")
        assert umask == host.umask
        assert not int(bounding, 16) & (1 << 16), "CAP_SYS_MODULE (16) is out of the agent's bounding set"

        agent = process.connect()
        agent.create("unit-base", "busybox")
        assert agent.clone("unit-base", ["unit-a", "unit-b"]) == ["unit-a", "unit-b"]
        gateway = agent.ensure_network(BRIDGE, str(SUBNET))["gateway"]
        addresses = {"unit-a": f"{SUBNET[10]}/24", "unit-b": f"{SUBNET[11]}/24"}
        assert agent.set_addresses(BRIDGE, addresses) == ["unit-a", "unit-b"]
        assert agent.start(["unit-a", "unit-b"]) == ["unit-a", "unit-b"]
        made = agent.run("unit-a", ["sh", "-c", "umask; echo x > /made; stat -c %a /made; grep CapBnd /proc/1/status"])
        assert made["stdout"].split()[:2] == ["0022", "644"], made
        assert int(made["stdout"].split()[-1], 16) & ~int(bounding, 16) == 0, "the container inherits the set"
        for target in (gateway, str(SUBNET[11])):
            ping = agent.run("unit-a", ["ping", "-c", "1", "-W", "2", target])
            assert ping["exit_code"] == 0, ping
        assert agent.stop(["unit-a", "unit-b"], 20) == ["unit-a", "unit-b"]
        with open(process.log) as handle:
            assert "unit-a: stopped (halted)" in handle.read(), "init halts itself (CAP_SYS_BOOT is kept)"
        assert agent.destroy(["unit-base", "unit-a", "unit-b"]) == ["unit-base", "unit-a", "unit-b"]
        agent.destroy_network(BRIDGE)
        assert lxc_states(lxcpath, netns) == {}
        assert len(agent.destroy_images()) == 1
        assert os.listdir(lxcpath) == []
    finally:
        process.stop()
