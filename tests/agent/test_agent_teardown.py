"""The fixtures' Teardown: every clean-up step runs, and what failed is reported, never swallowed."""

import pytest

from tests.agent.conftest import Teardown


def busy(what, ran=None):
    if ran is not None:
        ran.append(what)
    raise OSError(f"{what} is busy")


def test_every_step_runs_and_the_failures_are_reported_together():
    ran = []

    with pytest.raises(pytest.fail.Exception) as caught:
        with Teardown("the test rig") as teardown:
            teardown.step("unmount", busy, "mnt", ran)
            teardown.step("remove", ran.append, "folder")
            teardown.step("delete", busy, "netns", ran)
    assert ran == ["mnt", "folder", "netns"]
    assert str(caught.value) == ("clean-up of the test rig failed; remove what is left by hand:\n"
                                 "  unmount: OSError: mnt is busy\n  delete: OSError: netns is busy")


def test_a_clean_up_that_succeeds_says_nothing():
    with Teardown("the test rig") as teardown:
        teardown.step("remove", lambda: None)


def test_while_a_fixture_is_already_failing_its_clean_up_failures_are_a_warning():
    with pytest.raises(RuntimeError, match="setup broke"), pytest.warns(UserWarning, match="netns is busy"):
        with Teardown("the test rig") as teardown:
            teardown.step("delete", busy, "netns")
            raise RuntimeError("setup broke")
