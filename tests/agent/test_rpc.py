"""The RPC door: who gets in, how many at once, and what bad input gets back (a clear error, no change)."""

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import pki
from agent.errors import (
    AgentError,
    AuthenticationError,
    CommandTimeout,
    Conflict,
    ContainerError,
    InvalidArgument,
    NotFound,
)
from tests.support import lxc_states, subvolumes


def test_a_client_without_the_token_is_refused_before_any_method_runs(loopback_agent):
    with pytest.raises(AuthenticationError, match="wrong or missing token"):
        loopback_agent.connect(token="not-the-token")
    assert loopback_agent.connect().info()["version"]


def test_a_client_without_a_certificate_is_refused(loopback_agent):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=f"{loopback_agent.pki_dir}/ca.crt")
    with (  # noqa: PT012 (TLS 1.3 reports the refused client certificate on the first read)
        socket.create_connection((loopback_agent.host, loopback_agent.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
    ):
        tls.sendall(b"PYRO")
        assert tls.recv(1) == b"", "the agent must close the connection"
        raise ConnectionError("closed by the agent")
    assert loopback_agent.connect().info()["version"], "the agent still serves others"


def test_a_client_certificate_from_another_ca_is_refused(loopback_agent, tmp_path):
    other = pki.create_pki(str(tmp_path / "other"), ["127.0.0.1"])
    with pytest.raises(AgentError):
        loopback_agent.connect(cert=other["client.crt"], key=other["client.key"])


def test_a_silent_client_does_not_block_others(loopback_agent):
    with socket.create_connection((loopback_agent.host, loopback_agent.port)):
        started = time.monotonic()
        assert loopback_agent.connect(timeout=10).info()["version"]
        assert time.monotonic() - started < 10


def test_sixteen_clients_are_served_at_once_while_a_long_command_runs(loopback_agent):
    agent = loopback_agent.connect()
    agent.create("busy", "busybox")
    agent.start(["busy"])
    long_call = threading.Thread(target=lambda: loopback_agent.connect().run("busy", ["sleep", "600"]))
    long_call.start()
    deadline = time.monotonic() + 60
    while "sleep 600" not in agent.run("busy", ["ps"])["stdout"]:
        assert time.monotonic() < deadline, "the long command did not start"
        time.sleep(0.2)
    proxies = [loopback_agent.connect() for _ in range(16)]  # all connected (and idle) at once
    results, errors = [], []

    def call(proxy):
        try:
            proxy._pyroClaimOwnership()
            results.append((proxy.info()["storage"], len(proxy.list(["busy"]))))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=call, args=(proxy,)) for proxy in proxies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == [("btrfs", 1)] * 16
    assert long_call.is_alive(), "the reads were served while the command still ran"
    agent.stop(["busy"])
    long_call.join(60)
    assert not long_call.is_alive()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda a: a.create("../etc", "busybox"), InvalidArgument, "invalid container name"),
        (lambda a: a.create("a..b", "busybox"), InvalidArgument, "no '..'"),
        (lambda a: a.create("-lead", "busybox"), InvalidArgument, "start with a letter or digit"),
        (lambda a: a.create("x" * 64, "busybox"), InvalidArgument, "at most 63"),
        (lambda a: a.create("ok", "no-such-template"), InvalidArgument, "unknown template 'no-such-template'"),
        (lambda a: a.clone("ghost", ["c1"]), NotFound, "source container 'ghost' does not exist"),
        (lambda a: a.clone("base", "c1"), InvalidArgument, "expected a list"),
        (lambda a: a.clone("base", ["c1", "c1"]), InvalidArgument, "listed twice"),
        (lambda a: a.start(["ghost"]), NotFound, "no such container"),
        (lambda a: a.stop(["ghost", "base"]), NotFound, "ghost"),
        (lambda a: a.run("base", ["true"]), Conflict, "not running"),
        (lambda a: a.run("ghost", ["true"]), NotFound, "does not exist"),
        (lambda a: a.run("base", []), InvalidArgument, "non-empty list"),
        (lambda a: a.run("base", ["true"], timeout=-1), InvalidArgument, "positive number"),
        (lambda a: a.set_addresses("nobridge0", {"base": "10.1.1.5/24"}), NotFound, "ensure_network first"),
        (
            lambda a: a.create("ok", "debian", release="nosuchrelease"),
            ContainerError,
            "the template said:\n(.|\n)*Invalid release nosuchrelease",
        ),
    ],
    ids=[
        "path-escape",
        "dot-dot",
        "leading-dash",
        "too-long",
        "unknown-template",
        "missing-source",
        "names-not-a-list",
        "duplicate-names",
        "start-missing",
        "stop-missing",
        "run-stopped",
        "run-missing",
        "run-empty-argv",
        "run-bad-timeout",
        "address-without-bridge",
        "template-fails",
    ],
)
def test_bad_input_gets_its_error_and_changes_nothing(loopback_agent, lxcpath, btrfs_mount, call, error, message):
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    before = (lxc_states(lxcpath), subvolumes(btrfs_mount), sorted(os.listdir(lxcpath)))
    with pytest.raises(error, match=message):
        call(agent)
    assert (lxc_states(lxcpath), subvolumes(btrfs_mount), sorted(os.listdir(lxcpath))) == before


