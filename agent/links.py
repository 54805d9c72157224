"""One host link by name, asked of the kernel alone: never a dump of every link.

pyroute2's ``get_links(ifname=...)`` dumps every link of the namespace and filters in Python. With thousands of
containers that is thousands of veths, each reporting its peer's namespace id, which the kernel looks up by a
linear search of the namespace's peers: one dump costs O(links x namespaces). A start of one container looked up
its bridge and segments that way four or five times.
"""

import errno

from pyroute2 import NetlinkError


def named(ipr, name):
    """The link called `name` in the namespace of `ipr`, or None: one RTM_GETLINK. Other netlink errors are
    raised for the caller to word."""
    try:
        return next(iter(ipr.link("get", ifname=name)), None)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return None
        raise


def mtu(ipr, name):
    """The MTU of link `name`, or None when there is no such link."""
    link = named(ipr, name)
    return None if link is None else link.get_attr("IFLA_MTU")
