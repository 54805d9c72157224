"""`coordinator golden list` and `coordinator golden prune`: the golden images kept on the hosts (golden_nodes.py).

An image is looked for on every host the store knows: where one was kept, and the hosts of every deployment on
record, plus any given with --host. It is in use while a deployment on record kept it, or while a container on
its host was made from it; prune never removes one in use.
"""

import json
import sys
import types

from rich.table import Table

from coordinator import golden
from coordinator.golden_nodes import size_text
from coordinator.lifecycle import connector, shared_options, stdout_console, stored_plan
from coordinator.store import Store, StoreError


def add_arguments(commands):
    with_shared = shared_options()
    group = commands.add_parser(
        "golden",
        help="list or prune the golden images (stacked nodes kept for the next deploy)",
        description="A node whose stack.sh completed is kept on its host as a golden image, keyed by everything "
        "that decided the result (git mirror, devstack, local.conf, image, CA and proxy settings, host name); a "
        "later deploy of a node with the same key starts from it and skips stack.sh.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = with_shared(actions.add_parser("list", help="each golden image: node, host, size, kept, last used"))
    listing.add_argument("--json", action="store_true", help="for scripts")
    prune = with_shared(
        actions.add_parser(
            "prune",
            help="remove golden images no deployment on record uses",
            description="Remove the given golden images, or every one not in use. An image is in use while a "
            "deployment on record kept it or a container on its host was made from it; those are never removed.",
        )
    )
    prune.add_argument("keys", nargs="*", metavar="KEY", help="the images to remove (default: every unused one)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, and remove nothing")
    for parser in (listing, prune):
        parser.add_argument(
            "--host",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="also ask this host's agent (repeatable; at --agent-port)",
        )
    listing.set_defaults(run=list_command)
    prune.set_defaults(run=prune_command)


def _hosts(store, args):
    """address -> port (None: --agent-port) of every host that may hold golden images."""
    hosts: dict = {}
    for kept in store.golden_images():
        hosts.setdefault(kept["host"], kept["port"])
    for entry in store.list():
        try:
            plan = stored_plan(store, store.get(entry["name"]))
        except Exception:  # an unreadable record is `coordinator list`'s to report
            continue
        for host in plan.hosts:
            hosts.setdefault(host.address, host.port)
    for address in args.host:
        hosts.setdefault(address, None)
    return hosts


def _survey(store, args):
    """(images, unreachable): every golden image found, with its users, and the hosts that could not be asked."""
    deployments = {entry["name"] for entry in store.list()}
    owners = {}  # (host, container) -> deployment
    for name in deployments:
        try:
            for resource in store.resources(name):
                if resource["kind"] == "container":
                    owners[(resource["host"], resource["name"])] = name
        except StoreError:
            continue
    connect = connector(args)
    found, unreachable = [], {}
    for address, port in sorted(_hosts(store, args).items()):
        host = types.SimpleNamespace(address=address, port=port, ca=None, cert=None, key=None, token_file=None)
        try:
            agent = connect(host)
            try:
                images = [image for image in agent.list_images() if image.get("kind") == "saved"]
                made_from: dict[str, list[str]] = {}
                for container in agent.list() if images else []:
                    if container.get("image"):
                        made_from.setdefault(container["image"], []).append(container["name"])
            finally:
                agent._pyroRelease()
        except Exception as error:  # any failure to ask is reported per host
            unreachable[address] = f"{type(error).__name__}: {error}"
            continue
        for image in images:
            labels = image.get("labels") or {}
            users = {labels["deployment"]} if labels.get("deployment") in deployments else set()
            users |= {owners.get((address, name), f"container {name}") for name in made_from.get(image["key"], [])}
            found.append({**image, "host": address, "node": labels.get("node"), "used_by": sorted(users)})
    return found, unreachable


def _report_unreachable(unreachable):
    for address, why in unreachable.items():
        print(f"coordinator golden: cannot ask the agent on host {address}: {why}", file=sys.stderr)
    return 1 if unreachable else 0


def list_command(args):
    store = Store(args.store)
    images, unreachable = _survey(store, args)
    if args.json:
        json.dump(images, sys.stdout, indent=2, sort_keys=True)
        print()
        return _report_unreachable(unreachable)
    if not images:
        print("no golden images" + (" (some hosts could not be asked)" if unreachable else ""))
        return _report_unreachable(unreachable)
    table = Table("KEY", "NODE", "HOST", "SIZE", "KEPT", "LAST USED", "USED BY")
    for image in sorted(images, key=lambda image: (image["host"], image.get("created") or "")):
        table.add_row(
            image["key"],
            image.get("node") or "?",
            image["host"],
            size_text(image.get("size")),
            image.get("created") or "?",
            image.get("last_used") or "never",
            ", ".join(image["used_by"]) or "-",
        )
    stdout_console().print(table)
    total = sum(image.get("size") or 0 for image in images)
    print(f"{len(images)} golden image(s), {size_text(total)} in their files (btrfs shares blocks among snapshots)")
    return _report_unreachable(unreachable)


def prune_command(args):
    wanted = set(args.keys)
    unknown = sorted(key for key in wanted if not key.startswith(golden.PREFIX))
    if unknown:
        raise StoreError(f"{', '.join(unknown)}: not golden image keys (they start with {golden.PREFIX})")
    store = Store(args.store)
    images, unreachable = _survey(store, args)
    present = {(image["host"], image["key"]) for image in images}
    for kept in store.golden_images():  # removed by a prune cut short, or by hand: nothing left to look for
        if kept["host"] not in unreachable and (kept["host"], kept["key"]) not in present and not args.dry_run:
            store.remove_golden(kept["host"], kept["key"])
    chosen = [image for image in images if (image["key"] in wanted if wanted else True)]
    missing = sorted(wanted - {image["key"] for image in images})
    busy = [image for image in chosen if image["used_by"]]
    if wanted and busy:
        raise StoreError(
            "golden image(s) in use, nothing removed: "
            + "; ".join(f"{image['key']} on {image['host']} by {', '.join(image['used_by'])}" for image in busy)
            + " (destroy those deployments first)"
        )
    connect = connector(args)
    ports = _hosts(store, args)
    removed = 0
    for image in chosen:
        if image["used_by"]:
            continue
        if args.dry_run:
            print(f"would remove {image['key']} ({image.get('node')}) on {image['host']}")
            continue
        host = types.SimpleNamespace(
            address=image["host"], port=ports.get(image["host"]), ca=None, cert=None, key=None, token_file=None
        )
        agent = connect(host)
        try:
            agent.destroy_images([image["key"]])
        finally:
            agent._pyroRelease()
        store.remove_golden(image["host"], image["key"])
        removed += 1
        print(
            f"removed {image['key']} ({image.get('node')}) on {image['host']}, {size_text(image.get('size'))}",
            flush=True,
        )
    for key in missing:
        print(f"{key}: not found on any host asked", file=sys.stderr)
    kept = [image for image in chosen if image["used_by"]]
    if kept and not wanted:
        print(f"kept {len(kept)} in use: " + ", ".join(f"{image['key']} ({image.get('node')})" for image in kept))
    if not args.dry_run:
        print(f"{removed} golden image(s) removed")
    return 1 if missing else _report_unreachable(unreachable)
