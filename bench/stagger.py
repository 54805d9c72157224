#!/usr/bin/env python3
"""How a group's starts_per_second changes the time a real cloud takes to converge, measured in one run.

Usage: bench/stagger.py [--computes 64] [--rates 8,2]
Deploys a real cloud through the coordinator CLI (simlab.cloud: devstack stable/2026.1 from ../shared/openstack,
one controller and one stacked fake compute) with an agent in this machine's own namespace on a loop-file btrfs.
Then, on that one controller, grows the group to N computes with `coordinator scale` as fast as the start scripts
run (16 at once), shrinks it back to 1, and grows it again at each rate of `--rates` (computes started per
second, over the group). Each growth prints the scale's own figures: how long making and starting the clones took
(their start scripts paced), and the convergence time the coordinator reports (from the clones' start until all N
are up nova-compute services and up hypervisors). Destroys the cloud; last line `paced_ratio=X.XX`: the
convergence time at the first rate over the unpaced one.
"""

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simlab.cloud import cloud_config, coordinator, free_subnet, local_agent, require_real_cloud

CONVERGED = re.compile(r"(\d+)/(\d+) nova-compute services up as (\d+) hypervisors .* in (\S+)")
PHASE = re.compile(r"^(add computes|remove computes)\s+([\d.]+) s$", re.M)


def seconds(shown):
    """The coordinator's duration (45s, 2m41s, 1h02m) in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", shown)
    if not match or not any(match.groups()):
        raise SystemExit(f"cannot read the duration {shown!r}")
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def grow(common, computes, rate):
    """Scale to `computes` (at `rate` per second, or unpaced for None); the scale's phases and convergence."""
    pace = ["--starts-per-second", f"{rate:g}"] if rate else []
    began = time.monotonic()
    result = coordinator("scale", "stagger", "--computes", str(computes), *pace, *common)
    took = time.monotonic() - began
    converged = CONVERGED.search(result.stdout)
    if not converged or not converged.group(1) == converged.group(2) == converged.group(3) == str(computes):
        raise SystemExit(f"the cloud did not converge:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    phases = {name: float(value) for name, value in PHASE.findall(result.stderr)}
    return took, phases, seconds(converged.group(4))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=64, help="fake computes at each growth (default 64)")
    parser.add_argument(
        "--rates", default="8,2", help="starts per second to compare with unpaced, comma-separated (default 8,2)"
    )
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",") if rate]
    require_real_cloud("bench/stagger.py")
    if args.computes < 2 or not rates or min(rates) <= 0:
        sys.exit("need --computes of 2 or more and at least one rate above 0")
    subnet = free_subnet()
    if subnet is None:
        sys.exit("no free /24 in 10.250.0.0/16 on this machine")
    converged = {}
    with local_agent("stagger", "lxcagent-stagger-") as (process, scratch, common):
        config = f"{scratch}/cloud.json"
        with open(config, "w") as handle:
            json.dump(cloud_config(process.port, subnet, 1, "sg"), handle)
        began = time.monotonic()
        coordinator("deploy", config, "--name", "stagger", "--log-dir", f"{scratch}/logs", *common)
        print(f"deployed 1 controller + 1 fake compute in {time.monotonic() - began:.0f} s", flush=True)
        for rate in (None, *rates):
            took, phases, converged[rate] = grow(common, args.computes, rate)
            shown = f"{rate:g} per second" if rate else "unpaced"
            print(
                f"1 -> {args.computes} computes, {shown:>15}: clones made and started in "
                f"{phases.get('add computes', 0):6.1f} s, converged {converged[rate]:4d} s after the clones' "
                f"start (the scale took {took:.0f} s)",
                flush=True,
            )
            coordinator("scale", "stagger", "--computes", "1", *common)
    print(f"paced_ratio={converged[rates[0]] / max(1, converged[None]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
