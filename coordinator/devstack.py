"""What DevstackEngine does inside one node, through its host's agent: make the container ready for devstack,
fetch devstack, write local.conf, run stack.sh, and re-point a clone with its start script.

Every command runs through the agent's `run()` (liblxc attach), never SSH; text goes in through its stdin, so
nothing is quoted into a shell. The functions are idempotent: a deploy resumed after a failure calls them again.
"""

import base64
import os
import re
import subprocess
import tempfile
import urllib.parse

from agent.errors import CommandTimeout
from coordinator.errors import CoordinatorError

STACK_USER = "stack"
STACK_HOME = "/opt/stack"
DEVSTACK_DIR = f"{STACK_HOME}/devstack"
LOCAL_CONF = f"{DEVSTACK_DIR}/local.conf"
SUDOERS_FILE = "/etc/sudoers.d/50_stack_sh"
START_SCRIPT_FILE = "/root/lxc-cloud-start-script"
# stack.sh's run record inside the node: a lock held while it runs, its output, and what it completed with.
STACK_STATE_DIR = f"{STACK_HOME}/.lxc-cloud"
STACK_LOCK = f"{STACK_STATE_DIR}/stack.lock"
# What stack.sh needs before it can install anything itself; each package is named like its command on
# Debian, Ubuntu and Fedora.
REQUIRED_COMMANDS = ("git", "sudo", "python3")
PACKAGE_MANAGERS = ("apt-get", "dnf", "yum")
COMMAND_TIMEOUT = 1800.0  # package installs and git clones
LOG_TAIL = 20
ERROR_TAIL = 15


class DevstackError(CoordinatorError):
    """A devstack step failed inside a node; the message names the node, its host, the step and how it ended."""

    def __init__(self, message, node=None, host=None, exit_code=None):
        super().__init__(message)
        self.node, self.host, self.exit_code = node, host, exit_code


class StackError(DevstackError):
    """stack.sh failed or did not finish; `log_path` is its full output on the coordinator's machine."""

    def __init__(self, message, node=None, host=None, exit_code=None, log_path=None):
        super().__init__(message, node, host, exit_code)
        self.log_path = log_path


# ---------------------------------------------------------------- scripts run inside the container
# Fixed texts; every value reaches them as a positional argument ("$1" ...), never spliced into the text.

_PROBE = r"""
for command in "$@"; do
    command -v "$command" >/dev/null 2>&1 || echo "missing $command"
done
for manager in apt-get dnf yum; do
    if command -v "$manager" >/dev/null 2>&1; then echo "manager $manager"; break; fi
done
"""

_APT_INSTALL = 'apt-get update -q && apt-get install -y -q --no-install-recommends "$@"'

# Like devstack's tools/create-stack-user.sh; prints what it changed.
_ENSURE_STACK_USER = r"""
set -e
user=$1 home=$2 sudoers=$3
getent group "$user" >/dev/null || groupadd "$user"
if ! getent passwd "$user" >/dev/null; then
    useradd -g "$user" -s /bin/bash -d "$home" -m "$user"
    echo "created user $user"
fi
mkdir -p "$home"
[ "$(stat -c %U "$home")" = "$user" ] || { chown "$user:$user" "$home"; echo "chowned $home"; }
chmod 755 "$home"
rule=$(mktemp)
trap 'rm -f "$rule"' EXIT
printf '%s ALL=(root) NOPASSWD:ALL\n' "$user" >"$rule"
if ! cmp -s "$rule" "$sudoers" || [ "$(stat -c %a:%U "$sudoers")" != 440:root ]; then
    visudo -cf "$rule" >/dev/null
    install -m 0440 -o root -g root "$rule" "$sudoers"
    echo "wrote $sudoers"
fi
"""

