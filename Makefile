# Every target bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser test demo local bench sim lint package clean

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

# The dashboard's browser test drives Debian's Chromium through the playwright wheel (requirements-dev.txt);
# playwright's own browser download cannot work here. Installed when missing (as root, or with password-less
# sudo); where it cannot be, the browser test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "note: chromium is missing and this user cannot install it (apt-get needs root): the browser test will be skipped"; exit 0; fi; \
	  echo "installing Debian's chromium for the dashboard's browser test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core >/dev/null \
	  || echo "note: installing chromium failed: the browser test will be skipped"; }

# The deploy tests run `make package`'s script, which needs osls (npm) besides the venv.
test: install browser $(NODE_STAMP)
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=85 tests

# `make demo DEMO_ARGS="--keys --plot keys.png"`: any of the demo's options.
demo: install
	$(PY) -m throttler demo $(DEMO_ARGS)

# The README's quick start: an echo API to point jobs at, and a run that waits on the queue (latency=low), so a
# new job is called within about 2 s; a tick of 10 s brings a new run quickly after a crash or a long pause.
local: install
	$(PY) -m throttler local --echo-api --dashboard --tick-seconds 10 --latency low $(LOCAL_ARGS)

# The benchmark in virtual time (about 8 minutes on 2 shared cores; BENCHMARKS.md); BENCHFLAGS=--full adds
# 200,000 jobs, 1,000 and 10,000 keys, a 3-minute slow-API run and its variants (about an hour more). Plots to docs/.
BENCHFLAGS ?=
bench: install
	$(PY) -m throttler bench --plot docs $(BENCHFLAGS)

lint: install
	$(PY) -m ruff check throttler throttler_tools handlers tests
	$(PY) -m mypy

package: install $(NODE_STAMP)
	bash scripts/package.sh

# The simulation: SIM_SEEDS seeds of SIM_DAYS simulated days each (faults, storms, quota edits), every promise
# checked at the end of each, in parallel over the cores, niced; a seed that breaks one prints its replay command
# (python -m throttler sim --seed N ...). `make test` runs the regression set (tests/sim) in seconds.
SIM_SEEDS ?= 1000
SIM_DAYS ?= 1
sim: install
	nice -n 10 $(PY) -m throttler sim --seeds $(SIM_SEEDS) --days $(SIM_DAYS) $(SIM_ARGS)

clean:
	rm -rf $(VENV) .serverless node_modules .cache
