"""What a lab's network asks of a node before devstack can run there: the CA certificates of an intercepting proxy,
the proxy settings, and a git mirror of OpenStack's repositories for labs that cannot reach opendev.

Each is opt-in per config. Everything is read on the coordinator's machine and sent through the agent's run()
(its stdin carries the data; values reach the scripts as positional arguments, never spliced into their text).
"""

import base64
import hashlib
import logging
import os
import re
import subprocess
import tempfile

from coordinator.devstack import STACK_USER, DevstackError, _run
from coordinator.localconf import NODE_GIT_MIRROR

log = logging.getLogger(__name__)

HOST_CA_FOLDER = "/usr/local/share/ca-certificates"  # update-ca-certificates' input on Debian and Ubuntu
NODE_CA_FOLDER = "/usr/local/share/ca-certificates/lxc-cloud"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy")
MIRROR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_PROXY_VALUE = re.compile(r"[A-Za-z0-9._~:/?#@!&*+,;=%\[\]-]+")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")

# Root, in the node: one file per certificate (update-ca-certificates wants one each), then the system store, and
# pip told to use it (pip trusts its own bundle otherwise).
_TRUST = r"""
set -eu
folder=$1
mkdir -p "$folder"
rm -f "$folder"/host-*.crt
python3 -c '
import re, sys
pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", sys.stdin.read(), re.S)
for index, pem in enumerate(pems):
    with open(f"{sys.argv[1]}/host-{index:02d}.crt", "w") as handle:
        handle.write(pem + "\n")
print(len(pems))
' "$folder"
update-ca-certificates >/dev/null 2>&1 || update-ca-certificates
if [ ! -f /etc/pip.conf ] || grep -q '^# lxc-cloud' /etc/pip.conf; then
    printf '%s\n' '# lxc-cloud: trust the system store, which holds the host CA certificates' '[global]' \
        'cert = /etc/ssl/certs/ca-certificates.crt' >/etc/pip.conf
fi
"""

# Root, in the node: proxy settings for every login (/etc/environment) and for apt.
_PROXY = r"""
set -eu
env_file=/etc/environment
tmp=$(mktemp)
grep -viE '^(http_proxy|https_proxy|no_proxy)=' "$env_file" 2>/dev/null >"$tmp" || true
for pair in "$@"; do printf '%s\n' "$pair" >>"$tmp"; done
cat "$tmp" >"$env_file"
rm -f "$tmp"
apt=/etc/apt/apt.conf.d/80lxc-cloud-proxy
: >"$apt"
for pair in "$@"; do
    case $pair in
        http_proxy=*) printf 'Acquire::http::Proxy "%s";\n' "${pair#*=}" >>"$apt" ;;
        https_proxy=*) printf 'Acquire::https::Proxy "%s";\n' "${pair#*=}" >>"$apt" ;;
    esac
done
"""

# As stack, in the node: NAME and digest of each repository the mirror holds.
_MIRROR_DIGESTS = r"""
for digest in "$1"/openstack/*.git/lxc-cloud-digest; do
    [ -f "$digest" ] || continue
    name=${digest%.git/lxc-cloud-digest}
    printf '%s %s\n' "${name##*/}" "$(cat "$digest")"
done
"""

# As stack, in the node: one repository from a base64 bundle on stdin, replacing the old one only once complete.
_MIRROR_ONE = r"""
set -eu -o pipefail
mirror=$1 name=$2 digest=$3
mkdir -p "$mirror/openstack"
dest=$mirror/openstack/$name.git
bundle=$(mktemp --tmpdir mirror-XXXXXX.bundle)
trap 'rm -rf "$bundle" "$dest.new"' EXIT
base64 -d >"$bundle"
rm -rf "$dest.new"
git clone -q --mirror "$bundle" "$dest.new"
printf '%s\n' "$digest" >"$dest.new/lxc-cloud-digest"
rm -rf "$dest"
mv "$dest.new" "$dest"
"""


# ---------------------------------------------------------------- on the coordinator's machine


def host_ca_certificates(folder=HOST_CA_FOLDER):
    """The PEM certificates this machine adds to its trust store (update-ca-certificates' `*.crt` files)."""
    pems = []
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".crt"):
                with open(os.path.join(root, name), encoding="ascii", errors="replace") as handle:
                    pems += _PEM.findall(handle.read())
    log.debug("%d CA certificate(s) in %s", len(pems), folder)
    return pems


def proxy_settings(environ, exempt=()):
    """`name=value` for the proxy variables set in `environ` (lower- or upper-case), lower-case names; `no_proxy`
    gets the `exempt` addresses and subnets too (the cloud's own traffic must not go through the proxy: devstack
    adds nothing to it), with localhost. DevstackError for a value that is not plain URL or host-list text: these
    values end up in apt's config and /etc/environment."""
    found = {}
    for name in PROXY_VARIABLES:
        value = environ.get(name) or environ.get(name.upper())
        if not value:
            continue
        if not _PROXY_VALUE.fullmatch(value):
            raise DevstackError(
                f"the coordinator's {name} ({value!r}) is not a plain URL or host list; fix it in "
                "the environment, or drop host_proxy from the config"
            )
        found[name] = value
    if found:
        hosts = [host for host in found.get("no_proxy", "").split(",") if host]
        for extra in ("localhost", "127.0.0.1", *(str(item) for item in exempt if item)):
            if extra not in hosts:
                hosts.append(extra)
        found["no_proxy"] = ",".join(hosts)
    log.debug("proxy settings for the nodes: %s", ", ".join(found) or "none in the environment")
    return [f"{name}={value}" for name, value in found.items()]


