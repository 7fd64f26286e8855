# Quick start:  `make demo` (set up + main job)   `make test` (set up + whole test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench model clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: any other torch requirement pulls gigabytes of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sparsefocus demo

test: setup
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_render.py

# train the bundled default model + baselines and write docs/evaluation (resumable, ~75 min on 2 cores)
model: setup
	bash scripts/train-default-model.sh

clean:
	rm -rf $(VENV)
