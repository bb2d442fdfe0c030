# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
SRC    := pyproject.toml

.PHONY: run test check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One install with the dev extras serves run, test and bench; re-run when pyproject changes.
$(STAMP): $(BIN)/python $(SRC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# State (the API key in .data/api-key, the SQLite store) stays in this checkout's .data/, so
# every run reuses one key: `export ORCHESTRATOR_API_KEY=$$(cat .data/api-key)` in any shell.
run: $(STAMP)  ## the orchestrator with eight reference instances A-H, and the main job
	$(BIN)/openclaw orchestrator up --instances A-H --demo --data-dir .data

check: $(STAMP)  ## formatting, lint and types
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: check  ## every test
	$(BIN)/pytest

lint: $(STAMP)  ## fix what the formatter and linter can
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The bench extra (httpx for the hand-written httpx gather, matplotlib, profilers) on top.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmarks vs direct, nginx and hand-written clients (QUICK=1: < 1 min)
	@command -v nginx >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) || echo "nginx is not installed: the bench leaves its variants out"
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
