"""The agent's door: accepts connections without ever reading from them, admits a client once TLS and the token
handshake are done (under a deadline, a size limit and caps of their own), then serves its calls, each message under
a size limit, on a thread of its own until it leaves or the agent stops. Refusals are logged, a few lines a cause."""

import collections
import contextlib
import errno
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass

import Pyro5.errors
from Pyro5 import config, core, protocol, serializers, socketutil

from agent.endpoint import BUSY
from agent.errors import InvalidArgument

log = logging.getLogger(__name__)

MIB = 1024 * 1024
HEADER_SIZE = struct.calcsize(protocol._header_format)  # every Pyro5 message starts with this fixed header
# What may carry the token: text formats only (marshal is not safe on untrusted input).
HANDSHAKE_SERIALIZERS = {serializers.serializers[name].serializer_id for name in ("serpent", "json")}
LOG_INTERVAL = 10.0  # seconds: at most one line per cause of refusal in this time
ACCEPT_BATCH = 256  # connections accepted per wake-up before the loop looks at its other duties


@dataclass(frozen=True)
class Limits:
    """How long and how much a connection may take, before and after it has shown the token."""

    handshake_timeout: float = 10.0  # seconds from accept to the end of TLS and the token handshake
    max_unauthenticated: int = 64  # connections still in their handshake, from anywhere
    max_unauthenticated_per_source: int = 16  # ... and from any one address
    max_handshake_size: int = 4096  # bytes of the handshake message (the token is 43)
    max_clients: int = 128  # authenticated clients connected at once
    max_message_size: int = 64 * MIB  # bytes of one call (git bundles for run(stdin=...) are the largest)


class Throttle:
    """Log a cause at most once per `interval`; the ones left out are counted, and told in the next line."""

    def __init__(self, logger, interval=LOG_INTERVAL, clock=time.monotonic):
        self._log, self._interval, self._clock = logger, interval, clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # cause -> when its last line was logged
        self._held: dict[str, tuple[int, int, str]] = {}  # cause -> (count, level, last message) not logged

    def log(self, cause, message, level=logging.WARNING):
        now = self._clock()
        with self._lock:
            if now - self._last.get(cause, -self._interval) < self._interval:
                count = self._held.get(cause, (0, level, message))[0]
                self._held[cause] = (count + 1, level, message)
                return
            self._last[cause] = now
            count = self._held.pop(cause, (0, level, message))[0]
        if count:
            message += f" (and {count} more like it in the last {self._interval:.0f} s)"
        self._log.log(level, "%s", message)

    def flush(self):
        """Tell the counts of causes whose interval has ended with nothing new (call it every second or so)."""
        now = self._clock()
        with self._lock:
            due = [cause for cause in self._held if now - self._last[cause] >= self._interval]
            told = [(cause, self._held.pop(cause)) for cause in due]
            for cause in due:
                self._last[cause] = now
        for _, (count, level, message) in told:
            if count > 1:
                message += f" (and {count - 1} more like it in the last {self._interval:.0f} s)"
            self._log.log(level, "%s", message)


class _Closed(Exception):
    """The peer closed its end, or the agent shut the socket down to stop."""


class _Late(Exception):
    """The handshake deadline passed."""


class _Refused(Exception):
    """Not something the agent takes; the text says why (for the log and, after the token, the client)."""

    def __init__(self, cause, text):
        super().__init__(text)
        self.cause = cause


class _Connection(socketutil.SocketConnection):
    """Pyro5's connection, which first hands out the header the gate read (and checked) itself."""

    def __init__(self, sock):
        super().__init__(sock)
        self.unread = b""

    def recv(self, size):
        if not self.unread:
            return super().recv(size)
        head, self.unread = self.unread[:size], self.unread[size:]
        return head if len(head) == size else head + super().recv(size - len(head))


class _Client:
    def __init__(self, sock, source):
        self.sock = sock  # replaced by its TLS socket on the client's thread, under the gate's lock
        self.source = source
        self.accepted = time.monotonic()
        self.state = "handshake"  # then "idle" (waiting for a call) or "busy" (in a call)


@dataclass(frozen=True)
class _Header:
    type: int
    serializer_id: int
    flags: int
    seq: int
    size: int  # annotations and data, the bytes after the header


def _parse_header(data):
    tag, version, msgtype, serializer_id, flags, seq, data_size, annotations_size, _, _, magic = struct.unpack(
        protocol._header_format, data
    )
    if tag != b"PYRO" or version != protocol.PROTOCOL_VERSION or magic != protocol._magic_number:
        raise _Refused("protocol", "not a Pyro5 message of this protocol version")
    return _Header(msgtype, serializer_id, flags, seq, data_size + annotations_size)


