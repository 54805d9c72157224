"""start(merge_memory=True) on real containers: every process in them may be merged by KSM, ksmd runs, and the
agent's own workers and containers started without it are left out (checked in /proc, not through the agent)."""

from pathlib import Path

import pytest

from agent import memory_merge
from tests.support import agent_pid, descendants, sh

KSM_RUN = Path("/sys/kernel/mm/ksm/run")

pytestmark = pytest.mark.skipif(
    memory_merge.problem() is not None, reason=f"no memory merging here: {memory_merge.problem()}"
)


@pytest.fixture
def ksm_as_found():
    """ksmd as the machine had it before the test (the agent leaves it on, for the containers that need it)."""
    before = KSM_RUN.read_text().strip()
    yield
    if KSM_RUN.read_text().strip() != before:
        KSM_RUN.write_text("2" if before == "0" else before)  # 2: stop and unmerge what it merged
        if before == "0":
            KSM_RUN.write_text("0")


def merge_any(pid):
    """Whether a process's whole memory is mergeable: /proc/PID/ksm_stat's ksm_merge_any (Linux 6.4+)."""
    fields = dict(line.split(" ", 1) for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines())
    return fields["ksm_merge_any:"].strip() == "yes" if "ksm_merge_any:" in fields else None


def init_pid(process, name):
    """The container's init as the host sees it, from the real CLI."""
    return int(sh("lxc-info", "-P", process.lxcpath, "-n", name, "-p", "-H").strip())


def test_a_container_started_with_merge_memory_is_mergeable_to_its_last_process(loopback_agent, ksm_as_found):
    agent = loopback_agent.connect()
    agent.create("base", "busybox")
    agent.clone("base", ["merged", "plain"])
    assert agent.start(["merged"], 60, True) == ["merged"]
    assert agent.start(["plain"]) == ["plain"]

    merged = init_pid(loopback_agent, "merged")
    inside = [merged, *descendants(merged)]
    # What init starts (busybox's syslogd and getty; a Debian compute's services) inherits it; commands run()
    # attaches from the agent's side do not.
    assert len(inside) >= 3 and all(merge_any(pid) for pid in inside), [(pid, merge_any(pid)) for pid in inside]
    assert KSM_RUN.read_text().strip() == "1", "ksmd runs"
    plain = init_pid(loopback_agent, "plain")
    assert merge_any(plain) is False, "a container started without it"
    workers = descendants(agent_pid(loopback_agent.process))
    assert workers and not any(merge_any(pid) for pid in workers if pid not in inside and pid != plain), (
        "the agent's workers set it only while they start such a container"
    )
    agent.destroy(["merged", "plain", "base"])
