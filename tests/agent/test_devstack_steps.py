"""DevstackEngine's steps inside a real Debian container (systemd as init), with the offline stand-in for devstack
(examples/fake-devstack) served from a git repository on this machine as a bundle."""

import json
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import InvalidArgument
from coordinator import devstack, nova, topology
from coordinator.config import validate
from examples.fake_devstack import make_fake_devstack_repo
from simlab import AgentProcess, unique
from tests.support import system_state

PACKAGES = ["git", "sudo", "python3"]
FIRST = "10.100.1.2"  # never assigned: the stand-in only reports HOST_IP, it does not bind to it
CLONE = "10.100.1.3"


@pytest.fixture(scope="module")
def agent(btrfs_mount, pki_dir):
    """One agent for the module, so the Debian image (with git, sudo, python3) is made once and every test's
    container is made from it. Loopback agent: its containers have no network, only lo."""
    lxcpath = os.path.join(btrfs_mount, unique("devstack-steps-"))
    os.mkdir(lxcpath)
    process = AgentProcess(lxcpath, pki_dir)
    try:
        proxy = process.connect()
        try:
            proxy.create(unique("deb-image-"), "debian", release="bookworm", packages=PACKAGES)
        except (TypeError, InvalidArgument) as error:
            pytest.skip(
                f"this agent cannot add packages to a container yet (create(..., packages=) refused: "
                f"{error}); its containers have no network to install git, sudo and python3"
            )
        yield proxy
    finally:
        process.stop()


@pytest.fixture
def container(agent):
    """A running Debian container with systemd up; destroyed after the test."""
    name = unique("ds-")
    try:
        agent.create(name, "debian", release="bookworm", packages=PACKAGES)
        agent.start([name])
        state = system_state(agent, name)
        assert state in ("running", "degraded"), f"systemd in {name}: {state}"
        yield name
    finally:
        agent.destroy([name])


@pytest.mark.parametrize(
    "repo, path",
    [
        ("/srv/devstack", "/srv/devstack"),
        ("file:///srv/dev%20stack", "/srv/dev stack"),
        ("https://opendev.org/openstack/devstack", None),
        ("git://127.0.0.1/devstack.git", None),
        ("git@github.com:openstack/devstack.git", None),
        ("github.com:openstack/devstack", None),
    ],
    ids=["path", "file-url", "https", "git-url", "scp-like", "scp-like-no-user"],
)
def test_local_repo_path_reads_a_repo_as_git_does(repo, path):
    assert devstack.local_repo_path(repo) == path


def test_relative_repo_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert devstack.local_repo_path("devstack") == str(tmp_path / "devstack")


LS_REMOTE = "aaa\trefs/heads/master\nbbb\trefs/tags/v1\nccc\trefs/tags/v1^{}\nddd\trefs/tags/v2\n"


@pytest.mark.parametrize(
    "branch, commit",
    [("master", "aaa"), ("v1", "ccc"), ("v2", "ddd"), ("nope", None)],
    ids=["branch", "annotated-tag-peeled", "light-tag", "missing"],
)
def test_pick_remote_commit(branch, commit):
    assert devstack.pick_remote_commit(LS_REMOTE, branch) == commit


@pytest.mark.parametrize(
    "output, parsed",
    [
        ("manager apt-get\n", ([], "apt-get")),
        ("missing git\nmissing sudo\nmanager dnf\n", (["git", "sudo"], "dnf")),
        ("missing python3\n", (["python3"], None)),
    ],
    ids=["nothing-missing", "two-missing", "no-manager"],
)
def test_parse_probe(output, parsed):
    assert devstack.parse_probe(output) == parsed


def test_plan_install_is_noninteractive():
    argv, env = devstack.plan_install("apt-get", ["git"])
    assert argv[-1] == "git" and env["DEBIAN_FRONTEND"] == "noninteractive"
    assert devstack.plan_install("dnf", ["git", "sudo"]) == (["dnf", "install", "-y", "-q", "git", "sudo"], {})
    with pytest.raises(ValueError):
        devstack.plan_install("pacman", ["git"])


def plan_node(name, repo, localrc):
    """The first compute of a planned LxcEngine group, renamed to the test's container."""
    config = {
        "type": "LxcEngine",
        "container_name": "compute",
        "nodes_per_server": 2,
        "provider": {"type": "ExistingServers", "credentials": [{"user": "root", "host": "localhost"}]},
        "engine": {"name": "DevstackEngine", "devstack_repo": repo, "localrc": localrc},
    }
    node = topology.plan(validate(config)).nodes[0]
    assert node.kind == "first" and node.address == FIRST
    return replace(node, name=name)


