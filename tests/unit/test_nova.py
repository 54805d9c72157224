"""Nova identities of cloned computes, and reading nova's answers: the real scripts on a folder of the test's own."""

import json
import os
import subprocess
import sys
import time

import pytest

from coordinator import nova

SERVICES = [
    {
        "ID": "1",
        "Binary": "nova-compute",
        "Host": "cpu-0001",
        "Zone": "nova",
        "Status": "enabled",
        "State": "up",
        "Updated At": "2026-11-30T23:03:55.000000",
    },
    {
        "ID": "2",
        "Binary": "nova-compute",
        "Host": "cpu-0011",
        "Zone": "nova",
        "Status": "enabled",
        "State": "down",
        "Updated At": "2026-11-30T23:03:55.000000",
    },
    {
        "ID": "3",
        "Binary": "nova-compute",
        "Host": "cpu-0021",
        "Zone": "nova",
        "Status": "disabled",
        "State": "up",
        "Updated At": "2026-11-30T23:03:55.000000",
    },
    {
        "ID": "4",
        "Binary": "nova-compute",
        "Host": "cpu-0031",
        "Zone": "nova",
        "Status": "enabled",
        "State": "up",
        "Updated At": "2026-11-30T23:03:55.000000",
    },
]
HYPERVISORS = [
    {"ID": "a", "Hypervisor Hostname": "cpu-0001", "Hypervisor Type": "fake", "Host IP": "10.0.0.3", "State": "up"},
    {"ID": "b", "Hypervisor Hostname": "cpu-0031", "Hypervisor Type": "fake", "Host IP": "10.0.0.6", "State": "up"},
]
# nova-manage prints its log lines on stdout around the table (devstack's dbcounter), as seen on a controller.
MAPPED = """INFO dbcounter [None req-66de] Registered counter for database nova_api
DEBUG dbcounter [-] [52319] Writer thread running {{(pid=52319) stat_writer dbcounter.py:102}}
+-----------+--------------------------------------+----------+
| Cell Name |              Cell UUID               | Hostname |
+-----------+--------------------------------------+----------+
|   cell1   | 6d0c2c3a-5b55-4a4e-9f43-1d1c1f8e1f6b | cpu-0001 |
+-----------+--------------------------------------+----------+
"""


def status_text(services=SERVICES, hypervisors=HYPERVISORS, mapped=MAPPED):
    return (
        f"== services\n{json.dumps(services, indent=2)}\n== hypervisors\n{json.dumps(hypervisors)}\n== mapped\n{mapped}"
    )


def test_status_reads_services_hypervisors_and_the_cell_table():
    status = nova.parse_status(status_text())
    assert status == {
        "services": {"cpu-0001": "up", "cpu-0011": "down", "cpu-0021": "disabled", "cpu-0031": "up"},
        "hypervisors": {"cpu-0001": "up", "cpu-0031": "up"},
        "mapped": {"cpu-0001"},
        "updated": dict.fromkeys(("cpu-0001", "cpu-0011", "cpu-0021", "cpu-0031"), "2026-11-30T23:03:55"),
    }


def test_an_empty_cloud_reads_as_nothing():
    empty = (
        "+-----------+-----------+----------+\n| Cell Name | Cell UUID | Hostname |\n"
        "+-----------+-----------+----------+\n+-----------+-----------+----------+\n"
    )
    assert nova.parse_status(status_text([], [], empty)) == {
        "services": {},
        "hypervisors": {},
        "mapped": set(),
        "updated": {},
    }


@pytest.mark.parametrize(
    "host, why",
    [
        ("cpu-0001", None),
        ("cpu-0011", "nova-compute service is down"),
        ("cpu-0021", "nova-compute service is disabled"),
        ("cpu-0031", "not mapped to a cell yet"),
        ("cpu-0041", "no nova-compute service registered"),
    ],
    ids=["ready", "down", "disabled", "unmapped", "missing"],
)
def test_what_each_host_still_waits_for(host, why):
    waiting = nova.not_ready([host], nova.parse_status(status_text()))
    assert waiting == ({} if why is None else {host: why})


