"""PURE: what deploying a changed config under an existing deployment's name redoes, or why it cannot.

A deploy records each finished step. When the config changes between two deploys (the usual case: stack.sh failed,
the localrc is fixed, deploy again), the layout must stay as it was (the same nodes, hosts, addresses, networks
and tunnels: those are made, and only `destroy` unmakes them), while what is told to devstack may change. Each
step has inputs; the first step whose inputs changed is redone, and so is every finished step after it in the
walk's order, since a later step builds on an earlier one (clones are snapshots of their first compute).
"""

from dataclasses import dataclass

# What a node is, as made: a change to any of these is a new layout.
LAYOUT_FIELDS = (
    "name",
    "role",
    "kind",
    "source",
    "host",
    "address",
    "prefixlen",
    "subnet",
    "bridge",
    "distribution",
    "release",
)
# What devstack on a node is told: these may change on a resume.
DEVSTACK_FIELDS = ("local_conf", "devstack_repo", "devstack_branch", "git_mirror", "host_ca_certificates", "host_proxy")


@dataclass(frozen=True)
class Changes:
    layout: tuple  # what differs in the layout, one line each (a resume is refused when not empty)
    redo: tuple  # step keys to redo, in walk order
    reasons: tuple  # why the first of them is redone, one line each


def step_inputs(plan):
    """[(step key, inputs)] of the steps a changed config can redo, in the order the driver walks them (see
    driver.Deployer.deploy)."""
    nodes = plan["nodes"]

    def devstack(node):
        return {field: node.get(field) for field in DEVSTACK_FIELDS}

    # Networks, tunnels and containers follow from the layout alone, which a resume keeps: only the steps that
    # take what devstack is told can differ.
    ordered = (
        [node for node in nodes if node["role"] == "controller"]
        + [node for node in nodes if node["role"] != "controller" and node["kind"] == "standalone"]
        + [node for node in nodes if node["kind"] == "first"]
    )
    steps = [(f"devstack:{node['name']}", devstack(node)) for node in ordered]
    firsts = [node for node in nodes if node["kind"] == "first"]
    steps += [(f"clones:{first['name']}", devstack(first)) for first in firsts]
    steps += [
        (
            f"start-scripts:{first['name']}",
            [
                node.get("start_script")
                for node in nodes
                if node["name"] == first["name"] or node.get("source") == first["name"]
            ],
        )
        for first in firsts
    ]
    return steps


def _layout(plan):
    return {
        "hosts": {host["address"]: host["networks"] for host in plan["hosts"]},
        "tunnels": plan["tunnels"],
        "nodes": {node["name"]: {field: node.get(field) for field in LAYOUT_FIELDS} for node in plan["nodes"]},
    }


def layout_differences(old, new, limit=8):
    """Lines naming what differs between two plans' layouts."""
    before, after = _layout(old), _layout(new)
    lines = []
    for name in sorted(set(before["nodes"]) | set(after["nodes"])):
        was, now = before["nodes"].get(name), after["nodes"].get(name)
        if was is None:
            lines.append(f"node {name} is new")
        elif now is None:
            lines.append(f"node {name} is gone")
        else:
            lines += [
                f"node {name}: {field} {was[field]!r} -> {now[field]!r}"
                for field in LAYOUT_FIELDS
                if was[field] != now[field]
            ]
    for address in sorted(set(before["hosts"]) | set(after["hosts"])):
        if before["hosts"].get(address) != after["hosts"].get(address):
            lines.append(f"host {address}: its networks differ")
    if before["tunnels"] != after["tunnels"]:
        lines.append("the tunnels differ")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def plan_changes(old, new):
    """Changes between the stored plan `old` and the new plan `new` (both plain dicts, Plan.to_dict())."""
    layout = tuple(layout_differences(old, new))
    if layout:
        return Changes(layout=layout, redo=(), reasons=())
    before, after = dict(step_inputs(old)), step_inputs(new)
    first = next((index for index, (key, inputs) in enumerate(after) if before.get(key) != inputs), None)
    if first is None:
        return Changes(layout=(), redo=(), reasons=())
    key, inputs = after[first]
    was = before.get(key) or {}
    reasons = (
        tuple(
            f"{key}: {field} changed"
            for field in (inputs if isinstance(inputs, dict) else ())
            if was.get(field) != inputs[field]
        )
        if isinstance(was, dict)
        else (f"{key} changed",)
    )
    return Changes(layout=(), redo=tuple(step for step, _ in after[first:]), reasons=reasons or (f"{key} changed",))
