"""lxc-agent's command line: `serve` (the foreground daemon systemd starts), `init-pki`, and `init-pool` /
`remove-pool` (the storage pool of an lxcpath not on btrfs, with its systemd mount unit)."""

import argparse
import dataclasses
import hmac
import ipaddress
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import tomllib

import Pyro5.api
import Pyro5.errors

import agent
from agent import gate, pki, pool, storage
from agent.endpoint import DEFAULT_PKI, DEFAULT_PORT, OBJECT_ID
from agent.errors import AgentError, InvalidArgument, NetworkError
from agent.service import AgentService

DEFAULT_CONFIG = "/etc/lxc-agent/agent.toml"
SETTINGS = {  # option -> default; the config file uses the same names with '_' for '-'
    "listen": f"127.0.0.1:{DEFAULT_PORT}",
    "lxcpath": "/var/lib/lxc",
    "storage": "auto",
    "storage_pool": "auto",  # the loop-file btrfs made for an lxcpath not on btrfs: a file, "auto" or "none"
    "storage_pool_size": "auto",  # its size: "auto" (from the free disk) or e.g. "60G"
    "tls_cert": f"{DEFAULT_PKI}/agent.crt",
    "tls_key": f"{DEFAULT_PKI}/agent.key",
    "tls_ca": f"{DEFAULT_PKI}/ca.crt",
    "token_file": f"{DEFAULT_PKI}/token",
    "no_tls": False,
    "log_level": "info",
    "max_clients": gate.Limits.max_clients,
    "command_workers": 16,
    "handshake_timeout": gate.Limits.handshake_timeout,
    "max_unauthenticated": gate.Limits.max_unauthenticated,
    "max_unauthenticated_per_source": gate.Limits.max_unauthenticated_per_source,
    "max_handshake_size": gate.Limits.max_handshake_size,
    "max_message_size": gate.Limits.max_message_size,
    "stop_timeout": 5.0,
    "allow_public_subnets": False,  # bridges and tunnel routes for subnets outside the private ranges
}
# setting -> (seconds or a count, least value, greatest value); each is checked before anything starts
BOUNDS = {
    "handshake_timeout": (float, 0.1, 3600),
    "max_unauthenticated": (int, 1, 100_000),
    "max_unauthenticated_per_source": (int, 1, 100_000),
    "max_handshake_size": (int, 256, 1024 * 1024),
    "max_message_size": (int, 64 * 1024, 1024 * 1024 * 1024),  # Pyro5's own ceiling is 1 GiB
    "max_clients": (int, 1, 100_000),
    "command_workers": (int, 1, 1024),
    "stop_timeout": (float, 0, 3600),
}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_FAILURE = 1
EXIT_USAGE = 2  # as argparse's own usage errors
EXIT_CODES = f"""exit codes:
  0  done (serve: stopped by SIGTERM or SIGINT)
  {EXIT_FAILURE}  the agent could not do it: TLS material or token missing or unusable (or its key or token file
     open to group/others), lxcpath or storage unusable, port taken, init-pki refusing to overwrite or given a bad name
  {EXIT_USAGE}  the command line or config file is wrong: unknown options, a malformed --listen, an unreadable
     config file or an unknown setting in it, a limit out of its range, --no-tls on an address other than loopback"""

log = logging.getLogger("agent.daemon")  # not __name__: run as `python -m agent.daemon`, that is __main__


class UsageError(InvalidArgument):
    """The command line or config file is wrong: lxc-agent exits 2, as for argparse's own usage errors."""


class AgentDaemon(Pyro5.api.Daemon):
    """A Pyro5 daemon behind agent.gate, which admits only clients presenting the token in the connect handshake."""

    def __init__(self, token, limits, tls_context, **kwargs):
        self._token = token.encode()
        self._limits = limits
        super().__init__(**kwargs)
        self.gate = gate.Gate(self, tls_context, limits)

    def validateHandshake(self, conn, data):
        offered = data.encode() if isinstance(data, str) else b""
        if not hmac.compare_digest(offered, self._token):
            raise Pyro5.errors.CommunicationError("wrong or missing token")  # the gate logs it
        # What a client needs to know to refuse an oversized call itself, rather than have it cut off.
        return {"max_message_size": self._limits.max_message_size}


def parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host.strip("[]"), int(port)


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(args):
    """Defaults, then the config file, then the command line."""
    settings = dict(SETTINGS)
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        try:
            with open(path, "rb") as handle:
                from_file = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise UsageError(f"cannot read config file {path}: {error}") from error
        unknown = sorted(set(from_file) - set(SETTINGS))
        if unknown:
            raise UsageError(f"{path}: unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
        settings.update(from_file)
    settings.update({key: value for key, value in vars(args).items() if key in SETTINGS and value is not None})
    for name, (kind, least, greatest) in BOUNDS.items():
        settings[name] = _bounded(name, settings[name], kind, least, greatest)
    for name in ("no_tls", "allow_public_subnets"):
        if not isinstance(settings[name], bool):
            raise UsageError(f"{name} must be true or false, not {settings[name]!r}")
    for name in ("lxcpath", "storage_pool", "storage_pool_size"):
        if not isinstance(settings[name], (str, int)) or isinstance(settings[name], bool):
            raise UsageError(f"{name} must be text, not {settings[name]!r}")
    try:
        settings["storage_pool_size"] = pool.parse_size(settings["storage_pool_size"])
    except InvalidArgument as error:
        raise UsageError(str(error)) from error
    return settings


def pool_file(settings):
    """The storage pool's file for these settings, or None when none is wanted."""
    if settings["storage"] not in ("auto", "btrfs") or settings["storage_pool"] == "none":
        return None
    return pool.default_file(settings["lxcpath"]) if settings["storage_pool"] == "auto" else settings["storage_pool"]


def prepare_storage(settings):
    """Put the lxcpath on btrfs when it is not (the storage pool), before the agent first looks at it."""
    image = pool_file(settings)
    if image is None:
        return
    try:
        done = pool.ensure(
            settings["lxcpath"],
            image,
            settings["storage_pool_size"],
            under_systemd=bool(os.environ.get("INVOCATION_ID")),
        )
    except InvalidArgument as error:
        raise UsageError(str(error)) from error
    if done == "made":
        made = pool.describe(settings["lxcpath"]) or {}
        log.info(
            "storage pool: made %s (%s, sparse: it takes disk as containers write) and mounted it at %s",
            image,
            pool.gib(made.get("size") or 0),
            settings["lxcpath"],
        )
    elif done == "mounted":
        log.info("storage pool: mounted %s at %s", image, settings["lxcpath"])
    elif done == "skipped":
        log.warning(
            "%s is a mount point of a filesystem other than btrfs: no storage pool is mounted over it, so clones "
            "are not snapshots and no golden image or snapshot is kept (set storage to overlay or copy to say "
            "that is meant)",
            settings["lxcpath"],
        )


def _bounded(name, value, kind, least, greatest):
    option = "--" + name.replace("_", "-")
    if kind is int:
        usable = isinstance(value, int) and not isinstance(value, bool)
    else:
        usable = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not usable or not least <= value <= greatest:
        what = "a whole number" if kind is int else "a number of seconds"
        raise UsageError(f"{name} ({option}) must be {what} from {least} to {greatest}, not {value!r}")
    return kind(value)


def limits_of(settings):
    return gate.Limits(**{field.name: settings[field.name] for field in dataclasses.fields(gate.Limits)})


def configure_pyro():
    # Pyro5 only binds the listening socket (the multiplex server starts no thread): agent.gate serves it, doing
    # TLS per connection on that connection's own thread, so Pyro5's own TLS stays off.
    Pyro5.config.SERVERTYPE = "multiplex"
    Pyro5.config.SSL = False
    Pyro5.config.DETAILED_TRACEBACK = False
    Pyro5.config.POLLTIMEOUT = 0.5  # how soon a SIGTERM is noticed


def serve(args):
    settings = load_settings(args)
    logging.basicConfig(level=settings["log_level"].upper(), stream=sys.stderr, format=LOG_FORMAT)
    host, port = parse_listen(settings["listen"])
    if settings["no_tls"] and not is_loopback(host):
        raise UsageError(
            f"refusing to listen on {host} without TLS: only loopback addresses may go "
            "without it; drop --no-tls (see `lxc-agent init-pki`)"
        )
    tls_context = (
        None
        if settings["no_tls"]
        else pki.server_ssl_context(settings["tls_cert"], settings["tls_key"], settings["tls_ca"])
    )
    token = pki.read_token(settings["token_file"])
    configure_pyro()
    limits = limits_of(settings)
    # The port first: an agent that cannot serve makes nothing (no storage pool) before it says so.
    try:
        daemon = AgentDaemon(token, limits, tls_context, host=host, port=port)
    except OSError as error:
        raise NetworkError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; is another lxc-agent "
            "serving there? pick another --listen"
        ) from error
    try:
        prepare_storage(settings)
        service = AgentService(
            settings["lxcpath"],
            settings["storage"],
            settings["command_workers"],
            allow_public_subnets=settings["allow_public_subnets"],
        )
    except BaseException:
        daemon.close()
        raise
    uri = daemon.register(service, OBJECT_ID)
    if settings["storage"] == "auto" and settings["storage_pool"] == "none" and service.backend != "btrfs":
        log.warning(
            "storage %s: %s is not on btrfs, so clones are not snapshots and no golden image or snapshot is kept "
            '(storage_pool = "auto" would make a btrfs pool there)',
            service.backend,
            settings["lxcpath"],
        )
    stopping = threading.Event()

    def stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "lxc-agent %s serving %s (lxcpath %s, storage %s, TLS %s)",
        agent.__version__,
        uri,
        settings["lxcpath"],
        service.backend,
        "on" if tls_context else "off",
    )
    log.info(
        "limits: handshake within %g s, %d connections in their handshake (%d per address), %d clients, "
        "handshakes up to %d bytes, calls up to %d bytes",
        limits.handshake_timeout,
        limits.max_unauthenticated,
        limits.max_unauthenticated_per_source,
        limits.max_clients,
        limits.max_handshake_size,
        limits.max_message_size,
    )
    print(f"lxc-agent listening on {host}:{daemon.locationStr.rpartition(':')[2]}", flush=True)
    try:
        daemon.requestLoop(loopCondition=lambda: not stopping.is_set())
    finally:
        _stop(daemon, service, settings["stop_timeout"])
    return 0


