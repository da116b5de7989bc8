"""Helpers for tests that train: write a recipe YAML, run `sft-recipes train` in-process on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Small, fast, deterministic CPU settings shared by the training tests.
CPU_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "bf16": False,
    "max_length": 64,
    "per_device_train_batch_size": 4,
    "max_steps": 4,
    "learning_rate": 1.0e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
}


def write_recipe(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump({**CPU_DEFAULTS, **keys}, sort_keys=False))
    return path


def train(tmp_path: Path, overrides: tuple[str, ...] = (), **keys: Any) -> Path:
    """Train with the CPU defaults plus keys, and the command-line `overrides` after them; returns output_dir."""
    from sft_recipes.cli import main

    keys.setdefault("output_dir", str(tmp_path / "out"))
    recipe = write_recipe(tmp_path / "recipe.yaml", **keys)
    assert main(["train", "--config", str(recipe), *overrides]) == 0
    given = [value for flag, value in zip(overrides, overrides[1:], strict=False) if flag == "--output_dir"]
    return Path(given[-1] if given else keys["output_dir"])