def test_after_a_restore_a_service_counts_only_once_it_has_reported_since_the_snapshot():
    """A restored database still says up for reports made before the snapshot (nova's service_down_time)."""
    status = nova.parse_status(status_text())
    assert nova.not_ready(["cpu-0001"], status, since="2026-11-30T23:03:54Z") == {}
    for since in ("2026-11-30T23:03:55Z", "2026-12-01T00:00:00Z"):
        assert nova.not_ready(["cpu-0001"], status, since=since) == {
            "cpu-0001": "no report from nova-compute since the restore"
        }


def test_an_up_service_without_a_hypervisor_waits():
    status = nova.parse_status(status_text(hypervisors=[]))
    assert nova.not_ready(["cpu-0001"], status) == {"cpu-0001": "no hypervisor"}


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0s"), (45, "45s"), (161, "2m41s"), (3720, "1h02m")],
    ids=["zero", "seconds", "minutes", "hours"],
)
def test_durations_read_like_a_person_writes_them(seconds, text):
    assert nova.duration(seconds) == text


def test_the_closing_line():
    line = nova.summary(
        {
            "expected": 64,
            "services_up": 64,
            "hypervisors_up": 64,
            "seconds": 161,
            "controller": "10.100.1.2",
            "waiting": {},
        }
    )
    assert line == "64/64 nova-compute services up as 64 hypervisors (controller 10.100.1.2) in 2m41s"


# ---------------------------------------------------------------- the identity script, on a tree of the test's own


def stacked_first(tmp_path, first="cpu-000", fakes=2):
    """What devstack's fake driver leaves in the first compute: nova-fake.conf-N naming host `<name>N` and a
    state path holding compute_id; and the record seal() writes."""
    conf_dir, state_root = tmp_path / "etc-nova", tmp_path / "data-nova"
    conf_dir.mkdir()
    for index in range(1, fakes + 1):
        state = state_root / f"{first}{index}"
        state.mkdir(parents=True)
        (state / "compute_id").write_text(f"id-of-{first}{index}\n")
        (conf_dir / f"nova-fake.conf-{index}").write_text(
            f"# devstack wrote this\n[DEFAULT]\nhost = {first}{index}\nstate_path = {state}\n\n[fake]\nx = 1\n"
        )
    (conf_dir / "nova-cpu.conf").write_text("[DEFAULT]\nmy_ip = 10.0.0.3\n")
    record = tmp_path / "identity"
    record.write_text(first + "\n")
    return conf_dir, state_root, record


