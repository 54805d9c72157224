"""connect(): a Pyro5 proxy to one lxc-agent, for the coordinator and for users' scripts.

Each connection carries its own TLS material (Pyro5's own client TLS settings are process-wide, and a
coordinator may talk to agents with different CAs), so the socket and Pyro5's connect handshake are made here.
"""

import contextlib
import os
import socket
import ssl
import time

import Pyro5.api
import Pyro5.errors
from Pyro5 import protocol, serializers, socketutil

from agent import errors, pki  # importing errors registers them with Pyro5
from agent.endpoint import BUSY, DEFAULT_PKI, DEFAULT_PORT, OBJECT_ID

# An agent that is full closes a new connection at once (or answers "busy"): try again after these pauses.
RETRY_FIRST, RETRY_MOST = 0.2, 2.0


class AgentProxy(Pyro5.api.Proxy):
    """A proxy on a socket made by connect(); closing it closes the socket too."""

    def _pyroRelease(self):
        connection = self._pyroConnection
        super()._pyroRelease()
        if connection is not None:
            connection.sock.close()


def cut(proxy):
    """End a connected proxy's connection from any thread: a call waiting on it ends at once, with Pyro5's
    ConnectionClosedError. The socket is shut down beneath TLS (ssl's own shutdown would pull the TLS state from
    under the thread that reads); the proxy's owner still releases it. Anything else (not connected, a stand-in)
    is left alone."""
    sock = getattr(getattr(proxy, "_pyroConnection", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # closed already
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _SizedConnection(socketutil.SocketConnection):
    """Refuses to send a call over the agent's limit: the agent would cut the connection off without reading it."""

    def __init__(self, sock, where, limit):
        super().__init__(sock, OBJECT_ID, keep_open=True)
        self.where, self.limit = where, limit

    def send(self, data):
        size = len(data) - protocol._header_size
        if size > self.limit:
            raise errors.InvalidArgument(
                f"this call is {size} bytes long; lxc-agent at {self.where} takes calls of at most {self.limit} "
                "bytes (its max_message_size setting): send less at once, or raise that setting there",
                size=size,
                limit=self.limit,
            )
        super().send(data)


class _Busy(Exception):
    """The agent turned the connection away for now (it is full); the text says how."""


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
    `timeout` bounds connecting and authenticating, tries again included: an agent that is full turns a new
    connection away at once, and connect() tries again until then. Calls themselves may run as long as they need.
    """
    if token is None:
        token = pki.read_token(token_file or os.path.join(pki_dir, "token"))
    context = None
    if tls:
        context = pki.client_ssl_context(
            cert or os.path.join(pki_dir, "client.crt"),
            key or os.path.join(pki_dir, "client.key"),
            ca or os.path.join(pki_dir, "ca.crt"),
            check_hostname,
        )
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    pause = RETRY_FIRST
    while True:
        try:
            return _connect_once(host, port, context, token, where, max(deadline - time.monotonic(), 0.1))
        except _Busy as busy:
            if time.monotonic() + pause >= deadline:
                raise errors.AgentError(
                    f"lxc-agent at {where} turned the connection away for {timeout:g} s: {busy}; it serves "
                    "too many clients or connections at once (see its log)"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MOST)


def _connect_once(host, port, context, token, where, timeout):
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionResetError as error:  # a full agent can reset a connection that fast on loopback
        raise _Busy(f"it closed the connection at once ({error})") from None
    except OSError as error:
        raise errors.AgentError(
            f"cannot reach lxc-agent at {where}: {error}; is it running "
            "(systemctl status lxc-agent) and listening there?"
        ) from error
    try:
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
                # A certificate it refuses ends in an alert, after this; a full agent closes before it.
                raise _Busy(f"it closed the connection before TLS was done ({error})") from None
        answer = _handshake(sock, token, where, closed_means_busy=context is None)
        # Pyro5 asks the agent for the object's metadata as the proxy is made: still within `timeout`, or an
        # agent that stops answering right then would hold this call for ever.
        proxy = AgentProxy(OBJECT_ID, connected_socket=sock)
        sock.settimeout(None)
        limit = answer.get("max_message_size")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            proxy._pyroConnection = _SizedConnection(sock, where, limit)
        return proxy
    except (errors.AgentError, _Busy):
        sock.close()
        raise
    except (TimeoutError, Pyro5.errors.TimeoutError):
        sock.close()
        raise errors.AgentError(
            f"lxc-agent at {where} did not answer within {timeout:.0f} s while connecting: it hangs, or the host or "
            "network does"
        ) from None
    except (OSError, Pyro5.errors.PyroError) as error:
        sock.close()
        raise errors.AgentError(f"cannot connect to lxc-agent at {where}: {error}") from error


def _handshake(sock, token, where, closed_means_busy):
    """Pyro5's MSG_CONNECT with the token as handshake data; the agent answers CONNECTOK (with its limits) or
    CONNECTFAIL (with the reason). Returns what the agent said about itself: a dict, empty from older agents."""
    connection = socketutil.SocketConnection(sock, OBJECT_ID, keep_open=True)
    serializer = serializers.serializers[Pyro5.config.SERIALIZER]
    data = serializer.dumps({"handshake": token, "object": OBJECT_ID})
    try:
        connection.send(protocol.SendingMessage(protocol.MSG_CONNECT, 0, 0, serializer.serializer_id, data).data)
        reply = protocol.recv_stub(connection, [protocol.MSG_CONNECTOK, protocol.MSG_CONNECTFAIL])
    except Pyro5.errors.ConnectionClosedError as error:
        if closed_means_busy:  # without TLS, a full agent's reset shows here
            raise _Busy(f"it closed the connection before the handshake was done ({error})") from None
        raise
    content = serializers.serializers_by_id[reply.serializer_id].loads(reply.data)
    if reply.type == protocol.MSG_CONNECTFAIL:
        if isinstance(content, str) and content.startswith(BUSY):
            raise _Busy(content[len(BUSY) :].strip())
        raise errors.AuthenticationError(f"lxc-agent at {where} refused the connection: {content}")
    answer = content.get("handshake") if isinstance(content, dict) else None
    return answer if isinstance(answer, dict) else {}
