"""The coordinator's global options and exit statuses: -v/--verbose logs to stderr with times and logger names,
before or after the command, and is undone when main returns; --help says what each exit status means; Ctrl-C is
status 130 with a line, not a traceback."""

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import AgentError
from coordinator import cli
from coordinator.devstack import DevstackError
from coordinator.driver import DeployError
from coordinator.errors import CoordinatorError
from coordinator.problems import ConfigError
from coordinator.store import StoreError
from coordinator.syntax import SyntaxProblem, TooBig
from coordinator.topology import PlanVersionError

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "configs" / "seed.json"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ", re.M)


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "validate", SEED],
        ["validate", SEED, "-v"],
        ["--verbose", "validate", SEED],
        ["validate", "--verbose", SEED],
    ],
    ids=["before", "after", "long-before", "long-between"],
)
def test_verbose_logs_on_stderr_with_times_and_logger_names(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert out.startswith(f"{SEED}: valid MultihostEngine"), "stdout stays the summary"
    assert re.search(rf"^\S+ \S+ DEBUG coordinator\.config: read config {re.escape(str(SEED))} \(json, ", err, re.M), (
        err
    )
    assert re.search(r"^\S+ \S+ DEBUG coordinator\.cli: coordinator validate: ", err, re.M), err
    assert LOG_LINE.search(err)


def test_without_verbose_no_log_lines(capsys):
    code, out, err = run(capsys, "validate", SEED)
    assert code == 0 and out.startswith(f"{SEED}: valid ")
    assert not LOG_LINE.search(err), err


def test_verbose_logs_the_store_commands(capsys, tmp_path):
    store = tmp_path / "deployments.sqlite"
    code, out, err = run(capsys, "list", "--store", store, "-v")
    assert code == 0 and out == f"no deployments in {store}\n"
    assert f"DEBUG coordinator.store: deployment store {store}\n" in err, err


def test_main_leaves_logging_as_it_found_it(capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    run(capsys, "-v", "validate", SEED)
    run(capsys, "validate", SEED)
    assert (root.handlers, root.level) == (handlers, level)


def test_help_says_what_each_exit_status_means(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert caught.value.code == 0
    assert "-v, --verbose" in out
    statuses = out[out.index("exit status:") :]
    for status in ("0", "1", "2", "130"):
        assert re.search(rf"^  {status} +\S", statuses, re.M), statuses


@pytest.mark.parametrize(
    "command", ["validate", "plan", "deploy", "list", "show", "destroy", "snapshot", "restore", "snapshots", "golden"]
)
def test_every_command_takes_verbose(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "-v, --verbose" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["list", "prune"])
def test_the_golden_actions_take_verbose_after_them(capsys, action):
    with pytest.raises(SystemExit) as exited:
        cli.main(["golden", action, "--help"])
    assert exited.value.code == 0 and "-v, --verbose" in capsys.readouterr().out


@pytest.mark.parametrize(
    "cls", [ConfigError, StoreError, SyntaxProblem, TooBig, PlanVersionError, DeployError, DevstackError]
)
def test_the_coordinators_errors_share_one_root(cls):
    assert issubclass(cls, CoordinatorError)


def test_main_explains_the_root_errors_only():
    """CoordinatorError and the agent package's AgentError; anything else keeps its traceback."""
    explained = set(cli.EXPLAINED)
    assert explained == {CoordinatorError, AgentError}


def test_interrupted_is_status_130_with_a_line_not_a_traceback(tmp_path):
    """validate blocked opening a FIFO nobody writes to, then Ctrl-C (SIGINT)."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "-v", "validate", str(fifo)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stderr.readline()  # logged inside main's error handling, just before the command runs
        assert "coordinator validate: " in first, first
        process.send_signal(signal.SIGINT)
        err = first + process.stderr.read()
        assert process.wait(30) == 130, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "coordinator validate: interrupted", err


@pytest.mark.parametrize("rate", ["0", "-1", "10001", "nan", "fast", "inf"])
def test_scale_refuses_a_pace_outside_the_configs_range_before_it_reads_the_store(capsys, tmp_path, rate):
    store = tmp_path / "never-made.sqlite"
    with pytest.raises(SystemExit) as exited:
        cli.main(["scale", "cloud", "--computes", "2", "--starts-per-second", rate, "--store", str(store)])
    assert exited.value.code == 2
    assert f"expected a number above 0 and at most 10000, got {rate!r}" in capsys.readouterr().err
    assert not store.exists()


@pytest.mark.parametrize("argv", [["snapshot", "cloud"], ["restore", "cloud"], ["snapshots", "cloud", "--delete"]])
@pytest.mark.parametrize("tag", ["../up", "a/b", ".x", "x" * 65, "t\n", ""])
def test_snapshot_tags_are_checked_before_the_store_is_read(capsys, tmp_path, argv, tag):
    store = tmp_path / "never-made.sqlite"
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, tag, "--store", str(store)])
    assert exited.value.code == 2
    assert f"invalid snapshot tag {tag!r}" in capsys.readouterr().err
    assert not store.exists()


def test_golden_prune_refuses_what_is_no_golden_key_and_says_so(capsys, tmp_path):
    store = tmp_path / "never-made.sqlite"
    assert cli.main(["golden", "prune", "debian-bookworm-1234abcd", "--store", str(store)]) == 1
    assert "not golden image keys (they start with golden-)" in capsys.readouterr().err
    assert not store.exists(), "refused before the store or any agent is asked"