def _stop(daemon, service, grace):
    """Within about `grace` seconds, whatever clients do: drop every connection, let calls in progress finish
    within the grace, then end the worker processes of those that did not. Containers keep running."""
    started = time.monotonic()
    running = daemon.gate.stop(grace)
    daemon.close()
    if not running:
        closing = threading.Thread(target=service.close, name="close the service", daemon=True)
        closing.start()
        closing.join(max(grace - (time.monotonic() - started), 2))
        if not closing.is_alive():
            return
    log.warning(
        "stopping with %s after %g s (stop_timeout): the agent's worker processes are ended, containers keep running",
        f"{running} call(s) still running" if running else "the service not closed",
        grace,
    )
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(2)
        if worker.is_alive():
            worker.kill()
    logging.shutdown()
    # Threads still in those calls, and the executors' exit handlers, would wait for them: leave now.
    os._exit(0)


def init_pki(args):
    paths = pki.create_pki(
        args.dir, args.agent_name or list(pki.DEFAULT_AGENT_NAMES), client_name=args.client_name, force=args.force
    )
    for name in pki.PKI_FILES:
        print(f"{name:12} {paths[name]}")
    print("\nCopy ca.crt, client.crt, client.key and token to the coordinator; keep ca.key offline.")
    return 0


def init_pool(args):
    """Make the storage pool (or mount the one there) and write its systemd mount unit, for an installed agent:
    under systemd the agent's own mount namespace could not give the host its mount."""
    settings = load_settings(args)
    image = pool_file({**settings, "storage": "auto"})
    if image is None:
        raise UsageError('storage_pool is "none": nothing to make; set it to "auto" or a file')
    lxcpath = settings["lxcpath"]
    try:
        done = pool.ensure(lxcpath, image, settings["storage_pool_size"])
    except InvalidArgument as error:
        raise UsageError(str(error)) from error
    described = pool.describe(lxcpath)
    if done == "skipped":
        raise AgentError(f"{lxcpath} is the mount point of another filesystem: no pool is mounted over it")
    if described is None or os.path.normpath(described["file"]) != os.path.normpath(image):
        print(f"{lxcpath} is on btrfs already: no pool is needed")
        return 0
    what = {"made": "made and mounted", "mounted": "mounted"}.get(done, "already mounted")
    print(
        f"storage pool {image} ({pool.gib(described['size'])}, sparse; {pool.gib(described['disk'])} on disk): "
        f"{what} at {lxcpath}"
    )
    if not args.no_unit:
        unit = pool.install_unit(lxcpath, image, args.unit_dir)
        print(f"mount unit {unit}: enabled, so the pool is mounted at boot before lxc-agent.service")
    return 0


