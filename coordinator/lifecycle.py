"""The CLI's deployment commands: deploy (or resume), list, show, scale and destroy, over the store and the driver."""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent import endpoint
from coordinator import nova, resume, scale, topology
from coordinator.config import load_config, validate
from coordinator.driver import CALL_TIMEOUT, Deployer, DeployError, Settings
from coordinator.engines import MAX_STARTS_PER_SECOND
from coordinator.providers import MAX_PER_HOST
from coordinator.store import Store, StoreError

log = logging.getLogger(__name__)

DEFAULT_PKI, DEFAULT_PORT = endpoint.DEFAULT_PKI, endpoint.DEFAULT_PORT  # where the agents are, as they say
DEFAULT_LOG_DIR = "/var/log/lxc-coordinator"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONNECT_TIMEOUT = 30.0  # connecting and authenticating, tries against a full agent included (--agent-timeout if less)
WIDE = 400  # columns for tables when stdout is not a terminal (a log, CI): rich would assume 80 and cut names


def shared_options():
    """A function adding the options every command that reaches agents or the store shares to its parser."""
    shared: dict[str, dict[str, Any]] = {
        "--store": dict(
            help="deployment records (default $LXC_COORDINATOR_STORE or /var/lib/lxc-coordinator/deployments.sqlite)"
        ),
        "--pki-dir": dict(
            default=DEFAULT_PKI, help=f"agents' CA, client certificate and token (default {DEFAULT_PKI})"
        ),
        "--agent-port": dict(type=int, default=DEFAULT_PORT, help=f"agents' port (default {DEFAULT_PORT})"),
        "--agent-timeout": dict(
            type=_seconds,
            default=CALL_TIMEOUT,
            metavar="SECONDS",
            help=f"give up on an agent that does not answer a call within this many seconds, naming the host and "
            f"the step (a command it runs gets its own timeout on top, while pings every 15 s must be answered within "
            f"this, at most 60 s; default {CALL_TIMEOUT:g})",
        ),
    }

    def with_shared(parser):
        for option, settings in shared.items():
            parser.add_argument(option, **settings)
        return parser

    return with_shared


def add_arguments(commands):
    """Subcommands deploy, list, show, destroy and scale, with the options they share."""
    with_shared = shared_options()
    deploy = with_shared(
        commands.add_parser("deploy", help="deploy a config (again under the same --name: resume after a failure)")
    )
    deploy.add_argument("config", metavar="CONFIG", help="the deployment config (JSON or YAML)")
    deploy.add_argument("--name", help="deployment name (default: the config file's name and the time)")
    deploy.add_argument(
        "--log-dir",
        default=DEFAULT_LOG_DIR,
        help=f"full stack.sh logs, one per node and attempt (default {DEFAULT_LOG_DIR})",
    )
    deploy.add_argument(
        "--no-golden",
        action="store_true",
        help="neither start nodes from golden images nor keep new ones: every stacked node runs stack.sh "
        "(`coordinator golden list` shows the golden images)",
    )
    deploy.set_defaults(run=deploy_command)
    listing = with_shared(commands.add_parser("list", help="the deployments on record"))
    listing.set_defaults(run=list_command)
    show = with_shared(commands.add_parser("show", help="a deployment's nodes and their live state"))
    show.add_argument("name", metavar="NAME", help="the deployment's name (`coordinator list` shows them)")
    show.add_argument("--json", action="store_true", help="for scripts")
    show.set_defaults(run=show_command)
    destroy = with_shared(commands.add_parser("destroy", help="remove everything a deployment made"))
    destroy.add_argument("name", metavar="NAME", help="the deployment's name (`coordinator list` shows them)")
    destroy.set_defaults(run=destroy_command)

    grow = with_shared(
        commands.add_parser(
            "scale",
            help="grow or shrink a running deployment's group of cloned computes",
            description="Set how many computes each host of a group runs. New ones are clones of the host's first "
            "compute, each its own nova compute; removed ones (the last of each host) are deleted from nova's "
            "services and placement, then destroyed. No other node changes name or address. The change is "
            "shown before it is made; the deploy ends when every planned compute is up again.",
        )
    )
    grow.add_argument("name", metavar="NAME", help="the deployment's name (`coordinator list` shows them)")
    grow.add_argument(
        "--computes", type=_count, required=True, metavar="N", help="computes per host of the group (1 or more)"
    )
    grow.add_argument(
        "--starts-per-second",
        type=_rate,
        metavar="R",
        help="start the group's computes at most R per second over all its hosts, from this scale on (sets the "
        "group's starts_per_second in the deployment's recorded config; 0.5 is one every 2 s)",
    )
    grow.add_argument("--group", metavar="PATH", help="the group's config path (e.g. nodes[1]) when there are several")
    grow.add_argument("--dry-run", action="store_true", help="show what would change, and change nothing")
    grow.set_defaults(run=scale_command)


