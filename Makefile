# One-line targets; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
EXTRAS ?= dev,quantization,deepspeed

.PHONY: help install demo lint typecheck test test-gpu bench docker

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## create .venv with CPU torch 2.13 and the package (extras: $(EXTRAS))
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q torch==2.13.0 && $(BIN)/pip install -q -e ".[$(EXTRAS)]"

demo: ## offline demo: build a tiny model + chat data, fine-tune it on CPU, show before/after generations
	@test -x $(BIN)/sft-recipes || $(MAKE) install
	HF_HUB_OFFLINE=1 $(BIN)/python -m sft_recipes.demo

lint: ## ruff check + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: ## mypy on the package
	$(BIN)/mypy sft_recipes

test: ## the offline test suite (CPU)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

test-gpu: ## tests marked gpu (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu tests

gpu-check: ## one CUDA GPU, < 8 min: gpu tests, throughput, planner calibration -> benchmarks/results/ (CPU: says so)
	$(BIN)/python scripts/gpu_check.py

bench: ## CPU benchmarks; JSON to stdout and benchmarks/results/
	for script in benchmarks/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$script || exit 1; done

docker: ## build the CUDA image
	docker build -t sft-recipes .
