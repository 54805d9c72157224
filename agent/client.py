"""connect(): a Pyro5 proxy to one lxc-agent, for the coordinator and for users' scripts.

Each connection carries its own TLS material (Pyro5's own client TLS settings are process-wide, and a
coordinator may talk to agents with different CAs), so the socket and Pyro5's connect handshake are made here.
"""

import os
import socket

import Pyro5.api
import Pyro5.errors
from Pyro5 import protocol, serializers, socketutil

from agent import errors, pki  # importing errors registers them with Pyro5
from agent.endpoint import DEFAULT_PKI, DEFAULT_PORT, OBJECT_ID


class AgentProxy(Pyro5.api.Proxy):
    """A proxy on a socket made by connect(); closing it closes the socket too."""

    def _pyroRelease(self):
        connection = self._pyroConnection
        super()._pyroRelease()
        if connection is not None:
            connection.sock.close()


def connect(
    host="localhost",
    port=DEFAULT_PORT,
    *,
    pki_dir=DEFAULT_PKI,
    ca=None,
    cert=None,
    key=None,
    token=None,
    token_file=None,
    tls=True,
    check_hostname=True,
    timeout=30.0,
):
    """Connect, authenticate and return a proxy whose methods are the agent's operations.

    TLS material and token default to the files `lxc-agent init-pki` wrote in `pki_dir`.
    `timeout` bounds connecting and authenticating; calls themselves may run as long as they need.
    """
    if token is None:
        token = pki.read_token(token_file or os.path.join(pki_dir, "token"))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise errors.AgentError(
            f"cannot reach lxc-agent at {host}:{port}: {error}; is it running "
            "(systemctl status lxc-agent) and listening there?"
        ) from error
    try:
        if tls:
            context = pki.client_ssl_context(
                cert or os.path.join(pki_dir, "client.crt"),
                key or os.path.join(pki_dir, "client.key"),
                ca or os.path.join(pki_dir, "ca.crt"),
                check_hostname,
            )
            sock = context.wrap_socket(sock, server_hostname=host)
        _handshake(sock, token, f"{host}:{port}")
        sock.settimeout(None)
        return AgentProxy(OBJECT_ID, connected_socket=sock)
    except errors.AgentError:
        sock.close()
        raise
    except (OSError, Pyro5.errors.PyroError) as error:
        sock.close()
        raise errors.AgentError(f"cannot connect to lxc-agent at {host}:{port}: {error}") from error


def _handshake(sock, token, where):
    """Pyro5's MSG_CONNECT with the token as handshake data; the agent answers CONNECTOK or CONNECTFAIL."""
    connection = socketutil.SocketConnection(sock, OBJECT_ID, keep_open=True)
    serializer = serializers.serializers[Pyro5.config.SERIALIZER]
    data = serializer.dumps({"handshake": token, "object": OBJECT_ID})
    connection.send(protocol.SendingMessage(protocol.MSG_CONNECT, 0, 0, serializer.serializer_id, data).data)
    reply = protocol.recv_stub(connection, [protocol.MSG_CONNECTOK, protocol.MSG_CONNECTFAIL])
    if reply.type == protocol.MSG_CONNECTFAIL:
        reason = serializers.serializers_by_id[reply.serializer_id].loads(reply.data)
        raise errors.AuthenticationError(f"lxc-agent at {where} refused the connection: {reason}")