def connector(args):
    """connect(host) for the driver: the host's own overrides from the config, else the command line's."""
    from agent.client import connect

    def connect_host(host):
        return connect(
            host.address,
            host.port or args.agent_port,
            pki_dir=args.pki_dir,
            ca=host.ca,
            cert=host.cert,
            key=host.key,
            token_file=host.token_file,
            timeout=min(CONNECT_TIMEOUT, getattr(args, "agent_timeout", CONNECT_TIMEOUT)),
        )

    return connect_host


def _seconds(text):
    """A positive, finite number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


@contextlib.contextmanager
def progress_bars(console, deployer):
    """A bar per phase that reports progress (deployer.settings.progress), on the console; yields the display."""
    with Progress(
        TextColumn("{task.description:16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks = {}

        def report(phase, done, total):
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        deployer.settings.progress = report
        deployer.settings.notice = lambda text: progress.console.print(
            text, markup=False, highlight=False, soft_wrap=True
        )
        yield progress


def _count(text):
    """A count of computes per host, for argparse."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PER_HOST:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_PER_HOST}, got {text!r}")
    return int(text)


def _rate(text):
    """A starts_per_second for argparse, in the config schema's range."""
    try:
        rate = float(text)
    except ValueError:
        rate = None
    if rate is None or not 0 < rate <= MAX_STARTS_PER_SECOND:
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most {MAX_STARTS_PER_SECOND}, got {text!r}")
    return rate


def default_name(config_path):
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", os.path.splitext(os.path.basename(config_path))[0]).strip("-")
    return f"{stem[:40].rstrip('-') or 'deployment'}-{time.strftime('%Y%m%d-%H%M%S')}"


def stdout_console(**options):
    """A console for tables on stdout: the terminal's width, or WIDE when stdout is a file or pipe, so a log
    keeps every container name whole (a table is only as wide as its cells)."""
    console = Console(**options)
    if not console.is_terminal:
        console = Console(width=WIDE, **options)
    return console


def check_name(name):
    """A deployment's name is a lock file's name and the owner tag on its bridges: a plain word."""
    if not NAME_PATTERN.fullmatch(name):
        raise DeployError(
            f"deployment name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return name


def stored_plan(store, record):
    """The plan a deployment was recorded with, as a Plan. A plan of another coordinator version, or one that is
    not a plan at all, is refused with words naming the deployment and its store (the PlanVersionError itself, so
    its advice stays whole); a record that claims this version but lacks its parts is a StoreError."""
    name = record["name"]
    where = f"deployment {name!r} in {store.path}"
    try:
        return topology.Plan.from_dict(record["plan"])
    except topology.PlanVersionError as error:
        error.source = where
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StoreError(
            f"{where}: its recorded plan is damaged ({type(error).__name__}: {error}); remove what it "
            f"made with each host's lxc-agent, then its record: sqlite3 {store.path} "
            f"\"DELETE FROM deployments WHERE name = '{name}'\""
        ) from error


def deploy_command(args):
    config = load_config(args.config)
    plan = topology.plan(config)
    name = check_name(args.name or default_name(args.config))
    store = Store(args.store)
    console = Console(stderr=True)
    for warning in topology.warnings(plan):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    with store.lock(name):
        existing = store.get(name, missing_ok=True)
        if existing is not None:
            # Resuming walks the steps recorded against the stored plan: one this coordinator cannot read (another
            # version's, a damaged record) is refused before any agent is asked or anything recorded. Planned
            # again against it, every node still planned keeps the address it was deployed with.
            plan = topology.plan(config, previous=stored_plan(store, existing))
        log.info(
            "deploy %r from %s: %d node(s) on %d host(s); %s",
            name,
            args.config,
            len(plan.nodes),
            len(plan.hosts),
            "on record, resuming" if existing else "new",
        )
        deployer = Deployer(
            name,
            plan,
            store,
            connector(args),
            Settings(log_dir=os.path.abspath(args.log_dir), call_timeout=args.agent_timeout, golden=not args.no_golden),
        )
        try:
            # Before the deployment is recorded: a refused config can be fixed and deployed under the same name.
            deployer.preflight()
            _accept_changed_config(store, name, existing, config, plan, console)
            resumed = store.begin(name, config.data, plan.to_dict())
            console.print(
                f"{'Resuming' if resumed else 'Deploying'} [bold]{name}[/bold]: {len(plan.nodes)} "
                f"node(s) on {len(plan.hosts)} host(s)"
            )
            with progress_bars(console, deployer) as progress:
                nodes = {}

                def status(node, text):
                    """A line per node whose stack.sh runs, saying which devstack phase it is in."""
                    if node not in nodes:
                        nodes[node] = progress.add_task(f"stack.sh {node}", total=None)
                    if text is None:
                        progress.update(nodes[node], description=f"stack.sh {node}: done", total=1, completed=1)
                    else:
                        progress.update(nodes[node], description=f"stack.sh {node}: {text}")

                deployer.settings.status = status
                try:
                    result = deployer.deploy()
                except BaseException as error:
                    store.set_status(name, "failed")
                    log.info("deploy %r failed: %s", name, type(error).__name__)
                    raise
            store.set_status(name, "deployed")
            log.info(
                "deploy %r done: %s",
                name,
                ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.phases.items()),
            )
            print_nodes(plan, live_state(plan, deployer), console=stdout_console())
            for phase, seconds in result.phases.items():
                console.print(f"{phase:16} {seconds:8.1f} s")
            if result.convergence:
                print(nova.summary(result.convergence), flush=True)
        finally:
            deployer.close()
    return 0


