#!/usr/bin/env python3
"""`make demo`: the seed's cloud on this machine, offline. `make demo-clean` (--clean) removes it.

Starts a local lxc-agent if none answers (making its PKI under /etc/lxc-agent/pki if there is none), builds the
stand-in devstack repository configs/demo.json points at, deploys configs/demo.json (a controller and 64 Debian
computes) as deployment "demo", and ends by counting the computes that reported to the controller.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from agent import pki  # noqa: E402
from agent.client import connect  # noqa: E402
from coordinator import cli, topology  # noqa: E402
from coordinator.config import load_config  # noqa: E402
from examples.fake_devstack import make_fake_devstack_repo  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "demo.json")
NAME = "demo"
PKI_DIR = "/etc/lxc-agent/pki"
PORT = 7643
RUN_DIR = "/var/lib/lxc-coordinator/demo"
AGENT_PID = os.path.join(RUN_DIR, "lxc-agent.pid")
AGENT_LOG = os.path.join(RUN_DIR, "lxc-agent.log")
REPORTS = "/opt/stack/data/fake-devstack/reports"


def agent_answers():
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=1):
            return True
    except OSError:
        return False


def ensure_agent():
    """A local agent: the one already running, or one started here (and stopped by --clean)."""
    if not os.path.exists(os.path.join(PKI_DIR, "token")):
        pki.create_pki(PKI_DIR, ["localhost", "127.0.0.1"])
        print(f"made a CA, agent and client certificates and a token in {PKI_DIR}")
    if agent_answers():
        print(f"using the lxc-agent already listening on 127.0.0.1:{PORT}")
        return
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(AGENT_LOG, "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "agent.daemon", "serve", "--listen",
                                    f"127.0.0.1:{PORT}"], stdout=subprocess.PIPE, stderr=log, text=True,
                                   cwd=REPO, start_new_session=True)
    line = process.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"lxc-agent did not start; see {AGENT_LOG}")
    with open(AGENT_PID, "w") as handle:
        handle.write(f"{process.pid}\n")
    print(f"started lxc-agent (pid {process.pid}, log {AGENT_LOG})")


def ensure_devstack_repo():
    plan = topology.plan(load_config(CONFIG))
    path = plan.nodes[0].devstack_repo
    if not os.path.isdir(os.path.join(path, ".git")):
        shutil.rmtree(path, ignore_errors=True)
        make_fake_devstack_repo(path)
    return plan


def count_reports(plan, wait=90):
    """How many computes the controller heard from, by their own addresses."""
    controller = next(node for node in plan.nodes if node.role == "controller")
    computes = {node.name: node.address for node in plan.nodes if node.role == "compute"}
    agent = connect("localhost", PORT, pki_dir=PKI_DIR)
    deadline, heard = time.monotonic() + wait, {}
    while True:
        text = agent.run(controller.name, ["sh", "-c", f"cat {REPORTS} 2>/dev/null || true"])["stdout"]
        heard = {fields[0]: fields[1] for fields in (line.split() for line in text.splitlines())
                 if len(fields) >= 2 and computes.get(fields[0]) == fields[1]}
        if len(heard) == len(computes) or time.monotonic() > deadline:
            return len(heard), len(computes), controller.address
        time.sleep(2)


def clean():
    code = cli.main(["destroy", NAME, "--pki-dir", PKI_DIR]) if agent_answers() else 0
    if os.path.exists(AGENT_PID):
        with open(AGENT_PID) as handle:
            pid = int(handle.read())
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
        else:
            # Gone before we say so: a `make demo` right after must find the agent's port free.
            deadline = time.monotonic() + 30
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
            if os.path.exists(f"/proc/{pid}"):
                print(f"the demo's lxc-agent (pid {pid}) did not stop within 30 s; `kill -9 {pid}` ends it")
                return 1
            print(f"stopped the demo's lxc-agent (pid {pid})")
        os.unlink(AGENT_PID)
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="destroy the demo deployment and its agent")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo needs root (LXC containers, bridges, NAT)")
    if args.clean:
        return clean()
    ensure_agent()
    plan = ensure_devstack_repo()
    code = cli.main(["deploy", CONFIG, "--name", NAME, "--pki-dir", PKI_DIR])
    if code != 0:
        return code
    heard, total, address = count_reports(plan)
    print(f"{heard}/{total} computes reported to controller {address}")
    return 0 if heard == total else 1


if __name__ == "__main__":
    sys.exit(main())
