"""The agent's container lifecycle through RPC, on real LXC, btrfs and netlink, checked with the real CLIs."""

import collections
import glob
import ipaddress
import json
import os
import re
import sys
from pathlib import Path

import pytest

from agent import containers
from agent.errors import BatchError, Conflict
from tests.support import agent_pid, descendants, lxc_states, sh, subvolumes

CLONES = [f"web-{i:03d}" for i in range(16)]
SUBNET = ipaddress.ip_network("10.231.7.0/24")
BRIDGE = "lxcbr-test"


def subvolume_field(path, field):
    for line in sh("btrfs", "subvolume", "show", path).splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == field:
            return value.strip()
    raise AssertionError(f"no {field!r} in `btrfs subvolume show {path}`")


def host_links(netns):
    return [link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=netns))]


def test_clone_sixteen_start_run_ping_and_tear_down(agent_in_host, sim_host, lxcpath, btrfs_mount):
    links_before = host_links(sim_host.netns)
    agent = agent_in_host.connect()
    assert agent.info()["storage"] == "btrfs"

    assert agent.create("base", "busybox") == {"name": "base", "created": True}
    network = agent.ensure_network(BRIDGE, str(SUBNET))
    assert network["gateway"] == "10.231.7.1"
    addresses = {name: f"{SUBNET[10 + i]}/24" for i, name in enumerate(CLONES)}

    assert agent.clone("base", CLONES) == CLONES
    assert agent.set_addresses(BRIDGE, addresses) == CLONES
    assert agent.start(CLONES) == CLONES

    assert agent.set_addresses(BRIDGE, addresses) == CLONES, "the same addresses again: nothing to do"
    with pytest.raises(Conflict, match="are running; stop them before changing addresses"):
        agent.set_addresses(BRIDGE, {CLONES[0]: f"{SUBNET[200]}/24"})

    states = agent_in_host.states()
    assert {name: states[name] for name in CLONES} == dict.fromkeys(CLONES, "RUNNING")
    assert states["base"] == "STOPPED"
    base_uuid = subvolume_field(os.path.join(lxcpath, "base", "rootfs"), "UUID")
    for name in CLONES:
        assert subvolume_field(os.path.join(lxcpath, name, "rootfs"), "Parent UUID") == base_uuid

    for name in CLONES:
        assert agent.run(name, ["hostname"])["stdout"].strip() == name
        shown = agent.run(name, ["ip", "-4", "addr", "show", "eth0"])["stdout"]
        assert re.search(rf"inet {re.escape(addresses[name])}\b", shown), shown
        ping = agent.run(name, ["ping", "-c", "1", "-W", "2", network["gateway"]])
        assert ping["exit_code"] == 0, ping
    listed = {entry["name"]: entry for entry in agent.list(CLONES)}
    assert all(listed[name]["addresses"] == [addresses[name].split("/")[0]] for name in CLONES)
    assert all(listed[name]["memory"] > 0 for name in CLONES)

    assert agent.stop(CLONES) == CLONES
    assert set(agent_in_host.states().values()) == {"STOPPED"}
    assert agent.destroy(CLONES + ["base"]) == CLONES + ["base"]
    agent.destroy_network(BRIDGE)

    assert agent_in_host.states() == {}
    assert len(agent.destroy_images()) == 1, "destroy() keeps the template's image; destroy_images() removes it"
    assert [path for path in subvolumes(btrfs_mount) if path.startswith(os.path.basename(lxcpath))] == []
    assert host_links(sim_host.netns) == links_before


def test_every_operation_is_idempotent(loopback_agent, lxcpath):
    agent = loopback_agent.connect()
    assert agent.create("solo", "busybox")["created"] is True
    assert agent.create("solo", "busybox")["created"] is False
    assert agent.clone("solo", ["twin"]) == ["twin"]
    assert agent.clone("solo", ["twin"]) == ["twin"]
    # No network assigned: the container runs with loopback only.
    assert agent.start(["twin"]) == ["twin"]
    assert agent.start(["twin"]) == ["twin"]
    assert agent.stop(["twin"]) == ["twin"]
    assert agent.stop(["twin"]) == ["twin"]
    assert agent.destroy(["twin", "solo"]) == ["twin", "solo"]
    assert agent.destroy(["twin", "solo"]) == ["twin", "solo"]
    assert lxc_states(lxcpath) == {}


def test_a_clone_does_not_see_later_changes_to_its_source(loopback_agent, lxcpath):
    agent = loopback_agent.connect()
    agent.create("origin", "busybox")
    agent.clone("origin", ["copy1"])
    with open(os.path.join(lxcpath, "origin", "rootfs", "etc", "after-clone"), "w") as handle:
        handle.write("written after the clone\n")
    assert not os.path.exists(os.path.join(lxcpath, "copy1", "rootfs", "etc", "after-clone"))
    agent.start(["copy1"])
    assert agent.run("copy1", ["ls", "/etc/after-clone"])["exit_code"] != 0
    assert agent.run("copy1", ["cat", "/etc/hostname"])["stdout"] == "copy1\n"


