# Two entry points for a fresh Debian machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
STATE ?= ./var

.PHONY: run test setup lint bench clean

$(STAMP): pyproject.toml
	@if ! pkg-config --exists libvirt 2>/dev/null; then \
	    echo "installing Debian packages: pkg-config libvirt-dev"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends pkg-config libvirt-dev; \
	fi
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m qubesd.run_all --state-dir $(STATE)/lib --run-dir $(STATE)/run --config-dir $(STATE)/etc

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check qubesd qrexec acl userdomains tests bench

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var
