"""lxc-agent: the root daemon that owns one hardware node's containers, storage and networks."""

import importlib.metadata

try:
    # Written once, in pyproject.toml; read back from the installed distribution's metadata.
    __version__ = importlib.metadata.version("lxc-cloud-deployer")
except importlib.metadata.PackageNotFoundError:  # a source tree never installed (make deps, pip install -e .)
    __version__ = "0+unknown"
