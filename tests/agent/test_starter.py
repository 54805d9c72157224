"""agent.starter with real liblxc: a batch leaves the starter no descriptors, however many containers it starts,
and starts so many at a time."""

import glob
import os

import pytest

from agent import containers, starter
from agent.errors import ContainerError


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_a_batch_leaves_the_starter_holding_no_descriptor_per_container(tmp_path):
    """liblxc keeps the file `lxc.log.file` opened after the container's object is gone; the starter sets config
    in the child that starts, so a batch of thousands does not pile descriptors up for every later fork (and every
    monitor's closing of what it inherited) to walk. Each container's config ends with a value liblxc refuses, so
    nothing is started (a start, even of a container that does not exist, leaves liblxc's monitor cgroups on the
    host); the log file before it is where the descriptor is taken."""
    batch = {
        "lxcpath": str(tmp_path),
        "umask": 0o022,
        "merge_memory": False,
        "containers": [
            {
                "name": f"absent-{i:03d}",
                "config": [["lxc.log.file", str(tmp_path / f"absent-{i:03d}.log")], ["lxc.tty.max", "none"]],
            }
            for i in range(200)
        ],
    }
    before = open_descriptors()
    started = starter.start_batch(batch)
    assert started == {entry["name"]: False for entry in batch["containers"]}
    assert open_descriptors() == before
    left = [path for depth in ("", "*/", "*/*/") for path in glob.glob(f"/sys/fs/cgroup/{depth}lxc.monitor.absent-*")]
    assert left == [], "nothing was started"


def test_a_batch_starts_its_containers_at_most_so_many_at_a_time(lxcpath, tmp_path):
    """Real busybox containers, each holding its start for a second in a pre-start hook that records when it ran:
    six containers started two at a time overlap in pairs, never three. One at a time, they would not overlap."""
    names = [f"paced-{i}" for i in range(6)]
    containers.create(lxcpath, "paced-base", "busybox")
    try:
        for name in names:
            containers.clone(lxcpath, name, "paced-base")
        hook = tmp_path / "hold.sh"
        hook.write_text(
            f'#!/bin/sh\necho "$LXC_NAME $(date +%s.%N)" >> {tmp_path}/began\nsleep 1\n'
            f'echo "$LXC_NAME $(date +%s.%N)" >> {tmp_path}/ended\n'
        )
        hook.chmod(0o755)
        batch = {
            "lxcpath": lxcpath,
            "umask": containers.GUEST_UMASK,
            "merge_memory": False,
            "containers": [{"name": name, "config": [["lxc.hook.pre-start", str(hook)]]} for name in names],
        }
        assert starter.start_batch(batch, at_once=2) == dict.fromkeys(names, True)
        assert all(containers._container(lxcpath, name).running for name in names)
        spans = {}
        for event in ("began", "ended"):
            for line in (tmp_path / event).read_text().splitlines():
                name, moment = line.split()
                spans.setdefault(name, {})[event] = float(moment)
        assert sorted(spans) == names

        def overlapping(moment):
            return sum(span["began"] <= moment < span["ended"] for span in spans.values())

        most = max(overlapping(span["began"]) for span in spans.values())
        assert most == 2, spans
    finally:
        containers.destroy_many(lxcpath, [*names, "paced-base"])


def test_a_starter_that_fails_is_reported_with_the_containers_it_did_not_report_and_its_words(tmp_path):
    """containers._run_starter reads the starter's line per container; a starter that dies (here on a batch it
    cannot read) is a ContainerError naming what it never reported, with the end of its stderr."""
    batch = {
        "lxcpath": str(tmp_path),
        "umask": "not a mask",
        "merge_memory": False,
        "containers": [{"name": "never-a", "config": []}, {"name": "never-b", "config": []}],
    }
    seen = []
    with pytest.raises(ContainerError, match=r"(?s)exit 1\) starting \['never-a', 'never-b'\]: .*TypeError"):
        containers._run_starter(batch, seen.append)
    assert seen == []
