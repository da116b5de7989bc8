"""Image tokens are never cut away from their image features: `train` refuses max_length for vision-language data
up front, every example keeps all its image tokens without it, and `inspect` shows where a max_length would cut."""

from __future__ import annotations

import shutil

import pytest
from helpers.prepared import recipe_for

LONG = "Describe the picture in great detail please. " * 6


@pytest.fixture
def vision_rows(tmp_path):
    """Two long image chats, image first and image last, with the PNG next to the data file."""
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    return [
        {
            "images": ["red.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": LONG}]},
                {"role": "assistant", "content": "A red square."},
            ],
        },
        {
            "images": ["red.png"],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": LONG}, {"type": "image"}]},
                {"role": "assistant", "content": "Red."},
            ],
        },
    ]


def test_train_refuses_max_length_for_vision_language_data_before_loading_weights(tmp_path, vision_rows, vlm_dir):
    from sft_recipes.errors import RecipeError
    from sft_recipes.train import run

    model = tmp_path / "no-weights"
    shutil.copytree(vlm_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = recipe_for(tmp_path, model, vision_rows, max_length=40)
    with pytest.raises(RecipeError) as raised:
        run(recipe)
    assert any("max_length" in problem.where and problem.severity == "error" for problem in raised.value.problems)


def test_without_max_length_every_example_keeps_all_its_image_tokens(tmp_path, vision_rows, vlm_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    from sft_recipes.inspection.meta_trainer import build_trainer, image_token_id

    recipe = recipe_for(tmp_path, vlm_dir, vision_rows, max_length=None, per_device_train_batch_size=2)
    trainer, _, _ = build_trainer(recipe, str(tmp_path / "inspect"))
    batch = next(iter(trainer.get_train_dataloader()))
    image_id = image_token_id(trainer)
    per_row = (batch["input_ids"] == image_id).sum(1)
    assert per_row[0] == per_row[1] > 0, per_row  # the image at the end keeps as many tokens as the one in front
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    with torch.no_grad():  # the model itself checks that image tokens and image features match
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_inspect_marks_examples_a_max_length_would_cut_inside_their_image_tokens(tmp_path, vision_rows, vlm_dirs):
    from sft_recipes.inspection.command import inspect_recipe

    recipe = recipe_for(tmp_path, vlm_dirs["llava"], vision_rows, max_length=40, per_device_train_batch_size=2)
    inspection = inspect_recipe(recipe, n=2)
    cut = [p for p in inspection.problems if p.where == "max_length" and p.severity == "error"]
    assert len(cut) == 1 and cut[0].message.startswith("1 of the first 2 examples"), inspection.problems
    # The rows are shown whole, the cut marked where max_length falls.
    assert [e.cut_at for e in inspection.examples] == [40, 40]
    assert all(e.tokens > 40 for e in inspection.examples)