def test_copy_backend_makes_independent_full_copies(lxcpath, start_agent):
    agent = start_agent(lxcpath, "--storage", "copy").connect()
    assert agent.info()["storage"] == "copy"
    agent.create("plain", "busybox")
    assert agent.clone("plain", ["plain-copy"]) == ["plain-copy"]
    clone_rootfs = os.path.join(lxcpath, "plain-copy", "rootfs")
    assert os.path.exists(os.path.join(clone_rootfs, "bin", "busybox"))
    assert sh("stat", "-c", "%i", clone_rootfs).strip() != "256", "a copy is not a btrfs subvolume"
    agent.start(["plain-copy"])
    assert agent.run("plain-copy", ["hostname"])["stdout"].strip() == "plain-copy"
    agent.destroy(["plain-copy", "plain"])
    assert lxc_states(lxcpath) == {}


def test_a_batch_that_fails_part_way_names_both_sides_and_leaves_nothing_half_made(loopback_agent, lxcpath):
    agent = loopback_agent.connect()
    agent.create("first", "busybox")
    agent.create("other", "busybox")
    agent.clone("other", ["taken"])
    with pytest.raises(BatchError) as caught:
        agent.clone("first", ["fresh-1", "taken", "fresh-2"])
    error = caught.value
    assert error.succeeded == ["fresh-1", "fresh-2"]
    assert list(error.failed) == ["taken"] and "a clone of 'other'" in error.failed["taken"]
    assert sorted(lxc_states(lxcpath)) == ["first", "fresh-1", "fresh-2", "other", "taken"]
    assert os.path.exists(os.path.join(lxcpath, "first", "rootfs", "bin", "busybox")), "source intact"


def test_run_passes_stdin_env_user_and_exit_code(loopback_agent):
    agent = loopback_agent.connect()
    agent.create("runner", "busybox")
    agent.start(["runner"])
    result = agent.run(
        "runner",
        ["sh", "-c", 'read line; echo "$line $GREETING $(id -u)"; echo oops >&2; exit 7'],
        stdin="hello\n",
        env={"GREETING": "world"},
    )
    assert result == {"exit_code": 7, "stdout": "hello world 0\n", "stderr": "oops\n"}
    agent.run("runner", ["sh", "-c", "echo 'tester:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd"])
    as_tester = agent.run("runner", ["sh", "-c", 'echo "$(id -u) $HOME $USER $(pwd)"'], user="tester")
    assert as_tester["stdout"] == "1234 /tmp tester /tmp\n"
    big = agent.run("runner", ["sh", "-c", "yes 0123456789 | head -c 3000000"])
    assert len(big["stdout"]) == 3000000


def test_running_a_command_in_a_stopped_container_is_refused(loopback_agent):
    agent = loopback_agent.connect()
    agent.create("idle", "busybox")
    with pytest.raises(Conflict, match="'idle' is not running; start it first"):
        agent.run("idle", ["true"])


def monitor_cgroups(names):
    """liblxc's monitor cgroups of the containers `names` in every hierarchy, v1 and v2 (lxc.monitor.NAME[-N]),
    at the top or up to three levels down."""
    found = set()
    for name in names:
        for pattern in (f"lxc.monitor.{name}", f"lxc.monitor.{name}-*"):
            for depth in ("", "*/", "*/*/", "*/*/*/"):
                found |= set(glob.glob(f"/sys/fs/cgroup/{depth}{pattern}"))
    return found


