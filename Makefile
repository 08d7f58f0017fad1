# Shoal: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := python3-venv busybox-static docker-registry skopeo nftables iproute2 runc util-linux procps conntrack
PACKAGES := agent_runtime manager worker raft overlaynet shoal deploy
PYTEST_TIMEOUT ?= 600
HOSTS ?= 3

.PHONY: demo test down bench deps venv lint

## demo: install what is needed, bring a 3-host lab up and run the demo on it (leaves it running)
demo: venv
	@echo "== step 1: the Debian packages and .venv/ are in place"
	@echo "== step 2: the busybox image (built by shoal-lab up if missing)"
	@echo "== step 3: shoal-lab up --hosts $(HOSTS)"
	$(BIN)/shoal-lab up --hosts $(HOSTS)
	$(BIN)/shoal-lab demo

## test: install what is needed, then lint, type-check and run every test (unit, integration, e2e)
test: venv lint
	@rc=0; $(BIN)/pytest -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) -ra \
	    tests/unit tests/integration tests/e2e || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure"; exit 1; fi; \
	exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)
	$(BIN)/lint-imports

## down: remove the lab (processes, mounts, cgroups, namespaces, links, nftables tables); safe to repeat
down:
	@if [ -x $(BIN)/shoal-lab ]; then $(BIN)/shoal-lab down; \
	else $(PYTHON) -m deploy.lab.cli down; fi

## bench: print the benchmark figures (tests/bench); never pass/fail on time.
## Docker Swarm runs beside Shoal when dockerd is installed (BENCH_SWARM=--swarm forces it);
## the overlay bench (iperf3, sockperf: installed here) measures the overlay beside the underlay;
## the convergence bench, a task change reaching every node's DNS and nftables (10 and 1,000 services).
BENCH_SWARM ?= $(if $(shell command -v dockerd),--swarm,)
BENCH_APT_PACKAGES := iperf3 sockperf
bench: venv
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(BIN)/python tests/bench/bench_container_start.py
	$(BIN)/python tests/bench/bench_cluster.py --one-host 50 $(BENCH_SWARM)
	$(BIN)/python tests/bench/bench_overlay.py --mtu 1400
	$(BIN)/python tests/bench/bench_overlay_convergence.py --mtu 1400
	$(BIN)/python tests/bench/bench_scale.py --nodes 200 --tasks 4000 --services 4 --lose 20

## deps: Debian packages (apt-get update only when something is missing)
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

## venv: the project and its test tools, editable, in .venv/ (reinstalled when pyproject.toml changes)
venv: deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@