def identify(name, state_root, record, conf_dir):
    result = subprocess.run(
        [sys.executable, "-c", nova.IDENTIFY, name, str(state_root), str(record), str(conf_dir)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def ini(path):
    return path.read_text()


def test_a_clone_gets_its_own_hosts_state_paths_and_compute_ids(tmp_path):
    conf_dir, state_root, record = stacked_first(tmp_path)
    said = identify("cpu-007", state_root, record, conf_dir)
    assert said.count("nova identity:") == 2
    for index in (1, 2):
        text = ini(conf_dir / f"nova-fake.conf-{index}")
        assert f"host = cpu-007{index}\n" in text and f"state_path = {state_root}/cpu-007{index}\n" in text
        assert text.startswith("# devstack wrote this\n[DEFAULT]\n") and "[fake]\nx = 1\n" in text, "the rest kept"
        compute_id = (state_root / f"cpu-007{index}" / "compute_id").read_text().strip()
        assert len(compute_id) == 36 and compute_id != f"id-of-cpu-000{index}"
    assert sorted(os.listdir(state_root)) == ["cpu-0071", "cpu-0072"], "the source's state is gone from the clone"
    assert record.read_text() == "cpu-007\n"
    before = {p: p.read_text() for p in (state_root / "cpu-0071").iterdir()}
    assert identify("cpu-007", state_root, record, conf_dir) == "", "twice is a no-op"
    assert {p: p.read_text() for p in (state_root / "cpu-0071").iterdir()} == before


def test_the_first_compute_keeps_its_identity(tmp_path):
    conf_dir, state_root, record = stacked_first(tmp_path)
    files = {p.name: p.read_text() for p in conf_dir.iterdir()}
    assert identify("cpu-000", state_root, record, conf_dir) == ""
    assert {p.name: p.read_text() for p in conf_dir.iterdir()} == files
    assert (state_root / "cpu-0001" / "compute_id").read_text() == "id-of-cpu-0001\n"


def test_a_plain_compute_clone_drops_the_sources_compute_id_for_nova_to_make_its_own(tmp_path):
    conf_dir, state_root, record = tmp_path / "etc-nova", tmp_path / "data-nova", tmp_path / "identity"
    conf_dir.mkdir()
    state_root.mkdir()
    (state_root / "compute_id").write_text("id-of-cpu-000\n")
    (conf_dir / "nova-cpu.conf").write_text(f"[DEFAULT]\nhost = cpu-000\nstate_path = {state_root}\n")
    record.write_text("cpu-000\n")
    said = identify("cpu-003", state_root, record, conf_dir)
    assert "host cpu-003" in said and "removed" in said
    assert "host = cpu-003\n" in ini(conf_dir / "nova-cpu.conf")
    assert not (state_root / "compute_id").exists()
    assert identify("cpu-003", state_root, record, conf_dir) == ""


# ---------------------------------------------------------------- stack.sh's progress, read from its log

STACK_LOG = """+ ./stack.sh:main:779                      :   echo_summary 'Installing package prerequisites'
+ ./stack.sh:echo_summary:438              :   [[ -t 3 ]]
+ ./stack.sh:echo_summary:444              :   echo -e Installing package prerequisites
2026-11-30 23:07:39.022 | Installing package prerequisites
+ ./stack.sh:main:1190                     :   echo_summary 'Starting Nova API'
+ ./stack.sh:echo_summary:444              :   echo -e Starting Nova API
"""


@pytest.mark.parametrize(
    "text, phase",
    [
        (STACK_LOG, "Starting Nova API"),
        (STACK_LOG.split("+ ./stack.sh:main:1190")[0], "Installing package prerequisites"),
        ("Collecting neutron-lib>=3.24.0\n", None),
        ("", None),
    ],
    ids=["latest", "earlier", "no-summary", "empty"],
)
def test_the_devstack_phase_is_the_last_summary_in_the_log(text, phase):
    from coordinator.devstack import stack_phase

    assert stack_phase(text) == phase


# ---------------------------------------------------------------- waiting for the cloud, against a scripted controller


class Controller:
    """Answers nova.converge's calls as a controller would: the status script from `answers` in turn (the last one
    again when they run out; an int is a failing exit code), and discover_hosts maps every registered host."""

    def __init__(self, answers):
        self.answers, self.mapped, self.calls = list(answers), set(), []

    def run(self, name, argv, **options):
        script = argv[2]
        if script == nova._DISCOVER:
            self.calls.append("discover")
            self.mapped |= set(self._current()[0])
            return {"exit_code": 0, "stdout": "Found 1 unmapped computes\n", "stderr": ""}
        self.calls.append("status")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, int):
            return {"exit_code": answer, "stdout": "", "stderr": "503 Service Unavailable"}
        self._last = answer
        services = [{"Host": host, "State": "up", "Status": "enabled"} for host in answer[0]]
        hypervisors = [{"Hypervisor Hostname": host, "State": "up"} for host in answer[1]]
        table = "\n".join(f"| cell1 | x | {host} |" for host in sorted(self.mapped))
        return {"exit_code": 0, "stdout": status_text(services, hypervisors, table), "stderr": ""}

    def _current(self):
        return getattr(self, "_last", ((), ()))


class Node:
    name, host, address = "ctl-000", "198.18.0.10", "10.100.1.2"


def test_converge_maps_new_hosts_and_ends_when_all_are_up():
    controller = Controller([(["a1"], []), 5, (["a1", "b1"], ["a1", "b1"])])
    seen = []
    result = nova.converge(
        controller,
        Node(),
        ["a1", "b1"],
        started=0.0,
        timeout=60,
        interval=0,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert result["waiting"] == {} and result["services_up"] == 2 and result["hypervisors_up"] == 2
    assert result["error"] is None
    assert controller.calls.count("discover") >= 1 and controller.mapped == {"a1", "b1"}
    assert seen[-1] == (2, 2) and seen[0] == (0, 2)


def test_converge_gives_up_after_its_own_timeout_and_says_why():
    controller = Controller([(["a1"], ["a1"]), (["a1"], ["a1"]), 7])
    result = nova.converge(controller, Node(), ["a1", "b1"], started=0.0, timeout=0.3, interval=0.05)
    assert result["waiting"] == {"b1": "no nova-compute service registered"}
    assert "503 Service Unavailable" in result["error"], "the last failed call is kept for the message"
    assert result["seconds"] >= time.monotonic() - 1, "counted from `started` (the clones' start), not the wait"
