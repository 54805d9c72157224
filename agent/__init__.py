"""lxc-agent: the root daemon that owns one hardware node's containers, storage and networks."""


def __getattr__(name):
    """__version__, read when asked: importlib.metadata costs 3 MiB of heap, and agent.starter (a process per
    batch of starts, copied into every container's monitor) imports this package without needing it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib.metadata

    try:
        # Written once, in pyproject.toml; read back from the installed distribution's metadata.
        return importlib.metadata.version("lxc-cloud-deployer")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed (make deps, pip install -e .)
        return "0+unknown"
