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


@pytest.fixture
def slow_agent():
    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(SlowAgent(), "lxc.agent")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    yield uri
    daemon.shutdown()
    thread.join(10)


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


def deployer(tmp_path, uri, call_timeout):
    plan = topology.plan(validate(CONFIG))
    store = Store(str(tmp_path / "store.sqlite"))
    return Deployer(
        "t", plan, store, lambda host: Pyro5.api.Proxy(uri), Settings(log_dir=str(tmp_path), call_timeout=call_timeout)
    )


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
