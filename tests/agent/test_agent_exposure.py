"""What an unprivileged user of the host can reach of the agent's containers: nothing.

The containers are privileged, so a setuid-root file made inside one is setuid root on the host too; their
folders, the image cache and the overlay bases are for root only (LXD's modes: the pool 0711, a container's
folder 0100). Checked as `nobody` with `runuser`, on an lxcpath whose parents anyone may pass through (as
/var/lib/lxc's are): the test's loop filesystems sit in 0700 folders, so the lxcpath is bind-mounted from them
into one under /var/tmp.
"""

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from tests.support import lxc_states, sh, unique

SETUID_SHELL = "/sush"
# Where the host sees the container's own files: a btrfs or copy rootfs, or an overlay container's upper dir.
TOP_LAYER = {"btrfs": "rootfs", "overlay": "overlay/delta"}


def as_nobody(*argv):
    """Run argv as the host's `nobody`; returns (exit code, stdout + stderr)."""
    result = subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=["btrfs", "overlay"])
def exposed_lxcpath(request, btrfs_mount, plain_fs):
    """(lxcpath, backend): an lxcpath made like /var/lib/lxc (0755) under parents everyone may pass through."""
    backend = request.param
    source = os.path.join(btrfs_mount if backend == "btrfs" else plain_fs, unique("exposed-"))
    os.mkdir(source, 0o755)
    outer = tempfile.mkdtemp(prefix="lxcagent-exposed-", dir="/var/tmp")
    os.chmod(outer, 0o755)
    lxcpath = os.path.join(outer, "lxc")
    os.mkdir(lxcpath)
    sh("mount", "--bind", source, lxcpath)
    os.chmod(lxcpath, 0o755)
    try:
        yield lxcpath, backend
    finally:
        with contextlib.suppress(AssertionError):
            sh("umount", lxcpath)
        if os.path.ismount(lxcpath):
            sh("umount", "-l", lxcpath)
        os.rmdir(lxcpath)
        shutil.rmtree(outer)  # the agents' logs


def test_nobody_on_the_host_cannot_reach_a_setuid_shell_made_in_a_container(exposed_lxcpath, start_agent):
    lxcpath, backend = exposed_lxcpath
    agent = start_agent(lxcpath, "--storage", backend).connect()
    agent.create("exposed", "busybox")
    agent.clone("exposed", ["exposed-twin"])  # overlay: freezes a base under .lxc-agent/bases
    agent.start(["exposed"])
    made = agent.run("exposed", ["sh", "-c", f"cp /bin/busybox {SETUID_SHELL} && chmod 4755 {SETUID_SHELL}"])
    assert made["exit_code"] == 0, made
    on_host = os.path.join(lxcpath, "exposed", TOP_LAYER[backend], SETUID_SHELL.lstrip("/"))
    seen = os.lstat(on_host)
    assert seen.st_uid == 0 and seen.st_mode & stat.S_ISUID, "root's setuid shell, as the host sees it"

    for argv in (["stat", on_host], [on_host, "true"], ["cat", on_host]):
        code, output = as_nobody(*argv)
        assert code != 0 and "Permission denied" in output, f"nobody ran {argv}: exit {code}, {output!r}"
    code, output = as_nobody("ls", lxcpath)
    assert code != 0 and "Permission denied" in output, "nobody lists the containers"
    agent_dir = os.path.join(lxcpath, ".lxc-agent")
    for path in (agent_dir, os.path.join(agent_dir, "images"), os.path.join(lxcpath, "exposed-twin")):
        code, output = as_nobody("ls", path)
        assert code != 0 and "Permission denied" in output, f"nobody lists {path}"

    assert mode(lxcpath) == 0o711
    for name in ("exposed", "exposed-twin"):
        assert mode(os.path.join(lxcpath, name)) == 0o100, name
    assert mode(agent_dir) == 0o700
    if backend == "overlay":
        assert mode(os.path.join(lxcpath, "exposed", "overlay")) == 0o700
    assert agent.run("exposed", ["stat", "-c", "%a", "/", "/bin"])["stdout"].split() == ["755", "755"], (
        "inside, the container's own folders keep their modes"
    )
    wrote = agent.run("exposed", ["sh", "-c", "echo x > /made-by-run && stat -c %a /made-by-run"])
    assert wrote["stdout"].strip() == "644", "commands run with the usual umask (022), whatever the agent's"
    agent.stop(["exposed"])
    agent.destroy(["exposed", "exposed-twin"])


def test_an_upgraded_agent_makes_earlier_agents_containers_private_and_keeps_them(lxcpath, start_agent):
    """Earlier agents left every folder 0755, and the first one wrote only {"template", "release"} into
    lxc-agent.json (clones added "clone_of"): the upgraded agent closes the folders when it starts, and the
    containers are still its own."""
    old = start_agent(lxcpath)
    agent = old.connect()
    agent.create("old", "busybox")
    agent.clone("old", ["old-clone"])
    old.stop(keep_containers=True)
    for name, metadata in (
        ("old", {"template": "busybox", "release": None}),
        ("old-clone", {"template": "busybox", "release": None, "clone_of": "old"}),
    ):
        with open(os.path.join(lxcpath, name, "lxc-agent.json"), "w") as handle:
            json.dump(metadata, handle)
    for path in (lxcpath, os.path.join(lxcpath, "old"), os.path.join(lxcpath, "old-clone")):
        os.chmod(path, 0o755)
    agent_dirs = [os.path.join(lxcpath, ".lxc-agent"), os.path.join(lxcpath, ".lxc-agent", "images")]
    [image] = os.listdir(agent_dirs[-1])
    agent_dirs.append(os.path.join(agent_dirs[-1], image))
    for path in agent_dirs:
        os.chmod(path, 0o755)
    os.mkdir(os.path.join(lxcpath, "not-a-container"), 0o755)

    agent = start_agent(lxcpath).connect()
    assert mode(lxcpath) == 0o711
    assert {name: mode(os.path.join(lxcpath, name)) for name in ("old", "old-clone")} == dict.fromkeys(
        ("old", "old-clone"), 0o100
    )
    assert [mode(path) for path in agent_dirs] == [0o700] * 3
    assert mode(os.path.join(lxcpath, "not-a-container")) == 0o755, "what the agent did not make stays as it is"

    os.chmod(os.path.join(lxcpath, "old-clone"), 0o755)
    assert agent.start(["old-clone"]) == ["old-clone"]
    assert mode(os.path.join(lxcpath, "old-clone")) == 0o100, "a container the agent touches is made private again"
    assert agent.run("old-clone", ["hostname"])["stdout"].strip() == "old-clone"
    assert agent.stop(["old-clone"]) == ["old-clone"]
    assert agent.clone("old", ["new-clone"]) == ["new-clone"]
    assert agent.destroy(["old", "old-clone", "new-clone"]) == ["old", "old-clone", "new-clone"]
    assert lxc_states(lxcpath) == {}
    os.rmdir(os.path.join(lxcpath, "not-a-container"))
