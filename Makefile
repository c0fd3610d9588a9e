# Every target bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo local bench lint package soak clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-cli.txt requirements-tools.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# osls and serverless-python-requirements, pinned by package-lock.json.
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund

# The deploy tests run `make package`'s script, which needs osls (npm) besides the venv.
test: install $(NODE_STAMP)
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=85 tests

demo: install
	$(PY) -m throttler demo

local: install
	$(PY) -m throttler local

# The benchmark in virtual time (about 10 minutes on 2 cores); BENCHFLAGS=--full adds 200,000 jobs, 10,000 keys
# and a 3-minute slow-API run (about 40 minutes more). The plots go to docs/.
BENCHFLAGS ?=
bench: install
	$(PY) -m throttler bench --plot docs $(BENCHFLAGS)

lint: install
	$(PY) -m ruff check throttler throttler_tools handlers tests
	$(PY) -m mypy

package: install $(NODE_STAMP)
	bash scripts/package.sh

soak: install
	$(PY) -m pytest tests/reliability -q -k soak

clean:
	rm -rf $(VENV) .serverless node_modules .cache
