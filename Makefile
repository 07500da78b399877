# medgen: the two commands that matter are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and pinned here (CPU wheel), so pip never pulls a multi-GB CUDA build;
# pyproject.toml keeps a range for users.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all lint format bench venv clean data

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,distributed,sweep]"
	@touch $(STAMP)

# The quickstart: train the 3D diffusion model on procedural phantoms (32^3, ~160 steps), sample a few
# synthetic volumes to NIfTI, train the molecule graph VAE on the embedded MOSES sample and score what
# it generates.
demo: $(STAMP)
	$(PY) -m medgen.demo

# MOSES train/test sets and reference statistics, unpacked from the molsets wheel on PyPI (51 MB,
# fetched once with pip); the metrics known-answer tests read them.
MOSES := data/moses/test_stats.npz

$(MOSES): | $(STAMP)
	$(PY) -m medgen data moses

data: $(MOSES)

test: $(STAMP) $(MOSES)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP) $(MOSES)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check medgen tests benchmarks
	$(VENV)/bin/ruff format --check medgen tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format medgen tests benchmarks
	$(VENV)/bin/ruff check --fix medgen tests benchmarks

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
