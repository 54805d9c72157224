"""Deployment records: resume, resources in order, and one coordinator at a time."""

import subprocess
import sys
import textwrap

import pytest

from coordinator.lifecycle import shown_status
from coordinator.store import Store, StoreError

CONFIG = {"type": "MultihostEngine", "controller": {}, "nodes": []}
PLAN = {"nodes": [{"name": "controller-10-100-1-001"}], "tunnels": []}


@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "store" / "deployments.sqlite"))
    yield opened
    opened.close()


def test_a_new_deployment_is_recorded_and_listed(store):
    assert store.begin("demo", CONFIG, PLAN) is False
    record = store.get("demo")
    assert (record["config"], record["plan"], record["status"]) == (CONFIG, PLAN, "deploying")
    assert [entry["name"] for entry in store.list()] == ["demo"]


def test_deploying_again_with_the_same_config_resumes_at_the_first_step_not_done(store):
    store.begin("demo", CONFIG, PLAN)
    store.mark_step("demo", "create:controller", "done")
    store.mark_step("demo", "devstack:controller", "failed", "stack.sh exited 1")
    assert store.begin("demo", CONFIG, PLAN) is True
    assert store.step_done("demo", "create:controller")
    assert not store.step_done("demo", "devstack:controller")
    assert not store.step_done("demo", "never-seen")


def test_the_same_name_with_another_config_is_refused(store):
    store.begin("demo", CONFIG, PLAN)
    with pytest.raises(StoreError, match="exists with a different config; destroy it first"):
        store.begin("demo", {**CONFIG, "nodes": [{"type": "LxcEngine"}]}, PLAN)


def test_resources_come_back_in_the_order_they_were_recorded_and_once(store):
    store.begin("demo", CONFIG, PLAN)
    for kind, name in [("network", "lxcbr-0a640100"), ("container", "c1"), ("container", "c2")]:
        store.add_resource("demo", "localhost", kind, name, {"why": kind})
    store.add_resource("demo", "localhost", "container", "c1")
    assert [(r["kind"], r["name"]) for r in store.resources("demo")] == [
        ("network", "lxcbr-0a640100"),
        ("container", "c1"),
        ("container", "c2"),
    ]
    store.remove_resource("demo", "localhost", "container", "c1")
    assert [r["name"] for r in store.resources("demo")] == ["lxcbr-0a640100", "c2"]
    store.delete("demo")
    assert store.resources("demo") == [] and store.get("demo", missing_ok=True) is None


def test_a_missing_deployment_says_how_to_find_the_others(store):
    with pytest.raises(StoreError, match="`coordinator list` shows them"):
        store.get("nope")


def hold_lock(store, name):
    """Another process holding the deployment's lock, as a second coordinator would; kill it to let go."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from coordinator.store import Store
        with Store({store.path!r}).lock({name!r}):
            print("locked", flush=True)
            time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_two_coordinators_cannot_work_on_one_deployment(store):
    holder = hold_lock(store, "demo")
    try:
        with pytest.raises(StoreError, match=rf"being worked on by coordinator pid {holder.pid}"), store.lock("demo"):
            pass
        with store.lock("other"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("demo"):  # the kernel released the dead holder's lock
        pass


def test_a_deploy_whose_coordinator_died_shows_as_interrupted_not_deploying(store):
    store.begin("demo", CONFIG, PLAN)
    assert not store.locked("demo") and shown_status(store, store.get("demo")) == "interrupted"
    holder = hold_lock(store, "demo")
    try:
        assert store.locked("demo") and not store.locked("other")
        assert shown_status(store, store.get("demo")) == "deploying"
    finally:
        holder.kill()
        holder.wait()
    assert not store.locked("demo"), "the kernel dropped the dead holder's lock"
    assert shown_status(store, store.get("demo")) == "interrupted"
    store.set_status("demo", "failed")
    assert shown_status(store, store.get("demo")) == "failed"


def test_an_unwritable_store_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the deployment store"):
        Store(str(blocker / "deployments.sqlite"))


def test_a_record_that_is_not_json_names_the_deployment_and_how_to_remove_it(store):
    store.begin("demo", CONFIG, PLAN)
    store._sql("UPDATE deployments SET plan = '{' WHERE name = 'demo'")
    with pytest.raises(
        StoreError,
        match=r"deployment 'demo' in .*: its recorded plan is damaged \(not JSON: "
        r".*DELETE FROM deployments WHERE name = 'demo'",
    ):
        store.get("demo")
    assert [entry["name"] for entry in store.list()] == ["demo"], "list reads no plan"


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path):
    path = tmp_path / "deployments.sqlite"
    path.write_bytes(b"\x00not sqlite\x00" * 200)
    with pytest.raises(
        StoreError,
        match=rf"cannot use the deployment store {path}: file is not a database; is it "
        r"the coordinator's store\?",
    ):
        Store(str(path))


def test_store_writes_are_logged(store, caplog):
    caplog.set_level("DEBUG", logger="coordinator.store")
    store.begin("demo", CONFIG, PLAN)
    store.mark_step("demo", "devstack:c", "done")
    store.begin("demo", CONFIG, PLAN)
    assert [record.getMessage() for record in caplog.records] == [
        f"recorded new deployment 'demo' in {store.path}",
        "deployment 'demo': step devstack:c done",
        "deployment 'demo': status deploying",
        "deployment 'demo' is on record with this config: resuming",
    ]
