"""Golden nodes: a node whose stack.sh completed is kept on its host as an image (the agent's save_image), keyed by
everything that decides what stack.sh made there; a later deploy of a node with the same key starts from that
image and skips stack.sh. Pure: the key, the labels kept with an image, and the words for a miss. What is read
from the coordinator's machine (the git mirror, CA certificates, proxy settings) comes in as arguments; the
engine (devstack_engine) and the driver do the I/O.

What goes into the key, and why each:
- node: the container's name, which is its host name: rabbitmq keeps its data under it and nova's services on
  the controller are registered under it, so a node cannot be reused under another name;
- image: the template, release and packages of the container stack.sh ran in;
- devstack: where devstack came from and its branch (its commit, for a local devstack_repo);
- sources: the digest of every repository in the git mirror (devstack itself and all it clones from there);
- local.conf: the rendered local.conf, which holds the planned addresses;
- lab: the CA certificates and proxy settings given to the node (host_ca_certificates, host_proxy);
- role: a controller or standalone node is kept running; a first compute sealed and stopped, with its hash seed
  when merge_memory asks for one;
- format: this module's FORMAT, raised whenever what the coordinator does to a node before keeping it changes.
"""

import hashlib
import json
from dataclasses import dataclass

FORMAT = "2"  # 2: a first compute is made lean (nova.LEAN_UNITS) as it is sealed
PREFIX = "golden-"
# In the order a miss names them: the first that differs is the reason.
COMPONENTS = ("format", "node", "image", "devstack", "sources", "local.conf", "lab", "role")
LABEL = {"local.conf": "local_conf"}  # agent label names are [a-z][a-z0-9_]*


@dataclass(frozen=True)
class Decision:
    """A node's golden key with its components, or why it has none (then stack.sh always runs)."""

    key: str | None
    components: dict
    reason: str | None = None


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def decide(node, packages, mirror, devstack_commit, lab, merge_memory):
    """The node's Decision. `mirror` is {repository: digest} of its git mirror (None without one), `devstack_commit`
    the commit of a local devstack_repo (None otherwise), `lab` the text of what the lab's network gives it."""
    if node.kind not in ("standalone", "first"):
        return Decision(None, {}, f"a {node.kind} is not stacked")
    if mirror is None:
        return Decision(
            None,
            {},
            "no golden image without a git_mirror: stack.sh clones its branches' newest commits, which the "
            "coordinator cannot know before it runs",
        )
    if node.devstack_repo is not None and devstack_commit is None:
        return Decision(
            None,
            {},
            f"no golden image: devstack_repo {node.devstack_repo} is fetched from elsewhere, and the coordinator "
            "cannot know its commit before stack.sh",
        )
    devstack = (
        f"mirror {node.devstack_branch}"
        if node.devstack_repo is None
        else f"{node.devstack_repo} {node.devstack_branch} {devstack_commit}"
    )
    role = "kept running" if node.kind == "standalone" else "sealed and stopped"
    if node.kind == "first" and merge_memory:
        role += ", hash seed 0"
    components = {
        "format": FORMAT,
        "node": node.name,
        "image": f"{node.template} {node.release or 'default'} {','.join(sorted(packages))}",
        "devstack": devstack,
        "sources": ",".join(f"{name}={value}" for name, value in sorted(mirror.items())),
        "local.conf": digest(node.local_conf),
        "lab": digest(lab),
        "role": role,
    }
    return Decision(key_of(components), components)


def key_of(components):
    """golden-<40 hex>: the same components, the same key, on any machine."""
    return PREFIX + digest(json.dumps(components, sort_keys=True))[:40]


def labels(components, deployment):
    """What the agent keeps with the image: the components (to explain a later miss) and who saved it."""
    kept = {LABEL.get(name, name): value for name, value in components.items()}
    kept["deployment"] = deployment
    return kept


def components_of(labels):
    """The components an image was saved with, from its labels."""
    return {name: labels.get(LABEL.get(name, name)) for name in COMPONENTS}


def miss_reason(components, saved):
    """Why no golden image serves a node: `saved` are the labels of the host's golden images, newest first. The
    nearest image is the newest of the same node; the first component it differs in is the reason."""
    same_node = [components_of(entry) for entry in saved if entry.get("node") == components["node"]]
    if not same_node:
        return f"no golden image of {components['node']} on this host yet"
    nearest = same_node[0]
    for name in COMPONENTS:
        if nearest.get(name) != components.get(name):
            if name == "sources":
                return f"the git mirror changed ({', '.join(_changed_sources(nearest[name], components[name]))})"
            if name == "format":
                return "its golden image was kept by another coordinator version"
            return f"{name} changed"
    return "its golden image was removed meanwhile"


def _changed_sources(old, new):
    def parse(text):
        return dict(part.split("=", 1) for part in (text or "").split(",") if "=" in part)

    before, after = parse(old), parse(new)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name)) or ["?"]
