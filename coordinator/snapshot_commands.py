"""`coordinator snapshot NAME TAG`, `coordinator restore NAME TAG` and `coordinator snapshots NAME [--delete TAG]`:
a whole deployment saved at one moment and brought back to it (the agents' snapshot and restore).

A snapshot is on record once every container of the deployment has it (one cut short is taken again whole, its
containers' copies being of another moment); a restore needs the deployment to hold the
nodes it held then (scale it back first), gives every container its snapshot, starts them, and waits until the
cloud has converged again, counting only computes that report after the snapshot's moment.
"""

import argparse
import logging
import sys
import time

from rich.console import Console
from rich.table import Table

from agent.arguments import SNAPSHOT_TAG
from coordinator import nova
from coordinator.driver import Deployer, DeployError, Settings
from coordinator.golden_nodes import size_text
from coordinator.lifecycle import (
    DEFAULT_LOG_DIR,
    connector,
    progress_bars,
    shared_options,
    stdout_console,
    stored_plan,
)
from coordinator.store import Store

log = logging.getLogger(__name__)


def _tag(text):
    if not SNAPSHOT_TAG.ok(text):
        raise argparse.ArgumentTypeError(f"invalid snapshot tag {text!r}: {SNAPSHOT_TAG.hint}")
    return text


def add_arguments(commands):
    with_shared = shared_options()
    take = with_shared(
        commands.add_parser(
            "snapshot",
            help="save every container of a deployment at one moment, under a tag",
            description="Snapshot every container of a deployment under TAG: on each host all its containers at "
            "one moment (frozen together while btrfs snapshots them, then thawed; the cloud keeps running), so the "
            "controller's database and queues agree with the computes. With --storage copy each is a full copy; "
            "overlay storage takes none.",
        )
    )
    back = with_shared(
        commands.add_parser(
            "restore",
            help="bring a deployment back to a snapshot and wait until its cloud has converged",
            description="Stop every container of the deployment, give each its snapshot TAG (which is kept), start "
            "them, and wait until every planned compute is an up nova-compute service and hypervisor again. What "
            "happened after the snapshot (servers booted, load run) is gone.",
        )
    )
    listing = with_shared(
        commands.add_parser("snapshots", help="a deployment's snapshots, with their sizes; --delete TAG removes one")
    )
    for parser in (take, back, listing):
        parser.add_argument("name", metavar="NAME", help="the deployment's name (`coordinator list` shows them)")
    for parser in (take, back):
        parser.add_argument("tag", metavar="TAG", type=_tag, help="the snapshot's name: letters, digits, . _ -")
    listing.add_argument("--delete", metavar="TAG", type=_tag, help="remove this snapshot from every container")
    take.set_defaults(run=snapshot_command)
    back.set_defaults(run=restore_command)
    listing.set_defaults(run=snapshots_command)


def _deployer(args, store, record):
    plan = stored_plan(store, record)
    settings = Settings(log_dir=DEFAULT_LOG_DIR, call_timeout=args.agent_timeout, golden=False)
    return plan, Deployer(args.name, plan, store, connector(args), settings)


def snapshot_command(args):
    store = Store(args.store)
    with store.lock(args.name):
        record = store.get(args.name)
        if record["status"] != "deployed":
            raise DeployError(
                f"deployment {args.name!r} is not deployed (status {record['status']}): finish it first "
                f"(coordinator deploy CONFIG --name {args.name} resumes it), then snapshot it"
            )
        taken = {entry["tag"]: entry for entry in store.snapshots(args.name)}
        if args.tag in taken:
            raise DeployError(
                f"deployment {args.name!r} has a snapshot {args.tag!r} already (taken "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(taken[args.tag]['taken']))}); delete it first "
                f"(coordinator snapshots {args.name} --delete {args.tag}) or pick another tag"
            )
        plan, deployer = _deployer(args, store, record)
        try:
            began = time.monotonic()
            by_host = deployer.snapshot(args.tag)
            took = time.monotonic() - began
        finally:
            deployer.close()
        names = [name for answers in by_host.values() for name in answers]
        store.add_snapshot(args.name, args.tag, names)
        frozen = max(
            (entry.get("frozen") or 0 for answers in by_host.values() for entry in answers.values()), default=0
        )
        log.info("snapshot %r of %r: %d containers in %.1f s", args.tag, args.name, len(names), took)
    print(
        f"snapshot {args.tag} of {args.name}: {len(names)} container(s) on {len(by_host)} host(s) in {took:.1f} s, "
        f"frozen {frozen:.2f} s"
    )
    return 0


