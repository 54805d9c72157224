#!/usr/bin/env bash
# ============================================================================================================
#  fake-devstack stack.sh -- a STAND-IN for devstack's stack.sh, for the tests of the deploy's mechanics.
#  It installs no OpenStack. It reads local.conf's [[local|localrc]] section the way devstack does (extract,
#  then source with bash), records what it saw in $DATA_DIR/fake-devstack/, and starts one small process per
#  role as a systemd unit named like devstack's: devstack@fake-controller.service (a listener on RabbitMQ's
#  port 5672 that collects reports, with stand-ins for `openstack` and `nova-manage` that answer from them)
#  and/or devstack@fake-compute.service (reports "<nova host> <address> <compute_id>" to $RABBIT_HOST:5672
#  every few seconds, with nova-fake.conf-N identities as devstack's fake driver writes them).
# ============================================================================================================
set -o errexit -o pipefail

echo "fake-devstack: this is a stand-in for devstack's stack.sh; no OpenStack service is installed"

TOP_DIR=$(cd "$(dirname "$0")" && pwd)

if [[ $EUID -eq 0 ]]; then
    echo "You are running this script as root."
    echo "Cut it out."
    echo "Really."
    echo "Run it as a user with passwordless sudo (devstack's tools/create-stack-user.sh makes one: stack)."
    exit 1
fi

source "$TOP_DIR/lib/fake-devstack"
fake_load_localrc "$TOP_DIR"

# Devstack stops to ask for these when local.conf does not set them; a stand-in run without a terminal fails.
missing=()
for name in ADMIN_PASSWORD DATABASE_PASSWORD RABBIT_PASSWORD SERVICE_PASSWORD; do
    [[ -n ${!name:-} ]] || missing+=("$name")
done
if (( ${#missing[@]} )); then
    echo "fake-devstack: local.conf does not set ${missing[*]}; devstack would stop here to ask for them" >&2
    exit 1
fi

mkdir -p "$FAKE_DATA"
echo "fake-devstack: recording what local.conf said in $FAKE_DATA"
pairs=()
: >"$FAKE_DATA/localrc.env.tmp"
while read -r name; do
    printf '%s=%q\n' "$name" "${!name-}" >>"$FAKE_DATA/localrc.env.tmp"
    pairs+=("$name=${!name-}")
done < <(fake_localrc_names "$TOP_DIR/.localrc.auto")
mv "$FAKE_DATA/localrc.env.tmp" "$FAKE_DATA/localrc.env"
python3 -c '
import json, sys
with open(sys.argv[1], "w") as out:
    json.dump(dict(pair.split("=", 1) for pair in sys.argv[2:]), out, indent=1, sort_keys=True)
    out.write("\n")
' "$FAKE_DATA/localrc.json" "${pairs[@]}"
printf '%s\n' "$FAKE_SERVICES" >"$FAKE_DATA/services"
: >"$FAKE_DATA/plugins"
if (( ${#FAKE_PLUGINS[@]} )); then printf '%s\n' "${FAKE_PLUGINS[@]}" >"$FAKE_DATA/plugins"; fi
echo "fake-devstack: ENABLED_SERVICES=$FAKE_SERVICES"

# FAKE-DEVSTACK: failure point

roles=$(fake_roles)
printf '%s\n' $roles >"$FAKE_DATA/roles"

# As devstack's fake virt driver does: one config per fake compute, naming its nova host and a state path that
# holds its compute_id (the compute node's UUID). The stand-in's compute reports as these hosts.
if [[ " $roles " == *" fake-compute "* && ${VIRT_DRIVER:-} == fake ]]; then
    sudo mkdir -p /etc/nova
    for i in $(seq 1 "${NUMBER_FAKE_NOVA_COMPUTE:-1}"); do
        state_path=$DATA_DIR/nova/$(hostname)$i
        sudo mkdir -p "$state_path"
        printf '[DEFAULT]\nhost = %s\nstate_path = %s\n' "$(hostname)$i" "$state_path" |
            sudo tee "/etc/nova/nova-fake.conf-$i" >/dev/null
        python3 -c 'import uuid; print(uuid.uuid4())' | sudo tee "$state_path/compute_id" >/dev/null
    done
fi

# The controller answers as nova's clients would: stand-ins for `openstack` and `nova-manage` (see
# tools/fake_openstack.py), built on the reports the computes send.
if [[ " $roles " == *" fake-controller "* ]]; then
    for command in openstack nova-manage; do
        sudo ln -sfn "$TOP_DIR/tools/fake_openstack.py" "/usr/local/bin/$command"
    done
fi
for role in $roles; do
    unit="devstack@$role.service"
    echo "fake-devstack: starting $unit"
    cat >"$FAKE_DATA/$unit" <<UNIT
[Unit]
Description = Devstack $unit (fake-devstack stand-in)
After = network.target

[Service]
ExecStart = $TOP_DIR/tools/fake-service $role
User = $(id -un)
Restart = on-failure
RestartSec = 2
KillMode = process
TimeoutStopSec = 10

[Install]
WantedBy = multi-user.target
UNIT
    sudo install -m 0644 "$FAKE_DATA/$unit" "/etc/systemd/system/$unit"
    sudo systemctl daemon-reload
    sudo systemctl enable "$unit"
    sudo systemctl restart "$unit"
done

# With sudo: a user's systemctl needs D-Bus, which minimal images lack; root's talks to systemd directly.
for role in $roles; do
    unit="devstack@$role.service"
    for _ in $(seq 50); do
        sudo systemctl is-active --quiet "$unit" && break
        sleep 0.2
    done
    if ! sudo systemctl is-active --quiet "$unit"; then
        echo "fake-devstack: $unit did not stay up:" >&2
        sudo journalctl -u "$unit" --no-pager -n 20 >&2 || true
        exit 1
    fi
done

# A real stack.sh takes minutes: FAKE_STACK_SECONDS in local.conf makes the stand-in take that long too (tests of
# what happens while one runs).
if [[ -n ${FAKE_STACK_SECONDS:-} ]]; then
    echo "fake-devstack: taking ${FAKE_STACK_SECONDS} s more, as local.conf's FAKE_STACK_SECONDS asks"
    sleep "$FAKE_STACK_SECONDS"
fi

echo "fake-devstack: stack.sh completed (roles: $(echo $roles)); this was the stand-in, not devstack"
