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

.PHONY: help setup run test test-slow lint format params ui ui-screenshot bench bench-pruning clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## install what is missing (Debian data packages, .venv with the pinned set)
	@bash scripts/install.sh

run: setup  ## set up, then run the whole pipeline (dvc repro); its wall time goes to reports/run_timing.json
	@id=$$(python -c 'import uuid; print(uuid.uuid4().hex[:12])'); start=$$(date +%s.%N); \
	echo "TRANSFERLAB_PIPELINE_ID=$$id dvc repro"; \
	TRANSFERLAB_PIPELINE_ID=$$id dvc repro; rc=$$?; \
	python scripts/bench.py record-run --pipeline-id $$id --start $$start --exit-code $$rc; \
	exit $$rc

test: setup  ## the default test suite (< 10 min on 2 cores)
	pytest

test-slow: setup  ## the slow tests (full-size runs, dvc exp)
	pytest -m slow

lint: setup  ## ruff lint + format check
	ruff check src tests
	ruff format --check src tests

format: setup
	ruff format src tests
	ruff check --fix src tests

params: setup  ## recompose params.yaml from conf/ (OVERRIDES="finetune.lr=0.01 +debug=tiny")
	transferlab params $(OVERRIDES)

ui: setup  ## MLflow UI on 127.0.0.1:$(PORT) over ./mlflow.db
	@echo "runs table: http://127.0.0.1:$(PORT)/#/experiments/1/runs?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///mlflow.db --workers 1

ui-screenshot: setup  ## screenshots of the MLflow runs table and compare view (headless chromium) into reports/ui/
	python scripts/ui_screenshot.py --project . --out reports/ui

bench: setup  ## performance figures (< 10 min): overhead, MFU, data path, pipeline, scaling -> reports/bench.json
	python scripts/bench.py

bench-pruning: setup  ## Optuna pruning vs none on the same budget (needs `make run` first)
	python scripts/bench_pruning.py

clean:  ## remove pipeline outputs and tracking data (not the venv)
	rm -rf data models reports/*/ mlflow.db mlruns .lightning outputs multirun