def _accept_changed_config(store, name, existing, config, plan, console):
    """Deploying a changed config under an existing name: the same layout, and the steps from the first one
    whose inputs changed are redone (coordinator.resume); another layout is refused with what differs."""
    if existing is None or existing["config"] == config.data:
        return
    changes = resume.plan_changes(existing["plan"], plan.to_dict())
    log.info(
        "deployment %r: the config changed; layout differences: %s; steps to redo: %s",
        name,
        "; ".join(changes.layout) or "none",
        ", ".join(changes.redo) or "none",
    )
    if changes.layout:
        raise DeployError(
            f"deployment {name!r} exists with another layout:\n  "
            + "\n  ".join(changes.layout)
            + f"\nDestroy it first (coordinator destroy {name}) or deploy under another --name; a "
            "deploy under the same name may change only what devstack is told (localrc, "
            "meta_sections, devstack_repo, devstack_branch, git_mirror, start_script, "
            "host_ca_certificates, host_proxy)"
        )
    store.replace_config(name, config.data, plan.to_dict(), changes.redo)
    if changes.redo:
        console.print(
            f"The config changed ({'; '.join(changes.reasons)}): redoing from step {changes.redo[0]} "
            f"({len(changes.redo)} step(s) from there on)",
            markup=False,
            highlight=False,
        )


def live_state(plan, deployer):
    """name -> the agent's list() entry, host by host; a host whose agent cannot be reached gives nothing."""
    state = {}
    for host in plan.hosts:
        names = [node.name for node in plan.nodes if node.host == host.address and node.kind != "host"]
        try:
            for entry in deployer.agent_for(host).list(names):
                state[entry["name"]] = entry
        except Exception as error:  # shown as unknown; the deploy itself already succeeded or failed
            print(f"cannot ask {host.address} for its containers: {error}", file=sys.stderr)
    return state


def print_nodes(plan, state, console):
    table = Table()
    for column in ("ROLE", "HOST", "CONTAINER", "ADDRESS", "STATE", "MEMORY"):
        # Names and addresses whole even in a narrow terminal: the other columns give way first.
        whole = column in ("CONTAINER", "ADDRESS", "HOST")
        table.add_column(column, no_wrap=whole, min_width=_widest(plan, column) if whole else None)
    for node in plan.nodes:
        entry = state.get(node.name, {})
        memory = entry.get("memory")
        table.add_row(
            node.role,
            node.host,
            node.name,
            node.address,
            entry.get("state", "unknown"),
            f"{memory / 2**20:.0f} MiB" if memory else "-",
        )
    console.print(table)


def _widest(plan, column):
    values = {
        "CONTAINER": [n.name for n in plan.nodes],
        "ADDRESS": [n.address for n in plan.nodes],
        "HOST": [n.host for n in plan.nodes],
    }[column]
    return max([len(column), *map(len, values)])


def shown_status(store, record):
    """The recorded status, except that a deploy or restore whose coordinator died (killed, machine lost) without
    recording how it ended is "interrupted" rather than "deploying" or "restoring": nobody holds its lock any more."""
    if record["status"] in ("deploying", "restoring") and not store.locked(record["name"]):
        return "interrupted"
    return record["status"]


