"""Helpers for the data-correctness tests: rows + recipe in, TRL's prepared training data out (as train sees it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.runs import write_recipe


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def recipe_for(tmp_path: Path, model_dir: Path, rows: list[dict[str, Any]], **keys: Any) -> Any:
    """A parsed recipe training `model_dir` on `rows` with the CPU test defaults plus `keys`."""
    from sft_recipes.config import parse_recipe

    tmp_path.mkdir(parents=True, exist_ok=True)
    keys.setdefault("output_dir", str(tmp_path / "out"))
    data = write_rows(tmp_path / "rows.jsonl", rows)
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(model_dir), dataset_name=str(data), **keys)
    return parse_recipe(["--config", str(path)])


def prepared_trainer(tmp_path: Path, model_dir: Path, rows: list[dict[str, Any]], **keys: Any) -> Any:
    """trl.SFTTrainer with its data prepared exactly as for training (inspect's meta-device trainer)."""
    from sft_recipes.inspection.meta_trainer import build_trainer

    trainer, _, _ = build_trainer(recipe_for(tmp_path, model_dir, rows, **keys), str(tmp_path / "inspect"))
    return trainer


def trained_spans(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of consecutive tokens the loss trains on (a document's first token never is)."""
    spans, run = [], []
    for index, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        if label != -100 and index > 0:
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    if run:
        spans.append(tokenizer.decode(run))
    return spans
