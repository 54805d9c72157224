"""The agent's error tree; registered with Pyro5 so each crosses RPC as itself, not as SerializeError."""

from Pyro5 import serializers


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details
        self.__dict__.update(details)  # error.container, error.stdout ... for callers

    def __str__(self):
        return self.message


class InvalidArgument(AgentError):
    """A request the agent refuses before changing anything."""


class NotFound(AgentError):
    """A container, subvolume or link that does not exist."""


class Conflict(AgentError):
    """Something exists already, but not in the state asked for."""


class ContainerError(AgentError):
    """liblxc refused or failed an operation on a container."""


class StorageError(AgentError):
    """A btrfs, overlay or copy operation failed."""


class NetworkError(AgentError):
    """A bridge, address, NAT, tunnel or route operation failed."""


class CommandTimeout(AgentError):
    """A command run inside a container did not finish in time."""


class BatchError(AgentError):
    """A batch failed for some names; `succeeded` lists the others, `failed` maps name -> reason."""

    def __init__(self, operation, succeeded, failed):
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
        message = f"{operation} failed for {len(failed)} of {len(failed) + len(succeeded)} container(s): {reasons}"
        super().__init__(message, operation=operation, succeeded=list(succeeded), failed=dict(failed))
        self.operation = operation
        self.succeeded = list(succeeded)
        self.failed = dict(failed)


class AuthenticationError(AgentError):
    """The client did not present the agent's token."""


ALL_ERRORS = (
    AgentError,
    InvalidArgument,
    NotFound,
    Conflict,
    ContainerError,
    StorageError,
    NetworkError,
    CommandTimeout,
    BatchError,
    AuthenticationError,
)


def _to_dict(error):
    # vars() carries our fields and the remote traceback Pyro5 attaches as _pyroTraceback.
    return {
        "__class__": f"{type(error).__module__}.{type(error).__name__}",
        "__exception__": True,
        "args": list(error.args),
        "attributes": dict(vars(error)),
    }


def _from_dict(classname, data):
    error = _BY_NAME[classname].__new__(_BY_NAME[classname])
    Exception.__init__(error, *data["args"])
    error.__dict__.update(data["attributes"])
    return error


_BY_NAME = {f"{cls.__module__}.{cls.__name__}": cls for cls in ALL_ERRORS}


def register_with_pyro():
    """Both sides call this: the server to send our errors whole, the client to rebuild them."""
    for name, cls in _BY_NAME.items():
        serializers.SerializerBase.register_class_to_dict(cls, _to_dict)
        serializers.SerializerBase.register_dict_to_class(name, _from_dict)


register_with_pyro()
