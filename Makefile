# The same commands for people and CI. `make serve` and `make test` bootstrap
# their own virtual environment on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
# pip's list of what it installs is the progress shown; PIP_QUIET=--quiet hides it.
PIP_QUIET ?=
PROTOS := src/modelport/protos/grpc_service.proto src/modelport/protos/model_config.proto
STUBS  := src/modelport/protos/grpc_service_pb2.py

.PHONY: venv serve test lint format bench protos clean

# Two stages: `make serve` needs only the server (the base package, which serves
# ONNX and the bundled examples); `make test` adds every framework extra and the
# test and lint tools on top.
$(BASE): pyproject.toml
	@echo "==> creating $(VENV) and installing modelport (base package: serves ONNX models)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on $(PIP_QUIET) -e .
	touch $(BASE)

$(STAMP): $(BASE)
	@echo "==> installing every framework extra and the test tools into $(VENV)"
	$(PY) -m pip install --progress-bar on $(PIP_QUIET) -e '.[dev]'
	touch $(STAMP)

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m modelport.protos.generate

venv: $(STAMP) $(STUBS)

protos: $(STAMP)
	$(PY) -m modelport.protos.generate

# The editable install generates the protobuf stubs, so serving needs no tools.
serve: $(BASE)
	$(VENV)/bin/modelport serve $(ARGS)

# Unit and integration tests run as two processes: tritonclient.grpc and
# modelport's own protobuf modules both define inference.* and cannot share one.
test: venv
	$(PY) -m pytest tests/unit --durations=10 $(PYTEST_ARGS)
	$(PY) -m pytest tests/integration --durations=10 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmark (benchmarks/README.md): BENCH_ARGS=--quick for a one-minute smoke run.
# Needs wrk (and libb64-0d for perf_analyzer); as root they are installed if missing.
bench: venv
	@if [ "$$(id -u)" = 0 ]; then \
		pkgs=""; \
		command -v wrk >/dev/null 2>&1 || pkgs="$$pkgs wrk"; \
		dpkg -s libb64-0d >/dev/null 2>&1 || pkgs="$$pkgs libb64-0d"; \
		if [ -n "$$pkgs" ]; then apt-get update -qq && apt-get install -y -qq $$pkgs \
			|| echo "could not install$$pkgs; see benchmarks/README.md" >&2; fi; \
	fi
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