def remove_pool(args):
    """Unmount the storage pool, delete its file and its mount unit: every image kept in it goes with it."""
    settings = load_settings(args)
    image = pool_file({**settings, "storage": "auto"})
    if image is None:
        raise UsageError('storage_pool is "none": there is no pool to remove')
    removed = pool.remove(settings["lxcpath"], image)
    if not args.no_unit:
        removed += pool.remove_unit(settings["lxcpath"], args.unit_dir)
    print("removed: " + ", ".join(removed) if removed else f"no storage pool for {settings['lxcpath']}: nothing to do")
    return 0


def _add_pool_options(parser):
    parser.add_argument(
        "--storage-pool",
        metavar="FILE",
        help="when the lxcpath is not on btrfs, the sparse file formatted btrfs and loop-mounted there (made if "
        "missing): a file, auto (LXCPATH.img, the default) or none (no pool: overlay or copy storage)",
    )
    parser.add_argument(
        "--storage-pool-size",
        metavar="SIZE",
        help=f"the pool's size when it is made, e.g. 60G (default auto: half the free disk, at most "
        f"{pool.MAX_DEFAULT_SIZE // pool.GIB} GiB; less than {pool.MIN_SIZE // pool.GIB} GiB is refused)",
    )


def _pool_command(commands, name, help_text, handler):
    parser = commands.add_parser(
        name,
        help=help_text,
        description=handler.__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"TOML file with the settings (default {DEFAULT_CONFIG} if present)")
    parser.add_argument("--lxcpath", help=f"where containers live (default {SETTINGS['lxcpath']})")
    _add_pool_options(parser)
    parser.add_argument(
        "--unit-dir", default=pool.UNIT_DIR, help=f"where the mount unit goes (default {pool.UNIT_DIR})"
    )
    parser.add_argument("--no-unit", action="store_true", help="no systemd mount unit")
    parser.set_defaults(handler=handler)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lxc-agent", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lxc-agent {agent.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "serve",
        help="run the agent in the foreground (systemd starts this)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", help=f"TOML file with the settings below (default {DEFAULT_CONFIG} if present)")
    run.add_argument("--listen", help=f"HOST:PORT to listen on (default {SETTINGS['listen']})")
    run.add_argument("--lxcpath", help=f"where containers live; btrfs recommended (default {SETTINGS['lxcpath']})")
    run.add_argument(
        "--storage",
        choices=["auto", *storage.BACKENDS],
        help="clone method: btrfs snapshots, overlay layers or full copies (default auto: btrfs when "
        "the lxcpath is on btrfs, else overlay when the kernel can mount it there, else copy)",
    )
    _add_pool_options(run)
    run.add_argument("--tls-cert", help=f"agent certificate (default {SETTINGS['tls_cert']})")
    run.add_argument("--tls-key", help=f"agent key (default {SETTINGS['tls_key']})")
    run.add_argument("--tls-ca", help=f"CA that signs client certificates (default {SETTINGS['tls_ca']})")
    run.add_argument("--token-file", help=f"file holding the shared token (default {SETTINGS['token_file']})")
    run.add_argument(
        "--no-tls",
        action="store_const",
        const=True,
        help="plain TCP; allowed on loopback addresses only (the token is still required)",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--allow-public-subnets",
        action="store_const",
        const=True,
        help="let bridges and tunnel routes use subnets outside the private ranges (RFC 1918, 100.64.0.0/10, "
        "198.18.0.0/15); loopback, link-local, multicast and reserved ranges stay refused",
    )
    run.add_argument(
        "--max-clients",
        type=int,
        metavar="N",
        help="authenticated clients connected at once, idle or not; each holds a thread, and one more is refused "
        f"with a reason its client retries on (default {SETTINGS['max_clients']})",
    )
    run.add_argument(
        "--command-workers", type=int, metavar="N", help="commands run in containers at once; more wait (default 16)"
    )
    run.add_argument(
        "--handshake-timeout",
        type=float,
        metavar="SECONDS",
        help="a new connection must finish TLS and the token handshake within this, or is closed "
        f"(default {SETTINGS['handshake_timeout']:g})",
    )
    run.add_argument(
        "--max-unauthenticated",
        type=int,
        metavar="N",
        help="connections still in their handshake, at most; further ones are closed at once, unread "
        f"(default {SETTINGS['max_unauthenticated']})",
    )
    run.add_argument(
        "--max-unauthenticated-per-source",
        type=int,
        metavar="N",
        help="the same, from any one address: one host cannot take every place "
        f"(default {SETTINGS['max_unauthenticated_per_source']})",
    )
    run.add_argument(
        "--max-handshake-size",
        type=int,
        metavar="BYTES",
        help="largest connect message, read before the token is checked; a bigger one is refused unread "
        f"(default {SETTINGS['max_handshake_size']})",
    )
    run.add_argument(
        "--max-message-size",
        type=int,
        metavar="BYTES",
        help="largest call an authenticated client may send (run's stdin included); a bigger one is refused "
        f"unread (default {SETTINGS['max_message_size']}, 64 MiB)",
    )
    run.add_argument(
        "--stop-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long calls in progress may go on before their worker processes are ended "
        f"(default {SETTINGS['stop_timeout']:g})",
    )
    run.set_defaults(handler=serve)
    init = commands.add_parser(
        "init-pki",
        help="create a CA, agent and client certificates and a token",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--dir", default=DEFAULT_PKI, help=f"where to write them (default {DEFAULT_PKI})")
    init.add_argument(
        "--agent-name",
        action="append",
        help="host name or address the agent is reached at (repeatable; localhost is always in)",
    )
    init.add_argument("--client-name", default="coordinator")
    init.add_argument("--force", action="store_true", help="replace existing files (invalidates old clients)")
    init.set_defaults(handler=init_pki)
    _pool_command(
        commands, "init-pool", "make the storage pool for an lxcpath not on btrfs, and its mount unit", init_pool
    )
    _pool_command(commands, "remove-pool", "unmount and delete the storage pool and its mount unit", remove_pool)
    return parser


def main(argv=None):
    """Run one command; its expected failures become one line on stderr and an exit code (see EXIT_CODES)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"lxc-agent: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (AgentError, OSError) as error:
        print(f"lxc-agent: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(error):
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
