"""`sft-recipes validate` passes on every shipped recipe, offline: the recipe's own config.json snapshot stands in for
the hub model (real architecture, context, LoRA targets and sizes), a tiny tokenizer with the recipe's eos token for
the real one, and the demo chats for the hub data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.bad_inputs import run_validate

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml"))


def eos_of(recipe: Path) -> str:
    return yaml.safe_load(recipe.read_text()).get("eos_token") or "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, vlm_dirs) -> dict[tuple[bool, str], Path]:
    """Tiny stand-ins (text tokenizer or llava processor) holding each end-of-turn token the recipes pin."""
    from transformers import AutoProcessor

    from sft_recipes.tiny import build_tokenizer

    root = tmp_path_factory.mktemp("recipe-tokenizers")
    found = {}
    for i, eos in enumerate(sorted({eos_of(p) for p in RECIPES})):
        found[False, eos] = root / f"text-{i}"
        build_tokenizer(found[False, eos], eos_token=eos)
        processor = AutoProcessor.from_pretrained(vlm_dirs["llava"])
        processor.tokenizer.add_special_tokens({"additional_special_tokens": [eos]})
        found[True, eos] = root / f"vlm-{i}"
        processor.save_pretrained(found[True, eos])
    return found


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_recipe_validates(recipe, tokenizers, llama_dir, demo_data_path, tmp_path, capsys, monkeypatch):
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, detect_model_kind

    snapshot = recipe.parent / "config.json"
    if snapshot.is_file():  # a hub model: its config.json, a tiny tokenizer with its eos token
        is_vlm = detect_model_kind(json.loads(snapshot.read_text())) == IMAGE_TEXT_TO_TEXT
        model, tokenizer = recipe.parent, tokenizers[is_vlm, eos_of(recipe)]
    else:  # the demo recipe's model is a tiny llama built at run time
        model = tokenizer = llama_dir
    overrides = [
        "--model_name_or_path",
        str(model),
        "--tokenizer_name_or_path",
        str(tokenizer),
        "--dataset_name",
        str(demo_data_path),
        "--eval_strategy",
        "no",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    monkeypatch.chdir(ROOT)  # chat_template_path is relative to the repository root
    code, out, err = run_validate(capsys, monkeypatch, recipe, overrides)
    assert code == 0, err
    assert "trainable" in out and "trained tokens" in out
