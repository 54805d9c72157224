#!/usr/bin/env bash
# fake-devstack unstack.sh -- a STAND-IN for devstack's unstack.sh: stops and removes the devstack@fake-* units.
set -o errexit -o pipefail
echo "fake-devstack: this is a stand-in for devstack's unstack.sh"
for unit in devstack@fake-controller.service devstack@fake-compute.service; do
    if [[ -e /etc/systemd/system/$unit ]]; then
        sudo systemctl disable --now "$unit" || true
        sudo rm -f "/etc/systemd/system/$unit"
    fi
done
for command in openstack nova-manage; do
    [[ $(readlink "/usr/local/bin/$command" 2>/dev/null) == */fake_openstack.py ]] && sudo rm -f "/usr/local/bin/$command"
done
sudo systemctl daemon-reload
