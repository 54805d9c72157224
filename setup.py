"""Deployer for large "dummy" OpenStack clouds in LXC containers."""
from setuptools import find_packages, setup

setup(
    name="lxc-cloud-deployer",
    version="0.1.0",
    description="Deploy one controller and many fake compute nodes in LXC containers",
    packages=find_packages(include=["agent", "agent.*", "coordinator", "coordinator.*", "simlab"]),
    python_requires=">=3.11",
    # python3-lxc, python3-btrfsutil and python3-nftables come from Debian (apt), not PyPI:
    # the virtual environment is made with --system-site-packages to see them.
    install_requires=[
        "Pyro5>=5.15",
        "pyroute2>=0.7",
        "jsonschema>=4.17",
        "PyYAML>=6",
        "cryptography>=41",
        "rich>=13",
    ],
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2"]},
    entry_points={
        "console_scripts": [
            "lxc-agent = agent.daemon:main",
            "coordinator = coordinator.cli:main",
        ]
    },
)
