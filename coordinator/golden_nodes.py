"""Golden nodes in a deploy: which node's container starts from a golden image (and then skips stack.sh), and
keeping one when a node's stack.sh has completed. The key and the words for a miss are golden.py's; what decides
the key is the engine's (Engine.golden_decision); this module asks the agents and says what it decided, one line
per node (`controller-1: golden image reused (golden-3f2a…)`, `controller-1: stack.sh: local.conf changed`).

A golden image belongs to its host, not to a deployment: destroy leaves it, and `coordinator golden prune`
removes it (store.py records where each was kept, for `coordinator golden list`).
"""

import logging
import threading

from agent.errors import AgentError
from coordinator import access, golden

log = logging.getLogger(__name__)


def size_text(size):
    if not isinstance(size, int | float) or size < 0:
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


class GoldenNodes:
    """One deploy's golden nodes; `enabled` False (deploy --no-golden) neither reuses nor keeps any."""

    def __init__(self, deployer, enabled=True):
        self.d, self.enabled = deployer, enabled
        self._lock = threading.Lock()
        self._decisions: dict = {}
        self._mirrors: dict = {}
        self._storage: dict = {}
        self.outcomes: dict = {}  # node name -> what was decided, as shown

    def mirror(self, folder):
        """{repository: digest} of a git mirror, read once per deploy (bundles are tens of MB)."""
        with self._lock:
            if folder not in self._mirrors:
                self._mirrors[folder] = access.mirror_digests(folder)
            return self._mirrors[folder]

    def decision(self, node):
        with self._lock:
            known = self._decisions.get(node.name)
        if known is None:
            known = self.d.engine.golden_decision(self.d, node, self.d.provider.packages)
            with self._lock:
                self._decisions[node.name] = known
        return known

    def _say(self, node, text):
        self.outcomes[node.name] = text
        self.d.notice(f"{node.name}: {text}")

    def _storage_of(self, agent, host):
        with self._lock:
            known = self._storage.get(host.address)
        if known is None:
            known = agent.info()["storage"]
            with self._lock:
                self._storage[host.address] = known
        return known

    def _usable(self, agent, host, node, say=True):
        """The node's key when golden images can serve it on this host, else None (and why, when `say`)."""
        if not self.enabled:
            return None
        decision = self.decision(node)
        if decision.key is None:
            if say:
                self._say(node, f"stack.sh: {decision.reason}")
            return None
        storage = self._storage_of(agent, host)
        if storage == "overlay":
            if say:
                self._say(
                    node,
                    f"stack.sh: no golden image: host {host.address} keeps containers on overlay storage, which "
                    "keeps no images (put its lxcpath on btrfs)",
                )
            return None
        return decision.key

    def source(self, agent, host, node):
        """When the node's container is placed: the golden image to make it from, or None (stack.sh will run).
        A container an earlier run of this deploy made is kept as it is: its image says which it was."""
        key = self._usable(agent, host, node)
        if key is None:
            return None
        existing = agent.list([node.name])
        if existing:
            return key if existing[0].get("image") == key else None
        saved = sorted(
            (image for image in agent.list_images() if image.get("kind") == "saved"),
            key=lambda image: image.get("created") or "",
            reverse=True,
        )
        if any(image["key"] == key for image in saved):
            self._say(node, f"golden image reused ({key})")
            return key
        reason = golden.miss_reason(self.decision(node).components, [image.get("labels") or {} for image in saved])
        self._say(node, f"stack.sh: {reason}")
        return None

    def reused(self, agent, host, node):
        """Whether the node's container was made from its golden image (so its stack.sh has run already)."""
        key = self._usable(agent, host, node, say=False)
        if key is None:
            return False
        existing = agent.list([node.name])
        return bool(existing) and existing[0].get("image") == key

    def keep(self, agent, host, node):
        """After the node's stack.sh completed (and a first compute was sealed and stopped): its container kept as
        its golden image. Not kept is no failure of the deploy: it is said, and the next deploy stacks again."""
        key = self._usable(agent, host, node, say=False)
        if key is None:
            return
        try:
            saved = agent.save_image(node.name, key, golden.labels(self.decision(node).components, self.d.name))
        except AgentError as error:
            self._say(node, f"golden image not kept: {error}")
            return
        self.d.store.add_golden(host.address, host.port, key, node.name, self.d.name)
        self._say(node, f"golden image kept ({key}, {size_text(saved.get('size'))})")
