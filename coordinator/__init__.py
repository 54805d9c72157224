"""coordinator: reads a deployment config, plans the whole cloud, and (later) walks the plan through the agents."""

import importlib.metadata

try:
    # Written once, in pyproject.toml; read back from the installed distribution's metadata.
    __version__ = importlib.metadata.version("lxc-cloud-deployer")
except importlib.metadata.PackageNotFoundError:  # a source tree never installed (make deps, pip install -e .)
    __version__ = "0+unknown"