# Root, in a container: what a container cannot do is made harmless before devstack asks for it, never by editing
# devstack. iscsid: devstack's configure_nova restarts it on every compute (for cinder volumes), but without the
# host's iSCSI kernel support it exits at once, and systemd then fails the restart ("New main PID ... does not
# exist or is a zombie") or not, by a race: stack.sh stops at random. A fake compute attaches no volume.
_CONTAINER_SETUP = r"""
set -e
dropin=/etc/systemd/system/iscsid.service.d/lxc-cloud.conf
want='# lxc-cloud: iscsid cannot run in a container without the host'"'"'s iSCSI kernel support
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=
ExecStart=
ExecStart=/bin/true
'
if [ "$(cat "$dropin" 2>/dev/null)" != "${want%?}" ]; then   # $(...) drops the last newline: so does ${want%?}
    mkdir -p "${dropin%/*}"
    printf '%s' "$want" >"$dropin"
    systemctl daemon-reload 2>/dev/null || true
    echo "wrote $dropin"
fi
"""

_HEAD = 'git -C "$1" rev-parse --verify -q HEAD 2>/dev/null || true'

# The bundle arrives base64-encoded on stdin; the new checkout replaces the old one only once it is complete.
_CLONE_BUNDLE = r"""
set -eu -o pipefail
dest=$1 commit=$2 branch=$3 origin=$4
bundle=$(mktemp --tmpdir devstack-XXXXXX.bundle)
new=$dest.new
trap 'rm -rf "$bundle" "$new"' EXIT
base64 -d >"$bundle"
rm -rf "$new"
git clone -q --no-checkout "$bundle" "$new"
git -C "$new" checkout -q --detach "$commit"
[ -z "$branch" ] || git -C "$new" checkout -q -B "$branch"
git -C "$new" remote set-url origin "$origin"
rm -rf "$dest"
mv "$new" "$dest"
"""

_CLONE_REMOTE = r"""
set -eu -o pipefail
dest=$1 repo=$2 branch=$3
new=$dest.new
trap 'rm -rf "$new"' EXIT
rm -rf "$new"
git clone -q --branch "$branch" "$repo" "$new"
rm -rf "$dest"
mv "$new" "$dest"
"""

_WRITE_FILE = 'cat >"$1.tmp" && mv -f "$1.tmp" "$1"'

# One stack.sh at a time per node: a coordinator killed while stack.sh ran leaves it running in the node, and
# the resumed deploy must wait for it, not start another. A run that completed with this devstack commit and
# this local.conf is not repeated: its recorded output is replayed. The lock is not passed on to stack.sh, so
# a daemon it leaves behind cannot hold it.
_STACK = r"""
cd "$1" || exit
state=$2
mkdir -p "$state"
done_with="$(git rev-parse HEAD 2>/dev/null) $(sha256sum local.conf 2>/dev/null | cut -d' ' -f1)"
if command -v flock >/dev/null; then
    exec 9>>"$state/stack.lock"
    if ! flock -n 9; then
        echo "lxc-cloud: stack.sh from an earlier deploy is still running here; waiting for it to end"
        flock 9
    fi
fi
if [ -f "$state/stack.log" ] && [ "$(cat "$state/stack.done" 2>/dev/null)" = "$done_with" ]; then
    echo "lxc-cloud: stack.sh already completed here with this devstack and local.conf; its output was:"
    cat "$state/stack.log"
    exit 0
fi
rm -f "$state/stack.done"
if [ -s "$state/lean" ]; then
    # A sealed first compute stacked again: what seal turned off (nova.LEAN_UNITS) may be restarted by stack.sh
    # (configure_nova restarts iscsid); seal turns it off again afterwards.
    sudo -n systemctl unmask $(cat "$state/lean") && rm -f "$state/lean"
fi
if [ -f "$state/stack.log" ] && [ -x ./unstack.sh ]; then
    # An earlier stack.sh ran here (it failed, or completed with another local.conf): stop what it started, as
    # devstack asks before stacking again.
    echo "lxc-cloud: an earlier stack.sh ran here; running ./unstack.sh first"
    ./unstack.sh 9>&- >"$state/unstack.log" 2>&1 ||
        echo "lxc-cloud: ./unstack.sh failed (see $state/unstack.log); stacking anyway"
fi
./stack.sh 9>&- 2>&1 | tee "$state/stack.log" 9>&-
status=${PIPESTATUS[0]}
if [ "$status" -eq 0 ]; then printf '%s\n' "$done_with" >"$state/stack.done"; fi
exit "$status"
"""

