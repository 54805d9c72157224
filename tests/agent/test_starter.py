"""agent.starter with real liblxc: a batch leaves the starter no descriptors, however many containers it starts."""

import glob
import os

from agent import starter


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
