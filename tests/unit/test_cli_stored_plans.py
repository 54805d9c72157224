"""Commands that read a stored plan (show, destroy, deploy resuming, list) with a record this coordinator cannot
read: another version's plan or a damaged one ends with the words of that error and exit status 1, never a
traceback, and without asking any agent (the records name hosts that do not exist here)."""

import json
import sqlite3
from pathlib import Path

import pytest

from coordinator import cli, topology
from coordinator.config import load_config
from coordinator.store import Store

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "configs" / "seed.json"

OLDER = "deployment made by an older coordinator (plan version 2; this one reads versions"
NOT_A_PLAN = "not a plan this coordinator can read (version None;"
NOT_JSON = "its recorded plan is damaged (not JSON:"
HOLLOW = "its recorded plan is damaged (KeyError:"


def version_2(plan):
    return {**plan, "version": 2}


def hollow(plan):
    """This version's number, none of its parts."""
    return {"version": plan["version"], "type": plan["type"]}


# (id, how the record's plan is written, words the error ends with)
RECORDS = [
    ("version-2", version_2, OLDER),
    ("json-not-a-plan", lambda plan: ["garbage"], NOT_A_PLAN),
    ("not-json", None, NOT_JSON),
    ("this-version-without-its-parts", hollow, HOLLOW),
]


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store" / "deployments.sqlite"


def record(store_path, name, write):
    """A record of the seed deployed under `name`, its plan replaced as `write` says (None: text that is not
    JSON, written past the store's own API as a damaged file would hold it)."""
    config = load_config(SEED)
    plan = topology.plan(config).to_dict()
    store = Store(str(store_path))
    try:
        store.begin(name, config.data, write(plan) if write else plan)
        store.set_status(name, "failed")
    finally:
        store.close()
    if write is None:
        with sqlite3.connect(store_path) as db:
            db.execute("UPDATE deployments SET plan = ? WHERE name = ?", ("{garbage", name))
        db.close()


def recorded(store_path):
    with sqlite3.connect(store_path) as db:
        names = [name for (name,) in db.execute("SELECT name FROM deployments ORDER BY name")]
    db.close()
    return names


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, command, name, store_path, words):
    assert code == 1, err
    assert "Traceback" not in err
    assert f"coordinator {command}: deployment '{name}' in {store_path}: " in err, err
    assert words in err, err


@pytest.mark.parametrize("write,words", [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
@pytest.mark.parametrize(
    "command", [["show", "old"], ["show", "old", "--json"], ["destroy", "old"]], ids=["show", "show-json", "destroy"]
)
def test_show_and_destroy_refuse_a_plan_they_cannot_read(capsys, store_path, command, write, words):
    record(store_path, "old", write)
    code, out, err = run(capsys, *command, "--store", store_path)
    assert_refused(code, err, command[0], "old", store_path, words)
    assert out == ""
    assert recorded(store_path) == ["old"], "the record stays"


@pytest.mark.parametrize("write,words", [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
@pytest.mark.parametrize("changed", [False, True], ids=["same-config", "changed-config"])
def test_deploying_again_under_the_name_of_such_a_record_is_refused_before_anything(
    capsys, store_path, tmp_path, write, words, changed
):
    record(store_path, "old", write)
    config = SEED
    if changed:
        data = json.loads(SEED.read_text())
        data["nodes"][0]["engine"]["localrc"]["DATABASE_TYPE"] = "postgresql"
        config = tmp_path / "changed.json"
        config.write_text(json.dumps(data))
    code, out, err = run(
        capsys, "deploy", config, "--name", "old", "--store", store_path, "--log-dir", tmp_path / "logs"
    )
    assert_refused(code, err, "deploy", "old", store_path, words)
    assert out == ""
    assert "Resuming" not in err and "Deploying" not in err
    with sqlite3.connect(store_path) as db:
        assert db.execute("SELECT status FROM deployments WHERE name = 'old'").fetchone() == ("failed",)
        assert db.execute("SELECT count(*) FROM steps").fetchone() == (0,)
    db.close()


@pytest.mark.parametrize("write,words", [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
def test_list_shows_every_record_and_says_which_it_cannot_read(capsys, store_path, write, words):
    record(store_path, "good", lambda plan: plan)
    record(store_path, "old", write)
    code, out, err = run(capsys, "list", "--store", store_path)
    assert_refused(code, err, "list", "old", store_path, words)
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    assert [row[:3] for row in cells] == [["good", "failed", "65"], ["old", "failed", "?"]], out
    assert err.startswith("coordinator list: ") and "good" not in err


def test_list_of_readable_records_exits_0(capsys, store_path):
    record(store_path, "good", lambda plan: plan)
    code, out, err = run(capsys, "list", "--store", store_path)
    assert (code, err) == (0, "")
    assert "good" in out


def test_a_damaged_config_in_the_record_is_named_too(capsys, store_path):
    record(store_path, "old", lambda plan: plan)
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE deployments SET config = 'nope' WHERE name = 'old'")
    db.close()
    code, out, err = run(capsys, "show", "old", "--store", store_path)
    assert_refused(code, err, "show", "old", store_path, "its recorded config is damaged (not JSON:")
    assert out == ""
    assert "DELETE FROM deployments WHERE name = 'old'" in err, "says how to remove the record"


def test_a_store_file_that_is_no_database_is_an_error_not_a_traceback(capsys, tmp_path):
    path = tmp_path / "deployments.sqlite"
    path.write_text("not a database, " * 100)
    code, out, err = run(capsys, "list", "--store", path)
    assert (code, out) == (1, "") and "Traceback" not in err
    assert err.startswith(f"coordinator list: cannot use the deployment store {path}: file is not a database"), err