# Run as root before anything touches the node's devstack tree (fetch replaces it): wait while a stack.sh of an
# earlier deploy still runs.
_WAIT_FOR_STACK = r"""
[ -e "$1" ] && command -v flock >/dev/null || exit 0
exec 9<"$1"
if ! flock -n 9; then
    echo "waited"
    flock 9
fi
"""

_START_SCRIPT = 'file=$1; shift; cat >"$file" && chmod 700 "$file" && exec "$@"'

DEFAULT_START_SCRIPT = r"""#!/bin/bash
# lxc-cloud's default start script for a clone, as Rally's LxcEngine had one. The clone is a snapshot of the
# first compute after its stack.sh, so its configs still say the first compute's address: re-point them at the
# clone's own and give it its own ssh host keys (the agent gives it its own hostname and machine-id). It runs
# while devstack's services are stopped; the deployer then gives the clone its own nova identity and starts them.
# Arguments: FIRST_ADDRESS NODE_ADDRESS NODE_NAME (also in the environment, with DEVSTACK_DIR).
set -o errexit -o nounset -o pipefail
FIRST_ADDRESS=${FIRST_ADDRESS:-$1}
NODE_ADDRESS=${NODE_ADDRESS:-$2}
DEVSTACK_DIR=${DEVSTACK_DIR:-/opt/stack/devstack}

if [ "$FIRST_ADDRESS" != "$NODE_ADDRESS" ]; then
    files=()
    for file in "$DEVSTACK_DIR/local.conf" "$DEVSTACK_DIR/localrc" "$DEVSTACK_DIR/.localrc.auto" \
                /etc/systemd/system/devstack@*.service; do
        if [ -f "$file" ] && grep -qF -- "$FIRST_ADDRESS" "$file"; then files+=("$file"); fi
    done
    for folder in /etc/nova /etc/neutron /etc/cinder /etc/glance /etc/placement; do
        [ -d "$folder" ] || continue
        while IFS= read -r -d '' file; do files+=("$file"); done \
            < <(grep -rlZF -- "$FIRST_ADDRESS" "$folder" || true)
    done
    # \b on both sides: 10.0.0.1 must not touch 10.0.0.12 or 110.0.0.1.
    old=$(printf '%s' "$FIRST_ADDRESS" | sed 's/[.]/\\./g')
    for file in "${files[@]}"; do
        sed -i "s/\b$old\b/$NODE_ADDRESS/g" "$file"
        echo "start script: $FIRST_ADDRESS -> $NODE_ADDRESS in $file"
    done
fi

if [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; then
    identity=$(cat /etc/machine-id 2>/dev/null || hostname)
    if [ "$(cat /etc/ssh/.host-keys-for 2>/dev/null || true)" != "$identity" ]; then
        rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
        ssh-keygen -A >/dev/null
        printf '%s\n' "$identity" >/etc/ssh/.host-keys-for
        systemctl try-restart ssh.service sshd.service 2>/dev/null || true
        echo "start script: new ssh host keys"
    fi
fi
"""


# ---------------------------------------------------------------- pure helpers


def parse_probe(text):
    """The probe's output -> (missing commands, the package manager or None)."""
    missing, manager = [], None
    for line in text.splitlines():
        word, _, value = line.partition(" ")
        if word == "missing":
            missing.append(value)
        elif word == "manager" and manager is None:
            manager = value
    return missing, manager


def plan_install(manager, packages):
    """(argv, env) that installs `packages` without questions with this package manager."""
    if manager == "apt-get":
        return (
            ["sh", "-c", _APT_INSTALL, "install", *packages],
            {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"},
        )
    if manager in ("dnf", "yum"):
        return [manager, "install", "-y", "-q", *packages], {}
    raise ValueError(f"unknown package manager {manager!r}")


def local_repo_path(repo):
    """The path on this machine that `repo` names, or None when it is a URL git fetches from elsewhere.

    As git reads it: file:// URLs and plain paths are local; other URLs (`https://`) and scp-like
    `[user@]host:path` are not."""
    if repo.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(repo).path)
    if "://" in repo or re.match(r"^[^/]*:", repo):
        return None
    return os.path.abspath(os.path.expanduser(repo))


