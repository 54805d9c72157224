# Two commands do everything on a fresh Debian/Ubuntu machine (as root): `make test` and `make demo`.
# Both install what is missing first and are safe to run twice.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := lxc lxc-templates python3-lxc btrfs-progs python3-btrfsutil python3-nftables nftables \
                distro-info gawk busybox-static debootstrap rsync iproute2 iputils-ping util-linux openssl python3-venv systemd
PYTEST_ARGS ?=

.PHONY: deps apt test test-slow test-devstack demo demo-clean demo-agent bench clean

deps: apt $(VENV)/.installed

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# liblxc, btrfsutil and nftables bindings exist for Debian's own interpreter only: the venv is made from it.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

test: deps
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: deps
	$(PY) -m pytest -m "slow and not devstack" $(PYTEST_ARGS)

# A real cloud: devstack stable/2026.1 from the git bundles in ../shared/openstack, 1 controller + 4 computes.
test-devstack: deps
	$(PY) -m pytest -m devstack $(PYTEST_ARGS)

# The seed's cloud on this machine with real devstack: a controller and 64 fake computes in Debian containers.
# OpenStack's sources: OPENSTACK_MIRROR (a folder of git bundles or repositories; ../shared/openstack when it
# exists), else opendev.org.
OPENSTACK_MIRROR ?= $(wildcard ../shared/openstack)
demo: deps
	OPENSTACK_MIRROR="$(OPENSTACK_MIRROR)" $(PY) examples/demo.py

demo-clean: deps
	$(PY) examples/demo.py --clean

# One agent in a simulated node: clone, start and remove 8 busybox containers, in seconds.
demo-agent: deps
	$(PY) examples/agent_demo.py

bench: deps
	$(PY) bench/clone_start.py 64
	$(PY) bench/multihost.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
