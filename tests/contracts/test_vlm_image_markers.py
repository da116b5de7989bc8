"""Rows in the LLaMA-Factory/LLaVA layout (`<image>` markers in string content plus an `images` list) collate through
TRL's real vision collator exactly as typed content does. Before, TRL put every image before the first user turn on
top of the markers, and train crashed: "Found total 8 <image> tokens and 4 images"."""

from __future__ import annotations

import pytest
from helpers.prepared import recipe_for

ROWS = 4


def rows(tmp_path, marked: bool) -> list[dict]:
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    out = []
    for i, colour in enumerate(("red", "green", "blue", "white")[:ROWS]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"img{i}.png")
        user = "<image>What colour is this?" if marked else [
            {"type": "image"}, {"type": "text", "text": "What colour is this?"}
        ]  # fmt: skip
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": f"It is {colour}."}]
        out.append({"images": [f"img{i}.png"], "messages": messages})
    return out


def first_batch(tmp_path, model_dir, marked: bool):
    from sft_recipes.inspection.meta_trainer import build_trainer

    recipe = recipe_for(tmp_path, model_dir, rows(tmp_path, marked), max_length=None, per_device_train_batch_size=ROWS)
    trainer, _, _ = build_trainer(recipe, str(tmp_path / "inspect"))
    return next(iter(trainer.get_train_dataloader())), trainer


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])
def test_image_marker_rows_collate_exactly_as_typed_image_content(tmp_path, vlm_dirs, family):
    import torch

    from sft_recipes.inspection.meta_trainer import image_token_id

    marked, trainer = first_batch(tmp_path / "marked", vlm_dirs[family], marked=True)
    typed, _ = first_batch(tmp_path / "typed", vlm_dirs[family], marked=False)
    assert torch.equal(marked["input_ids"], typed["input_ids"])  # Gemma 3 trained a literal "<image>" text before
    assert torch.equal(marked["pixel_values"], typed["pixel_values"])
    per_row = (marked["input_ids"] == image_token_id(trainer)).sum(1)
    assert (per_row == per_row[0]).all() and per_row[0] > 0