def pick_remote_commit(ls_remote, branch):
    """The commit `branch` names in `git ls-remote` output: a branch, else a tag (peeled), else None."""
    refs = {}
    for line in ls_remote.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref.strip()] = sha.strip()
    for ref in (f"refs/heads/{branch}", f"refs/tags/{branch}^{{}}", f"refs/tags/{branch}"):
        if ref in refs:
            return refs[ref]
    return None


def stack_phase(log_tail):
    """What stack.sh says it is doing, from the end of its log: the text of its last `echo_summary` (devstack's
    own progress lines, "Installing package prerequisites", "Starting Nova API", ...), or None."""
    found = None
    for line in log_tail.splitlines():
        _, marker, text = line.partition("echo_summary ")
        if marker and line.startswith("+"):
            text = text.strip()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
            found = text or found
    return found


# Root, in the node: the end of the running stack.sh's log, for stack_phase().
WATCH_STACK = 'tail -c 65536 "$1" 2>/dev/null | grep -a "echo_summary " | tail -n 3'


def tail(text, count=LOG_TAIL):
    return "\n".join(text.rstrip("\n").splitlines()[-count:])


# ---------------------------------------------------------------- running commands in a node


def _where(node):
    return f"node {node.name} (host {node.host})"


def _run(agent, node, what, argv, stdin=None, env=None, user=None, timeout=COMMAND_TIMEOUT):
    """agent.run, with a failure or a timeout turned into a DevstackError that says what failed where."""
    try:
        result = agent.run(node.name, argv, stdin=stdin, env=env, user=user, timeout=timeout)
    except CommandTimeout as error:
        output = getattr(error, "stdout", "") + getattr(error, "stderr", "")
        raise DevstackError(
            f"{what} on {_where(node)} did not finish within {timeout:g} s; last output:\n{tail(output, ERROR_TAIL)}",
            node.name,
            node.host,
        ) from None
    if result["exit_code"] != 0:
        output = result["stdout"] + result["stderr"]
        raise DevstackError(
            f"{what} on {_where(node)} failed with exit code {result['exit_code']}:\n{tail(output, ERROR_TAIL)}",
            node.name,
            node.host,
            result["exit_code"],
        )
    return result


# ---------------------------------------------------------------- the steps


def prepare(agent, node, timeout=COMMAND_TIMEOUT):
    """Make sure git, sudo and python3 are there (installing only what is missing), that user `stack`
    (home /opt/stack, bash) has passwordless sudo, and that iscsid (which a container cannot run) is a no-op unit.
    Returns {"installed": [...], "changed": [...]}."""
    probe = _run(agent, node, "looking for git, sudo and python3", ["sh", "-c", _PROBE, "probe", *REQUIRED_COMMANDS])
    missing, manager = parse_probe(probe["stdout"])
    if missing:
        if manager is None:
            raise DevstackError(
                f"{_where(node)} lacks {', '.join(missing)} and has none of "
                f"{', '.join(PACKAGE_MANAGERS)} to install them; use an image that has them",
                node.name,
                node.host,
            )
        argv, env = plan_install(manager, missing)
        _run(agent, node, f"installing {' '.join(missing)} with {manager}", argv, env=env, timeout=timeout)
    user = _run(
        agent,
        node,
        f"setting up user {STACK_USER}",
        ["sh", "-c", _ENSURE_STACK_USER, "ensure-stack-user", STACK_USER, STACK_HOME, SUDOERS_FILE],
    )
    setup = _run(agent, node, "making services a container cannot run harmless", ["sh", "-c", _CONTAINER_SETUP])
    return {"installed": missing, "changed": user["stdout"].splitlines() + setup["stdout"].splitlines()}


