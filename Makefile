# Two commands do all setup on a fresh machine:
#   make serve   install everything, export the default model on first run, serve on :8080
#   make test    install everything, then lint, type-check and run the whole test suite
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8080
PY := $(VENV)/bin/python

.PHONY: install serve test lint unit bench clean

install:
	VENV=$(VENV) scripts/install.sh

serve: install
	$(VENV)/bin/mipic serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: install
	@if [ -x scripts/ci_system_deps.sh ]; then scripts/ci_system_deps.sh; fi
	$(MAKE) --no-print-directory lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

unit: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not integration"

bench: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.run_all

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
