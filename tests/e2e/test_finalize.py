"""What train leaves in output_dir for inference: use_cache back on (a VLM's text_config too), and a generation_config
that stops at the end of turn and at the model's own EOS ids, never on padding."""

from __future__ import annotations

import json

import pytest
from helpers.runs import write_recipe
from transformers import GenerationConfig

from sft_recipes.tiny import build_tokenizer
from sft_recipes.train import save_generation_config


def write_colour_rows(directory, n=4):
    from PIL import Image

    rows = []
    for i in range(n):
        colour = ("red", "green", "blue", "white")[i % 4]
        Image.new("RGB", (32, 32), colour).save(directory / f"img{i}.png")
        user = [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]
        reply = [{"type": "text", "text": f"It is {colour}."}]
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        rows.append({"images": [f"img{i}.png"], "messages": messages})
    path = directory / "vision.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_full_vlm_run_saves_use_cache_on_in_its_config_and_its_text_config(tmp_path, vlm_dirs):
    from sft_recipes.config import parse_recipe
    from sft_recipes.train import run

    recipe = write_recipe(
        tmp_path / "r.yaml",
        model_name_or_path=str(vlm_dirs["llava"]),
        dataset_name=str(write_colour_rows(tmp_path)),
        max_length=None,
        max_steps=1,
        per_device_train_batch_size=2,
        output_dir=str(tmp_path / "out"),
    )
    run(parse_recipe(["--config", str(recipe)]))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "text_config" in config
    assert config["use_cache"] is True and config["text_config"]["use_cache"] is True


@pytest.mark.parametrize(
    ("model_eos", "expected"),
    [(None, ["<|im_end|>"]), ("<|im_end|>", ["<|im_end|>"]), ("<|endoftext|>", ["<|im_end|>", "<|endoftext|>"])],
    ids=["model-without-eos", "same-eos", "document-eos-too"],
)
def test_generation_config_stops_at_the_end_of_turn_and_the_models_eos_and_never_on_pad(tmp_path, model_eos, expected):
    tokenizer = build_tokenizer()  # eos <|im_end|> (the end of turn), pad <|endoftext|>
    ids = tokenizer.convert_tokens_to_ids
    generation = GenerationConfig(eos_token_id=None if model_eos is None else ids(model_eos))
    save_generation_config(tmp_path, generation, tokenizer)
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert saved.eos_token_id == [ids(token) for token in expected]
    if "<|endoftext|>" in expected:  # the pad is an EOS id here: generate() must not pad with it
        assert saved.pad_token_id is None
    else:
        assert saved.pad_token_id == tokenizer.pad_token_id
    assert saved.pad_token_id not in saved.eos_token_id
