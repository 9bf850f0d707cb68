# Two commands do all the set-up on a fresh machine:
#   make demo   - create the environment if needed, then run the pipeline on a built-in demo survey
#   make test   - create the environment if needed, then run ruff and the test suite
#                 (the fault-injection suite, tests/faults, with a fast subset of kill points)
#   make test-full - every test: the fault-injection suite with every kill point and the
#                 second kill/resume checks marked `full` (ASTROCURATE_FAULTS=full)
# The environment (with the `sources` extra, PyBDSF, so the tests of find-sources run) is
# made once (.venv) and reused; `feat_extract_env` and `clustering_env`
# (the guide's two environments) are links to it: one environment serves every step.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.astrocurate-installed
# torch and torchvision are installed first, as a matching pair (timm needs both);
# override for another CUDA/CPU build, e.g. make TORCH_SPEC="torch torchvision" demo
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Tests run in parallel worker processes (pytest-xdist), grouped and ordered by
# tests/conftest.py; XDIST= (empty) runs them in one process.
XDIST ?= -n logical --maxprocesses 8 --dist loadgroup --no-loadscope-reorder

.PHONY: setup demo test test-full lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,sources]"
	ln -sfn $(VENV) feat_extract_env
	ln -sfn $(VENV) clustering_env
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/astrocurate demo

test: $(STAMP) lint
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The full sweep: every test, tests/faults with every kill point (each rename before and
# after, outside kills, the real command for every rerun) and the tests marked `full`;
# ASTROCURATE_FAULT_SEED=N picks other seeded kill points.
test-full: $(STAMP) lint
	ASTROCURATE_FAULTS=full $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# ruff, then the layer contracts of pyproject.toml [tool.importlinter] (docs/ARCHITECTURE.md)
lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests benchmarks
	$(VENV)/bin/ruff format --check src scripts tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src scripts tests benchmarks
	$(VENV)/bin/ruff check --fix src scripts tests benchmarks

clean:
	rm -rf $(VENV) feat_extract_env clustering_env demo mlflow.db mlruns mlartifacts outputs
