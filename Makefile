# Set-up is part of every target: the virtual environment is (re)built only when it is
# missing or pyproject.toml (the pinned dependency list) changed.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp
CORES ?= 2
PYTEST_ARGS ?=

.PHONY: setup test lint format demo mini ablations timm unlock mutation bench bench-gpu clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/repq build-kernel
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@$(BIN)/python workflow/scripts/stale_lock.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --profile profiles/default
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/default --report results/report.html
	@$(BIN)/repq demo-summary

mini: $(STAMP)
	@$(BIN)/python workflow/scripts/stale_lock.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --profile profiles/default --configfile config/mini.yaml
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/default --configfile config/mini.yaml --report results/reproduction/report.html
	@$(BIN)/repq demo-summary --results results/reproduction

# The ablations (config/ablations.yaml): five seeds of 4-bit Merged and RepQ on the mini
# RepVGG-A0 and seven variants, each changing one lever; tables in results/ablations/tables.
ablations: $(STAMP)
	@$(BIN)/python workflow/scripts/stale_lock.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --profile profiles/default --configfile config/ablations.yaml
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/default --configfile config/ablations.yaml --report results/ablations/report.html
	@$(BIN)/repq demo-summary --results results/ablations

timm: $(STAMP)
	@$(BIN)/python workflow/scripts/stale_lock.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --profile profiles/default --configfile config/timm.yaml

# After a killed `make demo` or `make mini`: remove Snakemake's stale lock (the lock is
# per folder, so one unlock serves both).
unlock: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/default --unlock

# Mutation testing of the core math (not part of CI: it takes hours on 2 cores); the
# triage of its survivors is kept in tests/MUTATION.md.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,mutation]'
	$(BIN)/mutmut run --max-children $(CORES)
	$(BIN)/python tests/mutation_score.py mutants > tests/mutation-score.md
	$(BIN)/mutmut results

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/train_step.py --device cuda --batch 256 --size 224 --amp \
		--channels-last --rounds 10 --warmup 3 --tag gpu
	$(BIN)/python -m pytest tests/test_cuda.py

clean-demo:
	rm -rf results/mini results/runs results/resume results/logs results/tables results/report.html results/mlflow.db results/mlartifacts results/tracking.ready
