"""Vision-language models train on image + text rows as VLMs (processor, pixel values), not silently as text."""

from __future__ import annotations

import json

import pytest
import torch


def write_vision_rows(directory, n=8):
    from PIL import Image

    rows = []
    for i in range(n):
        colour = ("red", "green", "blue", "white")[i % 4]
        Image.new("RGB", (32, 32), colour).save(directory / f"img{i}.png")
        rows.append(
            {
                "images": [f"img{i}.png"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"It is {colour}."}]},
                ],
            }
        )
    path = directory / "vision.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_vlm_lora_trains_on_image_text_rows_and_leaves_the_vision_tower_frozen(tmp_path, vlm_dirs, family):
    from helpers.runs import write_recipe

    from sft_recipes.config import parse_recipe
    from sft_recipes.train import run

    if family not in vlm_dirs:
        pytest.skip(f"{family} fixture not built")
    data = write_vision_rows(tmp_path)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model_name_or_path=str(vlm_dirs[family]),
        dataset_name=str(data),
        max_length=None,
        use_peft=True,
        lora_r=4,
        max_steps=3,
        per_device_train_batch_size=2,
        output_dir=str(tmp_path / "out"),
    )
    trainer = run(parse_recipe(["--config", str(recipe)]))
    assert trainer._is_vlm and trainer._is_vision_dataset
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and not [n for n in trained if "vision" in n or "multi_modal_projector" in n or "connector" in n]
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "processor_config.json").is_file() or (
        tmp_path / "out" / "preprocessor_config.json"
    ).is_file()
