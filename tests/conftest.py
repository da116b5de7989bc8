"""Session fixtures: tiny tokenizer, causal LMs, VLMs and demo data built offline into tmp dirs (sft_recipes.tiny).

Tests by kind: unit/ (pure functions, parsers, planners), contracts/ (upstream behaviour we rely on: masks,
packing, chat templates, TRL/transformers/PEFT), repo/ (the files of the repository), e2e/ (runs of the commands).
What test modules share lives in helpers/ (`from helpers.runs import train`); no test module imports another."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sft_recipes.tiny import CAUSAL_FAMILIES, VLM_FAMILIES

# Set before anything imports huggingface_hub or datasets, which read them once at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# Session runs trained on first use (demo_run_dir, lora_run_dir, ...); tests/ is on sys.path (pyproject: pythonpath).
pytest_plugins = ["helpers.trained_runs", "helpers.data_rows"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sft_recipes.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def causal_lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-causal-lms")
    tokenizer = build_tokenizer()
    return {family: build_causal_lm(family, root / family, tokenizer=tokenizer) for family in CAUSAL_FAMILIES}


@pytest.fixture(params=CAUSAL_FAMILIES)
def causal_lm_dir(request: pytest.FixtureRequest, causal_lm_dirs: dict[str, Path]) -> Path:
    return causal_lm_dirs[request.param]


@pytest.fixture(scope="session")
def llama_dir(causal_lm_dirs: dict[str, Path]) -> Path:
    return causal_lm_dirs["llama"]


@pytest.fixture(scope="session")
def vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sft_recipes.tiny import build_vlm

    root = tmp_path_factory.mktemp("tiny-vlms")
    return {family: build_vlm(family, root / family) for family in VLM_FAMILIES}


@pytest.fixture(params=VLM_FAMILIES)
def vlm_dir(request: pytest.FixtureRequest, vlm_dirs: dict[str, Path]) -> Path:
    return vlm_dirs[request.param]


@pytest.fixture(scope="session")
def demo_data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sft_recipes.tiny import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo-data") / "demo.jsonl", n=64)
