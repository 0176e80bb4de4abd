# recpipe — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Nothing phones home (see docs: no network at run time).
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run lint audit test test-fast bench mlflow-ui airflow clean-outputs lock services services-down

setup: $(STAMP)  ## create .venv with the pinned dependencies (idempotent)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU build comes from this machine's wheel store.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

# RUN_ARGS: this run's overrides, e.g. RUN_ARGS="--set train.epochs=5" (params.yaml is not changed).
run: setup  ## the full pipeline on the built-in default data, through dvc repro
	$(BIN)/recpipe run $(RUN_ARGS)

# Code checks (rules in pyproject.toml): lint + format, the layer contracts, types of core/ and model/,
# security lint (bandit, offline, ~3 s). Skipped for bench/ only: B108 (a fixed /tmp scratch folder,
# --work, on a developer's own machine), B311 (random only orders the load). For tests/ only: B104
# B105 B106 (throwaway servers, passwords and binds the tests make), B108 (Airflow's parse-time home),
# B310 (http://127.0.0.1 URLs the tests build), B615 (local model folders, never the hub).
BANDIT_TEST_SKIPS := B104,B105,B106,B108,B310,B615
lint: setup  ## ruff (lint + format check), import-linter contracts, mypy, bandit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/bandit -c pyproject.toml -q -r pipeline_tasks dags
	$(BIN)/bandit -c pyproject.toml -q -r bench -s B108,B311
	$(BIN)/bandit -c pyproject.toml -q -r tests -s $(BANDIT_TEST_SKIPS)

# Known vulnerabilities in the locked dependencies (PyPI's advisory data: needs the network, so not in
# `make test`). --strict: a package that could not be checked fails the audit instead of passing it.
audit: setup  ## pip-audit of requirements.lock against PyPI's vulnerability data (network)
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements.lock

# Two pytest-xdist workers: the end-to-end tests mostly wait on subprocesses, servers and JVMs, so
# two processes share this 2-core machine well (how the suite is split: tests/conftest.py).
PYTEST_WORKERS ?= 2
test: setup lint  ## the code checks, then the whole test suite
	$(BIN)/python -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

test-fast: setup  ## everything but the slow end-to-end tests
	$(BIN)/python -m pytest tests -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Benchmarks write JSON under bench/results/ (medians and ratios of one run; the machine is shared).
bench: setup  ## every benchmark in bench/ (slow: minutes to tens of minutes)
	@set -e; for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script; done

mlflow-ui: setup  ## open the MLflow UI on the local store (http://127.0.0.1:5000)
	$(BIN)/recpipe mlflow-ui

# Local Airflow: this project's DAGs, examples off, a real login (SimpleAuthManager, user admin).
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/airflow_home AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__PARALLELISM=4 \
	AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False \
	RECPIPE_PROJECT_DIR=$(CURDIR)

airflow: setup  ## start Airflow (api-server, scheduler, dag-processor, triggerer) on http://127.0.0.1:8080
	@mkdir -p airflow_home
	@echo "Airflow UI: http://127.0.0.1:8080  user: admin  password: in airflow_home/simple_auth_manager_passwords.json.generated (written at first start)"
	$(AIRFLOW_ENV) $(BIN)/airflow standalone

# Local multi-service mode (pipeline_tasks/infra/services.py): PostgreSQL, MLflow server (basic auth) and
# Airflow on loopback, state/logs/credentials under services/ (git-ignored).
services: setup  ## start PostgreSQL, the MLflow server and Airflow on loopback; prints URLs and where the credentials are
	$(BIN)/python -m pipeline_tasks.infra.services up

services-down:  ## stop everything `make services` started
	$(BIN)/python -m pipeline_tasks.infra.services down

lock:  ## regenerate requirements.lock from requirements.in in a scratch venv
	rm -rf /tmp/recpipe-lock && $(PYTHON) -m venv /tmp/recpipe-lock
	/tmp/recpipe-lock/bin/pip install --quiet torch==2.13.0 && /tmp/recpipe-lock/bin/pip install --quiet -r requirements.in
	{ echo "# Full lock: pip freeze of a venv built from requirements.in (Python 3.11). Regenerate with 'make lock'."; \
	  /tmp/recpipe-lock/bin/pip freeze | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements.lock

clean-outputs:  ## delete pipeline outputs (data, models, metrics, MLflow store) — keeps the venv
	rm -rf data/raw data/clean data/quarantine data/split data/baselines data/eval data/ground_truth models reports gx optuna mlflow/mlflow.db mlflow/artifacts
