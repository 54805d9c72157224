"""Deployment records in SQLite: config, plan, the state of each step and every resource created.

A deploy marks each step done as it finishes, so deploying again under the same name resumes at the first
step not done; `destroy` walks the resources in reverse. A per-deployment lock file (flock, released by the
kernel when its process dies) keeps two coordinators off the same deployment.
"""

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time

from coordinator.errors import CoordinatorError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/var/lib/lxc-coordinator/deployments.sqlite"
ENVIRONMENT_VARIABLE = "LXC_COORDINATOR_STORE"

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    PRIMARY KEY (deployment, key)
);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    UNIQUE (deployment, host, kind, name)
);
-- Whole-deployment snapshots (coordinator snapshot): complete ones only, with the nodes they hold; the containers'
-- snapshots themselves are on the hosts, and go with their containers.
CREATE TABLE IF NOT EXISTS snapshots (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    taken REAL NOT NULL,
    nodes TEXT NOT NULL,
    PRIMARY KEY (deployment, tag)
);
-- Golden images kept on hosts (coordinator.golden_nodes): they outlive the deployment that kept them, so this
-- remembers where to look for them (`coordinator golden list`) after its record is gone.
CREATE TABLE IF NOT EXISTS golden_images (
    host TEXT NOT NULL,
    port INTEGER,
    key TEXT NOT NULL,
    node TEXT NOT NULL,
    deployment TEXT NOT NULL,
    kept REAL NOT NULL,
    PRIMARY KEY (host, key)
);
"""


class StoreError(CoordinatorError):
    """A deployment record is missing, conflicting, locked or damaged."""


def default_path():
    return os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH


class Store:
    def __init__(self, path=None):
        self.path = path or default_path()
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # A deploy records steps from one thread per host: one connection, used under one lock.
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(
                f"cannot open the deployment store {self.path}: {error}; choose another with "
                f"--store or {ENVIRONMENT_VARIABLE}"
            ) from error
        self._lock = threading.Lock()
        try:
            self._sql("PRAGMA foreign_keys = ON")
            self._sql("PRAGMA journal_mode = WAL")
            with self._lock:
                self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            # SQLite opens any file lazily: a file that is no database shows only at the first statement.
            self._db.close()
            raise StoreError(
                f"cannot use the deployment store {self.path}: {error}; is it the coordinator's store? "
                f"Choose another with --store or {ENVIRONMENT_VARIABLE}"
            ) from error
        log.debug("deployment store %s", self.path)

    def _sql(self, query, parameters=()):
        with self._lock:
            return self._db.execute(query, parameters).fetchall()

    def close(self):
        self._db.close()

    # -- locking ---------------------------------------------------------------------------------------------

    def _lock_path(self, name):
        return os.path.join(self.path + ".locks", f"{name}.lock")

    @contextlib.contextmanager
    def lock(self, name):
        """Exclusive work on one deployment; refuses at once if another process holds it."""
        os.makedirs(self.path + ".locks", mode=0o700, exist_ok=True)
        handle = open(self._lock_path(name), "a+")  # noqa: SIM115 (held while locked, closed in the finally)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreError(
                    f"deployment {name!r} is being worked on by {holder}; wait for it to finish or stop it first"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"coordinator pid {os.getpid()}")
            handle.flush()
            log.debug("locked deployment %r (%s)", name, self._lock_path(name))
            yield
        finally:
            handle.close()

    def locked(self, name):
        """True while some process holds the deployment's lock. Read from /proc/locks, without taking the lock:
        a probe that took it, even briefly, could turn away a coordinator starting at that moment."""
        path = self._lock_path(name)
        try:
            info = os.stat(path)
            with open("/proc/locks") as handle:
                table = handle.read()
        except OSError:
            return False
        device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
        for line in table.splitlines():
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF"; a waiter's line has "->" after the number
            fields = line.split()
            if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
                continue
            pid, (major, minor, inode) = fields[4], fields[5].split(":")
            if inode != str(info.st_ino):
                continue
            # btrfs gives stat() another device number than /proc/locks: then ask the holder's open files.
            if f"{major}:{minor}" == device or _has_open(pid, path):
                return True
        return False

    # -- deployments -------------------------------------------------------------------------------------------

    def begin(self, name, config, plan):
        """Record a new deployment, or return the existing one if its config is the same (a resume)."""
        config_text, plan_text = _dump(config), _dump(plan)
        existing = self.get(name, missing_ok=True)
        if existing is None:
            now = time.time()
            self._sql(
                "INSERT INTO deployments VALUES (?, ?, ?, 'deploying', ?, ?)", (name, now, now, config_text, plan_text)
            )
            log.info("recorded new deployment %r in %s", name, self.path)
            return False
        if _dump(existing["config"]) != config_text:
            raise StoreError(
                f"deployment {name!r} exists with a different config; destroy it first "
                f"(coordinator destroy {name}) or deploy under another --name"
            )
        self.set_status(name, "deploying")
        log.info("deployment %r is on record with this config: resuming", name)
        return True

    def replace_config(self, name, config, plan, stale=()):
        """A changed config for an existing deployment (see coordinator.resume): the new config and plan, and
        the finished steps in `stale` marked to be redone (`stale`, not forgotten: a step may need to undo what
        its earlier run made, as clones of a first compute that is stacked again)."""
        self._sql(
            "UPDATE deployments SET config = ?, plan = ?, updated = ? WHERE name = ?",
            (_dump(config), _dump(plan), time.time(), name),
        )
        log.info(
            "deployment %r: config and plan replaced; %d step(s) to redo: %s",
            name,
            len(stale),
            ", ".join(stale) or "none",
        )
        for key in stale:
            self._sql(
                "UPDATE steps SET state = 'stale', updated = ? WHERE deployment = ? AND key = ? AND state = 'done'",
                (time.time(), name, key),
            )

    def get(self, name, missing_ok=False):
        rows = self._sql("SELECT name, created, updated, status, config, plan FROM deployments WHERE name = ?", (name,))
        row = rows[0] if rows else None
        if row is None:
            if missing_ok:
                return None
            raise StoreError(f"no deployment named {name!r} in {self.path}; `coordinator list` shows them")
        return {
            "name": row[0],
            "created": row[1],
            "updated": row[2],
            "status": row[3],
            "config": self._load(name, "config", row[4]),
            "plan": self._load(name, "plan", row[5]),
        }

    def _load(self, name, column, text):
        try:
            return json.loads(text)
        except (TypeError, ValueError) as error:
            raise StoreError(
                f"deployment {name!r} in {self.path}: its recorded {column} is damaged (not JSON: "
                f"{error}); remove what it made with each host's lxc-agent, then its record: "
                f"sqlite3 {self.path} \"DELETE FROM deployments WHERE name = '{name}'\""
            ) from None

    def list(self):
        rows = self._sql("SELECT name, created, updated, status FROM deployments ORDER BY created")
        return [{"name": r[0], "created": r[1], "updated": r[2], "status": r[3]} for r in rows]

    def set_status(self, name, status):
        self._sql("UPDATE deployments SET status = ?, updated = ? WHERE name = ?", (status, time.time(), name))
        log.debug("deployment %r: status %s", name, status)

    def delete(self, name):
        self._sql("DELETE FROM deployments WHERE name = ?", (name,))
        log.info("deployment %r: record removed from %s", name, self.path)

    # -- steps ---------------------------------------------------------------------------------------------------

    def step_done(self, name, key):
        rows = self._sql("SELECT state FROM steps WHERE deployment = ? AND key = ?", (name, key))
        row = rows[0] if rows else None
        return row is not None and row[0] == "done"

    def step_state(self, name, key):
        """done, running, failed, stale (to be redone after a config change), or None (never started)."""
        rows = self._sql("SELECT state FROM steps WHERE deployment = ? AND key = ?", (name, key))
        return rows[0][0] if rows else None

    def mark_step(self, name, key, state, detail=""):
        self._sql(
            "INSERT INTO steps VALUES (?, ?, ?, ?, ?) ON CONFLICT (deployment, key) DO UPDATE "
            "SET state = excluded.state, detail = excluded.detail, updated = excluded.updated",
            (name, key, state, detail, time.time()),
        )
        log.debug("deployment %r: step %s %s%s", name, key, state, f" ({detail})" if detail else "")

    def steps(self, name):
        rows = self._sql("SELECT key, state, detail, updated FROM steps WHERE deployment = ? ORDER BY updated", (name,))
        return [{"key": r[0], "state": r[1], "detail": r[2], "updated": r[3]} for r in rows]

    # -- resources -------------------------------------------------------------------------------------------

    def add_resource(self, name, host, kind, resource, detail=None):
        """Remember what was made (before making it, so a crash in between still leaves it on the list)."""
        self._sql(
            "INSERT INTO resources (deployment, host, kind, name, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (deployment, host, kind, name) DO NOTHING",
            (name, host, kind, resource, _dump(detail or {})),
        )
        log.debug("deployment %r: recorded %s %s on %s", name, kind, resource, host)

    def resources(self, name):
        """In the order they were recorded; destroy walks it backwards."""
        rows = self._sql("SELECT host, kind, name, detail FROM resources WHERE deployment = ? ORDER BY id", (name,))
        return [{"host": r[0], "kind": r[1], "name": r[2], "detail": json.loads(r[3])} for r in rows]

    def remove_resource(self, name, host, kind, resource):
        self._sql(
            "DELETE FROM resources WHERE deployment = ? AND host = ? AND kind = ? AND name = ?",
            (name, host, kind, resource),
        )
        log.debug("deployment %r: forgot %s %s on %s", name, kind, resource, host)

    # -- snapshots -------------------------------------------------------------------------------------------

    def add_snapshot(self, name, tag, nodes):
        self._sql(
            "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT (deployment, tag) DO UPDATE "
            "SET taken = excluded.taken, nodes = excluded.nodes",
            (name, tag, time.time(), _dump(list(nodes))),
        )

    def snapshots(self, name):
        rows = self._sql("SELECT tag, taken, nodes FROM snapshots WHERE deployment = ? ORDER BY taken", (name,))
        return [{"tag": r[0], "taken": r[1], "nodes": json.loads(r[2])} for r in rows]

    def remove_snapshot(self, name, tag):
        self._sql("DELETE FROM snapshots WHERE deployment = ? AND tag = ?", (name, tag))

    # -- golden images ---------------------------------------------------------------------------------------

    def add_golden(self, host, port, key, node, deployment):
        self._sql(
            "INSERT INTO golden_images VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, key) DO UPDATE "
            "SET port = excluded.port, node = excluded.node, deployment = excluded.deployment, kept = excluded.kept",
            (host, port, key, node, deployment, time.time()),
        )

    def golden_images(self):
        rows = self._sql("SELECT host, port, key, node, deployment, kept FROM golden_images ORDER BY kept")
        return [{"host": r[0], "port": r[1], "key": r[2], "node": r[3], "deployment": r[4], "kept": r[5]} for r in rows]

    def remove_golden(self, host, key):
        self._sql("DELETE FROM golden_images WHERE host = ? AND key = ?", (host, key))


def _has_open(pid, path):
    folder = f"/proc/{pid}/fd"
    try:
        return any(os.path.realpath(os.path.join(folder, fd)) == os.path.realpath(path) for fd in os.listdir(folder))
    except OSError:
        return False


def _dump(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
