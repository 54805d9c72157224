"""coordinator: reads a deployment config, plans the whole cloud, and (later) walks the plan through the agents."""

__version__ = "0.1.0"