def restore_command(args):
    store = Store(args.store)
    console = Console(stderr=True)
    with store.lock(args.name):
        record = store.get(args.name)
        taken = {entry["tag"]: entry for entry in store.snapshots(args.name)}
        if args.tag not in taken:
            raise DeployError(
                f"deployment {args.name!r} has no snapshot {args.tag!r}; "
                + (f"it has: {', '.join(taken)}" if taken else "it has none")
                + f" (coordinator snapshots {args.name})"
            )
        plan, deployer = _deployer(args, store, record)
        now = [node.name for node in plan.nodes if node.kind != "host"]
        then = taken[args.tag]["nodes"]
        if sorted(now) != sorted(then):
            added, gone = sorted(set(now) - set(then)), sorted(set(then) - set(now))
            deployer.close()
            raise DeployError(
                f"deployment {args.name!r} holds other nodes than when snapshot {args.tag!r} was taken ("
                + "; ".join(
                    part
                    for part in (
                        f"{len(added)} added since: {', '.join(added[:5])}" if added else "",
                        f"{len(gone)} gone since: {', '.join(gone[:5])}" if gone else "",
                    )
                    if part
                )
                + f"); scale it back to {len(then)} node(s) first (coordinator scale), then restore"
            )
        store.set_status(args.name, "restoring")
        try:
            began = time.monotonic()
            with progress_bars(console, deployer):
                result = deployer.restore(args.tag)
            took = time.monotonic() - began
        except BaseException:
            store.set_status(args.name, "failed")
            raise
        finally:
            deployer.close()
        store.set_status(args.name, "deployed")
        for phase, seconds in result.phases.items():
            console.print(f"{phase:16} {seconds:8.1f} s")
    print(f"restored {args.name} to snapshot {args.tag} in {took:.0f} s", flush=True)
    if result.convergence:
        print(nova.summary(result.convergence), flush=True)
    return 0


def snapshots_command(args):
    store = Store(args.store)
    record = store.get(args.name)
    plan = stored_plan(store, record)
    on_record = store.snapshots(args.name)
    if args.delete:
        with store.lock(args.name):
            _, deployer = _deployer(args, store, record)
            try:
                for host in plan.hosts:
                    names = [node.name for node in plan.nodes_on(host.address) if node.kind != "host"]
                    if names:
                        deployer.agent_for(host).delete_snapshots(names, args.delete)
            finally:
                deployer.close()
            store.remove_snapshot(args.name, args.delete)
        print(f"deleted snapshot {args.delete} of {args.name}")
        return 0
    if not on_record:
        print(f"{args.name}: no snapshots (coordinator snapshot {args.name} TAG takes one)")
        return 0
    _, deployer = _deployer(args, store, record)
    sizes: dict = {}
    problems = []
    try:
        for host in plan.hosts:
            names = [node.name for node in plan.nodes_on(host.address) if node.kind != "host"]
            try:
                for entry in deployer.agent_for(host).list_snapshots(names) if names else []:
                    sizes.setdefault(entry["tag"], []).append(entry["size"])
            except Exception as error:  # shown as unknown sizes; the listing itself still answers
                problems.append(f"cannot ask host {host.address} for its snapshots: {error}")
    finally:
        deployer.close()
    table = Table("TAG", "TAKEN", "CONTAINERS", "SIZE")
    for entry in on_record:
        found = sizes.get(entry["tag"], [])
        table.add_row(
            entry["tag"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["taken"])),
            f"{len(found)}/{len(entry['nodes'])}",
            size_text(sum(found)),
        )
    stdout_console().print(table)
    print("SIZE: bytes in the snapshots' files; on btrfs they share blocks with the containers, and hold alone only")
    print("what the containers changed since")
    for problem in problems:
        print(f"coordinator snapshots: {problem}", file=sys.stderr)
    return 1 if problems else 0
