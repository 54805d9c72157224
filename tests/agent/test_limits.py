"""Host limits for many containers: raised when the agent starts, never lowered, reported by info()."""

from agent import limits


def test_the_agent_raises_host_limits_for_many_containers_and_reports_them(loopback_agent):
    reported = loopback_agent.connect().info()["limits"]
    for key, minimum in limits.MINIMUMS.items():
        name = key.replace("/", ".")
        if name in reported:
            assert reported[name] >= minimum, name
    assert reported["fs.inotify.max_user_instances"] >= 1048576


def test_limits_already_higher_are_left_alone():
    before = limits.current()
    assert limits.ensure_minimums() == {}, "a second pass changes nothing"
    assert limits.current() == before
