"""The agent's kernel-feature probe, in a namespace of the test's own (real netlink)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.support import links, sh

REPO = Path(__file__).resolve().parents[2]


def probe(netns, code):
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_agents_starting_together_in_one_namespace_each_find_vxlan(netns):
    """Several agents in one namespace (the test labs start them so) probe at the same moment."""
    before = links(netns)
    probes = [
        probe(netns, "import json; from agent import hostinfo; print(json.dumps(hostinfo.kernel_features()))")
        for _ in range(8)
    ]
    results = [p.communicate(timeout=60) for p in probes]
    assert [p.returncode for p in probes] == [0] * 8, [err for _, err in results]
    assert {json.loads(out)["vxlan"] for out, _ in results} == {True}
    assert links(netns) == before, "the probe links are gone"


def test_a_vxlan_with_the_probes_vni_already_there_still_counts_as_vxlan(netns):
    sh("ip", "link", "add", "tun77", "type", "vxlan", "id", "77", "dstport", "4789", netns=netns)
    code = "from agent import hostinfo; print(hostinfo._can_create_link('vxlan', vxlan_id=77, vxlan_port=4789))"
    out, err = probe(netns, code).communicate(timeout=60)
    assert out == "True\n", err
    assert links(netns) == ["lo", "tun77"]


def test_service_features_match_what_the_kernel_offers():
    """openvswitch and loop devices, checked independently: the module tree on disk, /sys/module, /dev/loop-control."""
    import os

    from agent import hostinfo

    features = hostinfo.kernel_features()
    modules = Path("/lib/modules") / os.uname().release
    builtin = modules / "modules.builtin"
    installed = (any(modules.rglob("openvswitch.ko*")) if modules.is_dir() else False) or (
        builtin.exists() and "/openvswitch.ko" in builtin.read_text()
    )
    assert features["openvswitch"] == (installed or Path("/sys/module/openvswitch").is_dir())
    assert features["loop"] == (Path("/dev/loop-control").exists() or Path("/sys/module/loop").is_dir())
