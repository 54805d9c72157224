#!/usr/bin/env python3
"""`make demo`: the seed's cloud on this machine with real devstack: 1 controller + 64 fake computes.
`make demo-clean` (--clean) removes it and keeps the golden images; `make demo-purge` (--purge) leaves nothing.

Starts a local lxc-agent if none answers (making its PKI under /etc/lxc-agent/pki if there is none), and deploys
configs/demo.json (the seed's layout in Debian containers; the controller runs keystone, nova, placement, glance and
a neutron API that needs no kernel modules) as deployment "demo". OpenStack's sources come from opendev.org, or from
a folder of git bundles or repositories given as --mirror (`make demo OPENSTACK_MIRROR=DIR`). When the agent's
lxcpath (/var/lib/lxc) is not on btrfs, the agent makes a storage pool for it (a sparse loop file formatted btrfs,
/var/lib/lxc.img, mounted there; kept by --clean, removed by --purge), so clones are snapshots and the stacked
nodes are kept as golden images for the next demo. Containers trust this
machine's extra CA certificates (/usr/local/share/ca-certificates) when it has some, for pip behind an
intercepting proxy. The deploy ends with the line `64/64 nova-compute services up as 64 hypervisors ...`; then a
tiny image `dummy` is uploaded so a client (Rally) can boot servers at once.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from agent import endpoint, pki, pool  # noqa: E402
from agent.client import connect  # noqa: E402
from coordinator import access, cli, topology  # noqa: E402
from coordinator.config import load_config  # noqa: E402
from coordinator.store import Store  # noqa: E402
from simlab import cloud  # noqa: E402

NAME = "demo"
PKI_DIR, PORT = endpoint.DEFAULT_PKI, endpoint.DEFAULT_PORT
RUN_DIR = "/var/lib/lxc-coordinator/demo"
AGENT_PID = os.path.join(RUN_DIR, "lxc-agent.pid")
AGENT_LOG = os.path.join(RUN_DIR, "lxc-agent.log")
# Measured with real devstack here: the controller's cgroup holds 3.7 GiB; a merged, lean compute costs the host
# about 55 MiB once ksmd has merged it (bench/density.py --merge-memory), and its starts wait for that
# (coordinator.pacing.MemoryGate), so the host's floor is what stays free on top.
CONTROLLER_MIB, COMPUTE_MIB, FLOOR_MIB = 4096, 64, 1024
IMAGE = (
    "head -c 1048576 /dev/zero >/tmp/dummy.img && openstack image show dummy >/dev/null 2>&1 || "
    "openstack image create --disk-format raw --container-format bare --public --file /tmp/dummy.img dummy"
)


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
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.daemon", "serve", "--listen", f"127.0.0.1:{PORT}"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
    line = process.stdout.readline()
    if "listening on" not in line:
        process.wait(30)
        with open(AGENT_LOG) as log:
            last = [text.strip() for text in log.read().splitlines() if text.strip()][-1:]
        sys.exit(f"lxc-agent did not start: {last[0] if last else 'no output'} (whole log: {AGENT_LOG})")
    with open(AGENT_PID, "w") as handle:
        handle.write(f"{process.pid}\n")
    print(f"started lxc-agent (pid {process.pid}, log {AGENT_LOG})")


def describe_storage():
    """One line on the agent's storage, and whether stacked nodes are kept as golden images there."""
    info = connect("localhost", PORT, pki_dir=PKI_DIR).info()
    held = info.get("pool")
    if held:
        where = (
            f"btrfs, in the storage pool {held['file']} ({pool.gib(held['size'])} sparse, "
            f"{pool.gib(held['disk'])} on disk)"
        )
    else:
        where = info["storage"]
    kept = {
        "btrfs": "clones are snapshots, stacked nodes are kept as golden images",
        "copy": "clones are full copies, stacked nodes are kept as golden images",
    }.get(info["storage"], "no golden images: every demo runs stack.sh")
    print(f"storage under {info['lxcpath']}: {where}; {kept}")


def demo_config(mirror, computes):
    """configs/demo.json for this machine: `computes` fake computes, the git mirror when given, the host's CA
    certificates when it has some. Written to RUN_DIR; returns its path."""
    trust = bool(access.host_ca_certificates())
    data = cloud.demo_config(computes, mirror and os.path.abspath(mirror), trust)
    print(
        f"OpenStack from {os.path.abspath(mirror) if mirror else 'opendev.org'}; containers trust "
        + (f"the CA certificates in {access.HOST_CA_FOLDER}" if trust else "their distribution's CAs only")
    )
    os.makedirs(RUN_DIR, exist_ok=True)
    path = os.path.join(RUN_DIR, "demo.json")
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)
    return path


