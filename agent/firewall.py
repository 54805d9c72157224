"""The agent's nftables rules (libnftables, JSON commands): masquerade for each host bridge's subnet, and for each
tunnel an exemption from it, so container traffic keeps its source address inside the tunnel.

All of it lives in one table (ip lxc_agent) with one nat chain (postrouting). Each rule carries a comment naming
what it is for (`lxc-agent:<bridge>`, `lxc-agent-tunnel:<tunnel>`, the words of the links' own ifalias tags), so
the agent finds its rules again without a state file. The table goes when its last rule does.
"""

import logging

import nftables

from agent.errors import NetworkError

FAMILY = "ip"
TABLE = "lxc_agent"
CHAIN = "postrouting"
BRIDGE_TAG = "lxc-agent"
TUNNEL_TAG = "lxc-agent-tunnel"

# No forward-accept chain: in nftables a packet must pass every base chain on the hook, so an accept in our
# table cannot undo a drop policy in someone else's; that policy is the administrator's to open.

log = logging.getLogger(__name__)


def ensure_masquerade(bridge, network):
    """Masquerade what the bridge's subnet sends off the host; one rule per bridge, a stale one replaced."""
    subject = ("bridge", bridge)
    rules = _rules(subject) or []
    expr = _masquerade_expr(bridge, network)
    tagged = [rule for rule in rules if rule.get("comment") == _comment(BRIDGE_TAG, bridge)]
    if len(tagged) == 1 and tagged[0]["chain"] == CHAIN and tagged[0]["expr"] == expr:
        return
    # One transaction: stale rules for this bridge (an older subnet) go as the right one arrives.
    commands = _chain_commands() + [_delete_rule(rule) for rule in tagged]
    commands.append(
        {
            "add": {
                "rule": {
                    "family": FAMILY,
                    "table": TABLE,
                    "chain": CHAIN,
                    "expr": expr,
                    "comment": _comment(BRIDGE_TAG, bridge),
                }
            }
        }
    )
    _nft(commands, subject, f"add masquerade for {network}")
    log.info(
        "nftables: masquerade %s leaving the host from bridge %s%s",
        network,
        bridge,
        f" (replaced {len(tagged)} stale rule(s))" if tagged else "",
    )


def remove_masquerade(bridge):
    """Remove the bridge's masquerade rule, and the agent's table with it once nothing else is in it."""
    _remove_tagged(("bridge", bridge), BRIDGE_TAG, "masquerade", "remove its masquerade rule")


def ensure_exemption(tunnel):
    """Accept (leave unmasqueraded) what leaves through the tunnel, ahead of every masquerade rule."""
    subject = ("tunnel", tunnel)
    rules = _rules(subject) or []
    chain = [rule for rule in rules if rule["chain"] == CHAIN]
    tagged = [rule for rule in rules if rule.get("comment") == _comment(TUNNEL_TAG, tunnel)]
    # Ahead of every masquerade: a bridge's rule matches `oifname != <bridge>`, which the tunnel is.
    first_nat = next(
        (
            position
            for position, rule in enumerate(chain)
            if any("masquerade" in item or "snat" in item for item in rule["expr"])
        ),
        len(chain),
    )
    if len(tagged) == 1 and tagged[0] in chain[:first_nat] and tagged[0]["expr"] == _exemption_expr(tunnel):
        return
    commands = _chain_commands() + [_delete_rule(rule) for rule in tagged]
    commands.append(
        {
            "insert": {
                "rule": {
                    "family": FAMILY,
                    "table": TABLE,
                    "chain": CHAIN,
                    "expr": _exemption_expr(tunnel),
                    "comment": _comment(TUNNEL_TAG, tunnel),
                }
            }
        }
    )
    _nft(commands, subject, "exempt the tunnel from masquerade")
    log.info(
        "nftables: traffic through tunnel %s is exempt from masquerade%s",
        tunnel,
        f" (replaced {len(tagged)} stale rule(s))" if tagged else "",
    )


def remove_exemption(tunnel):
    """Remove the tunnel's exemption, and the agent's table with it once nothing else is in it."""
    _remove_tagged(("tunnel", tunnel), TUNNEL_TAG, "masquerade exemption", "remove its NAT exemption")


def _remove_tagged(subject, tag, what, doing):
    """Delete the rules tagged for one bridge or tunnel; the whole table instead when they are all it holds (an
    empty table of the agent's goes too)."""
    rules = _rules(subject)
    if rules is None:
        return
    tagged = [rule for rule in rules if rule.get("comment") == _comment(tag, subject[1])]
    table_too = len(tagged) == len(rules)
    commands = [_delete_table()] if table_too else [_delete_rule(rule) for rule in tagged]
    if commands:
        _nft(commands, subject, doing)
        _log_removal(subject, what, tagged, table_too)


def _log_removal(subject, what, removed, table_too):
    kind, name = subject
    if removed:
        log.info(
            "nftables: removed the %s of %s %s%s",
            what,
            kind,
            name,
            f" and the table {FAMILY} {TABLE}, now empty" if table_too else "",
        )
    elif table_too:
        log.info("nftables: removed the empty table %s %s", FAMILY, TABLE)


# --- commands ---


def _comment(tag, name):
    return f"{tag}:{name}"


def _masquerade_expr(bridge, network):
    prefix = {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
    return [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": prefix}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": prefix}},
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": bridge}},
        {"masquerade": None},
    ]


def _exemption_expr(tunnel):
    return [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": tunnel}}, {"accept": None}]


def _chain_commands():
    """The agent's table and nat chain, added if missing (no-ops when they exist)."""
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {
            "add": {
                "chain": {
                    "family": FAMILY,
                    "table": TABLE,
                    "name": CHAIN,
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": 100,
                    "policy": "accept",
                }
            }
        },
    ]


def _delete_rule(rule):
    return {"delete": {"rule": {"family": FAMILY, "table": TABLE, "chain": rule["chain"], "handle": rule["handle"]}}}


def _delete_table():
    return {"delete": {"table": {"family": FAMILY, "name": TABLE}}}


# --- libnftables ---


def _rules(subject):
    """Rules of the agent's table in chain order, or None when the table does not exist."""
    tables = _nft([{"list": {"tables": {"family": FAMILY}}}], subject, "list tables")
    if not any(item.get("table", {}).get("name") == TABLE for item in tables):
        return None
    listing = _nft([{"list": {"table": {"family": FAMILY, "name": TABLE}}}], subject, f"list table {TABLE}")
    return [item["rule"] for item in listing if "rule" in item]


def _nft(commands, subject, what):
    """Run one transaction; `subject` is ("bridge" or "tunnel", name), the link the rules are for."""
    kind, name = subject
    nft = nftables.Nftables()
    nft.set_handle_output(True)
    rc, output, error = nft.json_cmd({"nftables": commands})
    if rc != 0:
        raise NetworkError(
            f"nftables refused to {what} for {kind} {name}: {error.strip() or f'rc {rc}'}; check "
            f"`nft list table {FAMILY} {TABLE}` and that the kernel has nf_tables with nat",
            **{kind: name},
        )
    return output["nftables"] if output else []
