"""containers.kill_many with real processes and signals, liblxc's container objects stood in for: every init is
killed before any teardown is waited for (liblxc's own stop() waits for each, which lined up a restore's kills)."""

import subprocess

from agent import containers
from tests.support import lxc_states, sh


class StandIn:
    """What kill_many asks of an lxc.Container, for a real process standing in as the container's init."""

    def __init__(self, process, events):
        self.process, self.events = process, events

    @property
    def init_pid(self):
        return self.process.pid if self.process.poll() is None else -1

    @property
    def running(self):
        return self.process.poll() is None

    @property
    def state(self):
        return "RUNNING" if self.running else "STOPPED"

    def wait(self, state, timeout):
        self.events.append(("wait", self.process.pid))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return state == "STOPPED"


def test_every_init_is_killed_before_any_teardown_is_waited_for(monkeypatch):
    inits = {f"c{i}": subprocess.Popen(["sleep", "60"]) for i in range(4)}
    events = []
    monkeypatch.setattr(containers, "_container", lambda lxcpath, name: StandIn(inits[name], events))
    real_send = containers.signal.pidfd_send_signal

    def send(pidfd, signal_number):
        events.append(("kill", signal_number))
        real_send(pidfd, signal_number)

    monkeypatch.setattr(containers.signal, "pidfd_send_signal", send)
    try:
        assert containers.kill_many("/unused", list(inits), wait=10) == {}
        kinds = [kind for kind, _ in events]
        assert kinds == ["kill"] * 4 + ["wait"] * 4, events
        assert all(process.returncode == -9 for process in inits.values())
    finally:
        for process in inits.values():
            process.kill()
            process.wait()


def test_a_container_that_outlives_the_wait_is_named_and_one_already_gone_is_skipped(monkeypatch):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stubborn = subprocess.Popen(["sleep", "60"])
    events = []
    stand_ins = {"gone": StandIn(gone, events), "stubborn": StandIn(stubborn, events)}
    monkeypatch.setattr(containers, "_container", lambda lxcpath, name: stand_ins[name])
    monkeypatch.setattr(containers.signal, "pidfd_send_signal", lambda pidfd, number: None)  # a kill that is lost
    try:
        assert containers.kill_many("/unused", ["gone", "stubborn"], wait=1) == {
            "stubborn": "still running 1 s after its init was killed"
        }
    finally:
        stubborn.kill()
        stubborn.wait()


def test_a_frozen_container_is_killed_too(loopback_agent):
    """A snapshot cut short can leave a container frozen, and a frozen init takes no signal: stop with no halt
    time (as restore and destroy stop) thaws it first, as liblxc's own stop() did."""
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    agent.clone("base", ["frozen"])
    assert agent.start(["frozen"]) == ["frozen"]
    sh("lxc-freeze", "-P", loopback_agent.lxcpath, "-n", "frozen")
    assert lxc_states(loopback_agent.lxcpath)["frozen"] == "FROZEN"
    assert agent.stop(["frozen"], 0) == ["frozen"]
    assert lxc_states(loopback_agent.lxcpath)["frozen"] == "STOPPED"
    agent.destroy(["frozen", "base"])
