"""Host limits for many containers: raised when the agent starts, never lowered, reported by info().

The rules are checked on a folder laid out like /proc/sys (no root, no order between tests); the real host only
where root may write it, and skipped with the reason otherwise."""

import logging
import os

import pytest

from agent import limits

NAMES = {key: key.replace("/", ".") for key in limits.MINIMUMS}


def fake_proc_sys(folder, values):
    """A folder laid out like /proc/sys holding key -> value (text, as the kernel writes it)."""
    for key, value in values.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return str(folder)


def exposed_here():
    """The limits this host (this network namespace) has at all."""
    return [key for key in limits.MINIMUMS if os.path.exists(os.path.join(limits.PROC_SYS, key))]


def require_writable_proc_sys():
    if os.geteuid() != 0:
        pytest.skip("needs root: the limits are the host's own, in /proc/sys")


def test_limits_below_their_minimum_are_raised_and_reported(tmp_path):
    proc_sys = fake_proc_sys(tmp_path, {key: minimum // 2 for key, minimum in limits.MINIMUMS.items()})
    assert limits.ensure_minimums(proc_sys) == {
        NAMES[key]: (minimum // 2, minimum) for key, minimum in limits.MINIMUMS.items()
    }
    assert limits.current(proc_sys) == {NAMES[key]: minimum for key, minimum in limits.MINIMUMS.items()}


def test_limits_already_higher_are_never_lowered(tmp_path):
    higher = {key: minimum * 2 for key, minimum in limits.MINIMUMS.items()}
    proc_sys = fake_proc_sys(tmp_path, higher)
    assert limits.ensure_minimums(proc_sys) == {}
    assert limits.current(proc_sys) == {NAMES[key]: value for key, value in higher.items()}


def test_limits_the_host_lacks_are_left_out(tmp_path):
    # A network namespace other than the first has no net/ipv4/neigh/default.
    present = {key: minimum - 1 for key, minimum in limits.MINIMUMS.items() if not key.startswith("net/")}
    proc_sys = fake_proc_sys(tmp_path, present)
    assert sorted(limits.ensure_minimums(proc_sys)) == sorted(NAMES[key] for key in present)
    assert sorted(limits.current(proc_sys)) == sorted(NAMES[key] for key in present)


def test_a_limit_that_cannot_be_raised_is_logged_and_the_others_still_are(tmp_path, caplog):
    values = {key: minimum - 1 for key, minimum in limits.MINIMUMS.items()}
    values["kernel/pid_max"] = "not a number"
    proc_sys = fake_proc_sys(tmp_path, values)
    with caplog.at_level(logging.INFO, logger="agent.limits"):
        changed = limits.ensure_minimums(proc_sys)
    assert sorted(changed) == sorted(NAMES[key] for key in values if key != "kernel/pid_max")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("cannot raise kernel.pid_max to 4194304")
    raised = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert len(raised) == len(changed) and all(message.startswith("raised ") for message in raised)


def test_the_agent_raises_host_limits_for_many_containers_and_reports_them(loopback_agent):
    reported = loopback_agent.connect().info()["limits"]
    assert exposed_here(), "this host has none of the limits: /proc/sys is not mounted?"
    for key in exposed_here():
        assert reported[NAMES[key]] >= limits.MINIMUMS[key], NAMES[key]


def test_on_this_host_a_second_pass_changes_nothing():
    require_writable_proc_sys()
    limits.ensure_minimums()  # whatever ran before: every limit is at least its minimum from here on
    before = limits.current()
    low = {
        NAMES[key]: before.get(NAMES[key]) for key in exposed_here() if before.get(NAMES[key], 0) < limits.MINIMUMS[key]
    }
    if low:
        pytest.skip(f"this host does not let root raise {low} (a read-only /proc/sys?)")
    assert limits.ensure_minimums() == {}, "a second pass changes nothing"
    assert limits.current() == before
