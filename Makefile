# Set-up and everyday commands. `make serve` and `make test` each do all the set-up they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-fast install install-dev browser smoke audit bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Runtime only: the service on the shipped model. torch is pinned to the CPU build (constraints.txt).
$(VENV)/.runtime: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e .
	touch $@

# Everything: training extras, test and audit tools.
$(VENV)/.dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: $(VENV)/.runtime
	$(PY) -m app --host $(HOST) --port $(PORT)

# Headless Chromium for the demo-page browser test (Debian packages; needs root). Without it the
# browser test skips with its reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "note: chromium not installed; the browser test will skip"; }

test: $(VENV)/.dev browser
	$(PY) -m pytest -q

test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow and not browser"

smoke:
	bash docker/smoke.sh

audit: $(VENV)/.dev
	bash scripts/audit.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
