# make run   - set up, then start vLLM (CPU, adaptive plugin, SmolLM2) + controller + Redis
# make test  - set up, then run the whole test suite
# make bench - set up, then run every benchmark (one at a time) and write bench/REPORT.md
VENV ?= .venv
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml requirements/offline-data.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/adaptive-controller up

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m bench all

clean:
	rm -rf $(VENV) .pytest_cache
