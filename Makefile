# homefeed: two commands on a fresh machine with Python 3.11 and Java 17.
#   make run   installs into .venv and runs a full retraining pipeline on the embedded default
#   make test  installs into .venv and runs the test suite
#   make airflow  the Airflow UI (standalone) with the project's DAGs
#   make stack    the deployed topology on this machine (`make stack-down` stops it)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# GPU=1: the CUDA build of torch (a GPU seen by nvidia-smi chooses it too); else the CPU build.
GPU ?=
STAMP := $(VENV)/.installed$(if $(filter 1,$(GPU)),-gpu,)
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean airflow stack stack-down

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/check_prereqs.sh scripts/install_torch.sh
	@bash scripts/check_prereqs.sh $(PYTHON)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@bash scripts/install_torch.sh $(BIN)/python $(GPU)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# `make run S3=1`: the same run with S3 as the storage of record (a local SeaweedFS server).
run: $(STAMP)
	$(BIN)/homefeed run $(if $(filter 1,$(S3)),--s3,)

# The 20 slowest tests are listed at the end: the suite's time budget is kept by reading them.
test: $(STAMP)
	@bash scripts/install_test_servers.sh
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The Airflow UI with the project's DAGs on http://127.0.0.1:8080 (login printed first).
airflow: $(STAMP)
	$(BIN)/homefeed airflow

# The deployed topology on this machine (Postgres, MLflow server, S3, Spark cluster, Airflow, serve).
stack: $(STAMP)
	@bash scripts/install_test_servers.sh
	$(BIN)/homefeed stack up

stack-down: $(STAMP)
	$(BIN)/homefeed stack down

clean:
	rm -rf .homefeed