def test_a_command_past_its_timeout_is_killed_and_reported(loopback_agent):
    agent = loopback_agent.connect()
    agent.create("slow", "busybox")
    agent.start(["slow"])
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 3 s") as caught:
        agent.run("slow", ["sh", "-c", "echo begun; sleep 30; echo never"], timeout=3)
    assert time.monotonic() - started < 20
    assert caught.value.stdout == "begun\n"
    assert "sleep 30" not in agent.run("slow", ["ps"])["stdout"], "the command's children are gone too"


def test_the_agent_refuses_a_non_loopback_address_without_tls(pki_dir, lxcpath):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.daemon",
            "serve",
            "--no-tls",
            "--listen",
            "198.18.200.1:7643",
            "--lxcpath",
            lxcpath,
            "--token-file",
            f"{pki_dir}/token",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on 198.18.200.1 without TLS" in result.stderr


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lxc-agent.service")
    if subprocess.run(["which", "systemd-analyze"], capture_output=True).returncode != 0:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at a stand-in with the same path layout.
    text = Path(unit).read_text()
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], capture_output=True, text=True)
    problems = [
        line
        for line in result.stderr.splitlines()
        if "lxc-agent.service" in line and "Command /usr/local/bin/lxc-agent" not in line
    ]
    assert "ExecStart=/usr/local/bin/lxc-agent serve" in text
    assert problems == [], result.stderr


def test_memory_is_the_host_s_as_proc_meminfo_and_ksm_say(loopback_agent):
    """What a coordinator waits on before each compute's start: the host's memory and KSM's savings, read
    independently from /proc/meminfo and /sys/kernel/mm/ksm."""
    seen = loopback_agent.connect().memory()
    with open("/proc/meminfo") as handle:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
    assert seen["total"] == meminfo["MemTotal"]
    assert 0 < seen["available"] <= seen["total"]
    assert abs(seen["available"] - meminfo["MemAvailable"]) < 512 * 1024 * 1024
    if os.path.exists("/sys/kernel/mm/ksm/run"):
        with open("/sys/kernel/mm/ksm/run") as handle:
            assert seen["ksm"]["running"] == (handle.read().strip() == "1")
        with open("/sys/kernel/mm/ksm/pages_sharing") as handle:
            sharing = int(handle.read()) * os.sysconf("SC_PAGE_SIZE")
        assert abs(seen["ksm"]["saved"] - sharing) < 256 * 1024 * 1024
    else:
        assert seen["ksm"] is None
    if os.path.exists("/proc/pressure/memory"):
        assert 0.0 <= seen["pressure"] <= 100.0
    else:
        assert seen["pressure"] is None
