"""SIGTERM (or SIGINT) ends a real agent within seconds whatever its clients do: connections held open without a
handshake, an idle client, a command that runs for ten minutes. Its containers keep running (systemd's
KillMode=process), and it leaves none of its own worker processes behind."""

import os
import signal
import threading
import time

import pytest

from tests.agent.test_agent_gate import attack
from tests.support import lxc_states


def children(pid):
    """PIDs whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def alive(pid):
    """Running, not merely a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_agent_within_seconds_under_attack_and_during_a_long_command(loopback_agent, signum):
    agent = loopback_agent.connect()
    agent.create("busy", "busybox")
    agent.start(["busy"])
    outcome = []

    def long_call():
        try:
            outcome.append(loopback_agent.connect().run("busy", ["sleep", "600"]))
        except Exception as error:  # the agent goes away under it: recorded, asserted below
            outcome.append(error)

    caller = threading.Thread(target=long_call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 60
    while "sleep 600" not in agent.run("busy", ["ps"])["stdout"]:
        assert time.monotonic() < deadline, "the long command did not start"
        time.sleep(0.2)
    workers = children(loopback_agent.process.pid)
    assert workers, "the agent runs liblxc calls in worker processes"
    with attack(loopback_agent, idle=140, slow=10):
        started = time.monotonic()
        loopback_agent.process.send_signal(signum)
        try:
            code = loopback_agent.process.wait(15)
        except Exception:
            pytest.fail(f"the agent was still running 15 s after signal {signum.name}")
        took = time.monotonic() - started
    assert code == 0
    assert took < 15
    caller.join(15)
    assert not caller.is_alive() and isinstance(outcome[0], Exception), "the long call was cut off"
    assert lxc_states(loopback_agent.lxcpath) == {"busy": "RUNNING"}, "containers keep running"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "no worker process outlives the agent"
    with open(loopback_agent.log) as handle:
        log = handle.read()
    assert f"signal {signum.value}: shutting down" in log
