"""`coordinator deploy` when things go wrong, end to end on real containers in a simulated node: a coordinator
killed while cloning and deployed again, and a stack.sh that fails. Same layout as test_deploy_e2e.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.fake_devstack import make_fake_devstack_repo
from tests.agent.test_deploy_e2e import (
    COMPUTES,
    assert_deployed_as_planned,
    assert_nothing_left,
    config_for,
    coordinator,
)
from tests.support import agent_pid, sh

pytestmark = pytest.mark.slow


def setup_cloud(node_agent, tmp_path, fail_with=None):
    """(config path, plan, options every lifecycle command takes) for the e2e layout on node_agent."""
    repo = make_fake_devstack_repo(str(tmp_path / "devstack"), fail_with=fail_with)
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps(config_for(node_agent.host, node_agent.port, repo)))
    plan = json.loads(coordinator("plan", str(config), "--format", "json").stdout)
    common = ["--store", str(tmp_path / "store.sqlite"), "--pki-dir", node_agent.pki_dir]
    return config, plan, common


def steps(store_path, state=None):
    """key -> state from the store's steps table, read as another process would (empty before it exists)."""
    if not os.path.exists(store_path):
        return {}
    db = sqlite3.connect(store_path, timeout=10)
    try:
        rows = db.execute("SELECT key, state FROM steps").fetchall()
    except sqlite3.OperationalError:  # the coordinator has not made its tables yet
        return {}
    finally:
        db.close()
    return {key: value for key, value in rows if state is None or value == state}


