# The same commands for people and CI. `make serve` and `make test` bootstrap
# their own virtual environment on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := src/modelport/protos/grpc_service.proto src/modelport/protos/model_config.proto
STUBS  := src/modelport/protos/grpc_service_pb2.py

.PHONY: venv serve test lint format bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m modelport.protos.generate

venv: $(STAMP) $(STUBS)

protos: $(STAMP)
	$(PY) -m modelport.protos.generate

serve: venv
	$(VENV)/bin/modelport serve $(ARGS)

# Unit and integration tests run as two processes: tritonclient.grpc and
# modelport's own protobuf modules both define inference.* and cannot share one.
test: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
