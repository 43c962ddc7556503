# homefeed: two commands on a fresh machine with Python 3.11 and Java 17.
#   make run   installs into .venv and runs a full retraining pipeline on the embedded default
#   make test  installs into .venv and runs the test suite
#   make airflow  the Airflow UI (standalone) with the project's DAGs
#   make stack    the deployed topology on this machine (`make stack-down` stops it)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch from the local wheel store; a plain `torch` requirement would pull a CUDA build.
TORCH_SPEC := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean airflow stack stack-down

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/check_prereqs.sh
	@bash scripts/check_prereqs.sh $(PYTHON)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ or not torch.version.cuda else 'a CUDA torch build was installed: ' + torch.__version__)"
	@touch $(STAMP)

# `make run S3=1`: the same run with S3 as the storage of record (a local SeaweedFS server).
run: $(STAMP)
	$(BIN)/homefeed run $(if $(filter 1,$(S3)),--s3,)

test: $(STAMP)
	@bash scripts/install_test_servers.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
