# Set-up is part of every target: the virtual environment is (re)built only when it is
# missing or pyproject.toml (the pinned dependency list) changed.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp
CORES ?= 2
PYTEST_ARGS ?=

.PHONY: setup test lint format demo mini ablations timm ptq-init rehearse docs unlock mutation bench bench-gpu gpu-check clean-demo

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

SNAKEMAKE = PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/default

# $(call workflow,<snakemake options>,<results folder>): the whole DAG (its wall time in
# <results>/wall_seconds, which `repq report snapshot` keeps), the HTML report, and where
# everything is.
define workflow
	@$(BIN)/python workflow/scripts/stale_lock.py
	@mkdir -p $(2)
	@start=$$(date +%s) && $(SNAKEMAKE) --cores $(CORES) $(1) && echo $$(( $$(date +%s) - start )) > $(2)/wall_seconds
	$(SNAKEMAKE) $(1) --report $(2)/report.html
	@$(BIN)/repq demo-summary --results $(2)
endef

demo: $(STAMP)
	$(call workflow,,results)

mini: $(STAMP)
	$(call workflow,--configfile config/mini.yaml,results/reproduction)

# The ablations (config/ablations.yaml): five seeds of 4-bit Merged and RepQ on the mini
# RepVGG-A0 and seven variants, each changing one lever; tables in results/ablations/tables.
ablations: $(STAMP)
	$(call workflow,--configfile config/ablations.yaml,results/ablations)

timm: $(STAMP)
	$(call workflow,--configfile config/timm.yaml,results/timm)

# The step initialisation rules as PTQ of the demo's FP models (an overlay on the demo).
ptq-init: $(STAMP)
	$(call workflow,--configfile config/config.yaml config/ptq_init.yaml,results/ptq-init)

# Every job of the paper's DAG (config/paper.yaml) at full size on synthetic data in the
# real layouts, each epoch capped (config/rehearse.yaml); its report, wall time and the
# per-job memory and ONNX sizes in results/rehearse/rehearsal.md. Not results.
rehearse: $(STAMP)
	$(call workflow,--configfile config/paper.yaml config/rehearse.yaml,results/rehearse)
	$(BIN)/repq report rehearsal --results results/rehearse

# README.md and docs/*.md from docs/templates and the snapshots in docs/results (take one
# with `repq report snapshot` after a run; docs/README.md says how).
docs: $(STAMP)
	$(BIN)/repq report docs

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

# Each measurement is a new file (benchmarks/results/<tag>.json, with its provenance):
# the tag carries the date and time.
bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py --tag cpu-$$(date -u +%Y%m%d-%H%M)

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/train_step.py --device cuda --batch 256 --size 224 --amp \
		--channels-last --rounds 10 --warmup 3 --tag gpu-$$(date -u +%Y%m%d-%H%M)
	$(BIN)/python -m pytest tests/test_cuda.py

# The whole GPU path in one prepared script (benchmarks/gpu_check.py: the CUDA tests, the
# GPU benchmark, a two-GPU NCCL step, the rehearsal's slice on CUDA at the recipes' batch
# sizes; each step under a time limit in the script; not yet run on a GPU),
# one summary in results/gpu-check/summary.json. Without CUDA it stops in one line.
gpu-check: $(STAMP)
	@$(BIN)/python benchmarks/gpu_check.py

clean-demo:
	rm -rf results/mini results/runs results/resume results/logs results/benchmarks results/tables results/report.html results/mlflow.db results/mlartifacts results/tracking.ready results/wall_seconds
