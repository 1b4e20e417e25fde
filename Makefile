# The commands of the README: `make demo` (the smoke sweep, ending in figures), `make test`
# (the whole test suite) and `make gpu-check` (the GPU path, proven and measured). Each creates
# .venv in the clone on first use: the demo installs what runs the pipeline, the tests and
# linters add the `dev` extra (the demo's 10 minutes include its install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CKSUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(CKSUM)
DEV_STAMP := $(VENV)/.installed-dev-$(CKSUM)

.PHONY: demo test gpu-check lint format venv clean

venv: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	@# A second `make demo` continues (or just re-reads) the sweep already in ray_results/.
	$(PY) sweeps/launch.py smoke $$(test -f ray_results/smoke/tuner.pkl && echo --resume)
	$(PY) analysis/aggregate.py --tracking-uri sqlite:///$(CURDIR)/ray_results/mlflow.db --out results
	$(PY) analysis/figures.py --results results --out figures --report
	@echo "figures: $(CURDIR)/figures (summary: figures/summary.md)"
	@echo "MLflow runs: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/ray_results/mlflow.db --artifacts-destination $(CURDIR)/ray_results/mlartifacts"

test: $(DEV_STAMP)
	$(PY) -m pytest

gpu-check: $(DEV_STAMP)
	@# On a GPU: the CUDA tests, step modes, sharing, packing, the launcher, and the
	@# calibration (docs/gpu-check.md). Without one: the quick checks on the CPU.
	$(PY) benchmarks/gpu_check.py --out results/gpu-check

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf results figures ray_results
