"""agent.client.connect() against an agent that goes silent in the middle of connecting: it gives up within its
timeout, with words naming the agent, instead of waiting for ever (a SIGSTOPped agent did that to a deploy)."""

import socket
import threading

import pytest
from Pyro5 import protocol, serializers, socketutil

from agent import client, errors


@pytest.fixture
def silent_after_handshake():
    """A TCP server that accepts the token handshake as an agent does, then reads Pyro5's request for the
    object's metadata and never answers it. Yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        connection, _ = server.accept()
        pyro = socketutil.SocketConnection(connection, client.OBJECT_ID, keep_open=True)
        message = protocol.recv_stub(pyro, [protocol.MSG_CONNECT])
        serializer = serializers.serializers_by_id[message.serializer_id]
        answer = serializer.dumps({"handshake": {"max_message_size": 1 << 20}})
        pyro.send(protocol.SendingMessage(protocol.MSG_CONNECTOK, 0, message.seq, message.serializer_id, answer).data)
        protocol.recv_stub(pyro, [protocol.MSG_INVOKE])  # get_metadata: read, and left unanswered
        done.wait(30)
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        server.close()


@pytest.mark.timeout(30)  # without the fix it waits for ever: this ends it as a failure
def test_an_agent_silent_after_the_handshake_is_given_up_on_within_the_timeout(silent_after_handshake, tmp_path):
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    with pytest.raises(errors.AgentError, match=r"lxc-agent at 127\.0\.0\.1:\d+ did not answer within 1 s while "):
        client.connect("127.0.0.1", silent_after_handshake, tls=False, token_file=str(token), timeout=1)
