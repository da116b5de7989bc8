"""Load a rows file through the data layer exactly as train does (one source, no eval split)."""

from __future__ import annotations

from typing import Any

import pytest


def load_rows(path: Any, **script: Any) -> Any:
    from trl import DatasetMixtureConfig, SFTConfig

    from sft_recipes.config import ScriptArguments
    from sft_recipes.data.loading import load_training_data

    args = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, eval_strategy="no")
    train, _ = load_training_data(ScriptArguments(dataset_name=str(path), **script), DatasetMixtureConfig(), args)
    return train


@pytest.fixture
def isolated_datasets_cache(tmp_path: Any, monkeypatch: Any) -> None:
    """The rows a test converts go to a datasets cache of its own, never the user's (registered in conftest.py)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
