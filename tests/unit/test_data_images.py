"""Multimodal rows in the LLaMA-Factory/LLaVA layout: `<image>` markers in string content plus an `images` list."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers.data_rows import load_rows

from sft_recipes.errors import RecipeError

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

# LLaMA-Factory's data/mllm_demo.json, with a second image in the second user turn as its README shows.
MLLM_DEMO = {
    "messages": [
        {"role": "user", "content": "<image>Who are they?"},
        {"role": "assistant", "content": "They're Kane and Gretzka from Bayern Munich."},
        {"role": "user", "content": "What are they doing?<image>"},
        {"role": "assistant", "content": "They are celebrating on the soccer field."},
    ],
    "images": ["mllm_demo_data/1.png", "mllm_demo_data/2.png"],
}


def png(path, colour="red"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text(s):
    return {"type": "text", "text": s}


def test_image_markers_become_typed_content_in_marker_order(tmp_path):
    png(tmp_path / "mllm_demo_data/1.png", "red")
    png(tmp_path / "mllm_demo_data/2.png", "blue")
    train = load_rows(write_jsonl(tmp_path / "mllm.jsonl", [MLLM_DEMO]))
    image = {"type": "image"}
    assert train[0]["messages"] == [
        {"role": "user", "content": [image, text("Who are they?")]},
        {"role": "assistant", "content": [text("They're Kane and Gretzka from Bayern Munich.")]},
        {"role": "user", "content": [text("What are they doing?"), image]},
        {"role": "assistant", "content": [text("They are celebrating on the soccer field.")]},
    ]
    assert [img.getpixel((0, 0)) for img in train[0]["images"]] == [(255, 0, 0), (0, 0, 255)]  # in marker order


def test_llava_sharegpt_rows_with_one_image_column_become_typed_content(tmp_path):
    png(tmp_path / "coco" / "1.png")
    row = {"image": "coco/1.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                   {"from": "gpt", "value": "A red square."}]}  # fmt: skip
    train = load_rows(write_jsonl(tmp_path / "llava.jsonl", [row]))
    assert train[0]["messages"][0] == {"role": "user", "content": [{"type": "image"}, text("\nWhat is it?")]}
    assert len(train[0]["images"]) == 1


def test_image_paths_resolve_next_to_the_data_file_first_then_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    png(cwd / "both.png", "green")
    png(cwd / "cwd_only.png", "blue")
    png(tmp_path / "data" / "both.png", "red")
    rows = [{"messages": [{"role": "user", "content": f"<image>{name}"}, {"role": "assistant", "content": "ok"}],
             "images": [name]} for name in ("both.png", "cwd_only.png")]  # fmt: skip
    path = write_jsonl(tmp_path / "data" / "rows.jsonl", rows)
    monkeypatch.chdir(cwd)
    train = load_rows(path)
    assert [row["images"][0].getpixel((0, 0)) for row in train] == [(255, 0, 0), (0, 0, 255)]


def test_marker_and_image_count_mismatch_is_an_error_naming_file_and_row(tmp_path):
    png(tmp_path / "mllm_demo_data/1.png")
    png(tmp_path / "mllm_demo_data/2.png")
    one_image = {**MLLM_DEMO, "images": MLLM_DEMO["images"][:1]}
    path = write_jsonl(tmp_path / "mllm.jsonl", [MLLM_DEMO, one_image])
    with pytest.raises(RecipeError) as err:
        load_rows(path)
    assert [(p.where, p.message.split(":")[0]) for p in err.value.problems] == [
        (f"{path}[row 1]", "1 images but 2 image placeholders in the messages")
    ]


def test_a_missing_image_names_both_places_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "data" / "rows.jsonl", [{**MLLM_DEMO, "images": ["a.png", "b.png"]}])
    with pytest.raises(RecipeError) as err:
        load_rows(path)
    message = err.value.problems[0].message
    assert message.startswith("images[0] not found: a.png")
    assert str(tmp_path / "data") in message and str(tmp_path) in message


def test_an_image_placeholder_in_a_tool_message_is_an_error(tmp_path):
    png(tmp_path / "shot.png")
    messages = [{"role": "user", "content": "Take a screenshot."}, {"role": "assistant", "content": "Taking it."},
                {"role": "tool", "content": "<image>"}, {"role": "assistant", "content": "A red square."}]  # fmt: skip
    path = write_jsonl(tmp_path / "tool.jsonl", [{"messages": messages, "images": ["shot.png"]}])
    with pytest.raises(RecipeError) as err:
        load_rows(
            path
        )  # TRL's collator would raise "Number of images provided (1) does not match ... placeholders (0)"
    assert [(p.where, p.message.split(",")[0]) for p in err.value.problems] == [
        (f"{path}[row 0]", "a tool message holds an image placeholder")
    ]
