"""A deploy's heartbeat to an agent, on a real agent: ping() answers while a long call runs and while containers
stop, and a heartbeat ends a call that waits on an agent which stopped answering (SIGSTOP)."""

import os
import signal
import threading
import time

import Pyro5.errors
import pytest

from agent.client import cut
from coordinator.heartbeat import Heartbeat
from tests.support import agent_pid


@pytest.fixture
def running(loopback_agent):
    """An agent on loopback with a running busybox container `box`."""
    agent = loopback_agent.connect()
    agent._pyroTimeout = 60  # a hang must fail the test, not hold it
    agent.create("box", "busybox")
    agent.start(["box"])
    yield loopback_agent, agent
    agent.destroy(["box"])


def in_thread(function, proxy):
    """Start function() in a thread that takes proxy over; returns a dict that gets "result" or "error", and
    "ended" (monotonic)."""
    outcome = {}

    def body():
        try:
            proxy._pyroClaimOwnership()
            outcome["result"] = function()
        except BaseException as error:  # handed to the test
            outcome["error"] = error
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_ping_answers_while_a_long_command_runs_and_while_a_container_stops(running):
    process, agent = running
    other = process.connect()
    other._pyroTimeout = 60
    command = in_thread(lambda: other.run("box", ["sleep", "3"], timeout=30), other)
    time.sleep(0.5)
    assert agent.ping() == agent.info()["version"]
    assert "ended" not in command, "ping() answered while the command still ran"
    command["thread"].join(60)
    assert command["result"]["exit_code"] == 0, command

    # liblxc's shutdown keeps Python's lock while it waits: in the agent's own process it would hold every call.
    stopping = in_thread(lambda: other.stop(["box"], 10), other)
    time.sleep(0.3)
    version = agent.ping()
    answered = time.monotonic()
    stopping["thread"].join(60)
    assert "error" not in stopping, stopping.get("error")
    assert answered < stopping["ended"], "ping() waited for the stop to end"
    assert version and process.states()["box"] == "STOPPED"


def test_a_heartbeat_ends_a_call_that_waits_on_an_agent_that_stopped_answering(running):
    process, agent = running
    waiting = process.connect()
    heartbeat = Heartbeat(process.connect, process.host, interval=1, timeout=2)

    def long_call():
        with heartbeat.watching(waiting):
            waiting._pyroTimeout = 600
            return waiting.run("box", ["sleep", "300"], timeout=600)

    pid = agent_pid(process.process)
    call = in_thread(long_call, waiting)
    time.sleep(2.5)  # the heartbeat has connected and been answered at least once
    assert heartbeat.failure is None and "ended" not in call
    os.kill(pid, signal.SIGSTOP)
    try:
        call["thread"].join(60)
        assert "ended" in call, "the call still waits a minute after the agent stopped"
    finally:
        os.kill(pid, signal.SIGCONT)
    heartbeat.close()
    assert isinstance(call.get("error"), Pyro5.errors.ConnectionClosedError), call
    assert heartbeat.failure == "a heartbeat (ping() every 1 s) did not answer within 2 s"

    again = process.connect()
    assert again.ping() and process.states()["box"] == "RUNNING", "the agent serves again, the container ran on"
    agent.stop(["box"], 0)  # ends the sleep the cut call left running


def test_cut_ends_a_call_in_another_thread_and_leaves_others_alone(running):
    process, agent = running
    waiting = process.connect()
    waiting._pyroTimeout = 600
    call = in_thread(lambda: waiting.run("box", ["sleep", "300"], timeout=600), waiting)
    time.sleep(1)
    cut(waiting)
    call["thread"].join(30)
    assert isinstance(call.get("error"), Pyro5.errors.ConnectionClosedError), call
    assert agent.ping(), "another connection is untouched"
    cut(object())  # not a proxy: nothing to do
    agent.stop(["box"], 0)
