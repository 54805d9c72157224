"""PURE: what `coordinator scale NAME --computes N` changes in a deployment, decided before anything is touched.

A scale changes one group's count of computes per host. The config on record gets the new count, the planner plans
it against the plan on record (planner names are keys of their own group and addresses are kept), and the change
is the nodes the new plan adds and removes: clones of each host's first compute, the highest positions first.
Every other node must come out the same; the nodes kept are the recorded plan's own, so nothing the config's
folder resolved (a relative git_mirror) is resolved again from elsewhere.
"""

import copy
import dataclasses
import re
from dataclasses import dataclass

from coordinator.errors import CoordinatorError

_LAYOUT = ("name", "role", "kind", "source", "group", "host", "address", "prefixlen", "gateway", "subnet", "bridge")
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class ScaleError(CoordinatorError):
    """A scale that cannot be done as asked; the message says which groups can be scaled and how."""


@dataclass(frozen=True)
class Change:
    """One group scaled: its config path, computes per host before and after, the nodes added and removed."""

    group: str
    before: int
    after: int
    added: tuple
    removed: tuple
    pace: tuple | None = None  # (starts_per_second before, after) when the scale sets another

    def describe(self):
        """The change in words, one line per host and kind of change, for the user to see before it is made."""
        lines = [f"{self.group}: {self.before} -> {self.after} compute(s) per host"]
        if self.pace is not None:
            before, after = (f"{rate:g} per second" if rate else "as fast as they run" for rate in self.pace)
            lines.append(f"  starts: {before} -> {after}")
        for verb, nodes in (("adds", self.added), ("removes", self.removed)):
            by_host: dict = {}
            for node in nodes:
                by_host.setdefault(node.host, []).append(node)
            for host, mine in by_host.items():
                shown = ", ".join(f"{node.name} ({node.address})" for node in mine)
                lines.append(f"  host {host}: {verb} {len(mine)}: {shown}")
        if not self.added and not self.removed:
            lines.append("  no compute to add or remove" if self.pace else "  nothing to change")
        return lines


def scalable_groups(config):
    """The groups `scale` can change: computes cloned from a first compute (LxcEngine), by config path."""
    return {spec.path: spec for spec in config.groups() if spec.role == "compute" and spec.kind == "cloned"}


def choose_group(config, path):
    """The group to scale: the one named by `path`, or the only scalable one; ScaleError naming the choices."""
    groups = scalable_groups(config)
    named = ", ".join(groups) or "none"
    if path is not None:
        if path not in groups:
            other = next((spec for spec in config.groups() if spec.path == path), None)
            if other is not None and other.role == "controller":
                why = f"{path} is the controller, not a group of cloned computes"
            elif other is not None and other.kind == "standalone":
                why = (
                    f"{path} is a group whose nodes are each stacked (LxcProvider), not cloned: scale adds and "
                    f"removes clones of a first compute"
                )
            else:
                why = f"{path} is not a group of cloned computes"
            raise ScaleError(f"{why}; the groups scale can change: {named}")
        return groups[path]
    if len(groups) != 1:
        raise ScaleError(
            f"this deployment has {len(groups)} groups of cloned computes ({named}): name one with --group"
            if groups
            else "this deployment has no group of cloned computes (LxcEngine) to scale"
        )
    return next(iter(groups.values()))


def scaled(data, spec, count, starts_per_second=None):
    """A copy of the config data with the group's count of computes per host set to `count`, and its
    starts_per_second (beside the count, in the group's LxcEngine) to `starts_per_second` when one is given."""
    out = copy.deepcopy(data)
    steps = [name if name else int(index) for name, index in _STEP.findall(spec.count_path)]
    holder = out
    for step in steps[:-1]:
        holder = holder[step]
    holder[steps[-1]] = count
    if starts_per_second is not None:
        holder["starts_per_second"] = starts_per_second
    return out


def change(spec, old_plan, new_plan, count, starts_per_second=None):
    """The nodes a scale adds and removes, and the new plan with the recorded plan's nodes kept as they were;
    ScaleError if any other node would change (which the planner's stable names and kept addresses rule out).
    `starts_per_second`: the group's new pace, when the scale sets one."""
    old = {node.name: node for node in old_plan.nodes}
    new = {node.name: node for node in new_plan.nodes}
    moved = [
        name
        for name in old.keys() & new.keys()
        if any(getattr(old[name], field) != getattr(new[name], field) for field in _LAYOUT)
    ]
    if moved:
        raise ScaleError(
            f"scaling {spec.path} would change other nodes ({', '.join(sorted(moved)[:5])}); nothing was changed"
        )
    added = tuple(
        dataclasses.replace(node, git_mirror=old[node.source].git_mirror) if node.source in old else node
        for node in new_plan.nodes
        if node.name not in old
    )
    removed = tuple(node for node in old_plan.nodes if node.name not in new)
    refused = [node.name for node in (*added, *removed) if node.kind != "clone"]
    if refused:
        raise ScaleError(
            f"scaling {spec.path} would add or remove nodes that are not clones ({', '.join(refused)}): the "
            f"first compute of each host stays; nothing was changed"
        )
    added_by_name = {node.name: node for node in added}
    nodes = tuple(old.get(node.name) or added_by_name[node.name] for node in new_plan.nodes)
    plan = dataclasses.replace(new_plan, nodes=nodes)
    pace = None
    if starts_per_second is not None and starts_per_second != spec.starts_per_second:
        pace = (spec.starts_per_second, starts_per_second)
    return Change(spec.path, spec.per_host, count, added, removed, pace), plan
