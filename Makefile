# Two commands from a fresh clone:  make repro   (run the pipeline)   and   make test   (run the tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install repro test lab book bench bench-train exercises profile clean-venv check-claims claims smoke smoke-gpu metrics

install: $(STAMP)

# torch is pinned to 2.13.0 and installed first so that no other package pulls a different build.
$(STAMP): pyproject.toml workbook/kernel.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m workbook.kernel
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp .jupyter-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

repro: install
	dvc repro

test: install
	python -m pytest -q

# Lab's root is the repository (so student/ opens too); the kernel runs in the root whichever folder the notebook is in
lab: install
	jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/00_sampling_and_aliasing.py

bench: install
	python -m workbook.bench

# every metric, one `key  value` line each, grouped by file (dvc metrics show prints one very wide table)
metrics: install
	python -m workbook.metrics

# the course site: the executed theory notebooks (reports/, from make repro) and docs/course.md as a static HTML book
book: install
	python -m workbook.book
	@echo "open build/book/html/index.html"

exercises: install
	python -m workbook.exercises notebooks student

# make profile PROFILE=gpu   (or cpu, smoke): rewrites params.yaml from profiles/*.yaml
profile: install
	python -m workbook.params use $(PROFILE)

# The whole pipeline on the smoke profile in a temporary copy: on the CPU (as the tests do) or on a GPU machine
smoke: install
	python -m workbook.smoke

smoke-gpu: install
	python -m workbook.smoke --device cuda

# Training-loop options (bf16 autocast, torch.compile) against the plain loop -> metrics/bench_train.json
bench-train: install
	python -m workbook.bench_train

# Numbers quoted in README/docs/notebook text against metrics/ (claims: rewrite them after a re-run, then re-read)
check-claims: install
	python -m workbook.claims

claims: install
	python -m workbook.claims --fix

clean-venv:
	rm -rf $(VENV)
