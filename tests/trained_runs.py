"""A pytest plugin (`pytest_plugins = ["trained_runs"]`) of runs trained once per session for the chat and loader
tests: the demo (a full run that learns its task, with a checkpoint), a LoRA run and a QLoRA run with checkpoints,
all on the demo's tiny llama."""

from __future__ import annotations

from pathlib import Path

import pytest
from runs import train

from sft_recipes.demo import DEFAULT_RECIPE

# 120 steps of the demo recipe (instead of its 300) at a slightly higher learning rate answer all 120 demo
# questions correctly; 100 steps at 5.0e-3 got 105 of them, 60 at 1.0e-2 only 5.
DEMO_STEPS = 120
DEMO_CHECKPOINT = 60


def _demo_base(root: Path) -> Path:
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    # The model `make demo` builds (sft_recipes.demo).
    return build_causal_lm("llama", root / "model", tokenizer=build_tokenizer(), hidden_size=64, num_layers=2)


def _demo_data(root: Path) -> Path:
    from sft_recipes.tiny import write_demo_dataset

    return write_demo_dataset(root / "capitals.jsonl", n=480)


@pytest.fixture(scope="session")
def demo_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo_base(tmp_path_factory.mktemp("demo-base"))


@pytest.fixture(scope="session")
def demo_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo_data(tmp_path_factory.mktemp("demo-data"))


@pytest.fixture(scope="session")
def demo_run_dir(tmp_path_factory: pytest.TempPathFactory, demo_base_dir: Path, demo_data_file: Path) -> Path:
    """The demo recipe, shortened, with a full-weights checkpoint-60 on the way."""
    from sft_recipes.cli import main

    def build(root: Path) -> Path:
        out = root / "out"
        overrides = {
            "model_name_or_path": demo_base_dir,
            "dataset_name": demo_data_file,
            "output_dir": out,
            "max_steps": DEMO_STEPS,
            "learning_rate": "4.0e-3",
            "save_strategy": "steps",
            "save_steps": DEMO_CHECKPOINT,
            "logging_steps": 20,
        }
        argv = ["train", "--config", str(DEFAULT_RECIPE)]
        for key, value in overrides.items():
            argv += [f"--{key}", str(value)]
        assert main(argv) == 0
        return out

    return build(tmp_path_factory.mktemp("demo-run"))


@pytest.fixture(scope="session")
def demo_checkpoint_dir(demo_run_dir: Path) -> Path:
    return demo_run_dir / f"checkpoint-{DEMO_CHECKPOINT}"


@pytest.fixture(scope="session")
def lora_run_dir(tmp_path_factory: pytest.TempPathFactory, demo_base_dir: Path, demo_data_file: Path) -> Path:
    def build(root: Path) -> Path:
        return train(
            root,
            model_name_or_path=str(demo_base_dir),
            dataset_name=str(demo_data_file),
            assistant_only_loss=True,
            use_peft=True,
            lora_r=8,
            lora_alpha=16,
            max_steps=20,
            per_device_train_batch_size=16,
            learning_rate=1.0e-2,
        )

    return build(tmp_path_factory.mktemp("lora-run"))


@pytest.fixture(scope="session")
def qlora_run_dir(tmp_path_factory: pytest.TempPathFactory, demo_base_dir: Path, demo_data_file: Path) -> Path:
    """QLoRA with double quantization, checkpoints at steps 2 and 4."""
    pytest.importorskip("bitsandbytes")

    def build(root: Path) -> Path:
        return train(
            root,
            model_name_or_path=str(demo_base_dir),
            dataset_name=str(demo_data_file),
            assistant_only_loss=True,
            use_peft=True,
            lora_r=8,
            lora_alpha=16,
            load_in_4bit=True,
            use_bnb_nested_quant=True,
            max_steps=4,
            learning_rate=1.0e-2,
            save_strategy="steps",
            save_steps=2,
        )

    return build(tmp_path_factory.mktemp("qlora-run"))
