"""The addressing rule of a container subnet, shared by the agents and the planner (one source for both).

The subnet's first address is its gateway and sits on the bridge; containers take the addresses after it; the
network and broadcast addresses are nobody's. So a subnet of N addresses holds N - 3 containers. A container's MAC
follows from its address too.
"""

import hashlib
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


def mac_address(name, address):
    """Locally administered (02:), then a byte of the name's hash and the four bytes of the IPv4 address: unique
    on a subnet (two thousand random 24-bit MACs on one bridge collide with odds near one in four), and stable
    while name and address are, so a restarted container keeps its neighbours' ARP entries valid."""
    digest = hashlib.sha256(name.encode()).digest()
    octets = ipaddress.IPv4Interface(address).ip.packed
    return ":".join(f"{byte:02x}" for byte in (0x02, digest[0], *octets))
