"""fake-devstack: the one process a STAND-IN devstack node runs.

controller: listens on RabbitMQ's port and appends each report line ("<host> <address> [<compute_id>]") to a
file; the last report of each nova host also goes to computes/<host> (its time is the file's), which the stand-in
`openstack` and `nova-manage` read.
compute: reports "<host> <address> <compute_id>" to the controller every few seconds, for as long as it runs,
for each nova host the node has (devstack's fake driver: /etc/nova/nova-fake.conf-N), else as its hostname; the
address is HOST_IP when local.conf sets it, else this end of the connection.
"""

import argparse
import configparser
import glob
import os
import socket
import socketserver
import sys
import threading
import time


def controller(args):
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for raw in self.rfile:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                fields = line.split()
                with lock, open(args.reports, "a") as reports:
                    reports.write(line + "\n")
                    if fields and fields[0].replace("-", "").replace(".", "").isalnum():
                        computes = os.path.join(os.path.dirname(args.reports), "computes")
                        os.makedirs(computes, exist_ok=True)
                        with open(os.path.join(computes, fields[0] + ".tmp"), "w") as last:
                            last.write(" ".join(fields[1:]) + "\n")
                        os.replace(os.path.join(computes, fields[0] + ".tmp"), os.path.join(computes, fields[0]))
                self.wfile.write(b"ok\n")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    os.makedirs(os.path.dirname(args.reports), exist_ok=True)
    with Server(("0.0.0.0", args.port), Handler) as server:
        print(f"fake-controller: listening on port {args.port}, reports go to {args.reports}", flush=True)
        server.serve_forever()


def nova_hosts():
    """(host, compute_id) for each fake nova compute of this node, as nova would read them at start."""
    found = []
    for path in sorted(glob.glob("/etc/nova/nova-fake.conf-*")):
        conf = configparser.ConfigParser()
        conf.read(path)
        host, state = conf.get("DEFAULT", "host", fallback=None), conf.get("DEFAULT", "state_path", fallback=None)
        try:
            with open(os.path.join(state or "", "compute_id")) as handle:
                compute_id = handle.read().strip()
        except OSError:
            compute_id = "-"
        if host:
            found.append((host, compute_id))
    return found or [(socket.gethostname(), "-")]


def report_once(args, hosts):
    with socket.create_connection((args.rabbit_host, args.port), timeout=10) as sock:
        address = args.address or sock.getsockname()[0]
        replies = sock.makefile("rb")
        for host, compute_id in hosts:
            sock.sendall(f"{host} {address} {compute_id}\n".encode())
            if replies.readline().strip() != b"ok":
                raise OSError("the controller did not acknowledge the report")
    return address


def compute(args):
    hosts = nova_hosts()
    hostname = " ".join(host for host, _ in hosts)
    failing = None
    reported = False
    while True:
        try:
            address = report_once(args, hosts)
        except OSError as error:
            if str(error) != failing:
                print(f"fake-compute: cannot report to {args.rabbit_host}:{args.port}: {error}; retrying", flush=True)
                failing = str(error)
            time.sleep(args.interval if reported else 1)
            continue
        if failing is not None or not reported:
            print(f"fake-compute: reported '{hostname} {address}' to {args.rabbit_host}:{args.port}", flush=True)
        failing, reported = None, True
        if args.last_report:
            with open(args.last_report + ".tmp", "w") as last:
                last.write(f"{hostname} {address} {args.rabbit_host}:{args.port} {int(time.time())}\n")
            os.replace(args.last_report + ".tmp", args.last_report)
        time.sleep(args.interval)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    ctl = sub.add_parser("controller")
    ctl.add_argument("--port", type=int, default=5672)
    ctl.add_argument("--reports", required=True)
    cpu = sub.add_parser("compute")
    cpu.add_argument("--rabbit-host", required=True)
    cpu.add_argument("--port", type=int, default=5672)
    cpu.add_argument("--address", default="")
    cpu.add_argument("--interval", type=float, default=5.0)
    cpu.add_argument("--last-report", default="")
    args = parser.parse_args(argv)
    (controller if args.role == "controller" else compute)(args)


if __name__ == "__main__":
    sys.exit(main())
