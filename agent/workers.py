"""Single-threaded worker processes for the liblxc calls that fork the caller.

liblxc's start(), create(), attach() and get_ips() fork the calling process. Forking the multi-threaded RPC
server could copy a lock held by another thread into the child; so those calls run here, in processes started
fresh (spawn, not fork) that run one call at a time on their main thread.
"""

import concurrent.futures
import logging
import multiprocessing
import sys
import threading

from agent.errors import ContainerError


class WorkerPool:
    def __init__(self, size):
        self._size = size
        self._lock = threading.Lock()
        self._pool = None

    def _executor(self):
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self._size,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_log_like,
                    initargs=_logging_of_this_process(),
                )
            return self._pool

    def call(self, function, *args, **kwargs):
        """Run a module-level function in a worker and return its result (or raise its exception)."""
        try:
            return self._executor().submit(function, *args, **kwargs).result()
        except concurrent.futures.process.BrokenProcessPool as error:
            # A worker died (killed, or crashed in C); start a fresh pool for later calls.
            with self._lock:
                self._pool = None
            raise ContainerError(
                f"a worker process died during {function.__name__}; the agent replaced it, "
                "check the state with list() and retry"
            ) from error

    def shutdown(self):
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _logging_of_this_process():
    """The root logger's level and formatter here, for the workers: a spawned process starts unconfigured and
    would drop the INFO lines that record what the liblxc calls changed."""
    root = logging.getLogger()
    formatter = next((handler.formatter for handler in root.handlers if handler.formatter is not None), None)
    return root.getEffectiveLevel(), formatter


def _log_like(level, formatter):
    """In a worker: log at the agent's level and in its format to the stderr it shares with the agent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
