"""The `coordinator` command: validate a config, print its plan, deploy it, list, show and destroy deployments.

Only the project's own errors become a message and exit status 1; anything else keeps its traceback, since it is
a bug to fix rather than something the user can act on. EXIT_STATUS says what each status means.
"""

import argparse
import contextlib
import logging
import sys

from agent.errors import AgentError
from coordinator import golden_commands, lifecycle, snapshot_commands, topology
from coordinator.config import ConfigError, load_config
from coordinator.errors import CoordinatorError

log = logging.getLogger(__name__)

EXIT_STATUS = """\
exit status:
  0    done
  1    refused or failed, and said why on stderr: a config problem (each
       with its path in the config), a deployment record (missing, locked,
       of another coordinator version, damaged), an agent, devstack on a node
  2    the command line is wrong (usage)
  130  interrupted (Ctrl-C); deploying again under the same name resumes
"""

# What main turns into a message and status 1: the coordinator's root error and the agent package's.
EXPLAINED = (CoordinatorError, AgentError)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    with _logging(args.verbose):
        try:
            log.debug(
                "coordinator %s: %s",
                args.command,
                {key: value for key, value in vars(args).items() if key not in ("run", "command")},
            )
            return args.run(args)
        except ConfigError as error:
            config = getattr(args, "config", None)
            if error.source in (None, config):
                print(_errors(error, config), file=sys.stderr)
            else:  # not about the config file: a stored plan's error names its deployment as its source
                print(f"coordinator {args.command}: {error}", file=sys.stderr)
            return 1
        except EXPLAINED as error:
            print(f"coordinator {args.command}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            again = "; deploying again under the same name resumes it" if args.command == "deploy" else ""
            print(f"coordinator {args.command}: interrupted{again}", file=sys.stderr)
            return 130


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: while rich's progress display runs on a terminal that is its
    proxy, which prints each line above the bars instead of through them."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _logging(verbose):
    """Log records to stderr for one run of main: everything with -v, else warnings and worse. Undone after, so
    main can be called again in one process (tests, scripts) without a second handler."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _parser():
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="Plan and deploy dummy OpenStack clouds in LXC containers.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_verbose(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check a config; print every problem found",
        description="Check a config (syntax, schemas, networks, placeholders, plan).",
    )
    validate.add_argument("config", metavar="CONFIG", help="the deployment config (JSON or YAML)")
    validate.set_defaults(run=_validate)

    plan = commands.add_parser(
        "plan",
        help="print the whole plan: hosts, subnets, nodes, addresses, tunnels",
        description="Print the plan the deploy would carry out, without touching anything.",
    )
    plan.add_argument("config", metavar="CONFIG", help="the deployment config (JSON or YAML)")
    plan.add_argument(
        "--format", choices=("table", "json"), default="table", help="table for people (default), json for scripts"
    )
    plan.add_argument("--nodes", action="store_true", help="table: list every node, one line each")
    plan.add_argument("--local-conf", action="store_true", help="table: print each node's local.conf")
    plan.add_argument(
        "--node",
        action="append",
        metavar="NAME",
        default=[],
        help="table: only these nodes for --nodes and --local-conf (repeatable)",
    )
    plan.set_defaults(run=_plan)
    lifecycle.add_arguments(commands)
    golden_commands.add_arguments(commands)
    snapshot_commands.add_arguments(commands)
    for command in _commands(commands):
        # After the command too; SUPPRESS keeps a -v given before it (a subparser's default would overwrite it).
        _add_verbose(command, default=argparse.SUPPRESS)
    return parser


def _commands(commands):
    """Every command's parser, and those of its own actions (`golden list`), depth first."""
    for command in commands.choices.values():
        yield command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _commands(action)


def _add_verbose(parser, default):
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log what the coordinator does (config read, store writes, deploy and destroy steps, "
        "resume decisions) on stderr, with times",
    )


def _errors(error, source):
    problems = error.problems
    if len(problems) == 1:
        return f"{source}: error: {problems[0]}"
    lines = [f"{source}: {len(problems)} errors:"]
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


def _validate(args):
    config = load_config(args.config)
    result = topology.plan(config)
    print(f"{args.config}: valid {config.type}: {summary(result)}")
    _warn(result, args.config)
    return 0


def _warn(result, source):
    """The plan's warnings on stderr, one line each (stdout stays the summary, table or JSON)."""
    for warning in topology.warnings(result):
        print(f"{source}: warning: {warning}", file=sys.stderr)


def summary(result):
    """One line: node counts by role and kind, hosts, and the controller's address."""
    roles = _count(node.role for node in result.nodes)
    kinds = _count(node.kind for node in result.nodes)
    by_role = ", ".join(f"{count} {role}" for role, count in roles.items())
    by_kind = ", ".join(f"{count} {_KIND_WORDS[kind]}" for kind, count in kinds.items())
    text = (
        f"{len(result.nodes)} node(s) ({by_role}; {by_kind}) on {len(result.hosts)} host(s), "
        f"{len(result.tunnels)} tunnel(s)"
    )
    if result.controller_address:
        text += f"; controller {result.controller} at {result.controller_address}"
    return text


_KIND_WORDS = {
    "standalone": "standalone container(s)",
    "first": "first compute(s)",
    "clone": "clone(s)",
    "host": "on hardware node(s) directly",
}


def _count(items):
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _plan(args):
    result = topology.plan(load_config(args.config))
    _warn(result, args.config)
    if args.format == "json":
        sys.stdout.write(result.to_json())
        return 0
    wanted = set(args.node)
    unknown = sorted(wanted - {node.name for node in result.nodes})
    if unknown:
        print(f"coordinator plan: no node named {', '.join(unknown)} in this plan", file=sys.stderr)
        return 1
    sys.stdout.write(render_table(result, args.config, nodes=args.nodes, local_conf=args.local_conf, only=wanted))
    return 0


def render_table(result, source, nodes=False, local_conf=False, only=()):
    """The plan for people: summary, hosts and their subnets, groups with name and address ranges, tunnels."""
    out = [f"Plan for {source} ({result.type})", summary(result)]
    if result.controller_address:
        out.append(f"Controller address: {result.controller_address} ({result.controller})")
    out.append("")
    out.append("Hosts")
    rows = []
    for host in result.hosts:
        agent = host.address if host.port is None else f"{host.address}:{host.port}"
        networks = host.networks or (None,)
        for network in networks:
            rows.append(
                [
                    str(host.index),
                    agent,
                    host.user or "-",
                    network.subnet if network else "-",
                    network.gateway if network else "-",
                    network.bridge if network else "-",
                    str(network.containers) if network else "0",
                    str(host.nodes),
                ]
            )
    out += _table(["#", "HOST", "USER", "SUBNET", "GATEWAY", "BRIDGE", "CONTAINERS", "NODES"], rows)
    out.append("")
    out.append("Groups")
    rows = []
    placed: dict = {}
    for node in result.nodes:
        placed.setdefault((node.group, node.host), []).append(node)
    for group in result.groups:
        for host in group.hosts:
            here = placed.get((group.index, host), [])
            kinds = _count(node.kind for node in here)
            kind = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
            rows.append(
                [
                    str(group.index),
                    group.path or "(top)",
                    group.role,
                    kind,
                    host,
                    str(len(here)),
                    _span([node.name for node in here]),
                    _span([node.address for node in here]),
                ]
            )
    out += _table(["#", "CONFIG", "ROLE", "KIND", "HOST", "NODES", "NAMES", "ADDRESSES"], rows)
    out.append("")
    if result.tunnels:
        out.append("Tunnels")
        out += _table(
            ["NAME", "KIND", "HOST", "SUBNET", "REMOTE", "REMOTE SUBNETS"],
            [[t.name, t.kind, t.host, t.subnet, t.remote, ", ".join(t.remote_subnets) or "-"] for t in result.tunnels],
        )
    else:
        out.append("Tunnels: none")
    shown = [node for node in result.nodes if not only or node.name in only]
    if nodes:
        out.append("")
        out.append("Nodes")
        out += _table(
            ["NAME", "ROLE", "KIND", "HOST", "ADDRESS", "SOURCE"],
            [
                [
                    n.name,
                    n.role,
                    n.kind,
                    n.host,
                    n.address if n.prefixlen is None else f"{n.address}/{n.prefixlen}",
                    n.source or "-",
                ]
                for n in shown
            ],
        )
    if local_conf:
        for node in shown:
            out.append("")
            out.append(f"# local.conf of {node.name} ({node.role}, {node.address} on {node.host})")
            out.append(node.local_conf.rstrip("\n"))
    return "\n".join(out) + "\n"


def _span(values):
    if not values:
        return "-"
    if len(values) == 1:
        return values[0]
    return f"{values[0]} .. {values[-1]}"


def _table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header] + rows:
        lines.append("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return lines


if __name__ == "__main__":
    sys.exit(main())
