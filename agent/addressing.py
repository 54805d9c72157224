"""The addressing rule of a container subnet, shared by the agents and the planner (one source for both).

The subnet's first address is its gateway and sits on the bridge; containers take the addresses after it; the
network and broadcast addresses are nobody's. So a subnet of N addresses holds N - 3 containers.
"""

import ipaddress


def gateway(subnet):
    """The gateway of a subnet (an IPv4Network or its text): its first address."""
    return ipaddress.IPv4Network(subnet).network_address + 1


def capacity(subnet):
    """How many containers a subnet holds: all of it but the network, gateway and broadcast addresses."""
    return max(ipaddress.IPv4Network(subnet).num_addresses - 3, 0)


def reserved(subnet):
    """The addresses of a subnet no container may take."""
    network = ipaddress.IPv4Network(subnet)
    return frozenset({network.network_address, gateway(network), network.broadcast_address})