def list_command(args):
    """Every deployment on record, even one this coordinator cannot read (its NODES is "?"): those are then said
    on stderr, each with what to do, and the exit status is 1."""
    store = Store(args.store)
    deployments = store.list()
    if not deployments:
        print(f"no deployments in {store.path}")
        return 0
    table = Table("NAME", "STATUS", "NODES", "CREATED")
    unreadable = []
    for entry in deployments:
        try:
            nodes = str(len(stored_plan(store, store.get(entry["name"])).nodes))
        except (StoreError, topology.PlanVersionError) as error:
            unreadable.append(error)
            nodes = "?"
        table.add_row(
            entry["name"],
            shown_status(store, entry),
            nodes,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created"])),
        )
    stdout_console().print(table)
    for refusal in unreadable:
        print(f"coordinator list: {refusal}", file=sys.stderr)
    return 1 if unreadable else 0


def show_command(args):
    store = Store(args.store)
    record = store.get(args.name)
    plan = stored_plan(store, record)
    deployer = Deployer(
        args.name, plan, store, connector(args), Settings(log_dir=DEFAULT_LOG_DIR, call_timeout=args.agent_timeout)
    )
    try:
        state = live_state(plan, deployer)
    finally:
        deployer.close()
    if args.json:
        nodes = [
            {
                "name": n.name,
                "role": n.role,
                "host": n.host,
                "address": n.address,
                "state": state.get(n.name, {}).get("state", "unknown"),
                "memory": state.get(n.name, {}).get("memory"),
            }
            for n in plan.nodes
        ]
        json.dump({"name": args.name, "status": shown_status(store, record), "nodes": nodes}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.name}: {shown_status(store, record)}")
    print_nodes(plan, state, stdout_console())
    return 0


def destroy_command(args):
    store = Store(args.store)
    record = store.get(args.name)
    plan = stored_plan(store, record)
    with store.lock(args.name):
        log.info(
            "destroy %r: %d node(s) on %d host(s), %d resource(s) on record",
            args.name,
            len(plan.nodes),
            len(plan.hosts),
            len(store.resources(args.name)),
        )
        deployer = Deployer(
            args.name, plan, store, connector(args), Settings(log_dir=DEFAULT_LOG_DIR, call_timeout=args.agent_timeout)
        )
        try:
            deployer.destroy()
        finally:
            deployer.close()
        store.delete(args.name)
        log.info("destroy %r done", args.name)
    print(f"destroyed {args.name}")
    return 0


def scale_command(args):
    """`coordinator scale NAME --computes N`: the recorded config with the group's new count, planned against the
    recorded plan; the change is shown, then made (removed computes first), and the cloud proved again."""
    store = Store(args.store)
    console = Console(stderr=True)
    with store.lock(args.name):
        record = store.get(args.name)
        old_plan = stored_plan(store, record)
        if record["status"] != "deployed":
            raise DeployError(
                f"deployment {args.name!r} is not deployed (status {record['status']}): finish it first "
                f"(coordinator deploy CONFIG --name {args.name} resumes it), then scale it"
            )
        config = validate(record["config"])
        spec = scale.choose_group(config, args.group)
        data = scale.scaled(record["config"], spec, args.computes, args.starts_per_second)
        new_plan = topology.plan(validate(data), previous=old_plan)
        change, plan = scale.change(spec, old_plan, new_plan, args.computes, args.starts_per_second)
        for line in change.describe():
            print(line)
        if args.dry_run:
            return 0
        if not change.added and not change.removed:
            if change.pace is not None:  # no node to start now: recorded for the next scale or resume
                store.replace_config(args.name, data, plan.to_dict())
            return 0
        log.info("scale %r: %s", args.name, change.describe()[0])
        deployer = Deployer(
            args.name, plan, store, connector(args), Settings(log_dir=DEFAULT_LOG_DIR, call_timeout=args.agent_timeout)
        )
        try:
            with progress_bars(console, deployer):
                result = deployer.scale(change)
            # The new layout is recorded once it is made: a scale cut off is simply asked for again.
            store.replace_config(args.name, data, plan.to_dict())
            log.info("scale %r done", args.name)
            for phase, seconds in result.phases.items():
                console.print(f"{phase:16} {seconds:8.1f} s")
            if result.convergence:
                print(nova.summary(result.convergence), flush=True)
        finally:
            deployer.close()
    return 0
