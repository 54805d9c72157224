"""The offline stand-in for devstack (examples/fake-devstack), on this machine's bash: what its services read."""

import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "examples" / "fake-devstack" / "lib" / "fake-devstack"

LOCAL_CONF = """[[local|localrc]]
HOST_IP="10.100.1.3"
RABBIT_HOST="10.100.1.2"
ENABLED_SERVICES="rabbit,n-cpu"
"""

# What each unit's tools/fake-service does on start, many times over, printing what it got.
SERVICE_LOADS = """
source "$1"
for _ in $(seq 150); do
    unset HOST_IP RABBIT_HOST
    fake_load_localrc "$2" --read-only
    echo "${HOST_IP:-none} $RABBIT_HOST"
done
"""


def test_units_starting_together_each_read_the_whole_localrc(tmp_path):
    """The controller and compute units of one node start at once on a clone's restart; each must see every
    setting (a half-read localrc made a compute report 127.0.0.1 forever)."""
    (tmp_path / "local.conf").write_text(LOCAL_CONF)
    loads = [
        subprocess.Popen(
            ["bash", "-c", SERVICE_LOADS, "loads", str(LIB), str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [load.communicate(timeout=120)[0].splitlines() for load in loads]
    assert [load.returncode for load in loads] == [0, 0, 0]
    for lines in outputs:
        assert len(lines) == 150
        assert set(lines) == {"10.100.1.3 10.100.1.2"}
    assert not (tmp_path / ".localrc.auto").exists(), "only stack.sh writes .localrc.auto"


def test_stack_sh_load_writes_localrc_auto_as_devstack_does(tmp_path):
    (tmp_path / "local.conf").write_text(LOCAL_CONF)
    script = 'source "$1"; fake_load_localrc "$2"; echo "$HOST_IP"'
    out = subprocess.run(
        ["bash", "-c", script, "load", str(LIB), str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out == "10.100.1.3\n"
    assert (tmp_path / ".localrc.auto").read_text().splitlines()[1:] == LOCAL_CONF.splitlines()[1:]
