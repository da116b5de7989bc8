"""validate (and so train's preflight) stops data that would train the wrong thing or crash the first step: tools a
template does not render, preference pairs, image rows the processor cannot build into a batch."""

from __future__ import annotations

import io
import json

import pytest
from helpers.chat_families import build_family_model, recipe_chat_keys
from helpers.prepared import recipe_for

GLAIVE = {  # LLaMA-Factory's glaive_toolcall layout
    "conversations": [
        {"from": "human", "value": "What is the area of a 5 by 3 rectangle?"},
        {"from": "function_call", "value": json.dumps({"name": "area", "arguments": {"w": 5, "h": 3}})},
        {"from": "observation", "value": '{"area": 15}'},
        {"from": "gpt", "value": "It is 15."},
    ],
    "tools": json.dumps([{"name": "area", "description": "Area of a rectangle", "parameters": {"type": "object"}}]),
}


def errors(recipe, fix: bool = False) -> list[tuple[str, ...]]:
    from sft_recipes.validate.rules import validate

    return [(p.where, p.message, p.fix)[: 3 if fix else 2] for p in validate(recipe).errors]


@pytest.mark.parametrize(("name", "refused"), [("smollm2", True), ("qwen2.5", False), ("llama-3.1", False)])
def test_validate_refuses_tool_data_the_chat_template_does_not_render(tmp_path, name, refused):
    model = build_family_model(name, tmp_path / "model")
    recipe = recipe_for(tmp_path, model, [GLAIVE], **recipe_chat_keys(name), max_length=512)
    found = [(where, message) for where, message in errors(recipe) if "does not render" in message]
    data = str(tmp_path / "rows.jsonl")
    if refused:  # SmolLM2's template writes role and content only: the call would train as an empty turn
        assert [where for where, _ in found] == [f"{data}[row 0]", f"{data}[row 0]"]
        assert "`tools`" in found[0][1] and "tool calls of message 1" in found[1][1]
    else:
        assert found == []


def test_validate_gives_preference_data_one_error_for_the_file(tmp_path, llama_dir):
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}  # fmt: skip
    recipe = recipe_for(tmp_path, llama_dir, [pair] * 10, max_length=64)
    [(where, message, fix)] = errors(recipe, fix=True)  # not "no assistant turn" once per row
    assert where == str(tmp_path / "rows.jsonl") and "preference data" in message
    assert "preference_column: chosen" in fix and "DPOTrainer" in fix
    recipe = recipe_for(tmp_path / "chosen", llama_dir, [pair] * 10, max_length=64, preference_column="chosen")
    assert errors(recipe) == []


def image_rows(tmp_path, images: list[str]) -> list[dict]:
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    messages = [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}]
    return [{"messages": messages, "images": [name]} for name in images]


def test_validate_names_the_row_whose_image_markers_do_not_match_its_images(tmp_path, vlm_dirs):
    rows = image_rows(tmp_path, ["red.png", "red.png"])
    rows[1] = {**rows[1], "images": ["red.png", "red.png"]}
    recipe = recipe_for(tmp_path, vlm_dirs["llava"], rows, max_length=None)
    assert errors(recipe) == [
        (
            f"{tmp_path / 'rows.jsonl'}[row 1]",
            "2 images but 1 image placeholders in the messages: the processor needs exactly one image per "
            "placeholder (an image block or a <image> marker in the text)",
        )
    ]


def test_validate_builds_the_first_batch_through_the_processor(tmp_path, vlm_dirs):
    import numpy as np
    from PIL import Image

    # An interrupted download: PIL's verify() passes a truncated JPEG, decoding it fails in the first batch.
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(buffer, "JPEG")
    rows = image_rows(tmp_path, ["red.png", "cut.jpg", "red.png"])
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    recipe = recipe_for(tmp_path, vlm_dirs["llava"], rows, max_length=None, per_device_train_batch_size=2)
    found = errors(recipe)
    assert [where for where, _ in found] == [f"{tmp_path / 'rows.jsonl'}[row 1]"]
    assert "truncated" in found[0][1]


def test_validate_refuses_tools_for_a_vision_language_model(tmp_path, vlm_dirs):
    rows = image_rows(tmp_path, ["red.png"])
    rows[0]["tools"] = GLAIVE["tools"]
    recipe = recipe_for(tmp_path, vlm_dirs["llava"], rows, max_length=None)
    assert [message.split(":")[0] for _, message in errors(recipe)] == [
        "TRL's vision-language collator does not pass `tools` to the chat template"
    ]
