# Berth's set-up and checks. `make setup` is idempotent: it installs the Debian packages Berth and
# its tests need, creates .venv/ with berthd, berth and containerd-shim-berth-v2, and generates
# berth/api from the Debian .proto files.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Runtime: the OCI runtimes. Build: containerd's protos. Tests and benchmarks: a registry, image
# tools, busybox, and containerd itself (for the real `ctr` client and as the reference). The CRI:
# CNI plugins and iptables (pod networks), catatonit (the tests' pause image).
APT_PACKAGES := python3-venv runc crun \
	golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev \
	golang-github-gogo-googleapis-dev golang-github-containerd-cgroups-dev \
	docker-registry skopeo umoci busybox-static containerd apache2-utils debootstrap openssl \
	catatonit containernetworking-plugins iptables iproute2

.PHONY: setup apt venv proto test lint run

setup: apt venv proto

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A .pth-style editable install: an import-hook finder would cost every start of a Berth
# process (a shim start among them) about 10 ms of imports.
venv: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' \
		--config-settings editable_mode=compat
	$(BIN)/python tools/shim_launcher.py

proto: venv
	$(BIN)/python tools/genproto.py

test:
	$(BIN)/pytest -q

lint:
	$(BIN)/mypy berth
	$(BIN)/ruff check berth tests bench tools

run:
	$(BIN)/berthd

# The systemd unit (contrib/systemd/berthd.service) with ExecStart set to this checkout's berthd.
# SYSTEMD_UNIT_DIR and BERTHD may be overridden (a packaged berthd, a staging directory).
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
BERTHD ?= $(abspath $(BIN))/berthd

.PHONY: install-systemd
install-systemd:
	@test -x '$(BERTHD)' || { echo "install-systemd: $(BERTHD) is not executable: run make setup first" >&2; exit 1; }
	install -d -m 0755 '$(SYSTEMD_UNIT_DIR)'
	sed 's|@BERTHD@|$(BERTHD)|' contrib/systemd/berthd.service > '$(SYSTEMD_UNIT_DIR)/berthd.service.tmp'
	chmod 0644 '$(SYSTEMD_UNIT_DIR)/berthd.service.tmp'
	mv '$(SYSTEMD_UNIT_DIR)/berthd.service.tmp' '$(SYSTEMD_UNIT_DIR)/berthd.service'
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	else echo "install-systemd: systemd is not running here; the unit is installed but not loaded"; fi