def check_memory(plan):
    """Refuse before anything changes when the cloud cannot fit this machine's available memory."""
    computes = sum(1 for node in plan.nodes if node.role == "compute")
    needed = CONTROLLER_MIB + computes * COMPUTE_MIB + FLOOR_MIB
    with open("/proc/meminfo") as handle:
        available = next(int(line.split()[1]) // 1024 for line in handle if line.startswith("MemAvailable:"))
    print(
        f"memory: about {needed} MiB needed (controller {CONTROLLER_MIB} MiB + {computes} merged computes x "
        f"{COMPUTE_MIB} MiB + {FLOOR_MIB} MiB kept free), {available} MiB available"
    )
    if needed > available:
        fits = max(0, (available - CONTROLLER_MIB - FLOOR_MIB) // COMPUTE_MIB)
        sys.exit(
            f"not enough memory for 1 + {computes}: free {needed - available} MiB more, or deploy fewer computes "
            f"(make demo COMPUTES={fits} fits what is available now)"
        )


def upload_image(plan):
    controller = next(node for node in plan.nodes if node.role == "controller")
    agent = connect("localhost", PORT, pki_dir=PKI_DIR)
    result = agent.run(
        controller.name,
        [
            "bash",
            "-c",
            "cd /opt/stack/devstack && source ./openrc admin admin "
            ">/dev/null 2>&1 && export PATH=/opt/stack/data/venv/bin:$PATH && " + IMAGE,
        ],
        user="stack",
        timeout=300,
    )
    if result["exit_code"] != 0:
        print(f"could not upload the image 'dummy': {result['stderr'].strip()[-500:]}")
        return 1
    print(
        f"image 'dummy' in glance; credentials: /opt/stack/devstack/openrc in {controller.name} "
        f"({controller.address}). Boot servers with: openstack --os-compute-api-version 2.37 server create "
        "--image dummy --flavor m1.tiny --nic none NAME"
    )
    return 0


def stop_agent():
    if not os.path.exists(AGENT_PID):
        return 0
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
            # Its deployment is gone already; nothing of the host is left half made by ending it now.
            os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
            if os.path.exists(f"/proc/{pid}"):
                print(f"the demo's lxc-agent (pid {pid}) did not stop, even killed; see {AGENT_LOG}")
                return 1
            print(f"the demo's lxc-agent (pid {pid}) did not stop within 30 s of SIGTERM; killed it")
        else:
            print(f"stopped the demo's lxc-agent (pid {pid})")
    os.unlink(AGENT_PID)
    return 0


def clean():
    """Destroy the demo deployment (starting the demo's agent for it when none runs), then stop that agent."""
    recorded = NAME in [entry["name"] for entry in Store(None).list()]
    code = 0
    if recorded:
        ensure_agent()
        code = cli.main(["destroy", NAME, "--pki-dir", PKI_DIR])
        if code == 0:
            images = [
                image
                for image in connect("localhost", PORT, pki_dir=PKI_DIR).list_images()
                if image.get("kind") == "saved"
            ]
            if images:
                print(
                    f"{len(images)} golden image(s) of the stacked nodes stay, so the next `make demo` skips their "
                    f"stack.sh: `.venv/bin/coordinator golden list --pki-dir {PKI_DIR}` shows them; "
                    "`make demo-purge` removes them and the storage pool"
                )
            else:
                print("no golden image is kept on this storage: the next `make demo` runs stack.sh again")
    else:
        print(f"no deployment {NAME!r} on record")
    return stop_agent() or code


def purge():
    """Everything the demo made: the deployment, the golden images, the agent it started, the storage pool's
    mount and file, and its folder (the PKI stays: an installed agent may share it). `make demo` is then a first
    deploy again."""
    ours = os.path.exists(AGENT_PID)
    if agent_answers() and not ours:
        sys.exit(
            f"an lxc-agent the demo did not start listens on 127.0.0.1:{PORT}: stop it first (its containers and "
            "storage are its own), then run `make demo-purge` again"
        )
    ensure_agent()
    info = connect("localhost", PORT, pki_dir=PKI_DIR).info()
    if NAME in [entry["name"] for entry in Store(None).list()]:
        code = cli.main(["destroy", NAME, "--pki-dir", PKI_DIR])
        if code != 0:
            return code
    code = cli.main(["golden", "prune", "--pki-dir", PKI_DIR])
    if code != 0:
        return code
    code = stop_agent()
    if code != 0:
        return code
    image = (info.get("pool") or {}).get("file")
    if image:
        try:
            removed = pool.remove(info["lxcpath"], image)
        except Exception as error:  # StorageError, InvalidArgument, OSError: the message says what to do
            sys.exit(f"the storage pool stays: {error}")
        print("removed the storage pool: " + ", ".join(removed))
    else:
        print(f"no storage pool under {info['lxcpath']} ({info['storage']} storage)")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    print(f"removed {RUN_DIR}; kept {PKI_DIR} (the agent's certificates). The next `make demo` starts afresh.")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clean", action="store_true", help="destroy the demo deployment and its agent; keep the golden images"
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="destroy the demo deployment, its agent, its golden images and the storage pool: leave nothing",
    )
    parser.add_argument(
        "--mirror",
        default=os.environ.get("OPENSTACK_MIRROR") or None,
        help="folder of git bundles or repositories of devstack and OpenStack (default: "
        "$OPENSTACK_MIRROR, else opendev.org)",
    )
    parser.add_argument(
        "--computes",
        type=int,
        default=int(os.environ.get("COMPUTES") or 64),
        metavar="N",
        help="fake computes besides the controller (default $COMPUTES, else 64)",
    )
    args = parser.parse_args()
    if args.computes < 1:
        parser.error(f"--computes {args.computes}: give 1 or more")
    if os.geteuid() != 0:
        sys.exit("the demo needs root (LXC containers, bridges, NAT)")
    if args.purge:
        return purge()
    if args.clean:
        return clean()
    recorded = Store(None).get(NAME, missing_ok=True)
    if recorded is not None:
        had = sum(1 for node in recorded["plan"]["nodes"] if node["role"] == "compute")
        if had != args.computes:
            sys.exit(
                f"the demo on record has {had} computes, not {args.computes}: `make demo-clean` first (its golden "
                f"images stay), or change it in place with `.venv/bin/coordinator scale {NAME} --computes "
                f"{args.computes} --pki-dir {PKI_DIR}`"
            )
    config = demo_config(args.mirror, args.computes)
    plan = topology.plan(load_config(config))
    if recorded is None:  # a running demo holds its memory already
        check_memory(plan)
    ensure_agent()
    describe_storage()
    code = cli.main(["deploy", config, "--name", NAME, "--pki-dir", PKI_DIR])
    if code != 0:
        return code
    return upload_image(plan)


if __name__ == "__main__":
    sys.exit(main())
