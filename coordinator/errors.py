"""The coordinator's root error: everything it refuses or fails at with words for the user is one of these, so the
CLI reports it without a traceback and a script catches one class."""


class CoordinatorError(Exception):
    """A failure the coordinator explains: the message names the config path, the host or node, and what to do."""
