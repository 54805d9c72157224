"""The fixtures' Teardown: every clean-up step runs, and what failed is reported, never swallowed."""

import pytest

from tests.agent.conftest import Teardown


def busy(what, ran=None):
    if ran is not None:
        ran.append(what)
    raise OSError(f"{what} is busy")


def clean_up(steps, then=None):
    """Run `steps` [(description, function, *args)] in a Teardown, then raise `then` inside it if given."""
    with Teardown("the test rig") as teardown:
        for description, function, *args in steps:
            teardown.step(description, function, *args)
        if then is not None:
            raise then


def test_every_step_runs_and_the_failures_are_reported_together():
    ran = []
    steps = [("unmount", busy, "mnt", ran), ("remove", ran.append, "folder"), ("delete", busy, "netns", ran)]
    with pytest.raises(pytest.fail.Exception) as caught:
        clean_up(steps)
    assert ran == ["mnt", "folder", "netns"]
    assert str(caught.value) == (
        "clean-up of the test rig failed; remove what is left by hand:\n"
        "  unmount: OSError: mnt is busy\n  delete: OSError: netns is busy"
    )


def test_a_clean_up_that_succeeds_says_nothing():
    clean_up([("remove", lambda: None)])


def test_while_a_fixture_is_already_failing_its_clean_up_failures_are_a_warning():
    with pytest.raises(RuntimeError, match="setup broke"), pytest.warns(UserWarning, match="netns is busy"):
        clean_up([("delete", busy, "netns")], then=RuntimeError("setup broke"))