def wait_for(condition, process, what, stderr_path, timeout=600):
    """Poll condition() until it is true; fail if the coordinator process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            break
        time.sleep(0.1)
    ended = f"ended (exit {process.returncode})" if process.poll() is not None else f"ran {timeout} s"
    raise AssertionError(f"coordinator deploy {ended} before {what}:\n{Path(stderr_path).read_text()}")


def status_in_list(common, name):
    listed = coordinator("list", *common).stdout
    rows = [line.split() for line in listed.splitlines() if f" {name} " in f" {line} "]
    assert rows, f"{name} is not in `coordinator list`:\n{listed}"
    return rows[0][rows[0].index(name) + 2]  # "│ NAME │ STATUS │ ..." or "NAME STATUS ..."


def test_a_second_coordinator_is_refused_and_one_killed_while_cloning_resumes_to_the_same_cloud(node_agent, tmp_path):
    config, plan, common = setup_cloud(node_agent, tmp_path)
    store = str(tmp_path / "store.sqlite")
    deploy = ["deploy", str(config), "--name", "resume", "--log-dir", str(tmp_path / "logs"), *common]
    clones = [n["name"] for n in plan["nodes"] if n["kind"] == "clone"]
    assert len(clones) == COMPUTES - 1
    links_before = sh("ip", "-br", "link", netns=node_agent.netns)

    with open(tmp_path / "first.out", "w") as out, open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "coordinator.cli", *deploy], stdout=out, stderr=err)
    try:
        wait_for(lambda: steps(store, "running"), first, "a step under way", tmp_path / "first.err")
        second = coordinator(*deploy, check=False)
        assert second.returncode == 1, second.stderr
        assert f"deployment 'resume' is being worked on by coordinator pid {first.pid}" in second.stderr

        def cloning():
            if not any(key.startswith("clones:") for key in steps(store, "running")):
                return None
            made = {name: state for name, state in node_agent.states().items() if name in clones}
            return made if len(made) == len(clones) else None

        at_kill = wait_for(cloning, first, "cloning", tmp_path / "first.err")
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    print("clones when the coordinator was killed:", at_kill)
    assert status_in_list(common, "resume") == "interrupted", "a dead coordinator's deploy is not `deploying`"

    resumed = coordinator(*deploy)
    assert "Resuming resume" in resumed.stderr
    assert set(steps(store).values()) == {"done"}, steps(store)
    names = [n["name"] for n in plan["nodes"]]
    assert node_agent.states() == dict.fromkeys(names, "RUNNING"), "the plan's containers, no more, no fewer"
    shown = json.loads(coordinator("show", "resume", "--json", *common).stdout)
    assert shown["status"] == "deployed"
    assert_deployed_as_planned(node_agent, plan, shown)

    coordinator("destroy", "resume", *common)
    assert_nothing_left(node_agent, links_before)


def test_a_failing_stack_sh_is_reported_with_node_exit_code_and_log_and_destroy_removes_all(node_agent, tmp_path):
    config, plan, common = setup_cloud(node_agent, tmp_path, fail_with=3)
    logs = tmp_path / "logs"
    links_before = sh("ip", "-br", "link", netns=node_agent.netns)

    failed = coordinator("deploy", str(config), "--name", "broken", "--log-dir", str(logs), *common, check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    controller = plan["controller"]  # stacked first, so the first to fail
    latest = logs / "broken" / f"{controller}.stack.log"
    assert latest.is_symlink(), f"the full log on the coordinator's side:\n{failed.stderr}"
    log_path = latest.parent / os.readlink(latest)
    assert log_path.is_file() and log_path.name.startswith(f"{controller}.stack.2")
    log = log_path.read_text()
    assert log.startswith("fake-devstack: this is a stand-in"), "the whole output, from its first line"
    assert log.rstrip("\n").endswith("fake-devstack: failing on purpose with exit code 3")
    message = failed.stderr
    assert f"stack.sh on node {controller} (host {node_agent.host}) failed with exit code 3" in message
    for line in log.rstrip("\n").splitlines()[-10:]:
        assert line in message, f"the log's last lines are in the error: {line!r}"
    assert f"Full log: {log_path}" in message
    assert "Traceback" not in message
    assert status_in_list(common, "broken") == "failed"
    first_compute = next(n["name"] for n in plan["nodes"] if n["kind"] == "first")
    assert not (logs / "broken" / f"{first_compute}.stack.log").exists(), "no compute was stacked"

    # Deploying again runs stack.sh again: a log of its own, the first attempt's kept.
    retried = coordinator("deploy", str(config), "--name", "broken", "--log-dir", str(logs), *common, check=False)
    assert retried.returncode == 1
    attempts = sorted(logs.glob(f"broken/{controller}.stack.*.log"))
    assert len(attempts) == 2 and log_path in attempts, attempts
    assert log_path.read_text() == log, "the first attempt's log is kept as it was"
    assert latest.parent / os.readlink(latest) == next(a for a in attempts if a != log_path)

    # The user fixes the config (here: a devstack that works) and deploys again under the same name: accepted,
    # redone from the controller's stack.sh on, and the cloud converges.
    data = json.loads(config.read_text())
    fixed = make_fake_devstack_repo(str(tmp_path / "devstack-fixed"))
    data["controller"]["devstack_repo"] = data["nodes"][0]["engine"]["devstack_repo"] = fixed
    config.write_text(json.dumps(data))
    redeployed = coordinator("deploy", str(config), "--name", "broken", "--log-dir", str(logs), *common)
    assert f"redoing from step devstack:{controller}" in redeployed.stderr, redeployed.stderr
    assert f"{COMPUTES}/{COMPUTES} nova-compute services up as {COMPUTES} hypervisors" in redeployed.stdout
    assert status_in_list(common, "broken") == "deployed"
    assert len(list(logs.glob(f"broken/{controller}.stack.*.log"))) == 3, "every attempt's log is kept"

    coordinator("destroy", "broken", *common)
    assert_nothing_left(node_agent, links_before)
    again = coordinator("destroy", "broken", *common, check=False)
    assert again.returncode == 1
    assert "no deployment named 'broken'" in again.stderr and "Traceback" not in again.stderr


def stop_the_agent_once(node_agent, tmp_path, argv, ready, what, then_wait=0.0):
    """Run the coordinator with argv; once ready() is true (and then_wait seconds later), stop the agent (SIGSTOP)
    until the coordinator gives up (at most 120 s), then let the agent run again. Returns the coordinator's exit
    code and stderr."""
    pid = agent_pid(node_agent.process)
    err_path = tmp_path / "first.err"
    with open(tmp_path / "first.out", "w") as out, open(err_path, "w") as err:
        # -X faulthandler: should it hang, SIGABRT makes it write every thread's stack into first.err.
        first = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "coordinator.cli", *argv], stdout=out, stderr=err
        )
    try:
        wait_for(ready, first, what, err_path)
        time.sleep(then_wait)
        os.kill(pid, signal.SIGSTOP)
        try:
            code = first.wait(120)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGABRT)
            first.wait()
            raise AssertionError(
                f"the deploy still ran 120 s after its agent stopped answering (during {what}):\n"
                + err_path.read_text()
            ) from None
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    return code, err_path.read_text()


def resume_then_destroy(node_agent, plan, deploy, common, links_before):
    """Deploy again under the same name: every step done, the cloud as planned; then destroy leaves nothing."""
    name = deploy[deploy.index("--name") + 1]
    coordinator(*deploy, *common)
    store = common[common.index("--store") + 1]
    assert set(steps(store).values()) == {"done"}, steps(store)
    shown = json.loads(coordinator("show", name, "--json", *common).stdout)
    assert shown["status"] == "deployed"
    assert_deployed_as_planned(node_agent, plan, shown)
    coordinator("destroy", name, *common)
    assert_nothing_left(node_agent, links_before)


def test_an_agent_that_hangs_mid_deploy_is_named_with_host_and_phase_and_a_resume_completes(node_agent, tmp_path):
    """The agent stops answering (SIGSTOP) while the containers are made: the deploy gives up after
    --agent-timeout naming the host and the phase, instead of waiting for ever; once the agent runs again, deploying
    under the same name finishes the cloud."""
    config, plan, common = setup_cloud(node_agent, tmp_path)
    store = str(tmp_path / "store.sqlite")
    deploy = ["deploy", str(config), "--name", "hang", "--log-dir", str(tmp_path / "logs"), "--agent-timeout", "5"]
    links_before = sh("ip", "-br", "link", netns=node_agent.netns)
    code, message = stop_the_agent_once(
        node_agent,
        tmp_path,
        [*deploy, *common],
        lambda: any(key.startswith("containers:") for key in steps(store, "running")),
        "the containers step",
    )
    assert code == 1, message
    assert "Traceback" not in message
    # Where the stop lands depends on this machine's speed: in the containers (a call's own 5 s), or while a new
    # connection is made (its 5 s), or in a boot wait (a 30 s round and 5 s), or in the controller's stack.sh (the
    # heartbeat's 15 s and 5 s).
    host = re.escape(node_agent.host)
    assert re.search(
        rf"phase (containers|controller): (the agent on host {host} did not answer "
        r"(\w+\(\) within (5|35) s|while run\(\) waited: a heartbeat \(ping\(\) every 15 s\) did not answer "
        rf"within 5 s)|cannot reach the agent on host {host}: lxc-agent at \S+ did not answer within 5 s while "
        r"connecting)",
        message,
    ), message
    assert "deploy again under the same name to resume" in message

    resume_then_destroy(node_agent, plan, deploy, common, links_before)


def test_an_agent_that_hangs_while_stack_sh_runs_is_noticed_by_its_heartbeat(node_agent, tmp_path):
    """stack.sh may run for hours, so run()'s own deadline is no help when the agent hangs meanwhile: the deploy's
    heartbeat to the agent notices within its 15 s and --agent-timeout, ends the deploy naming host and phase, and
    a deploy under the same name (stack.sh shortened) resumes into the cloud."""
    config, plan, common = setup_cloud(node_agent, tmp_path)
    data = json.loads(config.read_text())
    data["controller"]["localrc"]["FAKE_STACK_SECONDS"] = "40"
    config.write_text(json.dumps(data))
    controller = next(node["name"] for node in plan["nodes"] if node["role"] == "controller")
    store = str(tmp_path / "store.sqlite")
    deploy = ["deploy", str(config), "--name", "beat", "--log-dir", str(tmp_path / "logs"), "--agent-timeout", "5"]
    links_before = sh("ip", "-br", "link", netns=node_agent.netns)
    code, message = stop_the_agent_once(
        node_agent,
        tmp_path,
        [*deploy, *common],
        lambda: f"devstack:{controller}" in steps(store, "running"),
        "the controller's stack.sh",
        then_wait=3,
    )
    assert code == 1, message
    assert "Traceback" not in message
    assert (
        f"phase controller: the agent on host {node_agent.host} did not answer while run() waited: a heartbeat "
        "(ping() every 15 s) did not answer within 5 s" in message
    ), message

    del data["controller"]["localrc"]["FAKE_STACK_SECONDS"]
    config.write_text(json.dumps(data))
    # The resume waits for the first stack.sh, which the agent ran on, then redoes it.
    resume_then_destroy(node_agent, plan, deploy, common, links_before)
