#!/usr/bin/env python3
"""fake-devstack: STAND-INs for the two nova clients a deployer asks on a controller, `openstack` and `nova-manage`,
installed on the stand-in's controller under those names. They answer from the computes' reports
($FAKE_DATA/computes/<host>, one per nova host, its time the last report), the way nova would:

  openstack compute service list --service nova-compute [--host H] -f json|value [-c COL]
                                                                   a service per host (its ID the host's name), up
                                                                   if it reported lately
  openstack compute service delete ID...                          forgets the host, its mapping too
  openstack hypervisor list -f json                                a hypervisor per mapped host with a compute_id
  nova-manage cell_v2 discover_hosts [--verbose]                   maps the hosts not mapped yet
  nova-manage cell_v2 list_hosts                                   the mapped hosts, as nova-manage's table
  openstack network list | port list | security group list         nothing, as an empty cloud (no neutron here)

Anything else is refused: this is not OpenStack.
"""

import json
import os
import sys
import time

DATA = os.environ.get("FAKE_DATA", "/opt/stack/data/fake-devstack")
COMPUTES = os.path.join(DATA, "computes")
MAPPED = os.path.join(DATA, "mapped")
DOWN_AFTER = float(os.environ.get("FAKE_SERVICE_DOWN_TIME", "30"))


def computes():
    """{host: (seconds since its last report, compute_id)}."""
    found = {}
    try:
        names = sorted(os.listdir(COMPUTES))
    except FileNotFoundError:
        return found
    for host in names:
        if host.endswith(".tmp"):
            continue
        path = os.path.join(COMPUTES, host)
        with open(path) as handle:
            fields = handle.read().split()
        found[host] = (time.time() - os.path.getmtime(path), fields[1] if len(fields) > 1 else "-")
    return found


def mapped():
    try:
        with open(MAPPED) as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def option(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else None


def show(rows, args):
    """As the client prints them: `-f json`, or `-f value` with the `-c` columns."""
    if option(args, "-f") == "value":
        columns = [args[i + 1] for i, word in enumerate(args[:-1]) if word == "-c"] or list(rows[0] if rows else [])
        for row in rows:
            print(" ".join(str(row[column]) for column in columns))
    else:
        print(json.dumps(rows, indent=2))


def openstack(args):
    if args[:3] == ["compute", "service", "list"]:
        host = option(args, "--host")
        rows = [
            {
                "ID": name,
                "Binary": "nova-compute",
                "Host": name,
                "Zone": "nova",
                "Status": "enabled",
                "State": "up" if age < DOWN_AFTER else "down",
                "Updated At": time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(time.time() - age)),
            }
            for name, (age, _) in computes().items()
            if host in (None, name)
        ]
        show(rows, args)
        return 0
    if args[:3] == ["compute", "service", "delete"]:
        # As nova: the service goes with its compute node and host mapping (the stand-in's IDs are host names).
        for name in args[3:]:
            path = os.path.join(COMPUTES, name)
            if "/" in name or not os.path.exists(path):
                print(f"Failed to delete compute service with ID '{name}'", file=sys.stderr)
                return 1
            os.unlink(path)
            left = [host for host in mapped() if host != name]
            with open(MAPPED + ".tmp", "w") as handle:
                handle.writelines(host + "\n" for host in left)
            os.replace(MAPPED + ".tmp", MAPPED)
        return 0
    if args[:2] == ["hypervisor", "list"]:
        # As nova: a compute node is listed once its host is mapped to a cell (nova-manage cell_v2 discover_hosts).
        known = mapped()
        rows = [
            {"Hypervisor Hostname": host, "Hypervisor Type": "fake", "State": "up" if age < DOWN_AFTER else "down"}
            for host, (age, compute_id) in computes().items()
            if compute_id != "-" and host in known
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if args[:2] in (["network", "list"], ["port", "list"]) or args[:3] == ["security", "group", "list"]:
        # The stand-in has no neutron objects; the listing answers, as an empty cloud's does.
        print("[]" if "json" in args else "", end="\n" if "json" in args else "")
        return 0
    print(f"fake-devstack's openstack stand-in cannot do: {' '.join(args)}", file=sys.stderr)
    return 2


def nova_manage(args):
    if args[:2] == ["cell_v2", "discover_hosts"]:
        known = mapped()
        new = [host for host in computes() if host not in known]
        with open(MAPPED, "a") as handle:
            for host in new:
                handle.write(host + "\n")
        print(f"Found {len(new)} unmapped computes in cell: fake-cell")
        return 0
    if args[:2] == ["cell_v2", "list_hosts"]:
        print("+-----------+-----------+----------+")
        print("| Cell Name | Cell UUID | Hostname |")
        print("+-----------+-----------+----------+")
        for host in mapped():
            print(f"| cell1 | fake-cell | {host} |")
        print("+-----------+-----------+----------+")
        return 0
    print(f"fake-devstack's nova-manage stand-in cannot do: {' '.join(args)}", file=sys.stderr)
    return 2


def main(argv):
    command = os.path.basename(argv[0])
    return nova_manage(argv[1:]) if command == "nova-manage" else openstack(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
