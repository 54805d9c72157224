"""Computes that are computes of their own, and the proof that the cloud converged.

A clone is a snapshot of the first compute after its stack.sh, so it carries that compute's nova identity:
devstack's fake driver runs `devstack@n-cpu-N` with `host = ${HOSTNAME}N` and a `state_path` holding `compute_id`
(the compute node's stable UUID) in /etc/nova/nova-fake.conf-N; a plain n-cpu keeps `compute_id` in nova's
state_path. Nova would see one compute for all the clones. So the first compute's devstack units are disabled
before it is snapshotted (`seal`): no clone boots into nova under the source's name. Each node is then given its
own identity (`identify`), its start script re-points it at its own address, and its units are enabled and
started (`start_services`). Finally the controller maps the new
hosts into the cell and the deploy waits until every planned compute is an `up` nova-compute service and an `up`
hypervisor (`converge`).
"""

import json
import time

from coordinator.devstack import STACK_HOME, STACK_STATE_DIR, STACK_USER, DevstackError, _run, tail

NOVA_STATE_PATH = f"{STACK_HOME}/data/nova"  # devstack's NOVA_STATE_PATH
UNITS_RECORD = f"{STACK_STATE_DIR}/units"  # the devstack units seal() disabled, enabled again per node
IDENTITY_RECORD = f"{STACK_STATE_DIR}/identity"  # whose nova identity the node's files hold
CONVERGE_TIMEOUT = 900.0
POLL_INTERVAL = 5.0

