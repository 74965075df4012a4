# Set-up and everyday commands. `make serve` and `make test` each do all the set-up they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-fast lint lock install install-dev browser smoke audit bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Every package comes at the version of a lock file (requirements/*.txt, written by `make lock`) except
# torch, which constraints.txt pins: pip takes it from wherever it is found (a local CPU wheel named by
# PIP_FIND_LINKS, PyTorch's CPU index with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
# Runtime only: the service on the shipped model.
$(VENV)/.runtime: pyproject.toml constraints.txt requirements/runtime.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -r requirements/runtime.txt -e .
	touch $@

# Everything: training extras, test, lint and audit tools.
$(VENV)/.dev: pyproject.toml constraints.txt requirements/dev.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -r requirements/dev.txt -e ".[dev]"
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

# ruff (mistakes, not layout) over the tree; mypy over model/, training/ and app/ (settings in pyproject.toml).
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Rewrite the lock files after a dependency changes in pyproject.toml (needs the package index): the runtime
# set, then the dev set (runtime + train + dev) at the same versions. Versions already locked are kept unless
# `make lock LOCK_ARGS=--upgrade`. torch is left to constraints.txt (not written), but resolved, from the CPU
# build, so that its dependencies are locked: TORCH_FIND_LINKS is where that build is found. The lock is for
# Linux x86-64 and Python 3.11, the images' and CI's.
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
UV_COMPILE = $(VENV)/bin/uv pip compile -q pyproject.toml -c constraints.txt --no-emit-package torch \
	$(foreach d,$(TORCH_FIND_LINKS),--find-links $(d)) --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(LOCK_ARGS)
lock: $(VENV)/.dev
	$(UV_COMPILE) -o requirements/runtime.txt
	$(UV_COMPILE) --extra dev -c requirements/runtime.txt -o requirements/dev.txt

smoke:
	bash docker/smoke.sh

audit: $(VENV)/.dev
	bash scripts/audit.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
