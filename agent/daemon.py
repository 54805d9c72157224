"""lxc-agent's command line: `serve` (the foreground daemon systemd starts) and `init-pki`."""

import argparse
import hmac
import ipaddress
import logging
import os
import signal
import ssl
import sys
import threading
import tomllib

import Pyro5.api
import Pyro5.errors
import Pyro5.socketutil

import agent
from agent import pki, storage
from agent.endpoint import DEFAULT_PKI, DEFAULT_PORT, OBJECT_ID
from agent.errors import AgentError, InvalidArgument, NetworkError
from agent.service import AgentService

DEFAULT_CONFIG = "/etc/lxc-agent/agent.toml"
SETTINGS = {  # option -> default; the config file uses the same names with '_' for '-'
    "listen": f"127.0.0.1:{DEFAULT_PORT}",
    "lxcpath": "/var/lib/lxc",
    "storage": "auto",
    "tls_cert": f"{DEFAULT_PKI}/agent.crt",
    "tls_key": f"{DEFAULT_PKI}/agent.key",
    "tls_ca": f"{DEFAULT_PKI}/ca.crt",
    "token_file": f"{DEFAULT_PKI}/token",
    "no_tls": False,
    "log_level": "info",
    "max_clients": 128,
    "command_workers": 16,
}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_FAILURE = 1
EXIT_USAGE = 2  # as argparse's own usage errors
EXIT_CODES = f"""exit codes:
  0  done (serve: stopped by SIGTERM or SIGINT)
  {EXIT_FAILURE}  the agent could not do it: TLS material or token missing or unusable, lxcpath or storage unusable,
     port taken, init-pki refusing to overwrite or given a bad name
  {EXIT_USAGE}  the command line or config file is wrong: unknown options, a malformed --listen, an unreadable
     config file or an unknown setting in it, --no-tls on an address other than loopback"""

log = logging.getLogger("agent.daemon")  # not __name__: run as `python -m agent.daemon`, that is __main__


class UsageError(InvalidArgument):
    """The command line or config file is wrong: lxc-agent exits 2, as for argparse's own usage errors."""


class _LazyHandshakeSocket(ssl.SSLSocket):
    """TLS handshake on first read, in the connection's own thread, not in the accept loop.

    Pyro5 accepts on one thread; with the default eager handshake, one client that connects and stays silent
    would stop every other client from connecting.
    """

    @classmethod
    def _create(cls, *args: object, **kwargs: object) -> ssl.SSLSocket:  # typed: mypy checks it in any mode
        kwargs["do_handshake_on_connect"] = False
        return super()._create(*args, **kwargs)  # type: ignore[misc]  # not in typeshed: ssl's own factory


class AgentDaemon(Pyro5.api.Daemon):
    """A Pyro5 daemon that admits only clients presenting the token in the connection handshake."""

    def __init__(self, token, **kwargs):
        self._token = token.encode()
        super().__init__(**kwargs)

    def validateHandshake(self, conn, data):
        offered = data.encode() if isinstance(data, str) else b""
        if not hmac.compare_digest(offered, self._token):
            log.warning(
                "refused the connection (handshake) of a client from %s: wrong or missing token",
                conn.sock.getpeername()[0],
            )
            raise Pyro5.errors.CommunicationError("refused: wrong or missing token")
        return "ok"


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
    return settings


def configure_pyro(settings, tls_context):
    Pyro5.config.SERVERTYPE = "thread"
    # Each connected proxy holds one pool thread for its whole life, idle or not: size the pool for every
    # client expected at once (coordinator threads, scripts), since Pyro5 refuses connections beyond it.
    Pyro5.config.THREADPOOL_SIZE = int(settings["max_clients"])
    Pyro5.config.THREADPOOL_SIZE_MIN = 8
    Pyro5.config.DETAILED_TRACEBACK = False
    Pyro5.config.POLLTIMEOUT = 0.5  # how soon a SIGTERM is noticed
    Pyro5.config.SSL = tls_context is not None
    if tls_context is not None:
        tls_context.sslsocket_class = _LazyHandshakeSocket
        # Pyro5 would build its own context trusting the system CAs too; ours trusts only the agent's CA.
        Pyro5.socketutil.get_ssl_context = lambda *args, **kwargs: tls_context


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
    configure_pyro(settings, tls_context)
    service = AgentService(settings["lxcpath"], settings["storage"], int(settings["command_workers"]))
    try:
        daemon = AgentDaemon(token, host=host, port=port)
    except OSError as error:
        service.close()
        raise NetworkError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; is another lxc-agent "
            "serving there? pick another --listen"
        ) from error
    uri = daemon.register(service, OBJECT_ID)
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
    print(f"lxc-agent listening on {host}:{daemon.locationStr.rpartition(':')[2]}", flush=True)
    try:
        daemon.requestLoop(loopCondition=lambda: not stopping.is_set())
    finally:
        daemon.close()
        service.close()
    return 0


def init_pki(args):
    paths = pki.create_pki(
        args.dir, args.agent_name or list(pki.DEFAULT_AGENT_NAMES), client_name=args.client_name, force=args.force
    )
    for name in pki.PKI_FILES:
        print(f"{name:12} {paths[name]}")
    print("\nCopy ca.crt, client.crt, client.key and token to the coordinator; keep ca.key offline.")
    return 0


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
    run.add_argument("--max-clients", type=int, help="connections served at once (default 128)")
    run.add_argument("--command-workers", type=int, help="commands run in containers at once; more wait (default 16)")
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
