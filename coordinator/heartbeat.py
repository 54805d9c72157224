"""Whether a host's agent still answers while calls to it wait a long time.

run() of stack.sh answers only when stack.sh ends, up to hours later, and a call's deadline must allow that. An
agent that hangs meanwhile (stopped, deadlocked, or its host frozen while the kernel still acknowledges TCP) would
hold the deploy that long. So, like SSH's ServerAliveInterval, a Heartbeat asks the agent `ping()` over a
connection of its own every `interval` seconds while such calls are in flight, and if no answer comes within
`timeout` it cuts their connections: they end at once, and the caller reads `failure` to say why.
"""

import contextlib
import logging
import threading

import Pyro5.errors

from agent.client import cut
from agent.errors import AgentError

INTERVAL = 15.0  # seconds between two pings while long calls wait
TIMEOUT = 60.0  # at most this long for an answer (less when the deploy's --agent-timeout is less)

log = logging.getLogger(__name__)


class Heartbeat:
    """One host's: `watching(proxy)` around each long call on `proxy`; `connect()` makes the ping connection."""

    def __init__(self, connect, where, interval=INTERVAL, timeout=TIMEOUT):
        self._connect, self.where, self.interval, self.timeout = connect, where, interval, timeout
        self._lock = threading.Lock()
        self._watched: dict[int, object] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._unsupported = False  # an agent without ping(): calls wait for their own deadlines, as before
        self.failure: str | None = None  # why the agent counts as lost, once it does

    @contextlib.contextmanager
    def watching(self, proxy):
        with self._lock:
            if self.failure is None and not self._unsupported and not self._closed.is_set():
                self._watched[id(proxy)] = proxy
                if self._thread is None:
                    self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.where}", daemon=True)
                    self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(id(proxy), None)

    def close(self):
        """Stop asking (the deploy is over); the thread ends within one ping."""
        self._closed.set()

    def _beat(self):
        pinger = None
        try:
            while True:
                try:
                    if pinger is None:  # at once: connecting to an agent that hangs already would be slower
                        pinger = self._connect()
                        pinger._pyroTimeout = self.timeout
                    if self._closed.wait(self.interval):
                        return
                    with self._lock:
                        if not self._watched:
                            self._thread = None
                            return
                    pinger.ping()
                except (Pyro5.errors.CommunicationError, AgentError) as error:
                    self._lost(error)
                    return
                except Exception as error:  # an older agent without ping(), or a stand-in: no heartbeat
                    log.debug("no heartbeat from %s: %s", self.where, error)
                    with self._lock:
                        self._unsupported, self._thread = True, None
                    return
        finally:
            if pinger is not None:
                with contextlib.suppress(Exception):
                    pinger._pyroRelease()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _lost(self, error):
        reason = (
            f"did not answer within {self.timeout:g} s"
            if isinstance(error, Pyro5.errors.TimeoutError)
            else f"could not be asked ({error})"
        )
        with self._lock:
            self.failure = f"a heartbeat (ping() every {self.interval:g} s) {reason}"
            watched = list(self._watched.values())
            self._thread = None
        log.info("agent on %s: %s; ending the %d call(s) that wait for it", self.where, self.failure, len(watched))
        for proxy in watched:
            cut(proxy)