def fetch(agent, node, repo, branch, timeout=COMMAND_TIMEOUT):
    """Devstack from `repo` at `branch` in /opt/stack/devstack, owned by stack; a checkout already at that commit
    is left alone, another one is replaced. Returns {"commit": sha, "changed": bool}.

    A repository on this machine (a path or file:// URL) is sent as a git bundle through run()'s stdin, since
    the container cannot see this machine's files; anything else is cloned by git inside the container."""
    path = local_repo_path(repo)
    if path is None:
        return fetch_remote(agent, node, repo, branch, timeout)
    commit, is_branch = local_commit(path, branch, node)
    if _checked_out(agent, node) == commit:
        return {"commit": commit, "changed": False}
    _run(
        agent,
        node,
        f"cloning devstack {branch} from a bundle of {path}",
        ["bash", "-c", _CLONE_BUNDLE, "fetch-devstack", DEVSTACK_DIR, commit, branch if is_branch else "", repo],
        stdin=_bundle(path, node),
        user=STACK_USER,
        timeout=timeout,
    )
    return {"commit": commit, "changed": True}


def fetch_remote(agent, node, repo, branch, timeout=COMMAND_TIMEOUT):
    """Devstack cloned by git inside the node from `repo` (a URL the node reaches), at `branch`."""
    if re.fullmatch(r"[0-9a-f]{40}", branch):
        raise DevstackError(
            f"devstack_branch {branch!r} for {_where(node)} is a commit; `git clone --branch` "
            f"takes a branch or tag of {repo}",
            node.name,
            node.host,
        )
    # The peeled `^{}` line of an annotated tag is listed only when asked for by name.
    refs = [f"refs/heads/{branch}", f"refs/tags/{branch}", f"refs/tags/{branch}^{{}}"]
    listed = _run(
        agent, node, f"asking {repo} for {branch}", ["git", "ls-remote", repo, *refs], user=STACK_USER, timeout=timeout
    )
    commit = pick_remote_commit(listed["stdout"], branch)
    if commit is None:
        raise DevstackError(f"{repo} has no branch or tag {branch!r} (asked from {_where(node)})", node.name, node.host)
    if _checked_out(agent, node) == commit:
        return {"commit": commit, "changed": False}
    _run(
        agent,
        node,
        f"cloning devstack {branch} from {repo}",
        ["bash", "-c", _CLONE_REMOTE, "fetch-devstack", DEVSTACK_DIR, repo, branch],
        user=STACK_USER,
        timeout=timeout,
    )
    return {"commit": commit, "changed": True}


def _checked_out(agent, node):
    """The commit of /opt/stack/devstack in the node, or None when there is no checkout."""
    head = _run(
        agent, node, "reading the devstack checkout", ["sh", "-c", _HEAD, "head", DEVSTACK_DIR], user=STACK_USER
    )
    return head["stdout"].strip() or None


def _git(path, *args):
    return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True)


