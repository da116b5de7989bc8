"""A pytest plugin (registered in tests/conftest.py) of runs trained once per session, when a test first asks for
one, for the chat, loader and eval tests: the demo (a full run that learns its task, with a checkpoint), a LoRA run
and a QLoRA run with checkpoints, all on the demo's tiny llama, and a LLaVA LoRA run on image rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.runs import train
from sft_recipes.resources import demo_recipe

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
def demo_heldout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows of the demo task drawn with another seed: the questions train saw, in another order."""
    import json

    from sft_recipes.tiny import demo_rows

    path = tmp_path_factory.mktemp("demo-heldout") / "heldout.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in demo_rows(40, seed=1)))
    return path


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
        argv = ["train", "--config", str(demo_recipe())]
        for key, value in overrides.items():
            argv += [f"--{key}", str(value)]
        assert main(argv) == 0
        return out

    return build(tmp_path_factory.mktemp("demo-run"))


@pytest.fixture(scope="session")
def demo_checkpoint_dir(demo_run_dir: Path) -> Path:
    return demo_run_dir / f"checkpoint-{DEMO_CHECKPOINT}"


def _demo_lora(root: Path, base: Path, data: Path, **keys) -> Path:
    """A LoRA run (r 8, alpha 16) on the demo's model and data, assistant tokens only."""
    common = dict(assistant_only_loss=True, use_peft=True, lora_r=8, lora_alpha=16, learning_rate=1.0e-2)
    return train(root, model_name_or_path=str(base), dataset_name=str(data), **common, **keys)


@pytest.fixture(scope="session")
def lora_run_dir(tmp_path_factory: pytest.TempPathFactory, demo_base_dir: Path, demo_data_file: Path) -> Path:
    root = tmp_path_factory.mktemp("lora-run")
    return _demo_lora(root, demo_base_dir, demo_data_file, max_steps=20, per_device_train_batch_size=16)


@pytest.fixture(scope="session")
def qlora_run_dir(tmp_path_factory: pytest.TempPathFactory, demo_base_dir: Path, demo_data_file: Path) -> Path:
    """QLoRA with double quantization, checkpoints at steps 2 and 4."""
    pytest.importorskip("bitsandbytes")
    quantized = dict(load_in_4bit=True, use_bnb_nested_quant=True, save_strategy="steps", save_steps=2)
    return _demo_lora(tmp_path_factory.mktemp("qlora-run"), demo_base_dir, demo_data_file, max_steps=4, **quantized)


@pytest.fixture(scope="session")
def vlm_rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 chat rows that each show the same red image (red.png beside the file) and say it is red."""
    import json

    from PIL import Image

    root = tmp_path_factory.mktemp("vlm-rows")
    Image.new("RGB", (40, 30), "red").save(root / "red.png")
    user = [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]
    row = {"images": [str(root / "red.png")], "messages": [{"role": "user", "content": user}]}
    row["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "It is red."}]})
    (root / "vision.jsonl").write_text((json.dumps(row) + "\n") * 8)
    return root / "vision.jsonl"


@pytest.fixture(scope="session")
def vlm_lora_run_dir(tmp_path_factory: pytest.TempPathFactory, vlm_rows_file: Path) -> Path:
    """A llava LoRA run of three steps on vlm_rows_file."""
    from sft_recipes.tiny import build_vlm

    root = tmp_path_factory.mktemp("vlm-lora-run")
    base = build_vlm("llava", root / "llava")
    keys = {"max_length": None, "use_peft": True, "lora_r": 4, "max_steps": 3, "per_device_train_batch_size": 2}
    return train(root, model_name_or_path=str(base), dataset_name=str(vlm_rows_file), **keys)
