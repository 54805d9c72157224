"""lxc-agent: the root daemon that owns one hardware node's containers, storage and networks."""

__version__ = "0.1.0"
