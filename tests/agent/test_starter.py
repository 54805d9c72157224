"""agent.starter with real liblxc: a batch leaves the starter no descriptors, however many containers it starts."""

import os

from agent import starter


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_a_batch_leaves_the_starter_holding_no_descriptor_per_container(tmp_path):
    """liblxc keeps the file `lxc.log.file` opened after the container's object is gone; the starter sets config
    in the child that starts, so a batch of thousands does not pile descriptors up for every later fork (and every
    monitor's closing of what it inherited) to walk. The containers here do not exist: each start fails after its
    config was set, which is where the descriptor is taken."""
    batch = {
        "lxcpath": str(tmp_path),
        "umask": 0o022,
        "merge_memory": False,
        "containers": [
            {"name": f"absent-{i:03d}", "config": [["lxc.log.file", str(tmp_path / f"absent-{i:03d}.log")]]}
            for i in range(200)
        ],
    }
    before = open_descriptors()
    started = starter.start_batch(batch)
    assert started == {entry["name"]: False for entry in batch["containers"]}
    assert open_descriptors() == before
