"""A real lxc-agent process, on loopback or inside a simulated host, reached over TLS with a token."""

import pytest

from agent import pki
from simlab import AgentProcess, Lab

SIM_ADDRESSES = [f"{Lab.PREFIX}.{n}" for n in range(10, 250)]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki") / "pki")
    pki.create_pki(directory, ["localhost", "127.0.0.1", *SIM_ADDRESSES])
    return directory


@pytest.fixture
def lab():
    """Simulated hardware nodes on one switch; `lab.add_host()` makes one."""
    made = Lab()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def sim_host(lab):
    return lab.add_host()


def _agent(*args, **kwargs):
    process = AgentProcess(*args, **kwargs)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def agent_in_host(sim_host, lxcpath, pki_dir):
    """An agent inside a simulated host: its bridges, NAT and container links stay in that namespace."""
    yield from _agent(lxcpath, pki_dir, host=sim_host)


@pytest.fixture
def loopback_agent(lxcpath, pki_dir):
    """An agent on 127.0.0.1 in this namespace, for tests that create no network."""
    yield from _agent(lxcpath, pki_dir)


@pytest.fixture
def start_agent(pki_dir):
    """Start extra agents with their own options; all are stopped after the test."""
    started = []

    def start(lxcpath, *extra, host=None):
        started.append(AgentProcess(lxcpath, pki_dir, host=host, extra=extra))
        return started[-1]

    yield start
    for process in started:
        process.stop()
