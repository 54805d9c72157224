"""agent.client is for the coordinator and users' scripts: importing it loads none of the server's bindings."""

import json
import os
import subprocess
import sys

SERVER_ONLY = [
    "lxc",
    "btrfsutil",
    "nftables",
    "pyroute2",
    "agent.daemon",
    "agent.service",
    "agent.containers",
    "agent.storage",
    "agent.network",
    "agent.tunnels",
    "agent.firewall",
]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROBE = """
import json, sys
import agent.client
print(json.dumps(sorted(name for name in json.loads(sys.argv[1]) if name in sys.modules)))
"""


def test_importing_the_client_loads_nothing_of_the_server():
    # A fresh interpreter: in this one, other tests may have imported the server's modules already.
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(SERVER_ONLY)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