def mirror_entries(folder):
    """{name: path} of the repositories in a mirror folder: NAME.bundle files, NAME.git bare repositories and
    NAME/ checkouts, each served as `$GIT_BASE/openstack/NAME.git`. DevstackError for a folder that holds none."""
    if not os.path.isdir(folder):
        raise DevstackError(
            f"git_mirror {folder} is not a folder on this machine (the coordinator's); give the "
            "folder of git bundles or repositories (NAME.bundle, NAME.git or NAME/)"
        )
    entries = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        name = (
            entry[: -len(".bundle")]
            if entry.endswith(".bundle")
            else entry[: -len(".git")]
            if entry.endswith(".git")
            else entry
        )
        if not MIRROR_NAME.match(name) or name in entries:
            continue
        if (entry.endswith(".bundle") and os.path.isfile(path)) or (
            os.path.isdir(path)
            and (os.path.exists(os.path.join(path, "HEAD")) or os.path.exists(os.path.join(path, ".git")))
        ):
            entries[name] = path
    if not entries:
        raise DevstackError(
            f"git_mirror {folder} holds no git bundle or repository (NAME.bundle, NAME.git or NAME/ with .git)"
        )
    return entries


def mirror_digests(folder):
    """{name: sha256} of each repository in a mirror folder: a bundle's bytes (what push_git_mirror sends), a
    repository's refs and the commits they name. Any commit added, moved or removed changes its digest."""
    digests = {}
    for name, path in mirror_entries(folder).items():
        hashed = hashlib.sha256()
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hashed.update(block)
        else:
            refs = subprocess.run(
                ["git", "-C", path, "for-each-ref", "--format=%(objectname) %(refname)"], capture_output=True, text=True
            )
            head = subprocess.run(["git", "-C", path, "rev-parse", "-q", "HEAD"], capture_output=True, text=True)
            if refs.returncode != 0:
                raise DevstackError(f"git for-each-ref in {path} (git_mirror) failed: {refs.stderr.strip()}")
            hashed.update((refs.stdout + head.stdout).encode())
        digests[name] = hashed.hexdigest()
    return digests


def _bundle_bytes(name, path):
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read()
    with tempfile.TemporaryDirectory(prefix="mirror-bundle-") as scratch:
        target = os.path.join(scratch, f"{name}.bundle")
        made = subprocess.run(["git", "-C", path, "bundle", "create", target, "--all"], capture_output=True, text=True)
        if made.returncode != 0:
            raise DevstackError(f"git bundle create for {path} (git_mirror) failed: {made.stderr.strip()}")
        with open(target, "rb") as handle:
            return handle.read()


# ---------------------------------------------------------------- in a node


def trust_host_certificates(agent, node, pems):
    """Install the given CA certificates in the node's trust store, and point pip at it."""
    if not pems:
        raise DevstackError(
            f"host_ca_certificates is set for {node.name}, but {HOST_CA_FOLDER} on the "
            "coordinator's machine holds no certificate; add them there or drop the setting",
            node.name,
            node.host,
        )
    _run(
        agent,
        node,
        "installing the host's CA certificates",
        ["sh", "-c", _TRUST, "trust", NODE_CA_FOLDER],
        stdin="\n".join(pems) + "\n",
    )


def set_proxy(agent, node, settings):
    """Proxy settings for logins and apt in the node (stack.sh gets them in its environment too)."""
    _run(agent, node, "writing the proxy settings", ["sh", "-c", _PROXY, "proxy", *settings])


def push_git_mirror(agent, node, folder):
    """The mirror's repositories as bare mirrors in the node under NODE_GIT_MIRROR/openstack/NAME.git, owned by
    stack (devstack's git refuses another user's repository); a repository already there from the same bundle is
    not sent again. Returns the names sent."""
    entries = mirror_entries(folder)
    listed = _run(
        agent,
        node,
        "reading the node's git mirror",
        ["sh", "-c", _MIRROR_DIGESTS, "digests", NODE_GIT_MIRROR],
        user=STACK_USER,
    )
    have = dict(line.split(" ", 1) for line in listed["stdout"].splitlines() if " " in line)
    sent = []
    for name, path in entries.items():
        data = _bundle_bytes(name, path)
        digest = hashlib.sha256(data).hexdigest()
        if have.get(name) == digest:
            log.debug("%s: git mirror %s is there from the same bundle", node.name, name)
            continue
        log.debug("%s: sending git mirror %s (%d bytes)", node.name, name, len(data))
        _run(
            agent,
            node,
            f"copying {name} into the node's git mirror",
            ["bash", "-c", _MIRROR_ONE, "mirror", NODE_GIT_MIRROR, name, digest],
            stdin=base64.b64encode(data).decode("ascii"),
            user=STACK_USER,
        )
        sent.append(name)
    return sent


def mirror_devstack_url():
    """Where a node clones devstack from when it comes from the git mirror."""
    return f"file://{NODE_GIT_MIRROR}/openstack/devstack.git"