def sh(agent, name, script, *args, user=None):
    result = agent.run(name, ["bash", "-c", script, "sh", *args], user=user)
    assert result["exit_code"] == 0, result
    return result["stdout"]


def ready_to_stack(agent, node, repo):
    devstack.prepare(agent, node)
    devstack.fetch(agent, node, repo, node.devstack_branch)
    devstack.write_local_conf(agent, node)


def deploy(agent, node, repo, log_path):
    ready_to_stack(agent, node, repo)
    return devstack.run_stack(agent, node, str(log_path))


def wait_for(check, timeout=30, what="condition", diagnose=lambda: ""):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{diagnose()}"
        time.sleep(0.5)


@pytest.mark.slow
def test_prepare_makes_stack_user_with_passwordless_sudo_and_twice_changes_nothing(agent, container, tmp_path):
    node = plan_node(container, str(tmp_path), {"VIRT_DRIVER": "fake"})
    first = devstack.prepare(agent, node)
    assert first["installed"] == [], "the image has git, sudo and python3 already"
    assert "created user stack" in first["changed"] and f"wrote {devstack.SUDOERS_FILE}" in first["changed"]

    assert "wrote /etc/systemd/system/iscsid.service.d/lxc-cloud.conf" in first["changed"]

    assert devstack.prepare(agent, node) == {"installed": [], "changed": []}

    # devstack's configure_nova restarts iscsid on every compute; in a container iscsid exits at once. A unit that
    # fails like it (installed where open-iscsi puts its own) restarts fine under the drop-in, and fails without.
    sh(
        agent,
        container,
        "printf '[Service]\\nType=forking\\nPIDFile=/run/iscsid.pid\\nExecStart=/bin/false\\n' "
        ">/etc/systemd/system/iscsid.service && systemctl daemon-reload",
    )
    for _ in range(3):
        sh(agent, container, "systemctl restart iscsid")
    sh(agent, container, "mv /etc/systemd/system/iscsid.service.d/lxc-cloud.conf /root/ && systemctl daemon-reload")
    assert agent.run(container, ["systemctl", "restart", "iscsid"])["exit_code"] != 0, "the unit fails without it"
    assert devstack.prepare(agent, node)["changed"] == ["wrote /etc/systemd/system/iscsid.service.d/lxc-cloud.conf"]
    sh(agent, container, "systemctl restart iscsid")
    entry = sh(agent, container, "getent passwd stack").strip().split(":")
    assert (entry[5], entry[6]) == ("/opt/stack", "/bin/bash")
    assert sh(agent, container, 'stat -c "%a %U %G" "$1"', devstack.SUDOERS_FILE).strip() == "440 root root"
    assert sh(agent, container, "sudo -n id -u", user="stack").strip() == "0"