# What a fake compute does not use, turned off (disabled, stopped and masked) in the first compute as it is sealed,
# so no clone boots or runs them. Found in a sealed compute of devstack stable/2026.1 on Debian bookworm: the web
# server and its cache cleaner that devstack installs everywhere (apache2 held 3 processes in every compute), sshd
# (containers are reached through the agent), iSCSI (the fake driver attaches nothing), boot-time jobs a container
# has no use for, and the daily timers that would run apt, man-db and fstrim in every compute at once. Measured in
# one compute of a real cloud: its working set 126 -> 109 MiB. The units a compute needs stay: systemd's own
# (journald, logind, dbus), networking, the console, and devstack@n-cpu.
LEAN_UNITS = (
    "apache2.service",
    "apache-htcacheclean.service",
    "ssh.service",
    "ssh.socket",
    "open-iscsi.service",
    "iscsid.service",
    "iscsid.socket",
    "e2scrub_reap.service",
    "console-setup.service",
    "keyboard-setup.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
LEAN_RECORD = f"{STACK_STATE_DIR}/lean"  # the units seal() turned off, for whoever wonders where apache went

# Run as root in the first compute once its stack.sh completed, before it is stopped and snapshotted. Arguments:
# the state folder, the node's name, the two records, then the lean record and the units to turn off.
_SEAL = r"""
set -eu
state=$1 name=$2 record=$3 identity=$4 lean=$5
shift 5
mkdir -p "$state"
units=$(systemctl list-unit-files --no-legend --no-pager --state=enabled 'devstack@*' | awk '{print $1}')
if [ -n "$units" ]; then
    printf '%s\n' $units >"$record.new"
    mv "$record.new" "$record"
    systemctl disable -q $units
    echo "disabled until each node has its own identity: $(echo $units)"
fi
[ -f "$identity" ] || printf '%s\n' "$name" >"$identity"
present=$(systemctl list-unit-files --no-legend --no-pager "$@" | awk '$2 != "masked" {print $1}')
if [ -n "$present" ]; then
    systemctl disable --now -q $present
    for unit in $present; do  # masked too, so nothing starts them; one an admin wrote in /etc stays disabled
        systemctl mask -q "$unit" 2>/dev/null || true
    done
    printf '%s\n' $present >>"$lean"
    echo "turned off, as a fake compute does not use them: $(echo $present)"
fi
"""

NOVA_CONF_DIR = "/etc/nova"

# Run as root in every node of an LxcEngine group (python3 is one of devstack's prerequisites). Arguments: the
# node's name, nova's default state path, the identity record, nova's config folder. Prints one line per change.
IDENTIFY = r"""
import glob, os, shutil, sys, uuid

name, default_state, record, conf_dir = sys.argv[1:5]


def lines_of(path):
    with open(path) as handle:
        return handle.read().splitlines()


def option(lines, key, section="DEFAULT"):
    current = None
    for line in lines:
        text = line.strip()
        if text.startswith("[") and text.endswith("]"):
            current = text[1:-1].strip()
        elif current == section and "=" in text and not text.startswith(("#", ";")):
            found, value = text.split("=", 1)
            if found.strip() == key:
                return value.strip()
    return None


def set_option(path, key, value, section="DEFAULT"):
    out, current, done = [], None, False
    for line in lines_of(path):
        text = line.strip()
        if text.startswith("[") and text.endswith("]"):
            if current == section and not done:
                out.append(f"{key} = {value}")
                done = True
            current = text[1:-1].strip()
        elif (current == section and not done and "=" in text and not text.startswith(("#", ";"))
              and text.split("=", 1)[0].strip() == key):
            out.append(f"{key} = {value}")
            done = True
            continue
        out.append(line)
    if not done:
        if current != section:
            out.append(f"[{section}]")
        out.append(f"{key} = {value}")
    status = os.stat(path)
    with open(path + ".new", "w") as handle:
        handle.write("\n".join(out) + "\n")
    os.chown(path + ".new", status.st_uid, status.st_gid)
    os.chmod(path + ".new", status.st_mode & 0o7777)
    os.replace(path + ".new", path)


def new_state(state, like):
    status = os.stat(like)
    os.makedirs(state, exist_ok=True)
    os.chown(state, status.st_uid, status.st_gid)
    with open(os.path.join(state, "compute_id"), "w") as handle:
        handle.write(f"{uuid.uuid4()}\n")
    os.chmod(os.path.join(state, "compute_id"), 0o644)     # nova-compute runs as stack


try:
    with open(record) as handle:
        previous = handle.read().strip()
except FileNotFoundError:
    previous = None

fakes = sorted((path for path in glob.glob(f"{conf_dir}/nova-fake.conf-*") if path.rsplit("-", 1)[1].isdigit()),
               key=lambda path: int(path.rsplit("-", 1)[1]))
for conf in fakes:
    host = name + conf.rsplit("-", 1)[1]
    lines = lines_of(conf)
    old_state = option(lines, "state_path")
    root = os.path.dirname(old_state) if old_state else default_state
    state = os.path.join(root, host)
    if option(lines, "host") == host and old_state == state and os.path.exists(os.path.join(state, "compute_id")):
        continue
    new_state(state, old_state if old_state and os.path.isdir(old_state) else root)
    set_option(conf, "host", host)
    set_option(conf, "state_path", state)
    if old_state and os.path.normpath(old_state) != os.path.normpath(state) and os.path.isdir(old_state):
        shutil.rmtree(old_state)
    print(f"nova identity: {conf}: host {host}, state_path {state}, a new compute_id")

cpu = f"{conf_dir}/nova-cpu.conf"
if not fakes and os.path.exists(cpu) and previous != name:
    lines = lines_of(cpu)
    if option(lines, "host") not in (None, name):
        set_option(cpu, "host", name)
        print(f"nova identity: {cpu}: host {name}")
    # nova reads compute_id from its state path and from its config files' folder (devstack writes that one
    # when NOVA_CPU_UUID is set); nova-compute makes a new one for a new host.
    for compute_id in (os.path.join(option(lines, "state_path") or default_state, "compute_id"),
                       os.path.join(conf_dir, "compute_id")):
        if os.path.exists(compute_id):
            os.unlink(compute_id)
            print(f"nova identity: removed {compute_id} (it was {previous}'s)")

if previous != name:
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record + ".new", "w") as handle:
        handle.write(name + "\n")
    os.replace(record + ".new", record)
"""

_START_UNITS = r"""
set -eu
record=$1
[ -s "$record" ] || { echo "no devstack units were recorded"; exit 0; }
units=$(cat "$record")
systemctl daemon-reload
systemctl enable -q $units
systemctl restart $units
echo "started $(echo $units)"
"""

# Run as stack in the controller: nova's view of its computes, in three parts.
_STATUS = r"""
cd "$1" || exit 3
source ./openrc admin admin >/dev/null 2>&1 || { echo "cannot source $1/openrc admin admin" >&2; exit 4; }
export PATH=/opt/stack/data/venv/bin:/usr/local/bin:$PATH
echo "== services"
openstack compute service list --service nova-compute -f json || exit 5
echo "== hypervisors"
openstack hypervisor list -f json || exit 6
echo "== mapped"
nova-manage cell_v2 list_hosts 2>/dev/null || exit 7
"""

_FORGET = r"""
cd "$1" || exit 3
shift
source ./openrc admin admin >/dev/null 2>&1 || exit 4
export PATH=/opt/stack/data/venv/bin:/usr/local/bin:$PATH
for host in "$@"; do
    for id in $(openstack compute service list --service nova-compute --host "$host" -f value -c ID); do
        openstack compute service delete "$id" && echo "deleted nova-compute service $id of $host"
    done
done
"""

# As stack in the controller: neutron 28.0.1's API (uwsgi) answers GET /v2.0/ports with 500 ("type object 'Port'
# has no attribute 'port_forwardings'") in a worker that has run no query yet, since SQLAlchemy adds that backref
# only when its mappers are configured, on a worker's first query; and nova asks for ports to show any server.
# Queries of other kinds warm every worker; done until ports answer several times in a row.
_WARM_NEUTRON = r"""
cd "$1" || exit 3
source ./openrc admin admin >/dev/null 2>&1 || exit 4
export PATH=/opt/stack/data/venv/bin:/usr/local/bin:$PATH
good=0
for attempt in $(seq 40); do
    openstack network list -f value -c ID >/dev/null 2>&1
    openstack security group list -f value -c ID >/dev/null 2>&1
    if openstack port list -f value -c ID >/dev/null 2>&1; then good=$((good + 1)); else good=0; fi
    [ "$good" -ge 6 ] && { echo "neutron answers port lists (after $attempt rounds)"; exit 0; }
done
echo "neutron still fails to list ports after $attempt rounds" >&2
exit 1
"""

_DISCOVER = r"""
export PATH=/opt/stack/data/venv/bin:/usr/local/bin:$PATH
nova-manage cell_v2 discover_hosts --verbose
"""


# ---------------------------------------------------------------- pure


def parse_status(text):
    """The status script's output -> {"services": {host: "up"|"down"}, "hypervisors": {name: "up"|"down"},
    "mapped": set of host names}. A disabled service is "disabled": nothing is scheduled there."""
    parts: dict = {}
    current = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            parts[current] = []
        elif current:
            parts[current].append(line)
    services, updated = {}, {}
    for row in json.loads("\n".join(parts.get("services", [])) or "[]"):
        updated[row["Host"]] = str(row.get("Updated At") or "")[:19]  # 2026-12-01T14:50:00.000000
        if str(row.get("Status", "enabled")).lower() != "enabled":
            services[row["Host"]] = "disabled"
        else:
            services[row["Host"]] = "up" if str(row.get("State", "")).lower() == "up" else "down"
    hypervisors = {}
    for row in json.loads("\n".join(parts.get("hypervisors", [])) or "[]"):
        hypervisors[row["Hypervisor Hostname"]] = "up" if str(row.get("State", "")).lower() == "up" else "down"
    mapped = set()
    for line in parts.get("mapped", []):  # nova-manage's table; its log lines around it are skipped
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[2] and cells[2] != "Hostname":
            mapped.add(cells[2])
    return {"services": services, "hypervisors": hypervisors, "mapped": mapped, "updated": updated}


def not_ready(expected, status, since=None):
    """{host: why} for every expected nova host that is not yet an up, mapped service and hypervisor. `since`
    (UTC, 2026-12-01T14:50:00, the controller's clock): a service counts only once it has reported after it; a
    restored database holds reports from before its snapshot, which nova shows as up for a while."""
    waiting = {}
    for host in expected:
        state = status["services"].get(host)
        if state is None:
            waiting[host] = "no nova-compute service registered"
        elif state != "up":
            waiting[host] = f"nova-compute service is {state}"
        elif since and status.get("updated", {}).get(host, "") <= since[:19]:
            waiting[host] = "no report from nova-compute since the restore"
        elif host not in status["mapped"]:
            waiting[host] = "not mapped to a cell yet"
        elif status["hypervisors"].get(host) != "up":
            waiting[host] = "no hypervisor" if host not in status["hypervisors"] else "hypervisor is down"
    return waiting


def duration(seconds):
    """2m41s, 45s, 1h02m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def summary(result):
    """The line a deploy ends with."""
    return (
        f"{result['services_up']}/{result['expected']} nova-compute services up as {result['hypervisors_up']} "
        f"hypervisors (controller {result['controller']}) in {duration(result['seconds'])}"
    )


# ---------------------------------------------------------------- in the nodes


def seal(agent, node):
    """Before the first compute of a group is stopped and snapshotted: its devstack units are disabled (so clones
    boot without them) and recorded, with whose identity the node holds; what a fake compute does not use
    (LEAN_UNITS) is turned off for good."""
    result = _run(
        agent,
        node,
        "disabling devstack's units before cloning",
        ["sh", "-c", _SEAL, "seal", STACK_STATE_DIR, node.name, UNITS_RECORD, IDENTITY_RECORD, LEAN_RECORD]
        + list(LEAN_UNITS),
    )
    return result["stdout"]


def identify(agent, node):
    """The node's own nova identity (host names, state paths, compute_id), before any nova service in it starts.
    Idempotent: a node that already has its identity keeps it. Returns what changed, a line each."""
    return _run(
        agent,
        node,
        "giving the node its own nova identity",
        ["python3", "-c", IDENTIFY, node.name, NOVA_STATE_PATH, IDENTITY_RECORD, NOVA_CONF_DIR],
    )["stdout"]


def start_services(agent, node):
    """The devstack units seal() disabled, enabled and (re)started."""
    return _run(agent, node, "starting devstack's units", ["sh", "-c", _START_UNITS, "start", UNITS_RECORD])["stdout"]


def forget(agent, controller, hosts):
    """Delete these hosts' nova-compute services (and so their compute nodes) on the controller: computes made
    again (their first compute stacked again) register anew, and nova refuses a second compute node for a host
    whose old one it still has."""
    return _run(
        agent,
        controller,
        "deleting the old nova-compute services of computes made again",
        ["bash", "-c", _FORGET, "forget", f"{STACK_HOME}/devstack", *hosts],
        user=STACK_USER,
        timeout=600,
    )["stdout"]


def cloud_status(agent, controller):
    result = _run(
        agent,
        controller,
        "asking nova for its computes",
        ["bash", "-c", _STATUS, "status", f"{STACK_HOME}/devstack"],
        user=STACK_USER,
        timeout=300,
    )
    try:
        return parse_status(result["stdout"])
    except (ValueError, KeyError, TypeError) as error:
        raise DevstackError(
            f"nova's answer on {controller.name} (host {controller.host}) could not be read "
            f"({error}):\n{tail(result['stdout'], 15)}",
            controller.name,
            controller.host,
        ) from None


def warm_network_api(agent, controller):
    """Make every neutron API worker answer port lists (see _WARM_NEUTRON), when the controller runs neutron."""
    if not {"q-svc", "neutron-api"} & set(getattr(controller, "services", ()) or ()):
        return ""
    return _run(
        agent,
        controller,
        "warming neutron's API workers",
        ["bash", "-c", _WARM_NEUTRON, "warm", f"{STACK_HOME}/devstack"],
        user=STACK_USER,
        timeout=600,
    )["stdout"]


def discover_hosts(agent, controller):
    """Map computes that registered since the last call into the cell (a compute-only stack.sh does not)."""
    return _run(
        agent,
        controller,
        "mapping new computes into the cell (nova-manage cell_v2 discover_hosts)",
        ["bash", "-c", _DISCOVER],
        user=STACK_USER,
        timeout=300,
    )["stdout"]


def converge(
    agent, controller, expected, started, timeout=CONVERGE_TIMEOUT, progress=None, interval=POLL_INTERVAL, since=None
):
    """Wait until every host in `expected` is an up nova-compute service, an up hypervisor and mapped to a cell,
    mapping new hosts as they come. `started` is the monotonic time convergence is counted from (the clones'
    start); the wait itself lasts at most `timeout` seconds, and a failing status call is retried until then.
    `since`: see not_ready.
    Returns {"expected", "services_up", "hypervisors_up", "seconds", "waiting": {host: why}, "error": the last
    failed call or None}; `waiting` is empty when it converged."""
    expected = list(expected)
    deadline = time.monotonic() + timeout
    status: dict = {"services": {}, "hypervisors": {}, "mapped": set()}
    error = None
    while True:
        try:
            status = cloud_status(agent, controller)
            waiting = not_ready(expected, status, since)
            # Nova lists a hypervisor only once its host is mapped to a cell: map every registered host first.
            if any(host in status["services"] and host not in status["mapped"] for host in waiting):
                discover_hosts(agent, controller)
                status = cloud_status(agent, controller)
                waiting = not_ready(expected, status, since)
            error = None
        except DevstackError as failed:  # a busy API (many computes registering at once) answers again later
            error = str(failed)
            waiting = not_ready(expected, status, since)
        if progress:
            progress(len(expected) - len(waiting), len(expected))
        if not waiting or time.monotonic() > deadline:
            return {
                "expected": len(expected),
                "services_up": sum(1 for h in expected if status["services"].get(h) == "up"),
                "hypervisors_up": sum(1 for h in expected if status["hypervisors"].get(h) == "up"),
                "seconds": time.monotonic() - started,
                "waiting": waiting,
                "controller": controller.address,
                "error": error,
            }
        time.sleep(interval)


def why_not_up(agent, node, hosts, lines=12):
    """The last journal lines of the node's nova-compute units, for the hosts that never came up."""
    # devstack's fake driver names host `<node>N` and its unit devstack@n-cpu-N; a plain n-cpu is the node itself.
    units = ["devstack@n-cpu" if host == node.name else f"devstack@n-cpu-{host[len(node.name) :]}" for host in hosts]
    try:
        result = agent.run(
            node.name,
            [
                "sh",
                "-c",
                'for u in "$@"; do echo "-- $u: $(systemctl is-active "$u")"; '
                'journalctl -u "$u" --no-pager -n "$0" 2>&1; done',
                str(lines),
                *units,
            ],
            timeout=60,
        )
    except Exception as error:  # the diagnosis must not hide the failure it explains
        return f"(could not read the journal of {node.name}: {error})"
    return tail(result["stdout"] + result["stderr"], lines * len(units) + len(units))
