# One-line targets; `make help` lists them. Targets that run the package install .venv first when it is missing
# or older than pyproject.toml, so `make test` works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
EXTRAS ?= dev,quantization,deepspeed
INSTALLED = $(VENV)/.installed

.PHONY: help install demo wheel-demo lint typecheck test test-gpu bench docker

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## create .venv with CPU torch 2.13 and the package (extras: $(EXTRAS))
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q torch==2.13.0 && $(BIN)/pip install -q -e ".[$(EXTRAS)]" && touch $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(MAKE) install

demo: $(INSTALLED) ## offline demo: build a tiny model + chat data, fine-tune it on CPU, show before/after generations
	HF_HUB_OFFLINE=1 $(BIN)/python -m sft_recipes.demo

wheel-demo: ## build the wheel, pip install it into a fresh venv and run the demo from an empty folder
	PYTHON=$(PYTHON) bash .ci/wheel-demo

lint: $(INSTALLED) ## ruff check + format check + the import-layer contract (pyproject's [tool.importlinter])
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

typecheck: $(INSTALLED) ## mypy on the package
	$(BIN)/mypy sft_recipes

test: $(INSTALLED) ## the offline test suite (CPU)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

test-gpu: $(INSTALLED) ## tests marked gpu (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu tests

gpu-check: $(INSTALLED) ## one CUDA GPU, < 8 min: gpu tests, throughput, planner calibration -> benchmarks/results/ (CPU: says so)
	$(BIN)/python scripts/gpu_check.py

bench: $(INSTALLED) ## CPU benchmarks; JSON to stdout and benchmarks/results/
	for script in benchmarks/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$script || exit 1; done

docker: ## build the CUDA image
	docker build -t sft-recipes .