def _read(sock, size, deadline=None):
    """Exactly `size` bytes; with a deadline, all of them before it, however slowly they come."""
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Late
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(size - len(data), 65536))
        except TimeoutError:
            raise _Late from None
        except (ConnectionError, ssl.SSLEOFError):
            raise _Closed from None
        if not chunk:
            raise _Closed
        data += chunk
    return bytes(data)


def _cut(sock):
    """Wake whatever thread waits on this socket, at once: shut it down at the kernel level (SSLSocket's own
    shutdown() would drop its TLS state under that thread). The thread that owns the socket closes it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _reset(sock):
    """Close a socket not read from: a reset tells the peer at once and leaves no TIME_WAIT here."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Gate:
    """Pyro5's transport for the agent's daemon, in place of its thread-pool server: a loop that accepts and hands
    each connection to a thread of its own, counting connections before the token and clients after it apart."""

    def __init__(self, daemon, tls_context, limits, throttle=None):
        # Pyro5's Daemon always makes its own transport; with SERVERTYPE "multiplex" that one only binds the
        # listening socket (no threads). The gate takes the socket and its place.
        made = daemon.transportServer
        self.daemon, self.sock, self.locationStr = daemon, made.sock, made.locationStr
        made.selector.unregister(self.sock)
        made.sock = None
        made.close()
        daemon.transportServer = self
        self.tls_context, self.limits = tls_context, limits
        self.throttle = throttle or Throttle(log)
        self.sock.setblocking(False)
        self.sock.listen(512)
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a client left or finished a call
        self._clients: set[_Client] = set()
        self._unauthenticated: collections.Counter[str] = collections.Counter()  # source -> connections
        self._authenticated = 0
        self._stopping = False
        self._closed = False

    def __repr__(self):
        return f"<Gate on {self.locationStr}; {len(self._clients)} connections>"

    # -- Pyro5's transport interface ----------------------------------------------------------------------------

    @property
    def sockets(self):
        return [self.sock]

    @property
    def selector(self):
        raise TypeError("the agent's gate has no selector to share")

    def loop(self, loopCondition=lambda: True):  # Pyro5 passes it by that name
        housekeeping = time.monotonic()
        while not self._stopping and loopCondition():
            for key, _ in self._selector.select(config.POLLTIMEOUT):
                if key.fileobj is self.sock:
                    self._accept()
                else:
                    with contextlib.suppress(OSError):
                        self._wake_read.recv(4096)
            if time.monotonic() - housekeeping >= 1:
                housekeeping = time.monotonic()
                self.throttle.flush()
                self.daemon._housekeeping()

    def events(self, eventsockets):
        if self.sock in eventsockets:
            self._accept()

    def combine_loop(self, server):
        raise TypeError("the agent's gate cannot combine loops")

    def wakeup(self):
        with contextlib.suppress(OSError):
            self._wake_write.send(b"!")

    def shutdown(self):
        self._stopping = True
        self.wakeup()

    def close(self):
        """Stop at once: no grace for calls in progress (stop() gives one)."""
        self.stop(0)

    # -- stopping ------------------------------------------------------------------------------------------------

    def stop(self, grace):
        """Stop accepting, drop every connection not in a call, give calls in progress `grace` seconds to end,
        then cut their connections too. Returns how many calls were still running."""
        with self._lock:
            if self._closed:
                return 0
            self._stopping = self._closed = True
            for client in self._clients:
                if client.state != "busy":
                    _cut(client.sock)
        self._selector.close()
        self.sock.close()
        self._wake_read.close()
        self._wake_write.close()
        end = time.monotonic() + grace
        with self._lock:
            while any(client.state == "busy" for client in self._clients) and time.monotonic() < end:
                self._changed.wait(end - time.monotonic())
            running = sum(client.state == "busy" for client in self._clients)
            for client in self._clients:
                _cut(client.sock)
        return running

    # -- accepting -----------------------------------------------------------------------------------------------

    def _accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self.throttle.log(
                    "accept", f"cannot accept connections: {error.strerror}; raise the agent's LimitNOFILE"
                )
                time.sleep(0.1)  # the listening socket stays readable: do not spin
                return
            self._admit(sock, str(address[0]) if isinstance(address, tuple) else "local")

    def _admit(self, sock, source):
        """Give the connection a thread if the caps allow, else close it at once, unread."""
        refusal = self._place(sock, source)
        if isinstance(refusal, _Client):
            try:
                threading.Thread(target=self._serve, args=(refusal,), name=f"client {source}", daemon=True).start()
                return
            except RuntimeError as error:  # no thread left: the host is short of memory, or of a ulimit
                self._leave(refusal)
                refusal = _Refused("threads", f"no thread for it: {error}")
        if refusal is not None:
            self._refuse(source, refusal.cause, str(refusal))
        _reset(sock)

    def _place(self, sock, source):
        """The connection's place among those in their handshake (a _Client), or why there is none (_Refused;
        None while stopping)."""
        limits = self.limits
        with self._lock:
            if self._stopping:
                return None
            waiting = self._unauthenticated.total()
            if waiting >= limits.max_unauthenticated:
                return _Refused(
                    "max_unauthenticated", f"{waiting} connections are in their handshake already (max_unauthenticated)"
                )
            if self._unauthenticated[source] >= limits.max_unauthenticated_per_source:
                return _Refused(
                    "max_unauthenticated_per_source",
                    f"{self._unauthenticated[source]} connections from that address are in their handshake already "
                    "(max_unauthenticated_per_source)",
                )
            client = _Client(sock, source)
            self._clients.add(client)
            self._unauthenticated[source] += 1
            return client

    def _leave(self, client):
        with self._lock:
            self._clients.discard(client)
            if client.state == "handshake":
                self._unauthenticated[client.source] -= 1
                if not self._unauthenticated[client.source]:
                    del self._unauthenticated[client.source]
            else:
                self._authenticated -= 1
            self._changed.notify_all()

    # -- one connection, on its own thread -----------------------------------------------------------------------

    def _serve(self, client):
        connection = None
        try:
            connection = self._handshake(client)
            if connection is not None:
                self._serve_calls(client, connection)
        except Exception:
            log.exception("the connection of a client from %s failed unexpectedly", client.source)
        finally:
            self._leave(client)
            if connection is not None:
                self.daemon._clientDisconnect(connection)
            _cut(client.sock)
            client.sock.close()

    def _handshake(self, client):
        """TLS, then Pyro5's connect message with the token, all before the deadline: the connection to serve
        calls on, or None (refused and logged)."""
        limits = self.limits
        deadline = client.accepted + limits.handshake_timeout
        try:
            if self.tls_context is not None:
                with self._lock:
                    if self._stopping:
                        return None
                    client.sock = self.tls_context.wrap_socket(
                        client.sock, server_side=True, do_handshake_on_connect=False
                    )
                client.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                client.sock.do_handshake()
            raw = _read(client.sock, HEADER_SIZE, deadline)
            header = _parse_header(raw)
            if header.type != protocol.MSG_CONNECT:
                raise _Refused("protocol", f"message type {header.type} where the connect handshake belongs")
            if header.size > limits.max_handshake_size:
                raise _Refused(
                    "max_handshake_size",
                    f"a handshake of {header.size} bytes, over {limits.max_handshake_size} (max_handshake_size); "
                    "not read",
                )
            if header.flags & protocol.FLAGS_COMPRESSED or header.serializer_id not in HANDSHAKE_SERIALIZERS:
                raise _Refused("protocol", "a compressed handshake, or one in a serializer other than serpent or json")
            payload = _read(client.sock, header.size, deadline)
            data = _handshake_data(raw, payload)
            connection = _Connection(client.sock)
            return self._authenticate(client, connection, header, data, deadline)
        except _Late:
            self._refuse(client.source, "handshake_timeout", f"no handshake within {limits.handshake_timeout:g} s")
        except (_Closed, Pyro5.errors.ConnectionClosedError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
            self.throttle.log(
                "closed", f"a client from {client.source} closed its connection during the handshake", logging.INFO
            )
        except _Refused as refused:
            self._refuse(client.source, refused.cause, str(refused))
        except (TimeoutError, Pyro5.errors.TimeoutError):
            self._refuse(client.source, "handshake_timeout", f"no handshake within {limits.handshake_timeout:g} s")
        except ssl.SSLError as error:
            self._refuse(client.source, "tls", f"TLS handshake failed: {error.reason or error}")
        except OSError as error:
            self._refuse(client.source, "tls", f"TLS handshake failed: {error.strerror or error}")
        return None

    def _authenticate(self, client, connection, header, data, deadline):
        """The token (the daemon's validateHandshake), then a place among the clients: CONNECTOK and the
        connection, or CONNECTFAIL with the reason and None (logged first: whoever reads the log after the
        refusal finds it there)."""
        try:
            answer = self.daemon.validateHandshake(connection, data["handshake"])
        except Exception as error:
            self._fail(client, connection, header, "token", str(error), str(error), deadline)
            return None
        try:
            meta = self.daemon.objectsById[core.DAEMON_NAME].get_metadata(data["object"])
        except Pyro5.errors.PyroError as error:
            reason = f"asked for object {data['object'][:100]!r}: {error}"
            self._fail(client, connection, header, "protocol", reason, str(error), deadline)
            return None
        with self._lock:
            clients = self._authenticated
            full = self._stopping or clients >= self.limits.max_clients
            if not full:
                self._unauthenticated[client.source] -= 1
                if not self._unauthenticated[client.source]:
                    del self._unauthenticated[client.source]
                self._authenticated += 1
                client.state = "idle"
        if full:
            reason = f"{clients} clients are connected already (max_clients)"
            self._fail(client, connection, header, "max_clients", reason, f"{BUSY} {reason}", deadline)
            return None
        self._reply(client, connection, header, protocol.MSG_CONNECTOK, {"handshake": answer, "meta": meta}, deadline)
        client.sock.settimeout(None)
        return connection

    def _fail(self, client, connection, header, cause, reason, answer, deadline):
        self._refuse(client.source, cause, reason)
        self._reply(client, connection, header, protocol.MSG_CONNECTFAIL, answer, deadline)

    @staticmethod
    def _reply(client, connection, header, msgtype, data, deadline):
        serializer = serializers.serializers_by_id[header.serializer_id]
        message = protocol.SendingMessage(msgtype, 0, header.seq, header.serializer_id, serializer.dumps(data))
        client.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        connection.send(message.data)

    def _refuse(self, source, cause, reason):
        self.throttle.log(cause, f"refused the connection of a client from {source}: {reason}")

    def _serve_calls(self, client, connection):
        """One call after the other until the client leaves or the agent stops; each message's header is read and
        checked here first, then Pyro5 reads the rest and makes the call."""
        while True:
            with self._lock:
                if self._stopping:
                    return
                client.state = "idle"
                self._changed.notify_all()
            try:
                raw = _read(client.sock, HEADER_SIZE)
            except (_Closed, OSError):
                return
            with self._lock:
                if self._stopping:
                    return
                client.state = "busy"
            header = None
            try:
                header = _parse_header(raw)
                self._check_call(header)
            except _Refused as refused:
                self.throttle.log(
                    refused.cause, f"refused a call from {client.source}: {refused}; closed its connection"
                )
                if header is not None and refused.cause != "protocol":
                    self._answer_refusal(client, connection, header, refused)
                return
            connection.unread = raw
            try:
                self.daemon.handleRequest(connection)
            except (OSError, Pyro5.errors.CommunicationError, Pyro5.errors.SecurityError) as error:
                log.debug("the connection of a client from %s ended: %s", client.source, error)
                return

    def _check_call(self, header):
        if header.type not in (protocol.MSG_INVOKE, protocol.MSG_PING):
            raise _Refused("protocol", f"message type {header.type} where a call belongs")
        if header.serializer_id not in serializers.serializers_by_id:
            raise _Refused("protocol", f"unknown serializer {header.serializer_id}")
        if header.size > self.limits.max_message_size:
            raise _Refused(
                "max_message_size",
                f"a message of {header.size} bytes is over this agent's limit of {self.limits.max_message_size} "
                "bytes (max_message_size in its agent.toml); not read",
            )
        if header.flags & protocol.FLAGS_COMPRESSED:
            raise _Refused("compressed", "compressed messages are not taken (turn off Pyro5's COMPRESSION)")
        if header.flags & protocol.FLAGS_ONEWAY:
            raise _Refused("oneway", "one-way calls are not offered")

    def _answer_refusal(self, client, connection, header, refused):
        """Tell the client why, as the call's error (it may not read it: a client still sending gets a reset)."""
        with contextlib.suppress(OSError, Pyro5.errors.CommunicationError):
            client.sock.settimeout(5)
            self.daemon._sendExceptionResponse(
                connection, header.seq, header.serializer_id, InvalidArgument(str(refused)), None
            )


def _handshake_data(raw, payload):
    """The connect message's content: a dict with the token ("handshake") and an object id."""
    try:
        message = protocol.ReceivingMessage(raw, payload)
        data = serializers.serializers_by_id[message.serializer_id].loads(message.data)
    except Exception as error:  # anything a malformed payload makes a deserializer raise
        raise _Refused("protocol", f"an unreadable handshake ({type(error).__name__})") from None
    if not (isinstance(data, dict) and isinstance(data.get("handshake"), str) and isinstance(data.get("object"), str)):
        raise _Refused("protocol", "a connect handshake without a token and an object id")
    return data
