"""The seams of a deploy: a provider places nodes on hosts, an engine makes them a cloud.

The driver (driver.Deployer) walks phases and owns everything they share: agents, the steps recorded in the store,
resources recorded before they are made, parallelism, progress. What a phase does belongs to one of two parts,
each declaring its own phases by stage:

- a **provider** places nodes: networks, tunnels and containers, then copies of a ready node (clones). LXC
  containers through the agents are the one provider (`lxc.LxcContainers`).
- an **engine** makes a placed node ready, and its nodes one cloud: devstack is the one engine
  (`devstack_engine.Devstack`); the driver's tests walk a recording engine of their own.

The stages run in this order, each stage's phases in the order the provider then the engine declare them:
place (provider) -> install (engine) -> replicate (provider, which asks the engine to seal the source and to
give each copy its own identity) -> join (engine: prove the cloud). Golden nodes span both: the engine says what
keys a node's install (golden_decision), the provider makes the node's container from a golden image with that
key, and the engine's install then skips it (golden_nodes.py); adding copies is the provider's replicate, a
consistent snapshot the provider's.
"""

import abc
from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("place", "install", "replicate", "join")


@dataclass(frozen=True)
class Phase:
    """One phase of the walk: its name (shown in progress, reports and errors), its stage, and what it does with
    the deployer (driver.Deployer)."""

    name: str
    stage: str
    run: Callable

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"phase {self.name!r}: unknown stage {self.stage!r}; one of {', '.join(STAGES)}")


def walk_order(*parts):
    """The phases of each part (provider, engine), stage by stage; within a stage in the order of the parts."""
    phases = [phase for part in parts for phase in part.phases()]
    return sorted(phases, key=lambda phase: STAGES.index(phase.stage))


class Engine(abc.ABC):
    """How a placed node is made ready, and how the nodes become one cloud the deploy can prove.

    Each method is called by the driver or the provider with a host's agent; each must be safe to run again on a
    node where an earlier run was cut off (the driver records steps, not what happened inside them)."""

    @abc.abstractmethod
    def phases(self):
        """This engine's phases (Phase), for the install and join stages."""

    @abc.abstractmethod
    def preflight(self, plan):
        """Problems with the plan that only this engine knows of and that can be found without touching a host,
        one line each naming the node (e.g. a git mirror without devstack)."""

    @abc.abstractmethod
    def preflight_host(self, deployer, host, agent):
        """Problems one host has with what this engine runs there (e.g. a kernel module its services need),
        asked of its agent before anything changes, one line each."""

    @abc.abstractmethod
    def seal(self, agent, node):
        """The ready source of clones stops being a member of the cloud under its own identity, so that no copy
        of it boots into the cloud as the source."""

    @abc.abstractmethod
    def personalize(self, agent, node, source):
        """A node copied from `source` (or the sealed source itself, when node is source) becomes its own member
        of the cloud: identity, address-dependent settings, services started."""

    @abc.abstractmethod
    def forget(self, agent, controller, nodes):
        """The cloud forgets these nodes (before they are made again or removed)."""

    def golden_decision(self, deployer, node, packages):
        """The node's golden key (golden.Decision) from everything that decides what this engine's install makes
        of it, or why it has none; `packages` are what the provider installs in its containers. An engine that
        keeps no golden nodes has none."""
        from coordinator.golden import Decision

        return Decision(None, {}, f"{type(self).__name__} keeps no golden images")


class Provider(abc.ABC):
    """Where nodes live: it places them on hosts and copies a ready node."""

    packages: tuple = ()  # what it installs in a node before the engine's install (part of a golden key)

    @abc.abstractmethod
    def phases(self):
        """This provider's phases (Phase), for the place and replicate stages."""

    @abc.abstractmethod
    def preflight_host(self, deployer, host, agent):
        """Problems one host has with the plan, asked of its agent before anything changes, one line each."""

    @abc.abstractmethod
    def add_copies(self, deployer, host, nodes):
        """More copies of the host's ready sources, in a running deployment (scale up), made members of the cloud
        through the engine."""

    @abc.abstractmethod
    def remove(self, deployer, host, nodes):
        """Nodes of a running deployment taken out of the cloud through the engine, then destroyed (scale down)."""
