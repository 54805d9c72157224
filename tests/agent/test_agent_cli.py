"""`lxc-agent`'s exit codes: 2 for a wrong command line or config file, 1 for what the agent could not do, each
with one line on stderr; --help lists them."""

import os
import re
import subprocess
import sys

import pytest

from agent import pki

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lxc_agent(*argv, netns=None):
    command = [sys.executable, "-m", "agent.daemon", *argv]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def assert_one_line(result, code, words):
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("lxc-agent: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr


@pytest.mark.parametrize(
    "argv", [["--help"], ["serve", "--help"], ["init-pki", "--help"]], ids=["lxc-agent", "serve", "init-pki"]
)
def test_help_lists_the_exit_codes(argv):
    result = lxc_agent(*argv)
    assert result.returncode == 0, result.stderr
    codes = result.stdout.split("exit codes:", 1)[1]
    assert re.findall(r"^  (\d)  ", codes, re.M) == ["0", "1", "2"]


def test_argparse_usage_errors_exit_2():
    result = lxc_agent("serve", "--no-such-option")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-option" in result.stderr


@pytest.mark.parametrize(
    "config,argv,words",
    [
        (None, ["--listen", "127.0.0.1"], "--listen '127.0.0.1': expected HOST:PORT"),
        ('listen = "127.0.0.1:0"\ncolour = "blue"\n', [], "unknown setting(s) ['colour']"),
        ("listen = \n", [], "cannot read config file"),
        (None, ["--no-tls", "--listen", "198.18.200.1:7643"], "refusing to listen on 198.18.200.1 without TLS"),
        ('allow_public_subnets = "yes"\n', [], "allow_public_subnets must be true or false, not 'yes'"),
    ],
    ids=["malformed-listen", "unknown-setting", "unreadable-config", "no-tls-off-loopback", "public-subnets-not-bool"],
)
def test_a_wrong_command_line_or_config_file_exits_2(tmp_path, config, argv, words):
    options = ["--lxcpath", str(tmp_path / "lxc"), "--token-file", str(tmp_path / "token")]
    if config is not None:
        (tmp_path / "agent.toml").write_text(config)
        options += ["--config", str(tmp_path / "agent.toml")]
    assert_one_line(lxc_agent("serve", *options, *argv), 2, words)
    assert not (tmp_path / "lxc").exists(), "refused before anything was made"


def test_a_missing_token_exits_1(tmp_path):
    result = lxc_agent(
        "serve",
        "--no-tls",
        "--listen",
        "127.0.0.1:0",
        "--lxcpath",
        str(tmp_path / "lxc"),
        "--token-file",
        str(tmp_path / "token"),
    )
    assert_one_line(result, 1, f"token file {tmp_path / 'token'} does not exist")


def test_init_pki_refusing_to_overwrite_exits_1(tmp_path):
    assert lxc_agent("init-pki", "--dir", str(tmp_path / "pki")).returncode == 0
    assert_one_line(lxc_agent("init-pki", "--dir", str(tmp_path / "pki")), 1, "pass --force to overwrite it")


def test_a_port_in_use_exits_1_naming_it(make_netns, tmp_path):
    # In a namespace of its own: starting the service probes the kernel by making throwaway links.
    netns = make_netns()
    pki.create_pki(str(tmp_path / "pki"), ["localhost"])
    holder = [
        "ip",
        "netns",
        "exec",
        netns,
        sys.executable,
        "-c",
        "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "print(s.getsockname()[1], flush=True); sys.stdin.read()",
    ]
    with subprocess.Popen(holder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        try:
            port = int(process.stdout.readline())
            result = lxc_agent(
                "serve",
                "--no-tls",
                "--listen",
                f"127.0.0.1:{port}",
                "--lxcpath",
                str(tmp_path / "lxc"),
                "--token-file",
                str(tmp_path / "pki" / "token"),
                netns=netns,
            )
        finally:
            process.stdin.close()
    assert_one_line(result, 1, f"cannot listen on 127.0.0.1:{port}: Address already in use")