def local_commit(path, branch, node):
    """(commit, is a branch) for `branch` in the repository at `path` on this machine."""
    if _git(path, "rev-parse", "--git-dir").returncode != 0:
        raise DevstackError(
            f"devstack_repo {path} (for {_where(node)}) is not a git repository on this machine", node.name, node.host
        )
    for ref, is_branch in (
        (f"refs/heads/{branch}", True),
        (f"refs/remotes/origin/{branch}", True),
        (f"refs/tags/{branch}", False),
        (branch, False),
    ):
        found = _git(path, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        if found.returncode == 0:
            return found.stdout.strip(), is_branch
    branches = _git(path, "for-each-ref", "--format=%(refname:short)", "refs/heads").stdout.split()
    raise DevstackError(
        f"devstack_repo {path} has no branch, tag or commit {branch!r} (for {_where(node)}); "
        f"its branches: {', '.join(branches) or 'none'}",
        node.name,
        node.host,
    )


def _bundle(path, node):
    """Every ref of the repository at `path` as one git bundle, base64 text (run()'s stdin is text)."""
    with tempfile.TemporaryDirectory(prefix="devstack-bundle-") as folder:
        target = os.path.join(folder, "devstack.bundle")
        made = _git(path, "bundle", "create", target, "--all")
        if made.returncode != 0:
            raise DevstackError(
                f"git bundle create for {path} (for {_where(node)}) failed: {made.stderr.strip()}", node.name, node.host
            )
        with open(target, "rb") as handle:
            return base64.b64encode(handle.read()).decode("ascii")


def write_local_conf(agent, node):
    """node.local_conf -> /opt/stack/devstack/local.conf, owned by stack (replaced whole, never half-written)."""
    _run(
        agent,
        node,
        "writing local.conf",
        ["sh", "-c", _WRITE_FILE, "write-local-conf", LOCAL_CONF],
        stdin=node.local_conf,
        user=STACK_USER,
    )


def wait_for_earlier_stack(agent, node, timeout=None):
    """Return once no stack.sh runs in the node (one a killed coordinator started may still); True if it waited.

    Resumed deploys call this before fetching devstack again, which would pull the tree from under it."""
    try:
        result = agent.run(node.name, ["sh", "-c", _WAIT_FOR_STACK, "wait", STACK_LOCK], timeout=timeout)
    except CommandTimeout:
        raise DevstackError(
            f"stack.sh from an earlier deploy still runs on {_where(node)} after {timeout:g} s; "
            f"wait for it or stop it (`pkill -f stack.sh` in the node), then deploy again",
            node.name,
            node.host,
        ) from None
    if result["exit_code"] != 0:
        raise DevstackError(
            f"waiting for an earlier stack.sh on {_where(node)} failed with exit code "
            f"{result['exit_code']}:\n{tail(result['stdout'] + result['stderr'], ERROR_TAIL)}",
            node.name,
            node.host,
            result["exit_code"],
        )
    return result["stdout"].strip() == "waited"


def run_stack(agent, node, log_path, timeout=None, env=None):
    """Run ./stack.sh as stack in /opt/stack/devstack; its whole output (stderr merged into stdout, as on a
    console) goes to `log_path` on this machine. StackError if it fails or outlives `timeout` seconds.

    run() hands back output only when the command ends, so the log is written then, not while it runs (and
    the agent keeps at most 64 MiB of it); the node keeps a copy in STACK_STATE_DIR. Only one stack.sh runs in a
    node at a time, and one that completed with the same devstack commit and local.conf is not run again (its
    output is replayed). Returns {"exit_code": 0, "log_path": log_path}."""
    argv = ["bash", "-c", _STACK, "stack", DEVSTACK_DIR, STACK_STATE_DIR]
    try:
        result = agent.run(node.name, argv, env=env, user=STACK_USER, timeout=timeout)
    except CommandTimeout as error:
        _write_log(log_path, getattr(error, "stdout", "") + getattr(error, "stderr", ""))
        raise StackError(
            f"stack.sh on {_where(node)} did not finish within {timeout:g} s and was stopped. "
            f"Last {LOG_TAIL} lines:\n{tail(_read(log_path))}\nFull log: {log_path}",
            node.name,
            node.host,
            None,
            log_path,
        ) from None
    _write_log(log_path, result["stdout"] + result["stderr"])
    if result["exit_code"] != 0:
        raise StackError(
            f"stack.sh on {_where(node)} failed with exit code {result['exit_code']}. "
            f"Last {LOG_TAIL} lines:\n{tail(_read(log_path))}\nFull log: {log_path}",
            node.name,
            node.host,
            result["exit_code"],
            log_path,
        )
    return {"exit_code": 0, "log_path": log_path}


def _write_log(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(text)


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def run_start_script(agent, node, first_address, timeout=COMMAND_TIMEOUT):
    """Run the clone's start script as root: node.start_script (the config's text) or DEFAULT_START_SCRIPT.

    It gets FIRST_ADDRESS (the first compute's address, which the clone's configs still hold), NODE_ADDRESS and
    NODE_NAME as arguments $1 $2 $3 and in its environment, with DEVSTACK_DIR. A script without `#!` runs with
    bash. Returns its output."""
    script = node.start_script or DEFAULT_START_SCRIPT
    interpreter = [] if script.startswith("#!") else ["/bin/bash"]
    if not script.endswith("\n"):
        script += "\n"
    env = {
        "FIRST_ADDRESS": first_address,
        "NODE_ADDRESS": node.address,
        "NODE_NAME": node.name,
        "DEVSTACK_DIR": DEVSTACK_DIR,
    }
    argv = [
        "sh",
        "-c",
        _START_SCRIPT,
        "start-script",
        START_SCRIPT_FILE,
        *interpreter,
        START_SCRIPT_FILE,
        first_address,
        node.address,
        node.name,
    ]
    result = _run(agent, node, "the start script", argv, stdin=script, env=env, timeout=timeout)
    return result["stdout"]