@pytest.mark.slow
def test_fetch_sends_a_local_repo_as_a_bundle_and_replaces_only_another_commit(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    node = plan_node(container, repo, {"VIRT_DRIVER": "fake"})
    devstack.prepare(agent, node)
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert devstack.fetch(agent, node, repo, "master") == {"commit": commit, "changed": True}
    head = "git -C /opt/stack/devstack rev-parse HEAD; git -C /opt/stack/devstack rev-parse --abbrev-ref HEAD"
    assert sh(agent, container, head, user="stack").split() == [commit, "master"]
    assert (
        sh(agent, container, "stat -c %U /opt/stack/devstack/stack.sh; test -x /opt/stack/devstack/stack.sh").strip()
        == "stack"
    )
    assert devstack.fetch(agent, node, "file://" + repo, "master") == {"commit": commit, "changed": False}

    subprocess.run(
        [
            "git",
            "-C",
            repo,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "next",
        ],
        check=True,
    )
    newer = subprocess.run(
        ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert devstack.fetch(agent, node, repo, "master") == {"commit": newer, "changed": True}
    assert sh(agent, container, head, user="stack").split() == [newer, "master"]

    with pytest.raises(devstack.DevstackError, match=r"no branch, tag or commit 'stable/none'.*master"):
        devstack.fetch(agent, node, repo, "stable/none")


@pytest.mark.slow
def test_fetch_clones_a_url_inside_the_node_and_keeps_a_checkout_at_the_same_commit(agent, container, tmp_path):
    """A git daemon on the node's loopback stands in for a git server the node reaches by itself."""
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    node = plan_node(container, repo, {"VIRT_DRIVER": "fake"})
    devstack.prepare(agent, node)
    commit = devstack.fetch(agent, node, repo, "master")["commit"]
    sh(
        agent,
        container,
        "git clone -q --bare /opt/stack/devstack /opt/stack/served/devstack.git && "
        "git daemon --detach --listen=127.0.0.1 --base-path=/opt/stack/served --export-all "
        "--pid-file=/opt/stack/served/pid && for _ in $(seq 50); do "
        "git ls-remote git://127.0.0.1/devstack.git >/dev/null 2>&1 && break; sleep 0.2; done",
        user="stack",
    )
    url = "git://127.0.0.1/devstack.git"

    assert devstack.fetch(agent, node, url, "master") == {"commit": commit, "changed": False}
    newer = sh(
        agent,
        container,
        "export GIT_AUTHOR_NAME=t GIT_COMMITTER_NAME=t GIT_AUTHOR_EMAIL=t@example.invalid "
        "GIT_COMMITTER_EMAIL=t@example.invalid && cd /opt/stack && "
        "git clone -q served/devstack.git work && cd work && "
        "git commit -q --allow-empty -m next && git tag -a v1 -m v1 && "
        "git push -q origin master v1 && git rev-parse HEAD",
        user="stack",
    ).strip()
    assert devstack.fetch(agent, node, url, "master") == {"commit": newer, "changed": True}
    assert sh(agent, container, "git -C /opt/stack/devstack rev-parse HEAD", user="stack").strip() == newer
    assert devstack.fetch(agent, node, url, "v1") == {"commit": newer, "changed": False}
    with pytest.raises(devstack.DevstackError, match=f"{url} has no branch or tag 'nope'"):
        devstack.fetch(agent, node, url, "nope")


@pytest.mark.slow
def test_default_start_script_on_a_node_without_devstack_units_is_harmless(agent, container, tmp_path):
    node = replace(plan_node(container, str(tmp_path), {"VIRT_DRIVER": "fake"}), kind="clone", address=CLONE)
    output = devstack.run_start_script(agent, node, FIRST)
    assert "->" not in output, "nothing to re-point"
    assert nova.identify(agent, node) == "", "no nova here: nothing to change"
    assert "no devstack units were recorded" in nova.start_services(agent, node)


@pytest.mark.slow
def test_stack_sh_reads_localrc_like_devstack_and_starts_its_unit(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    localrc = {
        "MULTI_HOST": "1",
        "VIRT_DRIVER": "fake",
        "ENABLED_SERVICES+": ",-n-cpu",
        "SCREEN_LOGDIR": "$DEST/logs/screen",
        "API_RATE_LIMIT": False,
        "ODD": 'it\'s "quoted" `x` $(no)',
    }
    node = plan_node(container, repo, localrc)
    log_path = tmp_path / "logs" / "deep" / f"{container}.stack.log"

    assert deploy(agent, node, repo, log_path) == {"exit_code": 0, "log_path": str(log_path)}
    assert sh(agent, container, "cat /opt/stack/devstack/local.conf") == node.local_conf
    assert sh(agent, container, "stat -c %U /opt/stack/devstack/local.conf").strip() == "stack"
    assert "stand-in for devstack's stack.sh" in log_path.read_text()

    seen = json.loads(sh(agent, container, "cat /opt/stack/data/fake-devstack/localrc.json"))
    expected = {key: value for key, value in node.localrc.items() if not key.endswith("+")}
    expected["SCREEN_LOGDIR"] = "/opt/stack/logs/screen"
    assert {key: seen[key] for key in expected} == expected
    assert seen["ENABLED_SERVICES"].endswith(",-n-cpu") and "n-cpu," in seen["ENABLED_SERVICES"]
    # localrc.env is the same record in a form bash can source.
    names = sorted(seen)
    from_env = sh(
        agent,
        container,
        'set -a; source "$1"; shift; for n; do printf "%s\\0" "${!n}"; done',
        "/opt/stack/data/fake-devstack/localrc.env",
        *names,
    )
    assert dict(zip(names, from_env.split("\0")[:-1], strict=True)) == seen

    assert sh(agent, container, "cat /opt/stack/data/fake-devstack/roles").split() == ["fake-controller"]
    assert "n-cpu" not in sh(agent, container, "cat /opt/stack/data/fake-devstack/services").strip().split(",")
    state = agent.run(container, ["systemctl", "is-active", "devstack@fake-controller.service"])
    assert state["stdout"].strip() == "active"
    wait_for(lambda: sh(agent, container, "ss -ltnH 'sport = :5672'").strip(), what="a listener on port 5672")


@pytest.mark.slow
def test_failing_stack_sh_raises_stack_error_with_tail_and_keeps_full_log(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack", fail_with=3)
    node = plan_node(container, repo, {"VIRT_DRIVER": "fake"})
    log_path = tmp_path / "logs" / f"{container}.stack.log"

    with pytest.raises(devstack.StackError) as caught:
        deploy(agent, node, repo, log_path)
    error = caught.value
    message = str(error)
    assert (error.node, error.host, error.exit_code, error.log_path) == (container, "localhost", 3, str(log_path))
    assert f"node {container} (host localhost)" in message and "exit code 3" in message
    assert "failing on purpose with exit code 3" in message and f"Full log: {log_path}" in message
    full = log_path.read_text()
    assert "stand-in for devstack's stack.sh" in full and "failing on purpose" in full
    tail_in_message = message.split("Last 20 lines:\n", 1)[1].split("\nFull log:", 1)[0]
    assert tail_in_message == "\n".join(full.rstrip("\n").splitlines()[-20:])


@pytest.mark.slow
def test_stack_sh_that_outlives_its_timeout_is_a_stack_error_with_partial_output(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    commit_stack_sh(repo, "#!/bin/bash\necho 'started, now hanging'\nsleep 600\n")
    node = plan_node(container, repo, {"VIRT_DRIVER": "fake"})
    ready_to_stack(agent, node, repo)
    log_path = tmp_path / f"{container}.stack.log"

    started = time.monotonic()
    with pytest.raises(devstack.StackError, match=r"did not finish within 5 s(.|\n)*started, now hanging"):
        devstack.run_stack(agent, node, str(log_path), timeout=5)
    assert time.monotonic() - started < 60
    assert log_path.read_text() == "started, now hanging\n"


def commit_stack_sh(repo, text):
    (Path(repo) / "stack.sh").write_text(text)
    subprocess.run(
        [
            "git",
            "-C",
            repo,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-am",
            "stack.sh for a test",
        ],
        check=True,
    )


@pytest.mark.slow
def test_a_resumed_deploy_waits_for_the_running_stack_sh_and_does_not_stack_again(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    commit_stack_sh(repo, "#!/bin/bash\necho run >>/opt/stack/runs\necho started\nsleep 8\necho finished\n")
    node = plan_node(container, repo, {"VIRT_DRIVER": "fake"})
    ready_to_stack(agent, node, repo)
    assert devstack.wait_for_earlier_stack(agent, node, timeout=60) is False, "nothing runs yet"

    # What a coordinator killed during stack.sh leaves behind: the run goes on in the node without it.
    sh(
        agent,
        container,
        'setsid bash -c "$1" stack "$2" "$3" >/dev/null 2>&1 </dev/null &',
        devstack._STACK,
        devstack.DEVSTACK_DIR,
        devstack.STACK_STATE_DIR,
        user="stack",
    )
    wait_for(lambda: agent.run(container, ["cat", "/opt/stack/runs"])["stdout"] == "run\n", what="stack.sh to start")
    assert devstack.wait_for_earlier_stack(agent, node, timeout=60) is True
    assert sh(agent, container, f"cat {devstack.STACK_STATE_DIR}/stack.log") == "started\nfinished\n"

    ready_to_stack(agent, node, repo)  # what a resumed deploy does again once the earlier stack.sh has ended
    log_path = tmp_path / "resumed.log"
    devstack.run_stack(agent, node, str(log_path))
    assert log_path.read_text().endswith("its output was:\nstarted\nfinished\n")
    assert sh(agent, container, "cat /opt/stack/runs") == "run\n", "stack.sh ran once"
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert sh(agent, container, f"cat {devstack.STACK_STATE_DIR}/stack.done").startswith(commit.strip() + " ")

    changed = plan_node(container, repo, {"VIRT_DRIVER": "fake", "LOGDAYS": "3"})
    devstack.write_local_conf(agent, changed)
    devstack.run_stack(agent, changed, str(log_path))
    assert log_path.read_text() == (
        "lxc-cloud: an earlier stack.sh ran here; running ./unstack.sh first\nstarted\nfinished\n"
    ), "devstack is unstacked before it stacks again"
    assert sh(agent, container, "cat /opt/stack/runs") == "run\nrun\n", "a new local.conf stacks again"


@pytest.mark.slow
def test_start_script_repoints_a_clone_at_its_own_address(agent, container, tmp_path):
    repo = make_fake_devstack_repo(tmp_path / "devstack")
    # One node plays both roles, so the compute's reports reach a controller without a network.
    localrc = {
        "ENABLED_SERVICES": "rabbit,n-cpu",
        "RABBIT_HOST": "127.0.0.1",
        "HOST_IP": FIRST,
        "FAKE_REPORT_INTERVAL": "1",
    }
    node = plan_node(container, repo, localrc)
    deploy(agent, node, repo, tmp_path / "stack.log")
    reports = "/opt/stack/data/fake-devstack/reports"

    def reported(address):
        text = agent.run(container, ["cat", reports])["stdout"]
        return f"{container} {address} " in text

    wait_for(lambda: reported(FIRST), what=f"a report from {FIRST}")
    keys = "cat /etc/ssh/ssh_host_*_key.pub | sort | sha256sum"
    old_keys = sh(agent, container, keys)

    # A web server where Debian's package puts it, as devstack leaves one in every compute (apache2), running and
    # enabled, for seal to turn off.
    sh(
        agent,
        container,
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n[Install]\\nWantedBy=multi-user.target\\n' "
        ">/lib/systemd/system/apache2.service && systemctl daemon-reload && systemctl enable --now -q apache2",
    )
    sealed = nova.seal(agent, node)  # as a deploy does before cloning: the units wait for start_services
    assert "devstack@fake-compute.service" in sealed
    assert sh(agent, container, "systemctl is-enabled devstack@fake-compute.service || true").strip() == "disabled"
    assert "turned off, as a fake compute does not use them: apache2.service" in sealed, sealed
    assert sh(agent, container, "systemctl is-active apache2 || true").strip() == "inactive"
    assert sh(agent, container, "systemctl is-enabled apache2 || true").strip() == "masked"
    assert "apache2.service" in sh(agent, container, f"cat {nova.LEAN_RECORD}").split()
    assert "turned off" not in nova.seal(agent, node), "sealing again (a scale) finds nothing more to turn off"
    clone = replace(node, kind="clone", address=CLONE)
    output = devstack.run_start_script(agent, clone, FIRST)
    assert f"{FIRST} -> {CLONE} in /opt/stack/devstack/local.conf" in output
    conf = sh(agent, container, "cat /opt/stack/devstack/local.conf")
    assert f'HOST_IP="{CLONE}"' in conf and FIRST not in conf
    assert sh(agent, container, "stat -c %U /opt/stack/devstack/local.conf").strip() == "stack"
    # Restarted before the reports are emptied: the old process (seal disables, it does not stop) reports the
    # first compute's address until then.
    started = nova.start_services(agent, clone)
    assert "started devstack@fake-compute.service devstack@fake-controller.service" in started, started
    assert sh(agent, container, "systemctl is-enabled devstack@fake-compute.service").strip() == "enabled"
    sh(agent, container, f": > {reports}")
    units = f"systemctl status --no-pager 'devstack@*'; journalctl --no-pager -n 60 -u 'devstack@*'; cat {reports}"
    wait_for(
        lambda: reported(CLONE),
        what=f"a report from {CLONE} after the restart",
        diagnose=lambda: output + agent.run(container, ["sh", "-c", units], timeout=30)["stdout"],
    )
    assert not reported(FIRST)
    new_keys = sh(agent, container, keys)
    assert new_keys != old_keys, "a clone gets its own ssh host keys"

    devstack.run_start_script(agent, clone, FIRST)
    assert sh(agent, container, keys) == new_keys, "the second run leaves the keys alone"

    custom = replace(clone, start_script='echo "$1 $2 $3 $FIRST_ADDRESS $NODE_ADDRESS $NODE_NAME" > /root/custom')
    devstack.run_start_script(agent, custom, FIRST)
    assert sh(agent, container, "cat /root/custom").split() == [FIRST, CLONE, container] * 2

    failing = replace(clone, start_script="echo broken >&2; exit 4")
    with pytest.raises(
        devstack.DevstackError,
        match=re.escape(f"node {container} (host localhost) failed with exit code 4") + r":\nbroken",
    ):
        devstack.run_start_script(agent, failing, FIRST)

    # The first compute stacked again (its local.conf changed): what seal turned off is given back to stack.sh
    # first (devstack restarts iscsid on computes), and seal turns it off again afterwards.
    changed = plan_node(container, repo, {**localrc, "LOGDAYS": "3"})
    devstack.write_local_conf(agent, changed)
    devstack.run_stack(agent, changed, str(tmp_path / "again.log"))
    assert sh(agent, container, "systemctl is-enabled apache2 || true").strip() != "masked"
    assert agent.run(container, ["test", "-e", nova.LEAN_RECORD])["exit_code"] != 0
    assert "turned off, as a fake compute does not use them: apache2.service" in nova.seal(agent, node)