def test_a_start_leaves_the_agent_in_its_own_cgroups_and_a_stop_leaves_no_cgroup_behind(loopback_agent):
    """liblxc moves whoever calls a daemonized start into the container's monitor cgroup. The agent's workers must
    not be that caller: they would be charged to the container, and its monitor cgroup could not be removed at
    its stop (empty lxc.monitor.* cgroups piled up by the thousand on a host, in every hierarchy). Containers sit
    under lxc-agent/, which on cgroup v1 passes its CPUs on (no cpuset write walking every cpuset at each start),
    in a folder of their own of 64 there (containers.cgroup_dir)."""
    names = ["cgroups-a", "cgroups-b"]
    before = monitor_cgroups(names)
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    agent.clone("base", names)
    assert agent.start(names) == names

    agent_process = agent_pid(loopback_agent.process)
    home = Path(f"/proc/{agent_process}/cgroup").read_text()
    ours = [agent_process, *descendants(agent_process)]
    assert len(ours) > 1, "the agent and its workers"
    assert {pid: Path(f"/proc/{pid}/cgroup").read_text() for pid in ours} == dict.fromkeys(ours, home)
    assert monitor_cgroups(names) - before, "liblxc made monitor cgroups for the running containers"
    init = sh("lxc-info", "-P", loopback_agent.lxcpath, "-n", names[0], "-p", "-H").strip()
    placed = [line.split(":", 2)[2] for line in Path(f"/proc/{init}/cgroup").read_text().splitlines()]
    cgroup_v1 = os.path.isdir("/sys/fs/cgroup/cpuset")
    parent = containers.cgroup_dir("cgroups-a", cpuset_v1=cgroup_v1)
    assert all(path.startswith(f"/{parent}/lxc.payload.cgroups-a") for path in placed), placed
    if cgroup_v1:  # the parents pass their CPUs on to what starts in them
        assert Path("/sys/fs/cgroup/cpuset/lxc-agent/cgroup.clone_children").read_text().strip() == "1"
        assert Path(f"/sys/fs/cgroup/cpuset/{parent}/cgroup.clone_children").read_text().strip() == "1"
        monitors = {path for path in monitor_cgroups(["cgroups-a"]) if "/cpuset/" in path}
        assert monitors == {f"/sys/fs/cgroup/cpuset/{parent}/lxc.monitor.cgroups-a"}, monitors

    agent.stop(names)
    assert monitor_cgroups(names) - before == set(), "each monitor removed its cgroup at the stop"
    agent.destroy([*names, "base"])


def test_on_cgroup_v1_containers_are_spread_over_64_cgroup_folders_by_name():
    """A cpuset made on cgroup v1 walks every cpuset beside it: 2,000 containers' cgroups go into 64 folders of
    about 60, each container's always the same. Without the cpuset walk (cgroup v2) they stay in one."""
    names = [f"compute-{i:04d}" for i in range(2000)]
    folders = [containers.cgroup_dir(name, cpuset_v1=True) for name in names]
    assert folders == [containers.cgroup_dir(name, cpuset_v1=True) for name in names]
    assert all(re.fullmatch(r"lxc-agent/[0-9]{2}", folder) for folder in folders), folders[:5]
    counts = collections.Counter(folders)
    assert len(counts) == 64 and max(counts.values()) <= 60, counts.most_common(3)
    assert {containers.cgroup_dir(name, cpuset_v1=False) for name in names} == {"lxc-agent"}


def test_a_container_without_an_mtu_of_its_own_takes_its_bridges_at_each_start(agent_in_host, sim_host, lxcpath):
    """The agent reads the bridge's MTU for liblxc, which would otherwise dump every link of the host to learn it
    (a start took 65 ms instead of 20 with 1,250 containers running). It is read at each start, not stored."""
    agent = agent_in_host.connect()
    agent.create("base", "busybox")
    agent.ensure_network(BRIDGE, str(SUBNET))
    agent.set_addresses(BRIDGE, {"base": f"{SUBNET[10]}/24"})
    for mtu in (1400, 1300):
        sh("ip", "link", "set", BRIDGE, "mtu", str(mtu), netns=sim_host.netns)
        assert agent.start(["base"]) == ["base"]
        assert f"mtu {mtu} " in agent.run("base", ["ip", "link", "show", "eth0"])["stdout"]
        asked = f"import lxc; print(lxc.Container('base', {lxcpath!r}).get_running_config_item('lxc.net.0.mtu'))"
        given = sh(sys.executable, "-c", asked, netns=sim_host.netns)  # from its monitor: no CLI tells it
        assert given.strip() == str(mtu), "the agent gave liblxc the MTU"
        agent.stop(["base"], 0)
    with open(os.path.join(lxcpath, "base", "config")) as handle:
        assert "lxc.net.0.mtu" not in handle.read(), "nothing stored: the next start reads the bridge again"
    agent.destroy(["base"])
    agent.destroy_network(BRIDGE)


def rss_anon_kib(pid):
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["RssAnon"].split()[0])


def test_a_containers_monitor_is_a_copy_of_the_small_starter_not_of_a_worker(loopback_agent):
    """liblxc's monitor, which lives as long as its container, is a fork of whatever called start: agent.starter,
    which imports little, not a worker holding the agent's heap (see agent.starter for what that cost)."""
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    agent.clone("base", ["watched"])
    assert agent.start(["watched"]) == ["watched"]
    init = sh("lxc-info", "-P", loopback_agent.lxcpath, "-n", "watched", "-p", "-H").strip()
    monitor = int(Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "lxc monitor" in Path(f"/proc/{monitor}/cmdline").read_text(), "init's parent is its monitor"
    agent_process = agent_pid(loopback_agent.process)
    workers = [pid for pid in descendants(agent_process) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, "the worker that ran the start"
    assert rss_anon_kib(monitor) * 2 < min(rss_anon_kib(pid) for pid in workers), (
        rss_anon_kib(monitor),
        [rss_anon_kib(pid) for pid in workers],
    )
    agent.destroy(["watched", "base"])
