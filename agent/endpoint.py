"""Where an lxc-agent is reached and what it answers to, shared by the daemon and its clients.

Kept apart from agent.daemon so that a client (the coordinator, a user's script) imports no liblxc, btrfsutil or
nftables just to learn a port number.
"""

OBJECT_ID = "lxc.agent"  # the Pyro5 object id of the one exposed AgentService
DEFAULT_PORT = 7643
DEFAULT_PKI = "/etc/lxc-agent/pki"  # where `lxc-agent init-pki` writes, and where both sides look by default
# Starts the reason of a refused connect handshake when the agent is full (max_clients): try again shortly.
BUSY = "busy:"
