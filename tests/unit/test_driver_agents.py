"""The driver against agents that hang, die or answer garbage: real Pyro5 connections, a clear error naming the
host and the call instead of a wait without end or Pyro5's traceback."""

import socket
import threading
import time

import Pyro5.api
import pytest

from coordinator import topology
from coordinator.config import validate
from coordinator.driver import AgentLost, Deployer, DeployError, Settings
from coordinator.store import Store

CONFIG = {
    "type": "DevstackEngine",
    "localrc": {"VIRT_DRIVER": "fake"},
    "provider": {
        "type": "LxcProvider",
        "containers_per_host": 1,
        "host_provider": {"type": "ExistingServers", "credentials": [{"host": "198.18.0.10"}]},
    },
}


@Pyro5.api.expose
class SlowAgent:
    """Answers like an agent that hangs on info() and is fine otherwise."""

    def info(self):
        time.sleep(30)

    def run(self, name, argv, stdin=None, env=None, user=None, timeout=None):
        time.sleep(float(argv[0]))
        return {"exit_code": 0, "stdout": "", "stderr": ""}


@Pyro5.api.expose
class PingedAgent(SlowAgent):
    """SlowAgent with ping(), which hangs once `hangs` is set; counts the run() calls it got."""

    def __init__(self):
        self.hangs, self.runs = threading.Event(), 0

    def ping(self):
        if self.hangs.is_set():
            time.sleep(30)
        return "0"

    def run(self, name, argv, stdin=None, env=None, user=None, timeout=None):
        self.runs += 1
        return super().run(name, argv, stdin, env, user, timeout)


def serve(agent):
    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(agent, "lxc.agent")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    yield uri
    daemon.shutdown()
    thread.join(10)


@pytest.fixture
def slow_agent():
    yield from serve(SlowAgent())


@pytest.fixture
def pinged_agent():
    agent = PingedAgent()
    for uri in serve(agent):
        yield uri, agent


@pytest.fixture
def garbage_agent():
    """A listener that answers anything with bytes that are no Pyro5 message."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            with client:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 200 OK\r\n\r\nnot an agent at all" * 10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"PYRO:lxc.agent@127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


def deployer(tmp_path, uri, call_timeout, heartbeat_interval=15.0):
    plan = topology.plan(validate(CONFIG))
    store = Store(str(tmp_path / "store.sqlite"))
    settings = Settings(log_dir=str(tmp_path), call_timeout=call_timeout, heartbeat_interval=heartbeat_interval)
    return Deployer("t", plan, store, lambda host: Pyro5.api.Proxy(uri), settings)


def agent_of(d):
    return d.agent_for(d.plan.hosts[0])


def test_an_agent_that_does_not_answer_is_given_up_on_naming_the_host_and_the_call(tmp_path, slow_agent):
    started = time.monotonic()
    with pytest.raises(AgentLost) as caught:
        agent_of(deployer(tmp_path, slow_agent, call_timeout=1)).info()
    assert time.monotonic() - started < 20, "given up on at the deadline, not when the agent answered"
    message = str(caught.value)
    assert message.startswith("the agent on host 198.18.0.10 did not answer info() within 1 s")
    assert "deploy again under the same name to resume" in message
    assert isinstance(caught.value, DeployError)


def test_a_command_with_a_timeout_of_its_own_may_take_that_long_first(tmp_path, slow_agent):
    agent = agent_of(deployer(tmp_path, slow_agent, call_timeout=1))
    assert agent.run("c", ["2"], timeout=5)["exit_code"] == 0, "2 s of a 5 s command are not a hang"
    with pytest.raises(AgentLost, match=r"did not answer run\(\) within 3 s"):
        agent.run("c", ["10"], timeout=2)


def test_an_agent_that_answers_garbage_is_named_not_a_traceback(tmp_path, garbage_agent):
    with pytest.raises(AgentLost) as caught:
        agent_of(deployer(tmp_path, garbage_agent, call_timeout=5)).info()
    assert str(caught.value).startswith("lost the agent on host 198.18.0.10 during info(): ")


def test_a_long_call_ends_when_the_agent_stops_answering_its_heartbeat(tmp_path, pinged_agent):
    """run() of 30 s with a timeout of 100 s would wait up to 101 s for an agent that hangs; the heartbeat (every
    0.2 s here, an answer within the call timeout of 1 s) ends it, and no later call that long is started."""
    uri, served = pinged_agent
    d = deployer(tmp_path, uri, call_timeout=1, heartbeat_interval=0.2)
    agent = agent_of(d)
    threading.Timer(1.0, served.hangs.set).start()
    with pytest.raises(AgentLost) as caught:
        agent.run("c", ["30"], timeout=100)
    assert str(caught.value).startswith(
        "the agent on host 198.18.0.10 did not answer while run() waited: a heartbeat (ping() every 0.2 s) did not "
        "answer within 1 s; "
    ), caught.value
    assert "deploy again under the same name to resume" in str(caught.value)
    assert served.runs == 1
    with pytest.raises(AgentLost, match="did not answer while run"):
        agent_of(d).run("c", ["0"], timeout=100)
    assert served.runs == 1, "not sent: the agent is known to hang"
    d.close()


def test_a_long_call_on_an_agent_that_answers_its_heartbeat_or_has_none_runs_to_its_end(
    tmp_path, pinged_agent, slow_agent
):
    uri, served = pinged_agent
    for target in (uri, slow_agent):  # an agent without ping() (an older one) is waited on as before
        d = deployer(tmp_path, target, call_timeout=1, heartbeat_interval=0.2)
        assert agent_of(d).run("c", ["1.5"], timeout=100)["exit_code"] == 0
        d.close()
    assert served.runs == 1
